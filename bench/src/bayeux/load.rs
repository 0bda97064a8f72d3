//! The fan-out load: subscribers spread over rooms, publishers at a fixed
//! total offered rate (batched, several requests in flight), verified
//! deliveries, losses, publish-to-delivery latency and CPU per message.
//!
//! Accounting is by publish time: a publish belongs to the measured window
//! when the time it carries (`data.t`) falls inside the window. The
//! publisher counts it (and the deliveries it calls for: its room's
//! subscribers) once the server acknowledged it; a subscriber counts a
//! delivery of it whenever it arrives, up to `drain` after the window
//! closed. So `lost = expected - delivered` counts exactly the deliveries
//! that never arrived (or arrived later than `drain`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::wire::{self, Delivery, Http, RawHttp, Transport, Ws};
use crate::BenchError;

/// What one load run does.
#[derive(Debug, Clone)]
pub struct Params {
    /// Subscribing clients.
    pub clients: usize,
    /// Rooms (`/rooms/0` ..); client `i` subscribes to room `i % rooms`.
    pub rooms: usize,
    /// Publishes per second offered, all publishers together.
    pub rate: f64,
    /// Publishing clients (long-polling, whatever the subscribers use).
    pub publishers: usize,
    /// Publish messages per request (one Bayeux message array).
    pub batch: usize,
    /// Publish requests in flight per publisher, each on its own connection.
    pub in_flight: usize,
    /// Time under load before measuring.
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
    /// How long after the window deliveries of its publishes still count.
    pub drain: Duration,
    /// How subscribers connect.
    pub transport: Transport,
    /// Clients being set up at once.
    pub setup_parallel: usize,
    /// Longest wait for one setup exchange.
    pub setup_timeout: Duration,
}

/// What one load run measured (publishes sent in the window only).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Verified deliveries to subscribers, per second of the window.
    pub delivered_per_s: f64,
    /// Deliveries per second the acknowledged publishes called for.
    pub expected_per_s: f64,
    /// Deliveries that did not arrive (expected minus delivered).
    pub lost: u64,
    /// Deliveries beyond those expected (duplicates, or publishes whose
    /// acknowledgement was not seen).
    pub extra: u64,
    /// Publishes per second the publishers sent (offered load).
    pub offered_per_s: f64,
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
    /// Server CPU (user + system) per delivered message, µs.
    pub server_cpu_us_per_msg: Option<f64>,
    /// CPU used by this load generator over the window (100 = one core).
    pub generator_cpu_percent: f64,
    /// Load generator CPU per delivered message, µs.
    pub generator_cpu_us_per_msg: Option<f64>,
    /// Failed exchanges, and messages that failed verification (wrong room,
    /// no timestamp, a timestamp from the future).
    pub errors: u64,
    /// The last error seen, if any.
    pub last_error: Option<String>,
}

/// No window yet / not closed yet.
const OPEN: u64 = u64::MAX;

/// State shared by every client task of one run.
struct Shared {
    epoch: Instant,
    /// Window start and end, µs since `epoch` (`OPEN` until set).
    window_start: AtomicU64,
    window_end: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    offered: AtomicU64,
    published: AtomicU64,
    expected: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn new() -> Result<Self, BenchError> {
        Ok(Shared {
            epoch: Instant::now(),
            window_start: AtomicU64::new(OPEN),
            window_end: AtomicU64::new(OPEN),
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 120_000_000, 3)
                    .map_err(|e| BenchError::Setup(format!("histogram: {e}")))?,
            ),
            delivered: AtomicU64::new(0),
            offered: AtomicU64::new(0),
            published: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(OPEN - 1)
    }

    /// Whether a publish sent at `t` belongs to the measured window.
    fn in_window(&self, t: u64) -> bool {
        t >= self.window_start.load(Ordering::Relaxed)
            && t < self.window_end.load(Ordering::Relaxed)
    }

