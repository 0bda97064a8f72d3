//! One simulated shopper: a keep-alive HTTP client that keeps its cookies,
//! its newest replica and the cart it believes it has, and speaks the
//! replica protocol as `js/remora-client` does (`Session-Replica-Capable`
//! on every request while it holds a replica; one resend with
//! `Session-Replica` after a `409` + `Session-Replica-Wanted: 1`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::watch;

/// Products the shoppers pick from.
const SKUS: [&str; 12] = [
    "tea", "coffee", "cocoa", "honey", "jam", "bread", "butter", "milk", "salt", "rice", "oats",
    "figs",
];
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a request the protocol lets the shopper retry (GET, login).
const RETRIES: u32 = 30;
/// Incidents kept per shopper for the report.
const MAX_INCIDENTS: usize = 4;

/// What one shopper saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests sent, including retries and replica resends.
    pub requests: u64,
    /// Requests answered 5xx or not at all.
    pub failed_requests: u64,
    /// Of those, GETs.
    pub failed_gets: u64,
    /// Items the shopper had that the server no longer had.
    pub lost_items: u64,
    /// Items the server had that the shopper never added (or had removed).
    pub unexpected_items: u64,
    /// Whether the shopper's session was lost at least once (signed out).
    pub lost_session: bool,
    /// Resends with a replica that were answered 2xx.
    pub restores: u64,
    /// Client-side time of each restoring exchange (409 + resend), in ms.
    pub restore_ms: Vec<f64>,
    /// Checkouts placed.
    pub checkouts: u64,
    /// Checkouts answered 409 (order token out of date or taken).
    pub checkout_conflicts: u64,
    /// Checkouts replayed with the same order token.
    pub checkout_replays: u64,
    /// Replays answered 2xx (must be 0).
    pub checkout_replays_accepted: u64,
    /// Answers with an unexpected status (4xx other than the above).
    pub unexpected_status: u64,
    /// The first few incidents, for the report.
    pub incidents: Vec<String>,
    /// The first few failed requests and why they failed.
    pub failures: Vec<String>,
}

impl Report {
    fn incident(&mut self, line: String) {
        if self.incidents.len() < MAX_INCIDENTS {
            self.incidents.push(line);
        }
    }
}

/// A whole answer.
struct Reply {
    status: u16,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// An exchange that failed (a 5xx or no answer; the reason is kept in
/// [`Report::failures`]).
struct Failed;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A simulated shopper.
pub struct Shopper {
    id: usize,
    user: String,
    base: String,
    client: HttpClient,
    jar: BTreeMap<String, String>,
    replica: Option<(String, u64)>,
    expected: BTreeMap<String, u32>,
    rng: StdRng,
    relogin: bool,
    /// When the run started (incidents carry the time since).
    started: Instant,
    /// The replica seq held when the last request was sent, and the seq
    /// of the replica its answer carried (for incident reports).
    last_seqs: (Option<u64>, Option<u64>),
    requests: Arc<AtomicU64>,
    report: Report,
}

impl Shopper {
    /// Shopper `id` shopping at `addr` (the balancer); `requests` counts
    /// every request sent, for the progress bar.
    pub fn new(id: usize, addr: std::net::SocketAddr, seed: u64, requests: Arc<AtomicU64>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        Self {
            id,
            user: format!("shopper{id}"),
            base: format!("http://{addr}"),
            client,
            jar: BTreeMap::new(),
            replica: None,
            expected: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            relogin: false,
            started: Instant::now(),
            last_seqs: (None, None),
            requests,
            report: Report::default(),
        }
    }

