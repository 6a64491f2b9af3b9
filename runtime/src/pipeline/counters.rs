//! Live counters of a pipeline, readable while it runs (progress lines, the admin API).

use std::sync::atomic::AtomicU64;

/// Live counters of a pipeline, readable while it runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages the source produced.
    pub polled: AtomicU64,
    /// Messages transforms dropped.
    pub dropped: AtomicU64,
    /// Messages each sink accepted, by sink position.
    pub written: Vec<AtomicU64>,
    /// Checkpoints acknowledged to the source.
    pub acked_batches: AtomicU64,
    /// Records stored in the dead-letter channel.
    pub dead_lettered: AtomicU64,
    /// Retry rounds (a batch's failed records sent again).
    pub retries: AtomicU64,
    /// Instances replaced after a trap.
    pub restarts: AtomicU64,
    /// Batches the source sent on that not every sink has settled yet (the queue depth).
    pub in_flight_batches: AtomicU64,
    /// Payload bytes of those batches.
    pub in_flight_bytes: AtomicU64,
    /// Requests answered (request/reply pipelines), timed-out ones included.
    pub replies: AtomicU64,
    /// Requests answered `timed-out` (no answer within `reply_timeout`).
    pub reply_timeouts: AtomicU64,
}
