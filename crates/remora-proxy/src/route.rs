//! Routing: which pool serves a request.

use crate::config::ListenerConfig;

/// The pool for a request: the first route whose `path_prefix` (and `host`,
/// when set) match, else the listener's default pool.
pub fn pool_for<'a>(listener: &'a ListenerConfig, host: Option<&str>, path: &str) -> &'a str {
    let host = host.map(strip_port);
    for r in &listener.routes {
        if !path.starts_with(&r.path_prefix) {
            continue;
        }
        if let Some(want) = &r.host {
            match host {
                Some(h) if h.eq_ignore_ascii_case(want) => {}
                _ => continue,
            }
        }
        return &r.pool;
    }
    &listener.pool
}

/// `example.test:8080` -> `example.test`; `[::1]:80` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map(|(h, _)| &host[..=h.len()])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Limits, RouteConfig};

    fn listener() -> ListenerConfig {
        ListenerConfig {
            name: "web".into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            pool: "app".into(),
            tls: None,
            proxy_protocol: false,
            routes: vec![
                RouteConfig {
                    path_prefix: "/api".into(),
                    host: Some("example.test".into()),
                    pool: "api".into(),
                },
                RouteConfig {
                    path_prefix: "/static".into(),
                    host: None,
                    pool: "static".into(),
                },
            ],
            limits: Limits::default(),
        }
    }

    #[test]
    fn first_match_wins_with_host() {
        let l = listener();
        assert_eq!(pool_for(&l, Some("example.test:8080"), "/api/x"), "api");
        assert_eq!(pool_for(&l, Some("EXAMPLE.test"), "/api"), "api");
        assert_eq!(pool_for(&l, Some("other.test"), "/api/x"), "app");
        assert_eq!(pool_for(&l, None, "/api/x"), "app");
        assert_eq!(pool_for(&l, None, "/static/a.css"), "static");
        assert_eq!(pool_for(&l, Some("[::1]:80"), "/"), "app");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