    /// Shops until `stop` turns true, then waits for `verify` to turn true
    /// (every server back up) and compares its cart with the server's.
    pub async fn run(
        mut self,
        think: Duration,
        mut stop: watch::Receiver<bool>,
        mut verify: watch::Receiver<bool>,
    ) -> Report {
        // Spread the start so the shoppers do not arrive all at once.
        let spread = self.rng.random_range(0..=think.as_millis() as u64 * 2);
        tokio::time::sleep(Duration::from_millis(spread)).await;
        self.login().await;
        while !*stop.borrow() {
            let pause = self
                .rng
                .random_range(think.as_millis() as u64 / 2..=think.as_millis() as u64 * 3 / 2);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                _ = stop.changed() => break,
            }
            if self.relogin {
                self.relogin = false;
                self.login().await;
                continue;
            }
            let roll = self.rng.random_range(0..100);
            if roll < 55 || self.expected.is_empty() {
                self.add().await;
            } else if roll < 75 {
                self.remove().await;
            } else if roll < 92 {
                if let Some(cart) = self.get_json("/api/cart").await {
                    self.reconcile(&cart, "GET /api/cart");
                }
            } else {
                self.checkout().await;
            }
        }
        let _ = verify.wait_for(|v| *v).await;
        match self.get_json("/api/cart").await {
            Some(cart) => self.reconcile(&cart, "final GET /api/cart"),
            None => {
                let lost: u32 = self.expected.values().sum();
                self.report.lost_items += u64::from(lost);
                self.report.lost_session = true;
                let line = format!(
                    "shopper {}: the final GET /api/cart never succeeded",
                    self.id
                );
                self.report.incident(line);
            }
        }
        self.report
    }

