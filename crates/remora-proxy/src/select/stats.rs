//! Live per-server counters shared between the forwarder and the selectors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default time constant of the peak-EWMA latency decay.
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

/// Live counters of one server: active requests, active connections and a
/// peak-EWMA latency estimate. Atomics only; share it with `Arc`.
///
/// Peak EWMA (as in Finagle and linkerd): a latency above the estimate
/// replaces it at once; a lower one is blended in with weight
/// `1 - exp(-elapsed / decay)`; between observations the estimate decays
/// toward zero with the same time constant, so a server that was slow once
/// is tried again.
#[derive(Debug)]
pub struct ServerStats {
    active_requests: AtomicU64,
    active_connections: AtomicU64,
    /// f64 bits of the estimate, in nanoseconds.
    ewma_bits: AtomicU64,
    /// Nanoseconds since `epoch` of the last update.
    stamp: AtomicU64,
    epoch: Instant,
    decay_nanos: f64,
}

impl Default for ServerStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerStats {
    /// Zeroed counters with [`DEFAULT_EWMA_DECAY`].
    pub fn new() -> Self {
        Self::with_decay(DEFAULT_EWMA_DECAY)
    }

    /// Zeroed counters with another decay time constant (at least 1 ms).
    pub fn with_decay(decay: Duration) -> Self {
        Self {
            active_requests: AtomicU64::new(0),
            active_connections: AtomicU64::new(0),
            ewma_bits: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
            epoch: Instant::now(),
            decay_nanos: decay.max(Duration::from_millis(1)).as_nanos() as f64,
        }
    }

    /// Counts a request until the guard drops; call
    /// [`RequestGuard::finish`] with the latency when the response head
    /// arrived.
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            stats: Arc::clone(self),
        }
    }

    /// Counts an upstream connection (or WebSocket tunnel) until the guard
    /// drops.
    pub fn open_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.active_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            stats: Arc::clone(self),
        }
    }

    /// Requests in flight (what least-connections, p2c and bounded loads use).
    pub fn active_requests(&self) -> u64 {
        self.active_requests.load(Ordering::Relaxed)
    }

    /// Open upstream connections.
    pub fn active_connections(&self) -> u64 {
        self.active_connections.load(Ordering::Relaxed)
    }

    fn nanos_at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a latency observed at `now`.
    pub fn observe_latency_at(&self, latency: Duration, now: Instant) {
        let rtt = latency.as_nanos() as f64;
        let t = self.nanos_at(now);
        let prev_stamp = self.stamp.swap(t, Ordering::Relaxed);
        let elapsed = t.saturating_sub(prev_stamp) as f64;
        let w = (-elapsed / self.decay_nanos).exp();
        let _ = self
            .ewma_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let cur = f64::from_bits(bits);
                let next = if rtt > cur {
                    rtt
                } else {
                    cur * w + rtt * (1.0 - w)
                };
                Some(next.to_bits())
            });
    }

    /// Records a latency observed now.
    pub fn observe_latency(&self, latency: Duration) {
        self.observe_latency_at(latency, Instant::now());
    }

    /// The latency estimate at `now`, decayed since the last observation.
    pub fn latency_estimate_at(&self, now: Instant) -> Duration {
        let t = self.nanos_at(now);
        let elapsed = t.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        let cur = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let v = cur * (-elapsed / self.decay_nanos).exp();
        if v.is_finite() && v > 0.0 {
            Duration::from_nanos(v.min(u64::MAX as f64) as u64)
        } else {
            Duration::ZERO
        }
    }

    /// The latency estimate now.
    pub fn latency_estimate(&self) -> Duration {
        self.latency_estimate_at(Instant::now())
    }
}

/// Holds one active request of a server; dropping it ends the request.
#[derive(Debug)]
pub struct RequestGuard {
    stats: Arc<ServerStats>,
}

impl RequestGuard {
    /// Ends the request and records its latency (time to response head).
    pub fn finish(self, latency: Duration) {
        self.stats.observe_latency(latency);
    }

    /// [`RequestGuard::finish`] with an explicit clock.
    pub fn finish_at(self, latency: Duration, now: Instant) {
        self.stats.observe_latency_at(latency, now);
    }

    /// The server's stats.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.stats.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds one open connection of a server; dropping it closes the count.
#[derive(Debug)]
pub struct ConnectionGuard {
    stats: Arc<ServerStats>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.stats
            .active_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_release() {
        let s = Arc::new(ServerStats::new());
        let a = s.start_request();
        let b = s.start_request();
        let c = s.open_connection();
        assert_eq!(s.active_requests(), 2);
        assert_eq!(s.active_connections(), 1);
        a.finish(Duration::from_millis(5));
        drop(b);
        drop(c);
        assert_eq!(s.active_requests(), 0);
        assert_eq!(s.active_connections(), 0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays() {
        let s = ServerStats::with_decay(Duration::from_secs(10));
        let t0 = Instant::now();
        s.observe_latency_at(Duration::from_millis(10), t0);
        assert_eq!(s.latency_estimate_at(t0), Duration::from_millis(10));
        // A peak replaces the estimate at once.
        let t1 = t0 + Duration::from_millis(1);
        s.observe_latency_at(Duration::from_millis(500), t1);
        let peak = s.latency_estimate_at(t1);
        assert!(peak >= Duration::from_millis(499), "{peak:?}");
        // A low latency right after only moves it a little.
        let t2 = t1 + Duration::from_millis(10);
        s.observe_latency_at(Duration::from_millis(1), t2);
        assert!(s.latency_estimate_at(t2) > Duration::from_millis(400));
        // Without traffic it decays: after 5 time constants, < 1% left.
        let later = t2 + Duration::from_secs(50);
        assert!(s.latency_estimate_at(later) < Duration::from_millis(5));
    }
}
