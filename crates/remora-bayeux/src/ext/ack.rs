//! The `ack` extension: at-least-once delivery from server to client, as
//! CometD's acknowledged-messages extension does it.
//!
//! A client that sends `ext: {ack: true}` in its handshake gets
//! `ext: {ack: true}` back. From then on, messages reach it only in
//! `/meta/connect` replies, and each reply carries `ext: {ack: N}`, the
//! number of the batch it delivers. The client's next connect carries
//! `ext: {ack: N}` for the last batch it received; messages of batches up to
//! N are forgotten, later ones are sent again.

use std::collections::VecDeque;
use std::sync::Arc;

/// Per-client state of the ack extension.
#[derive(Debug, Default)]
pub struct AckState {
    batch: u64,
    unacked: VecDeque<(u64, Arc<str>)>,
}

impl AckState {
    /// Number of delivered but unacknowledged messages.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Drops the oldest unacknowledged message (queue overflow).
    pub fn drop_oldest(&mut self) -> bool {
        self.unacked.pop_front().is_some()
    }

    /// The client confirms it received every batch up to `batch`.
    pub fn confirm(&mut self, batch: u64) {
        while self.unacked.front().is_some_and(|(b, _)| *b <= batch) {
            self.unacked.pop_front();
        }
    }

    /// Builds the next batch from the still unacknowledged messages and the
    /// newly queued ones; returns the batch number and its messages.
    pub fn next_batch(
        &mut self,
        fresh: impl IntoIterator<Item = Arc<str>>,
    ) -> (u64, Vec<Arc<str>>) {
        let fresh: Vec<Arc<str>> = fresh.into_iter().collect();
        if self.unacked.is_empty() && fresh.is_empty() {
            return (self.batch, Vec::new());
        }
        self.batch += 1;
        let batch = self.batch;
        for m in fresh {
            self.unacked.push_back((batch, m));
        }
        let mut out = Vec::with_capacity(self.unacked.len());
        for entry in self.unacked.iter_mut() {
            entry.0 = batch;
            out.push(entry.1.clone());
        }
        (batch, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_until_confirmed() {
        let mut a = AckState::default();
        let (b1, m1) = a.next_batch(vec![Arc::from("1"), Arc::from("2")]);
        assert_eq!((b1, m1.len()), (1, 2));
        // The client did not get batch 1 (it still acks 0): resent with 3.
        a.confirm(0);
        let (b2, m2) = a.next_batch(vec![Arc::from("3")]);
        assert_eq!(b2, 2);
        assert_eq!(m2.iter().map(|s| &**s).collect::<Vec<_>>(), ["1", "2", "3"]);
        a.confirm(2);
        assert_eq!(a.unacked_len(), 0);
        assert_eq!(a.next_batch(Vec::new()), (2, Vec::new()));
    }
}
