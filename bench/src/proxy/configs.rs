//! Configuration files for the backend and for each proxy under test. Every
//! proxy gets the same backend twice, as two named servers `b1` and `b2`,
//! cookie affinity and (where the product has it) an active health check.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// The one static file every request fetches.
pub const FILE: &str = "/1k.bin";
/// Its size.
pub const FILE_LEN: usize = 1024;
/// The health-check path the backend answers.
pub const HEALTH: &str = "/health";
/// HAProxy's affinity cookie.
pub const HAPROXY_COOKIE: &str = "SRV";
/// Remora's affinity cookie.
pub const REMORA_COOKIE: &str = "REMORA_AFFINITY";
/// The cookie nginx hashes on (open-source nginx cannot insert one).
pub const NGINX_COOKIE: &str = "route";

/// Settings shared by the generated configs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open-file limit the children inherit.
    pub nofile: u64,
    /// Client connections a proxy must accept at once.
    pub max_clients: u64,
    /// Whether we run as root (nginx then keeps workers as root so they can
    /// read our private temporary directory).
    pub root: bool,
}

fn nginx_common(prefix: &Path, workers: u32, worker_connections: u64, limits: &Limits) -> String {
    let p = prefix.display();
    let worker_connections = worker_connections.min(limits.nofile);
    let mut s = String::new();
    if limits.root {
        s.push_str("user root;\n");
    }
    let _ = write!(
        s,
        "worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  client_body_temp_path {p}/tmp/body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fastcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 600s;
",
        nofile = limits.nofile,
    );
    s
}

/// The backend: nginx with one worker serving a 1 KiB file and `/health`.
pub fn backend_nginx(prefix: &Path, listen: SocketAddr, limits: &Limits) -> String {
    // Proxies may open one server connection per idle client.
    let mut s = nginx_common(prefix, 1, 2 * limits.max_clients + 1024, limits);
    let _ = write!(
        s,
        "  server {{
    listen {listen};
    root {www};
    location = {HEALTH} {{ return 200 \"ok\\n\"; }}
  }}
}}
",
        www = prefix.join("www").display(),
    );
    s
}

/// nginx as a proxy: two workers (one per core, like HAProxy's two
/// threads), upstream keep-alive, and `hash $cookie_route consistent` for
/// affinity: open-source nginx has no `sticky cookie`, so the client's
/// cookie picks the server and nginx sets none. No active health check
/// exists in open-source nginx; passive `max_fails` is its default. The
/// forwarding fields are Remora's, as for HAProxy ([`HAPROXY_FORWARDING`]).
pub fn nginx_proxy(
    prefix: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    limits: &Limits,
) -> String {
    // Not part of the idle-connection measurement: sized for the load run
    // (a larger table only costs nginx memory up front).
    let mut s = nginx_common(prefix, 2, 4096, limits);
    let _ = write!(
        s,
        "  upstream app {{
    hash $cookie_{NGINX_COOKIE} consistent;
    server {backend} max_fails=3 fail_timeout=10s;
    server {backend} max_fails=3 fail_timeout=10s;
    keepalive 128;
  }}
  server {{
    listen {listen};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header Forwarded \"for=$remote_addr;proto=$scheme;host=\\\"$http_host\\\"\";
      proxy_set_header Via \"1.1 nginx\";
      add_header Via \"1.1 nginx\";
    }}
  }}
}}
"
    );
    s
}

/// HAProxy 2.6: two threads, cookie insert affinity, HTTP health checks.
/// `no strict-limits`: HAProxy wants two descriptors per `maxconn` and
/// refuses to start when the hard open-file limit is lower (20,000 on the
/// benchmark machine); it then runs with the limit it has. `forwarding`:
/// the request and response fields Remora sets ([`HAPROXY_FORWARDING`]);
/// without, HAProxy adds none (its default).
pub fn haproxy(
    listen: SocketAddr,
    backend: SocketAddr,
    limits: &Limits,
    forwarding: bool,
) -> String {
    let forwarding = if forwarding { HAPROXY_FORWARDING } else { "" };
    format!(
        "global
  no strict-limits
  nbthread 2
  maxconn {maxconn}
defaults
  mode http
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-keep-alive 600s
  timeout http-request 10s
frontend web
  bind {listen}
  maxconn {maxconn}
  default_backend app
backend app
  balance roundrobin
{forwarding}  cookie {HAPROXY_COOKIE} insert indirect nocache
  option httpchk GET {HEALTH}
  http-check expect status 200-399
  default-server check inter 2s fall 3 rise 2
  server b1 {backend} cookie b1
  server b2 {backend} cookie b2
",
        maxconn = limits.max_clients + 100,
    )
}

/// What Remora does to every request and response by default (RFC 7239
/// `Forwarded`, `X-Forwarded-For`, `X-Forwarded-Proto`, and `Via` both
/// ways, which RFC 9110 section 7.6.3 asks of a proxy), in HAProxy 2.6's
/// terms (it has no `option forwarded` before 2.7), so that both do the
/// same work per request, and the backend parses the same fields.
pub const HAPROXY_FORWARDING: &str = "  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request add-header Forwarded \"for=%[src];proto=http;host=\\\"%[req.hdr(host)]\\\"\"
  http-request add-header Via \"1.1 haproxy\"
  http-response add-header Via \"1.1 haproxy\"
";