    /// Verifies and records the messages of one reply or frame received by
    /// a subscriber of `room`; returns whether a `/meta/connect` reply was
    /// among them (and was successful).
    fn receive(&self, room: &str, body: &[u8]) -> Result<bool, BenchError> {
        let messages = wire::parse_deliveries(body)
            .map_err(|e| BenchError::Http(format!("unparsable delivery: {e}")))?;
        let now = self.now_us();
        let mut latencies: Vec<u64> = Vec::new();
        let mut connected = false;
        for m in &messages {
            let channel = m.channel.as_deref().unwrap_or("");
            if channel.starts_with("/rooms/") {
                let t = verify(room, channel, m, now)?;
                if self.in_window(t) {
                    latencies.push(now.saturating_sub(t).max(1));
                }
            } else if channel == "/meta/connect" {
                if m.successful != Some(true) {
                    return Err(BenchError::Http(format!(
                        "connect failed: {}",
                        m.error.as_deref().unwrap_or("no error given")
                    )));
                }
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

/// Checks one room message received by a subscriber of `room` at `now`:
/// on that room, with a timestamp not in the future. Returns the timestamp.
fn verify(room: &str, channel: &str, m: &Delivery<'_>, now: u64) -> Result<u64, BenchError> {
    if channel != room {
        return Err(BenchError::Http(format!(
            "a subscriber of {room} received a message on {channel}"
        )));
    }
    match m.data.as_ref().and_then(|d| d.t) {
        Some(t) if t <= now => Ok(t),
        Some(t) => Err(BenchError::Http(format!(
            "message on {channel} stamped {t} µs, after its arrival at {now} µs"
        ))),
        None => Err(BenchError::Http(format!(
            "message on {channel} without data.t"
        ))),
    }
}

/// A subscriber after handshake and subscribe.
enum Subscriber {
    LongPolling { http: RawHttp, id: String },
    WebSocket { ws: Box<Ws>, id: String },
}

/// Runs the load against `addr`; the CPU time of `server_pid` (and its
/// children) and of this process are measured over the window. Every client
/// task is stopped on return.
pub async fn run(
    addr: SocketAddr,
    server_pid: u32,
    params: &Params,
) -> Result<Outcome, BenchError> {
    let rooms = params.rooms.max(1);
    let shared = Arc::new(Shared::new()?);

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
            r.map(|s| (s, room))
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
    for (s, room) in subscribers {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            if let Err(e) = receive_loop(s, &room, &shared).await {
                shared.fail(&e);
            }
        });
    }

    // Publishers: each its own client and connect loop; `in_flight` senders
    // per publisher, each on its own connection with its own pace, each
    // sending `batch` publishes per request. Ticks a sender cannot keep up
    // with are skipped, not bunched, and show as offered < rate.
    let publishers = params.publishers.max(1);
    let in_flight = params.in_flight.max(1);
    let batch = params.batch.max(1);
    let senders = publishers * in_flight;
    let period = Duration::from_secs_f64((senders * batch) as f64 / params.rate.max(0.001));
    let first_tick = tokio::time::Instant::now();
    for p in 0..publishers {
        let mut http = Http::connect(addr).await?;
        let replies = http.post(&wire::handshake(Transport::LongPolling)).await?;
        let id: Arc<str> = Arc::from(wire::client_id(&replies)?);
        drop(http);
        let mut keep = RawHttp::connect(addr).await?;
        let connect = wire::connect(&id, Transport::LongPolling).to_string();
        tasks.spawn(async move { while keep.post(connect.as_bytes()).await.is_ok() {} });
        for k in 0..in_flight {
            let http = RawHttp::connect(addr).await?;
            // Spread the senders' ticks evenly over one period.
            let n = p * in_flight + k;
            let start = first_tick + period.mul_f64(n as f64 / senders as f64);
            let shared = Arc::clone(&shared);
            let per_room = Arc::clone(&per_room);
            let id = Arc::clone(&id);
            tasks.spawn(async move {
                let sender = Sender {
                    client_id: &id,
                    seed: n as u64,
                    start,
                    period,
                    batch,
                };
                if let Err(e) = sender.run(http, &per_room, &shared).await {
                    shared.fail(&e);
                }
            });
        }
    }

    tokio::time::sleep(params.warmup).await;
    let cpu_before = crate::proc::tree_cpu_ticks(server_pid);
    let own_before = crate::proc::self_cpu_ticks();
    shared
        .window_start
        .store(shared.now_us(), Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(params.duration).await;
    shared.window_end.store(shared.now_us(), Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let cpu_ticks = crate::proc::tree_cpu_ticks(server_pid).saturating_sub(cpu_before);
    let own_ticks = crate::proc::self_cpu_ticks().saturating_sub(own_before);
    // Let the window's publishes arrive.
    tokio::time::sleep(params.drain).await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    let hz = crate::proc::clock_ticks_per_second() as f64;
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let expected = shared.expected.load(Ordering::Relaxed);
    let per_msg =
        |ticks: u64| (delivered > 0).then(|| ticks as f64 / hz * 1_000_000.0 / delivered as f64);
    let hist = shared.latency_us.lock();
    let ms = |q: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(q) as f64 / 1000.0);
    Ok(Outcome {
        delivered_per_s: delivered as f64 / secs,
        expected_per_s: expected as f64 / secs,
        lost: expected.saturating_sub(delivered),
        extra: delivered.saturating_sub(expected),
        offered_per_s: shared.offered.load(Ordering::Relaxed) as f64 / secs,
        published_per_s: shared.published.load(Ordering::Relaxed) as f64 / secs,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: (!hist.is_empty()).then(|| hist.max() as f64 / 1000.0),
        server_cpu_percent: 100.0 * cpu_ticks as f64 / hz / secs,
        server_cpu_us_per_msg: per_msg(cpu_ticks),
        generator_cpu_percent: 100.0 * own_ticks as f64 / hz / secs,
        generator_cpu_us_per_msg: per_msg(own_ticks),
        errors: shared.errors.load(Ordering::Relaxed),
        last_error: shared.last_error.lock().clone(),
    })
}

/// One publishing connection: every `period` from `start`, `batch`
/// publishes to random rooms in one request.
struct Sender<'a> {
    client_id: &'a str,
    seed: u64,
    start: tokio::time::Instant,
    period: Duration,
    batch: usize,
}

impl Sender<'_> {
    /// Publishes until aborted or an exchange fails.
    async fn run(
        self,
        mut http: RawHttp,
        per_room: &[u64],
        shared: &Shared,
    ) -> Result<(), BenchError> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut tick = tokio::time::interval_at(self.start, self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let batch = self.batch;
        let mut rooms = vec![0usize; batch];
        loop {
            tick.tick().await;
            for r in rooms.iter_mut() {
                *r = rng.random_range(0..per_room.len());
            }
            let t = shared.now_us();
            let counted = shared.in_window(t);
            if counted {
                shared.offered.fetch_add(batch as u64, Ordering::Relaxed);
            }
            let body = http
                .post(wire::publish_batch(self.client_id, &rooms, t).as_bytes())
                .await?;
            let acked = wire::parse_deliveries(body)
                .map_err(|e| BenchError::Http(format!("unparsable publish reply: {e}")))?
                .iter()
                .filter(|m| {
                    m.successful == Some(true)
                        && m.channel
                            .as_deref()
                            .is_some_and(|c| c.starts_with("/rooms/"))
                })
                .count();
            if acked != batch {
                return Err(BenchError::Http(format!(
                    "{acked} of {batch} publishes acknowledged: {}",
                    String::from_utf8_lossy(body)
                )));
            }
            if counted {
                shared.published.fetch_add(batch as u64, Ordering::Relaxed);
                let calls_for: u64 = rooms.iter().map(|&r| per_room[r]).sum();
                shared.expected.fetch_add(calls_for, Ordering::Relaxed);
            }
        }
    }
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
            let mut http = RawHttp::connect(addr).await?;
            let replies = http.call(&wire::handshake(transport)).await?;
            let id = wire::client_id(&replies)?;
            let replies = http.call(&wire::subscribe(&id, room)).await?;
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

/// Keeps a subscriber of `room` connected, verifying and recording what it
/// receives, until aborted or an exchange fails.
async fn receive_loop(
    subscriber: Subscriber,
    room: &str,
    shared: &Shared,
) -> Result<(), BenchError> {
    match subscriber {
        Subscriber::LongPolling { mut http, id } => {
            let body = wire::connect(&id, Transport::LongPolling).to_string();
            loop {
                let reply = http.post(body.as_bytes()).await?;
                shared.receive(room, reply)?;
            }
        }
        Subscriber::WebSocket { mut ws, id } => {
            let body = wire::connect(&id, Transport::WebSocket).to_string();
            ws.send_text(&body).await?;
            loop {
                let frame = ws.recv_raw().await?;
                if shared.receive(room, &frame)? {
                    ws.send_text(&body).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measuring() -> Shared {
        let s = Shared::new().expect("shared");
        s.window_start.store(0, Ordering::Relaxed);
        s
    }

    #[test]
    fn room_messages_are_counted_and_connect_replies_noticed() {
        let s = measuring();
        let batch =
            br#"[{"channel":"/rooms/1","data":{"t":0}},{"channel":"/rooms/1","data":{"t":0}},
            {"channel":"/meta/connect","successful":true}]"#;
        assert!(s.receive("/rooms/1", batch).expect("ok"));
        assert_eq!(s.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(s.latency_us.lock().len(), 2);
        assert!(
            !s.receive("/rooms/1", br#"[{"channel":"/rooms/1","data":{"t":0}}]"#)
                .expect("ok")
        );
        let failed = br#"[{"channel":"/meta/connect","successful":false,
            "error":"402::session_unknown"}]"#;
        assert!(s.receive("/rooms/1", failed).is_err());
    }

    #[test]
    fn deliveries_are_verified() {
        let s = measuring();
        let wrong_room = br#"[{"channel":"/rooms/2","data":{"t":0}}]"#;
        assert!(s.receive("/rooms/1", wrong_room).is_err());
        let no_stamp = br#"[{"channel":"/rooms/1","data":{}}]"#;
        assert!(s.receive("/rooms/1", no_stamp).is_err());
        let future = format!(r#"[{{"channel":"/rooms/1","data":{{"t":{}}}}}]"#, OPEN - 1);
        assert!(s.receive("/rooms/1", future.as_bytes()).is_err());
        assert!(s.receive("/rooms/1", b"not json").is_err());
        assert_eq!(s.delivered.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_publishes_of_the_window_are_counted() {
        let s = measuring();
        s.window_start.store(10, Ordering::Relaxed);
        s.window_end.store(20, Ordering::Relaxed);
        let at = |t: u64| format!(r#"[{{"channel":"/rooms/0","data":{{"t":{t}}}}}]"#);
        for t in [9, 10, 19, 20] {
            s.receive("/rooms/0", at(t).as_bytes()).expect("ok");
        }
        assert_eq!(s.delivered.load(Ordering::Relaxed), 2);
    }
}
