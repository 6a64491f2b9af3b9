//! The source's ack bookkeeping: batches sent on and not yet settled by every sink, oldest
//! first, and the newest checkpoint each settlement makes deliverable.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;

use super::counters::Counters;

/// Batches sent and not yet accepted by every sink, oldest first.
pub(super) struct AckTracker {
    pub(super) pending: VecDeque<InFlight>,
    first_seq: u64,
    /// Where the queue depth is published.
    pub(super) counters: Arc<Counters>,
    bytes: u64,
    /// Sequence numbers of the batches settled since last taken, when asked for (a
    /// request/reply pipeline answers each batch's requests once it is settled).
    pub(super) settled: Option<Vec<u64>>,
}

/// A batch sent on and not yet settled by every sink.
pub(super) struct InFlight {
    /// `None` for a batch of an instance that was replaced: nobody can acknowledge it now
    /// (the source delivers it again, at least once).
    checkpoint: Option<u64>,
    /// Payload bytes.
    bytes: u64,
    /// Sinks still to finish it.
    remaining: usize,
    /// Its share of the pipeline's in-flight byte budget, returned when it is settled.
    _budget: Option<OwnedSemaphorePermit>,
}

impl AckTracker {
    pub(super) fn new(counters: Arc<Counters>) -> Self {
        AckTracker {
            pending: VecDeque::new(),
            first_seq: 0,
            counters,
            bytes: 0,
            settled: None,
        }
    }

    fn publish(&self) {
        self.counters
            .in_flight_batches
            .store(self.pending.len() as u64, Ordering::Relaxed);
        self.counters
            .in_flight_bytes
            .store(self.bytes, Ordering::Relaxed);
    }

    pub(super) fn push(
        &mut self,
        seq: u64,
        checkpoint: u64,
        bytes: u64,
        sinks: usize,
        budget: Option<OwnedSemaphorePermit>,
    ) {
        if self.pending.is_empty() {
            self.first_seq = seq;
        }
        self.pending.push_back(InFlight {
            checkpoint: Some(checkpoint),
            bytes,
            remaining: sinks,
            _budget: budget,
        });
        self.bytes += bytes;
        self.publish();
    }

    /// A sink finished batch `seq`. Returns the newest checkpoint that is now fully delivered.
    pub(super) fn done(&mut self, seq: u64) -> Option<u64> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        if let Some(entry) = self.pending.get_mut(index) {
            entry.remaining = entry.remaining.saturating_sub(1);
        }
        let mut newest = None;
        let mut settled = false;
        while self.pending.front().is_some_and(|f| f.remaining == 0) {
            if let Some(front) = self.pending.pop_front() {
                if let Some(settled) = &mut self.settled {
                    settled.push(self.first_seq);
                }
                newest = front.checkpoint.or(newest);
                self.bytes = self.bytes.saturating_sub(front.bytes);
                settled = true;
            }
            self.first_seq += 1;
        }
        if settled {
            self.publish();
        }
        newest
    }

    /// The source instance was replaced: what it sent can no longer be acknowledged to it.
    pub(super) fn orphan(&mut self) {
        for entry in &mut self.pending {
            entry.checkpoint = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_wait_for_every_sink_and_stay_in_order() {
        let counters = Arc::new(Counters::default());
        let mut t = AckTracker::new(counters.clone());
        t.push(0, 10, 100, 2, None);
        t.push(1, 20, 200, 2, None);
        t.push(2, 30, 300, 2, None);
        assert_eq!(counters.in_flight_batches.load(Ordering::Relaxed), 3);
        assert_eq!(counters.in_flight_bytes.load(Ordering::Relaxed), 600);
        assert_eq!(t.done(1), None);
        assert_eq!(t.done(0), None);
        assert_eq!(t.done(0), Some(10));
        assert_eq!(counters.in_flight_batches.load(Ordering::Relaxed), 2);
        assert_eq!(counters.in_flight_bytes.load(Ordering::Relaxed), 500);
        assert_eq!(t.done(1), Some(20));
        assert_eq!(t.done(2), None);
        assert_eq!(t.done(2), Some(30));
        assert!(t.pending.is_empty());
        assert_eq!(counters.in_flight_batches.load(Ordering::Relaxed), 0);
        assert_eq!(counters.in_flight_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn batches_of_a_replaced_instance_settle_without_an_ack() {
        let counters = Arc::new(Counters::default());
        let mut t = AckTracker::new(counters.clone());
        t.push(0, 10, 100, 1, None);
        t.push(1, 20, 200, 1, None);
        t.orphan();
        // The fresh instance numbers its checkpoints from scratch.
        t.push(2, 1, 50, 1, None);
        assert_eq!(t.done(0), None);
        assert_eq!(counters.in_flight_batches.load(Ordering::Relaxed), 2);
        assert_eq!(t.done(2), None);
        assert_eq!(t.done(1), Some(1));
        assert_eq!(counters.in_flight_bytes.load(Ordering::Relaxed), 0);
    }
}