/// Remora: one listener, one pool of the backend twice, cookie affinity,
/// HTTP health checks, a keyring in `keys`; keep-alive idle timeout as long
/// as HAProxy's and room for the idle clients.
pub fn remora(
    listen: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
    keys: &Path,
    limits: &Limits,
) -> String {
    format!(
        "[limits]
idle_timeout = \"600s\"
max_connections = {max_connections}

[admin]
listen = \"{admin}\"
token = \"bench-token\"

[keys]
file = \"{keys}\"

[[listener]]
name = \"web\"
listen = \"{listen}\"
pool = \"app\"

[[pool]]
name = \"app\"
algorithm = \"round-robin\"

[pool.affinity]
mode = \"cookie\"
cookie = \"{REMORA_COOKIE}\"

[pool.health]
path = \"{HEALTH}\"
expect_status = \"200-399\"
interval = \"2s\"
timeout = \"1s\"
rise = 2
fall = 3

[[pool.server]]
name = \"b1\"
address = \"{backend}\"

[[pool.server]]
name = \"b2\"
address = \"{backend}\"
",
        keys = keys.display(),
        max_connections = limits.max_clients + 100,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            nofile: 20_000,
            max_clients: 10_000,
            root: false,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn haproxy_has_cookie_affinity_and_checks() {
        let cfg = haproxy(addr(1), addr(2), &limits(), true);
        assert!(cfg.contains(HAPROXY_FORWARDING));
        assert!(cfg.contains("option forwardfor"));
        let bare = haproxy(addr(1), addr(2), &limits(), false);
        assert!(!bare.contains("forwardfor") && !bare.contains("Via"));
        assert!(cfg.contains("cookie SRV insert indirect nocache"));
        assert!(cfg.contains("nbthread 2"));
        assert!(cfg.contains("option httpchk GET /health"));
        assert!(cfg.contains("server b1 127.0.0.1:2 cookie b1"));
        assert!(cfg.contains("maxconn 10100"));
    }

    #[test]
    fn nginx_configs_hash_on_the_cookie_and_cap_connections() {
        let dir = Path::new("/tmp/x");
        let proxy = nginx_proxy(dir, addr(1), addr(2), &limits());
        assert!(proxy.contains("hash $cookie_route consistent;"));
        assert!(proxy.contains("X-Forwarded-For $proxy_add_x_forwarded_for;"));
        assert!(proxy.contains("worker_processes 2;"));
        assert!(!proxy.contains("user root"));
        assert!(proxy.contains("worker_connections 4096;"));
        let backend = backend_nginx(
            dir,
            addr(3),
            &Limits {
                root: true,
                ..limits()
            },
        );
        assert!(backend.contains("worker_processes 1;"));
        assert!(backend.contains("user root;"));
        // 2 * 10,000 + 1024 exceeds the open-file limit: capped.
        assert!(backend.contains("worker_connections 20000;"));
    }

    #[test]
    fn remora_config_uses_the_documented_names() {
        let cfg = remora(addr(1), addr(2), addr(3), Path::new("/k"), &limits());
        assert!(cfg.contains("max_connections = 10100"));
        assert!(cfg.contains("mode = \"cookie\""));
        assert!(cfg.contains("cookie = \"REMORA_AFFINITY\""));
        assert!(cfg.contains("[pool.health]"));
        assert_eq!(cfg.matches("[[pool.server]]").count(), 2);
    }

    /// `remora check` accepts the generated config, when `REMORA_BIN` names
    /// a binary that has the subcommand (`scripts/test-all` sets it).
    #[test]
    fn remora_check_accepts_the_config() {
        let Some(bin) = std::env::var_os("REMORA_BIN") else {
            eprintln!("skipping remora check: REMORA_BIN is not set");
            return;
        };
        let help = std::process::Command::new(&bin)
            .arg("--help")
            .output()
            .expect("run remora --help");
        if !String::from_utf8_lossy(&help.stdout).contains("check") {
            eprintln!("skipping remora check: this remora has no `check` subcommand yet");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("remora.keys");
        std::fs::write(&keys, format!("{}\n", remora_seal::generate_key_b64())).expect("keys");
        let path = dir.path().join("remora.toml");
        let cfg = remora(addr(18081), addr(18082), addr(18083), &keys, &limits());
        std::fs::write(&path, cfg).expect("write");
        let out = std::process::Command::new(&bin)
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run remora check");
        assert!(out.status.success(), "{out:?}");
    }

    /// Validates the generated files with the real programs when they are
    /// installed (`apt-get install -y nginx-light haproxy`).
    #[test]
    fn real_programs_accept_the_configs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = limits();
        if let Some(haproxy_bin) = crate::proc::which("haproxy") {
            for forwarding in [true, false] {
                let path = dir.path().join("haproxy.cfg");
                let cfg = haproxy(addr(1), addr(2), &limits, forwarding);
                std::fs::write(&path, cfg).expect("write");
                let out = std::process::Command::new(&haproxy_bin)
                    .arg("-c")
                    .arg("-f")
                    .arg(&path)
                    .output()
                    .expect("run haproxy -c");
                assert!(out.status.success(), "{out:?}");
            }
        } else {
            eprintln!("skipping the haproxy check: haproxy is not installed");
        }
        if let Some(nginx_bin) = crate::proc::which("nginx") {
            std::fs::create_dir_all(dir.path().join("tmp")).expect("mkdir");
            let path = dir.path().join("nginx.conf");
            std::fs::write(&path, nginx_proxy(dir.path(), addr(1), addr(2), &limits))
                .expect("write");
            let out = std::process::Command::new(nginx_bin)
                .arg("-t")
                .arg("-q")
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(&path)
                .output()
                .expect("run nginx -t");
            assert!(out.status.success(), "{out:?}");
        } else {
            eprintln!("skipping the nginx check: nginx is not installed");
        }
    }
}
