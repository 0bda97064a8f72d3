//! The fan-out load: subscribers spread over rooms, publishers at a fixed
//! total rate, publish-to-delivery latency and delivered messages/s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::wire::{self, Http, Transport, Ws};
use crate::BenchError;

/// What one load run does.
#[derive(Debug, Clone)]
pub struct Params {
    /// Subscribing clients.
    pub clients: usize,
    /// Rooms (`/rooms/0` ..); client `i` subscribes to room `i % rooms`.
    pub rooms: usize,
    /// Publishes per second, all publishers together.
    pub rate: f64,
    /// Publishing clients (long-polling, whatever the subscribers use).
    pub publishers: usize,
    /// Time under load before measuring.
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
    /// How subscribers connect.
    pub transport: Transport,
    /// Clients being set up at once.
    pub setup_parallel: usize,
    /// Longest wait for one setup exchange.
    pub setup_timeout: Duration,
}

/// What one load run measured (over the measured window only).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Messages delivered to subscribers per second.
    pub delivered_per_s: f64,
    /// Deliveries per second the acknowledged publishes called for.
    pub expected_per_s: f64,
    /// Acknowledged publishes per second.
    pub published_per_s: f64,
    /// Publish-to-delivery latency percentiles, ms (`None`: nothing delivered).
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Slowest delivery, ms.
    pub max_ms: Option<f64>,
    /// CPU used by the server over the window (100 = one core).
    pub server_cpu_percent: f64,
    /// Failed exchanges (subscribers or publishers that gave up).
    pub errors: u64,
    /// The last error seen, if any.
    pub last_error: Option<String>,
}

/// State shared by every client task of one run.
struct Shared {
    epoch: Instant,
    measuring: AtomicBool,
    latency_us: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    published: AtomicU64,
    expected: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records the room messages among `messages`; returns whether a
    /// `/meta/connect` reply was among them (and was successful).
    fn receive(&self, messages: &[Value]) -> Result<bool, BenchError> {
        let now = self.now_us();
        let measuring = self.measuring.load(Ordering::Relaxed);
        let mut latencies: Vec<u64> = Vec::new();
        let mut connected = false;
        for m in messages {
            let channel = m.get("channel").and_then(Value::as_str).unwrap_or("");
            if channel.starts_with("/rooms/") {
                if measuring && let Some(sent) = m.pointer("/data/t").and_then(Value::as_u64) {
                    latencies.push(now.saturating_sub(sent).max(1));
                }
            } else if channel == "/meta/connect" {
                wire::ensure_successful(m)?;
                connected = true;
            }
        }
        if !latencies.is_empty() {
            self.delivered
                .fetch_add(latencies.len() as u64, Ordering::Relaxed);
            let mut hist = self.latency_us.lock();
            for l in latencies {
                hist.saturating_record(l);
            }
        }
        Ok(connected)
    }

    fn fail(&self, e: &BenchError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(e.to_string());
    }
}

/// A subscriber after handshake and subscribe.
enum Subscriber {
    LongPolling { http: Http, id: String },
    WebSocket { ws: Box<Ws>, id: String },
}

/// Runs the load against `addr`; the CPU time of `server_pid` (and its
/// children) is measured over the window. Every client task is stopped on return.
pub async fn run(
    addr: SocketAddr,
    server_pid: u32,
    params: &Params,
) -> Result<Outcome, BenchError> {
    let rooms = params.rooms.max(1);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        measuring: AtomicBool::new(false),
        latency_us: Mutex::new(
            Histogram::new_with_bounds(1, 120_000_000, 3)
                .map_err(|e| BenchError::Setup(format!("histogram: {e}")))?,
        ),
        delivered: AtomicU64::new(0),
        published: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_error: Mutex::new(None),
    });

    // Subscribers: handshake and subscribe, a bounded number at a time.
    let gate = Arc::new(Semaphore::new(params.setup_parallel.max(1)));
    let mut setup = JoinSet::new();
    for i in 0..params.clients {
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .map_err(|_| BenchError::Setup("setup gate closed".into()))?;
        let room = format!("/rooms/{}", i % rooms);
        let transport = params.transport;
        let timeout = params.setup_timeout;
        setup.spawn(async move {
            let r = tokio::time::timeout(timeout * 3, subscriber(addr, transport, &room, timeout))
                .await
                .unwrap_or_else(|_| {
                    Err(BenchError::Timeout(format!(
                        "subscriber setup at {addr} took over {:?}",
                        timeout * 3
                    )))
                });
            drop(permit);
            r
        });
    }
    let mut subscribers = Vec::with_capacity(params.clients);
    while let Some(joined) = setup.join_next().await {
        subscribers.push(joined.map_err(|e| BenchError::Setup(format!("setup task: {e}")))??);
    }
    let mut per_room = vec![0u64; rooms];
    for i in 0..params.clients {
        per_room[i % rooms] += 1;
    }
    let per_room = Arc::new(per_room);

    let mut tasks = JoinSet::new();
    for s in subscribers {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            if let Err(e) = receive_loop(s, &shared).await {
                shared.fail(&e);
            }
        });
    }

    // Publishers: each its own client, its own connect loop, its own pace.
    let publishers = params.publishers.max(1);
    let period = Duration::from_secs_f64(publishers as f64 / params.rate.max(0.001));
    for p in 0..publishers {
        let mut http = Http::connect(addr).await?;
        let replies = http.post(&wire::handshake(Transport::LongPolling)).await?;
        let id = wire::client_id(&replies)?;
        let mut keep = Http::connect(addr).await?;
        let keep_id = id.clone();
        tasks.spawn(async move {
            let body = wire::connect(&keep_id, Transport::LongPolling);
            while keep.post(&body).await.is_ok() {}
        });
        let shared = Arc::clone(&shared);
        let per_room = Arc::clone(&per_room);
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(p as u64);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let room = rng.random_range(0..per_room.len());
                let channel = format!("/rooms/{room}");
                let body = wire::publish(&id, &channel, shared.now_us());
                let ok = match http.post(&body).await {
                    Ok(replies) => wire::expect_reply(&replies, &channel),
                    Err(e) => Err(e),
                };
                match ok {
                    Ok(()) if shared.measuring.load(Ordering::Relaxed) => {
                        shared.published.fetch_add(1, Ordering::Relaxed);
                        shared.expected.fetch_add(per_room[room], Ordering::Relaxed);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        shared.fail(&e);
                        return;
                    }
                }
            }
        });
    }

    tokio::time::sleep(params.warmup).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = crate::proc::tree_cpu_ticks(server_pid);
    tokio::time::sleep(params.duration).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let cpu_ticks = crate::proc::tree_cpu_ticks(server_pid).saturating_sub(cpu_before);
    let cpu_percent =
        100.0 * cpu_ticks as f64 / crate::proc::clock_ticks_per_second() as f64 / secs;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    let hist = shared.latency_us.lock();
    let ms = |q: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(q) as f64 / 1000.0);
    Ok(Outcome {
        delivered_per_s: shared.delivered.load(Ordering::Relaxed) as f64 / secs,
        expected_per_s: shared.expected.load(Ordering::Relaxed) as f64 / secs,
        published_per_s: shared.published.load(Ordering::Relaxed) as f64 / secs,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: (!hist.is_empty()).then(|| hist.max() as f64 / 1000.0),
        server_cpu_percent: cpu_percent,
        errors: shared.errors.load(Ordering::Relaxed),
        last_error: shared.last_error.lock().clone(),
    })
}

