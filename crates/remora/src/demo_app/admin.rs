//! A small client of the balancer's admin API, for the page's cluster chart
//! and its "drain this server" button.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// Most bytes read from an admin answer.
const MAX_ANSWER: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Errors talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request could not be built (bad URL).
    #[error("bad admin request")]
    Request(#[source] http::Error),
    /// No answer, or a broken one.
    #[error("admin API unreachable")]
    Transport(#[source] hyper_util::client::legacy::Error),
    /// The answer's body could not be read (or was too large).
    #[error("admin API answer unreadable")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The answer is not the expected JSON.
    #[error("admin API answer is not the expected JSON")]
    Json(#[source] serde_json::Error),
    /// An error status.
    #[error("admin API answered {0}")]
    Status(http::StatusCode),
    /// No answer in time.
    #[error("admin API did not answer within {0:?}")]
    Timeout(Duration),
}

/// One server as the page's chart shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerInfo {
    /// Server name.
    pub name: String,
    /// ready, drain or maintenance.
    pub state: String,
    /// Passing health checks.
    pub healthy: bool,
    /// Clients pinned to it.
    pub pinned: u64,
}

#[derive(Deserialize)]
struct Servers {
    pools: Vec<Pool>,
}

#[derive(Deserialize)]
struct Pool {
    name: String,
    servers: Vec<Server>,
}

#[derive(Deserialize)]
struct Server {
    name: String,
    state: String,
    healthy: bool,
    #[serde(default)]
    pinned_clients: u64,
}

/// The balancer's admin API for one pool.
pub struct Admin {
    base: String,
    token: String,
    pool: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Admin {
    /// A client of the admin API at `base` (e.g. `http://127.0.0.1:9090`).
    pub fn new(base: String, token: String, pool: String) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            pool,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes, AdminError> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(AdminError::Request)?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(AdminError::Transport)?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(AdminError::Body)?
                .to_bytes();
            if !status.is_success() {
                return Err(AdminError::Status(status));
            }
            Ok(bytes)
        };
        tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| AdminError::Timeout(TIMEOUT))?
    }

    /// The servers of this shop's pool.
    pub async fn servers(&self) -> Result<Vec<ServerInfo>, AdminError> {
        let bytes = self.call(http::Method::GET, "/api/servers", None).await?;
        let all: Servers = serde_json::from_slice(&bytes).map_err(AdminError::Json)?;
        Ok(all
            .pools
            .into_iter()
            .filter(|p| p.name == self.pool)
            .flat_map(|p| p.servers)
            .map(|s| ServerInfo {
                name: s.name,
                state: s.state,
                healthy: s.healthy,
                pinned: s.pinned_clients,
            })
            .collect())
    }

    /// Sets server `name`'s state (`ready`, `drain`, `maintenance`).
    pub async fn set_state(&self, name: &str, state: &str) -> Result<(), AdminError> {
        let path = format!("/api/pools/{}/servers/{name}/state", self.pool);
        self.call(
            http::Method::PUT,
            &path,
            Some(serde_json::json!({ "state": state })),
        )
        .await
        .map(drop)
    }
}
