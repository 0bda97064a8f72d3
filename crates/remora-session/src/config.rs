//! Layer configuration: cookie attributes, timeouts, limits and policies.

use std::time::Duration;

/// The `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax` (default).
    Lax,
    /// `SameSite=None` (requires `Secure`).
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// What the layer does when the store fails or times out while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreFailure {
    /// Answer `503 Service Unavailable` with `Retry-After` (default: 1 s).
    Unavailable {
        /// Value of the `Retry-After` header.
        retry_after: Duration,
    },
    /// Go on with a fresh, empty session. A later save of that session
    /// still fails with `503` if the store is still down.
    FreshSession,
}

impl Default for OnStoreFailure {
    fn default() -> Self {
        OnStoreFailure::Unavailable {
            retry_after: Duration::from_secs(1),
        }
    }
}

/// Default cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "remora_session";

/// Everything the layer is configured with (see the `with_*` builders on
/// [`SessionLayer`](crate::SessionLayer) and `docs/sessions.md`).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub cookie_name: String,
    pub host_prefix: bool,
    pub secure: bool,
    pub same_site: SameSite,
    pub cookie_path: String,
    pub cookie_domain: Option<String>,
    pub idle_timeout: Duration,
    pub absolute_lifetime: Duration,
    pub save_period: Duration,
    pub size_limit: usize,
    pub store_timeout: Duration,
    pub on_store_failure: OnStoreFailure,
    pub expires_header: bool,
    pub save_on_server_error: bool,
    pub merge_retries: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cookie_name: DEFAULT_COOKIE_NAME.to_owned(),
            host_prefix: false,
            secure: true,
            same_site: SameSite::Lax,
            cookie_path: "/".to_owned(),
            cookie_domain: None,
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_lifetime: Duration::from_secs(12 * 3600),
            save_period: Duration::from_secs(60),
            size_limit: 64 * 1024,
            store_timeout: Duration::from_millis(500),
            on_store_failure: OnStoreFailure::default(),
            expires_header: false,
            save_on_server_error: false,
            merge_retries: 8,
        }
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    /// The cookie's name as sent (with the `__Host-` prefix if enabled).
    pub fn full_cookie_name(&self) -> String {
        if self.host_prefix {
            format!("__Host-{}", self.cookie_name)
        } else {
            self.cookie_name.clone()
        }
    }

    fn attributes(&self, out: &mut String) {
        // `__Host-` requires Secure, Path=/ and no Domain.
        if self.host_prefix {
            out.push_str("; Path=/");
        } else {
            out.push_str("; Path=");
            out.push_str(&self.cookie_path);
            if let Some(d) = &self.cookie_domain {
                out.push_str("; Domain=");
                out.push_str(d);
            }
        }
        out.push_str("; HttpOnly; SameSite=");
        out.push_str(self.same_site.as_str());
        if self.secure || self.host_prefix {
            out.push_str("; Secure");
        }
    }

    /// A `Set-Cookie` value carrying `id` for `max_age_secs`.
    pub fn set_cookie(&self, id: &str, max_age_secs: u64) -> String {
        let mut s = format!(
            "{}={}; Max-Age={}",
            self.full_cookie_name(),
            id,
            max_age_secs
        );
        self.attributes(&mut s);
        s
    }

    /// A `Set-Cookie` value that removes the cookie.
    pub fn remove_cookie(&self) -> String {
        let mut s = format!(
            "{}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            self.full_cookie_name()
        );
        self.attributes(&mut s);
        s
    }
}

/// The value of cookie `name` in the request's `Cookie` headers, if any.
/// With several cookies of that name, the first well-formed ID wins.
pub(crate) fn cookie_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let mut first = None;
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for pair in s.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k.trim() == name {
                let v = v.trim().trim_matches('"');
                if crate::id::is_well_formed(v) {
                    return Some(v.to_owned());
                }
                first.get_or_insert_with(|| v.to_owned());
            }
        }
    }
    first
}