/// Opens one subscriber: handshake, then subscribe to `room`.
async fn subscriber(
    addr: SocketAddr,
    transport: Transport,
    room: &str,
    timeout: Duration,
) -> Result<Subscriber, BenchError> {
    match transport {
        Transport::LongPolling => {
            let mut http = Http::connect(addr).await?;
            let replies = http.post(&wire::handshake(transport)).await?;
            let id = wire::client_id(&replies)?;
            let replies = http.post(&wire::subscribe(&id, room)).await?;
            wire::expect_reply(&replies, "/meta/subscribe")?;
            Ok(Subscriber::LongPolling { http, id })
        }
        Transport::WebSocket => {
            let mut ws = Ws::connect(addr).await?;
            let reply = ws
                .call(&wire::handshake(transport), "/meta/handshake", timeout)
                .await?;
            let id = wire::client_id(std::slice::from_ref(&reply))?;
            let reply = ws
                .call(&wire::subscribe(&id, room), "/meta/subscribe", timeout)
                .await?;
            wire::ensure_successful(&reply)?;
            Ok(Subscriber::WebSocket {
                ws: Box::new(ws),
                id,
            })
        }
    }
}

/// Keeps a subscriber connected, recording what it receives, until aborted
/// or an exchange fails.
async fn receive_loop(subscriber: Subscriber, shared: &Shared) -> Result<(), BenchError> {
    match subscriber {
        Subscriber::LongPolling { mut http, id } => {
            let body = wire::connect(&id, Transport::LongPolling);
            loop {
                let replies = http.post(&body).await?;
                shared.receive(&replies)?;
            }
        }
        Subscriber::WebSocket { mut ws, id } => {
            let body = wire::connect(&id, Transport::WebSocket);
            ws.send(&body).await?;
            loop {
                let messages = ws.recv().await?;
                if shared.receive(&messages)? {
                    ws.send(&body).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shared() -> Shared {
        Shared {
            epoch: Instant::now(),
            measuring: AtomicBool::new(true),
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("h")),
            delivered: AtomicU64::new(0),
            published: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    #[test]
    fn room_messages_are_counted_and_connect_replies_noticed() {
        let s = shared();
        let batch = vec![
            json!({"channel": "/rooms/1", "data": {"t": 0}}),
            json!({"channel": "/rooms/2", "data": {"t": 0}}),
            json!({"channel": "/meta/connect", "successful": true}),
        ];
        assert!(s.receive(&batch).expect("ok"));
        assert_eq!(s.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(s.latency_us.lock().len(), 2);
        assert!(!s.receive(&batch[..1]).expect("ok"));
        let failed = [json!({"channel": "/meta/connect", "successful": false,
            "error": "402::session_unknown"})];
        assert!(s.receive(&failed).is_err());
    }

    #[test]
    fn nothing_is_recorded_outside_the_window() {
        let s = shared();
        s.measuring.store(false, Ordering::Relaxed);
        s.receive(&[json!({"channel": "/rooms/0", "data": {"t": 0}})])
            .expect("ok");
        assert_eq!(s.delivered.load(Ordering::Relaxed), 0);
    }
}