    /// Signs in (retried: signing in twice is harmless).
    async fn login(&mut self) {
        let body = format!(r#"{{"user":"{}"}}"#, self.user);
        for attempt in 0..RETRIES {
            match self.exchange("POST", "/api/login", &body, None).await {
                Ok(r) if r.status == 200 => {
                    if let Some(cart) = r.json() {
                        self.reconcile_items(&cart, "POST /api/login");
                    }
                    return;
                }
                Ok(r) => self.unexpected("POST /api/login", r.status),
                Err(_) => {}
            }
            backoff(attempt).await;
        }
    }

    async fn add(&mut self) {
        let sku = SKUS[self.rng.random_range(0..SKUS.len())];
        if self.expected.get(sku).is_some_and(|&q| q >= 90) {
            return;
        }
        let body = format!(r#"{{"sku":"{sku}","qty":1}}"#);
        for attempt in 0..5 {
            match self.exchange("POST", "/api/cart/items", &body, None).await {
                Ok(r) if r.status == 200 => {
                    *self.expected.entry(sku.to_owned()).or_default() += 1;
                    if let Some(cart) = r.json() {
                        self.reconcile(&cart, "POST /api/cart/items");
                    }
                    return;
                }
                Ok(r) => return self.unexpected("POST /api/cart/items", r.status),
                Err(_) => {
                    // Outcome unknown: read the cart before deciding.
                    backoff(attempt).await;
                    let Some(cart) = self.get_json("/api/cart").await else {
                        return;
                    };
                    let had = self.expected.get(sku).copied().unwrap_or(0);
                    if server_qty(&cart, sku) == had + 1 {
                        // It was applied; the answer was lost.
                        *self.expected.entry(sku.to_owned()).or_default() += 1;
                        self.reconcile(&cart, "POST /api/cart/items (re-read)");
                        return;
                    }
                    self.reconcile(&cart, "POST /api/cart/items (re-read)");
                }
            }
        }
    }

    async fn remove(&mut self) {
        let i = self.rng.random_range(0..self.expected.len());
        let Some(sku) = self.expected.keys().nth(i).cloned() else {
            return;
        };
        let path = format!("/api/cart/items/{sku}");
        for attempt in 0..5 {
            match self.exchange("DELETE", &path, "", None).await {
                Ok(r) if r.status == 200 => {
                    self.expected.remove(&sku);
                    if let Some(cart) = r.json() {
                        self.reconcile(&cart, "DELETE /api/cart/items");
                    }
                    return;
                }
                Ok(r) => return self.unexpected("DELETE /api/cart/items", r.status),
                Err(_) => {
                    backoff(attempt).await;
                    let Some(cart) = self.get_json("/api/cart").await else {
                        return;
                    };
                    if server_qty(&cart, &sku) == 0 {
                        self.expected.remove(&sku);
                        self.reconcile(&cart, "DELETE /api/cart/items (re-read)");
                        return;
                    }
                    self.reconcile(&cart, "DELETE /api/cart/items (re-read)");
                }
            }
        }
    }

    /// CSRF token, order token, checkout; then one replay of the same
    /// checkout, which must be refused.
    async fn checkout(&mut self) {
        let Some(csrf) = self.get_json("/api/csrf").await else {
            return;
        };
        let Some(token) = csrf["token"].as_str().map(str::to_owned) else {
            return;
        };
        let Some(cart) = self.get_json("/api/cart").await else {
            return;
        };
        self.reconcile(&cart, "GET /api/cart (checkout)");
        let Some(order) = cart["order_token"].as_str().map(str::to_owned) else {
            return;
        };
        let body = format!(r#"{{"order_token":"{order}"}}"#);
        match self
            .exchange("POST", "/api/checkout", &body, Some(&token))
            .await
        {
            Ok(r) if r.status == 200 => {
                self.report.checkouts += 1;
                self.expected.clear();
                if let Some(v) = r.json() {
                    self.reconcile(&v["cart"], "POST /api/checkout");
                }
                self.report.checkout_replays += 1;
                if let Ok(again) = self
                    .exchange("POST", "/api/checkout", &body, Some(&token))
                    .await
                    && (200..300).contains(&again.status)
                {
                    self.report.checkout_replays_accepted += 1;
                    let line = format!("shopper {}: a replayed checkout was accepted", self.id);
                    self.report.incident(line);
                }
            }
            Ok(r) if r.status == 409 => self.report.checkout_conflicts += 1,
            Ok(r) => self.unexpected("POST /api/checkout", r.status),
            Err(_) => {
                // Outcome unknown: an empty cart means the order was placed.
                if let Some(cart) = self.get_json("/api/cart").await {
                    if cart["items"].as_array().is_some_and(Vec::is_empty) {
                        self.report.checkouts += 1;
                        self.expected.clear();
                    }
                    self.reconcile(&cart, "POST /api/checkout (re-read)");
                }
            }
        }
    }

    /// A GET, retried (after a backoff) while it fails; the JSON body of
    /// its 200.
    async fn get_json(&mut self, path: &str) -> Option<Value> {
        for attempt in 0..RETRIES {
            match self.exchange("GET", path, "", None).await {
                Ok(r) if r.status == 200 => return r.json(),
                Ok(r) => {
                    self.unexpected(path, r.status);
                    return None;
                }
                Err(_) => backoff(attempt).await,
            }
        }
        None
    }

    fn unexpected(&mut self, what: &str, status: u16) {
        self.report.unexpected_status += 1;
        let line = format!("shopper {}: {what} answered {status}", self.id);
        self.report.incident(line);
    }

    /// Compares a cart answer with what the shopper believes: a signed-out
    /// session is a lost session; missing items are lost items. Then takes
    /// the server's cart as the truth (so nothing is counted twice) and
    /// signs in again if it had to.
    fn reconcile(&mut self, cart: &Value, what: &str) {
        let signed_out = cart["user"].as_str() != Some(self.user.as_str());
        if signed_out {
            self.report.lost_session = true;
            let line = format!(
                "shopper {}: session lost (signed out) seen by {what} on {}",
                self.id, cart["server"]
            );
            self.report.incident(line);
        }
        self.reconcile_items(cart, what);
        if signed_out {
            // Sign in again on the next action (a real shopper would).
            self.relogin = true;
        }
    }

    fn reconcile_items(&mut self, cart: &Value, what: &str) {
        let server = server_cart(cart);
        let mut lost = 0u64;
        let mut extra = 0u64;
        for (sku, &want) in &self.expected {
            let have = server.get(sku).copied().unwrap_or(0);
            lost += u64::from(want.saturating_sub(have));
        }
        for (sku, &have) in &server {
            let want = self.expected.get(sku).copied().unwrap_or(0);
            extra += u64::from(have.saturating_sub(want));
        }
        if lost > 0 || extra > 0 {
            let line = format!(
                "shopper {} at +{:.1}s: {what} on {}: {lost} item(s) missing, {extra} unexpected; expected {:?}, server {:?}; held seq {:?}, answer seq {:?}",
                self.id,
                self.started.elapsed().as_secs_f64(),
                cart["server"],
                self.expected,
                server,
                self.last_seqs.0,
                self.last_seqs.1
            );
            self.report.incident(line);
        }
        self.report.lost_items += lost;
        self.report.unexpected_items += extra;
        self.expected = server;
    }

    /// One request, with the replica protocol; a 5xx or no answer is a
    /// failed request.
    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        csrf: Option<&str>,
    ) -> Result<Reply, Failed> {
        let started = Instant::now();
        let first = self.send(method, path, body, csrf, false).await?;
        let wanted = first.0.status == 409 && first.1;
        if !wanted || self.replica.is_none() {
            return Ok(first.0);
        }
        // The server does not know the session: resend once with the replica.
        let again = self.send(method, path, body, csrf, true).await?;
        if (200..300).contains(&again.0.status) {
            self.report.restores += 1;
            self.report
                .restore_ms
                .push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(again.0)
    }

    /// Sends one request; returns the reply and whether it asked for the
    /// replica.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        csrf: Option<&str>,
        with_replica: bool,
    ) -> Result<(Reply, bool), Failed> {
        self.report.requests += 1;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_seqs = (self.replica.as_ref().map(|(_, s)| *s), None);
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if !self.jar.is_empty() {
            let cookie: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(http::header::COOKIE, cookie.join("; "));
        }
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        if let Some((blob, seq)) = &self.replica {
            req = req.header("session-replica-capable", seq.to_string());
            if with_replica {
                req = req.header("session-replica", blob.as_str());
            }
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| self.failed(method, format!("{method} {path}: {e}")))?;
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((parts, body))
        })
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
        let (parts, body) = match result {
            Ok(x) => x,
            Err(e) => return Err(self.failed(method, format!("{method} {path}: {e}"))),
        };
        let status = parts.status.as_u16();
        if status >= 500 {
            return Err(self.failed(method, format!("{method} {path}: {status}")));
        }
        self.absorb(&parts.headers);
        let wanted = parts
            .headers
            .get("session-replica-wanted")
            .is_some_and(|v| v == "1");
        Ok((Reply { status, body }, wanted))
    }

