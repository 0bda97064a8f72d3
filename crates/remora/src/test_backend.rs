//! `remora test-backend` (hidden): a tiny HTTP server for tests, examples
//! and benchmarks.
//!
//! Routes: `/health` (200), `/whoami` (the name), `/echo` (request method,
//! path, headers and body length as JSON), `/slow?ms=N`, `/status/N`, `/ws`
//! (WebSocket echo, text frames prefixed with `NAME:`). With
//! `--set-cookie NAME`, responses to requests without that cookie set
//! `NAME=<random>` (for app-cookie affinity).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

/// Arguments of `remora test-backend`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Name answered by `/whoami`.
    #[arg(long)]
    name: String,
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Set this cookie on responses to requests that lack it.
    #[arg(long)]
    set_cookie: Option<String>,
}

struct App {
    name: String,
    set_cookie: Option<String>,
}

/// Serves until killed.
pub fn run(args: Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let app = Arc::new(App {
            name: args.name,
            set_cookie: args.set_cookie,
        });
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/whoami", any(whoami))
            .route("/echo", any(echo))
            .route("/slow", any(slow))
            .route("/status/{code}", any(status))
            .route("/ws", get(ws))
            .fallback(any(whoami))
            .with_state(app);
        eprintln!("test-backend listening on {}", args.listen);
        match axum::serve(listener, router).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("test-backend: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn with_cookie(app: &App, headers: &HeaderMap, mut resp: Response) -> Response {
    if let Some(name) = &app.set_cookie {
        let has = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .any(|c| c.trim().split('=').next() == Some(name.as_str()));
        if !has {
            let value = format!("{name}={:016x}; Path=/", rand::random::<u64>());
            if let Ok(v) = header::HeaderValue::from_str(&value) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
    }
    resp
}

async fn whoami(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let r = app.name.clone().into_response();
    with_cookie(&app, &headers, r)
}

async fn echo(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut h: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &headers {
        h.entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let v = serde_json::json!({
        "server": app.name,
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": h,
        "body_len": body.len(),
    });
    with_cookie(&app, &headers, axum::Json(v).into_response())
}

#[derive(serde::Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

async fn slow(State(app): State<Arc<App>>, Query(q): Query<SlowQuery>) -> String {
    tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(1000).min(600_000))).await;
    app.name.clone()
}

async fn status(State(app): State<Arc<App>>, Path(code): Path<u16>) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (code, app.name.clone()).into_response()
}

async fn ws(State(app): State<Arc<App>>, headers: HeaderMap, up: WebSocketUpgrade) -> Response {
    let name = app.name.clone();
    let r = up.on_upgrade(move |socket| echo_socket(socket, name));
    with_cookie(&app, &headers, r)
}

async fn echo_socket(mut socket: WebSocket, name: String) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(format!("{name}:{}", t.as_str()).into()),
            Message::Binary(b) => Message::Binary(b),
            Message::Ping(p) => Message::Pong(p),
            Message::Pong(_) => continue,
            Message::Close(_) => break,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