    fn failed(&mut self, method: &str, why: String) -> Failed {
        self.report.failed_requests += 1;
        if method == "GET" {
            self.report.failed_gets += 1;
        }
        if self.report.failures.len() < MAX_INCIDENTS {
            self.report.failures.push(why);
        }
        Failed
    }

    /// Keeps cookies and the newest replica from a response.
    fn absorb(&mut self, headers: &http::HeaderMap) {
        for v in headers.get_all(http::header::SET_COOKIE) {
            let Ok(text) = v.to_str() else { continue };
            let pair = text.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let gone = value.is_empty() || text.to_ascii_lowercase().contains("max-age=0");
            if gone {
                self.jar.remove(name.trim());
            } else {
                self.jar
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        if headers.contains_key("session-replica-drop") {
            self.replica = None;
        }
        self.last_seqs.1 = headers
            .get("session-replica-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(blob), Some(seq)) = (
            headers.get("session-replica").and_then(|v| v.to_str().ok()),
            headers
                .get("session-replica-seq")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok()),
        ) && self.replica.as_ref().is_none_or(|(_, s)| seq >= *s)
        {
            self.replica = Some((blob.to_owned(), seq));
        }
    }
}

/// The server's cart: sku -> quantity.
fn server_cart(cart: &Value) -> BTreeMap<String, u32> {
    cart["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|l| {
                    let sku = l["sku"].as_str()?.to_owned();
                    let qty = u32::try_from(l["qty"].as_u64()?).ok()?;
                    Some((sku, qty))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn server_qty(cart: &Value, sku: &str) -> u32 {
    server_cart(cart).get(sku).copied().unwrap_or(0)
}

/// 100 ms, 200 ms, ... up to 1 s.
async fn backoff(attempt: u32) {
    let ms = 100 * u64::from(attempt.min(9) + 1);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_cart_reads_lines_and_ignores_junk() {
        let cart: Value = serde_json::json!({"items":[{"sku":"tea","qty":2},{"sku":1},{"qty":3}]});
        let got = server_cart(&cart);
        assert_eq!(got.len(), 1);
        assert_eq!(got["tea"], 2);
        assert_eq!(server_qty(&cart, "jam"), 0);
        assert!(server_cart(&Value::Null).is_empty());
    }
}
