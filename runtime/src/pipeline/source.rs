//! The source task: poll batches (within the in-flight byte budget), send them on, and
//! acknowledge a checkpoint only once every sink settled every record up to it.

#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::counters::Counters;
use super::failure::{Cause, PipelineFailure, StageRef};
use super::flow::{Batch, Downstream, Enter};
use crate::contract::{ErrorKind, PollResult};
use crate::plugin::SourceCalls;

/// How long a source that returned an empty batch rests before it is polled again: the first
/// empty poll rests [`IDLE_PAUSE`], each further one in a row twice as long, up to
/// [`MAX_IDLE_PAUSE`]. A source that is merely ahead of its data (a paced generator, a broker
/// between messages) is polled again soon; an idle one costs a poll every 20 ms.
const IDLE_PAUSE: Duration = Duration::from_millis(1);
const MAX_IDLE_PAUSE: Duration = Duration::from_millis(20);
/// Back-off after a `retryable` poll error, doubled up to [`MAX_POLL_BACKOFF`].
const POLL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(5);

/// Everything the source task works with.
pub(super) struct SourceTask {
    pub(super) pipeline: String,
    pub(super) stage: StageRef,
    pub(super) instance: Box<dyn SourceCalls>,
    pub(super) batch_size: u32,
    pub(super) downstream: Downstream,
    pub(super) done: mpsc::UnboundedReceiver<u64>,
    pub(super) sinks: usize,
    pub(super) counters: Arc<Counters>,
    pub(super) drain: watch::Receiver<bool>,
    pub(super) abort: watch::Receiver<bool>,
    /// In-flight byte budget, in units of [`BUDGET_UNIT`] bytes.
    pub(super) budget: Arc<Semaphore>,
    pub(super) budget_units: u32,
}

/// Granularity of the in-flight byte budget.
pub(super) const BUDGET_UNIT: usize = 1024;

/// Batches sent and not yet accepted by every sink, oldest first.
struct AckTracker {
    pending: VecDeque<InFlight>,
    first_seq: u64,
    /// Where the queue depth is published.
    pub(super) counters: Arc<Counters>,
    bytes: u64,
}

/// A batch sent on and not yet settled by every sink.
struct InFlight {
    checkpoint: u64,
    /// Payload bytes.
    bytes: u64,
    /// Sinks still to finish it.
    remaining: usize,
    /// Its share of the pipeline's in-flight byte budget, returned when it is settled.
    _budget: Option<OwnedSemaphorePermit>,
}

impl AckTracker {
    fn new(counters: Arc<Counters>) -> Self {
        AckTracker {
            pending: VecDeque::new(),
            first_seq: 0,
            counters,
            bytes: 0,
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

    fn push(
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
            checkpoint,
            bytes,
            remaining: sinks,
            _budget: budget,
        });
        self.bytes += bytes;
        self.publish();
    }

    /// A sink finished batch `seq`. Returns the newest checkpoint that is now fully delivered.
    fn done(&mut self, seq: u64) -> Option<u64> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        if let Some(entry) = self.pending.get_mut(index) {
            entry.remaining = entry.remaining.saturating_sub(1);
        }
        let mut newest = None;
        while self.pending.front().is_some_and(|f| f.remaining == 0) {
            if let Some(front) = self.pending.pop_front() {
                newest = Some(front.checkpoint);
                self.bytes = self.bytes.saturating_sub(front.bytes);
            }
            self.first_seq += 1;
        }
        if newest.is_some() {
            self.publish();
        }
        newest
    }
}

pub(super) async fn run_source(mut task: SourceTask) -> Result<(), PipelineFailure> {
    let fail = |cause: Cause| PipelineFailure {
        pipeline: task.pipeline.clone(),
        stage: task.stage.clone(),
        cause,
    };
    let mut tracker = AckTracker::new(task.counters.clone());
    let mut seq = 0u64;
    let mut backoff = POLL_BACKOFF;
    let mut idle = IDLE_PAUSE;
    let mut last_checkpoint: Option<u64> = None;
    let mut downstream = Some(task.downstream);

    // Produce until end of stream, a drain request, or an abort.
    loop {
        if *task.abort.borrow() {
            return Ok(());
        }
        // Acknowledge what is delivered so far.
        let mut newest = None;
        while let Ok(done) = task.done.try_recv() {
            newest = tracker.done(done).or(newest);
        }
        if let Some(checkpoint) = newest {
            ack(&mut *task.instance, checkpoint, &task.counters)
                .await
                .map_err(fail)?;
        }
        if *task.drain.borrow() {
            break;
        }
        let polled = task.instance.poll(task.batch_size).await;
        let batch = match polled {
            Err(trap) => return Err(fail(Cause::Trap(trap))),
            Ok(Err(error)) if error.kind == ErrorKind::Retryable => {
                tracing::warn!(
                    pipeline = %task.pipeline,
                    "{} returned {}; polling again in {}",
                    task.stage,
                    crate::contract::describe(&error),
                    humantime::format_duration(backoff)
                );
                pause(backoff, &mut task.drain, &mut task.abort).await;
                backoff = (backoff * 2).min(MAX_POLL_BACKOFF);
                continue;
            }
            Ok(Err(error)) => {
                return Err(fail(Cause::Error {
                    function: "poll",
                    error,
                    record: None,
                }));
            }
            Ok(Ok(PollResult::EndOfStream)) => break,
            Ok(Ok(PollResult::Batch(batch))) => batch,
        };
        backoff = POLL_BACKOFF;
        if batch.messages.len() > task.batch_size as usize {
            return Err(fail(Cause::Contract(format!(
                "`poll({})` returned {} messages; a source must return at most `max`",
                task.batch_size,
                batch.messages.len()
            ))));
        }
        if let Some(last) = last_checkpoint
            && batch.checkpoint < last
        {
            return Err(fail(Cause::Contract(format!(
                "checkpoint went backwards from {last} to {}; checkpoints must not decrease",
                batch.checkpoint
            ))));
        }
        last_checkpoint = Some(batch.checkpoint);
        if batch.messages.is_empty() {
            // Idle: rest a little, acknowledging whatever completes meanwhile.
            let pause = idle;
            idle = (idle * 2).min(MAX_IDLE_PAUSE);
            let newest = pause_or_done(
                pause,
                &mut task.done,
                &mut tracker,
                &mut task.drain,
                &mut task.abort,
            )
            .await;
            if let Some(checkpoint) = newest {
                ack(&mut *task.instance, checkpoint, &task.counters)
                    .await
                    .map_err(fail)?;
            }
            continue;
        }
        idle = IDLE_PAUSE;
        task.counters
            .polled
            .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        // Wait for room in the in-flight byte budget, settling finished batches meanwhile.
        let bytes: usize = batch
            .messages
            .iter()
            .map(|m| m.payload.len() + m.key.as_ref().map_or(0, Vec::len))
            .sum();
        let units = u32::try_from(
            bytes
                .div_ceil(BUDGET_UNIT)
                .clamp(1, task.budget_units as usize),
        )
        .unwrap_or(task.budget_units);
        let mut newest = None;
        let budget = loop {
            tokio::select! {
                permit = task.budget.clone().acquire_many_owned(units) => break permit.ok(),
                done = task.done.recv() => match done {
                    Some(s) => newest = tracker.done(s).or(newest),
                    None => break None,
                },
                _ = task.abort.changed() => return Ok(()),
            }
        };
        if let Some(checkpoint) = newest {
            ack(&mut *task.instance, checkpoint, &task.counters)
                .await
                .map_err(fail)?;
        }
        tracker.push(seq, batch.checkpoint, bytes as u64, task.sinks, budget);
        let sent = match &downstream {
            Some(d) => {
                d.send(Batch {
                    seq,
                    records: batch.messages,
                    enter: Enter::Source,
                })
                .await
            }
            None => false,
        };
        seq += 1;
        if !sent {
            // A later stage stopped: it reports why; nothing more can be delivered.
            return Ok(());
        }
    }

    // Let the stages finish what is in flight, then acknowledge it.
    downstream.take();
    let mut newest = None;
    while !tracker.pending.is_empty() {
        tokio::select! {
            done = task.done.recv() => match done {
                Some(seq) => newest = tracker.done(seq).or(newest),
                None => break,
            },
            _ = task.abort.changed() => return Ok(()),
        }
        if let Some(checkpoint) = newest.take() {
            ack(&mut *task.instance, checkpoint, &task.counters)
                .await
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// Acknowledge `checkpoint` to the source.
async fn ack(
    instance: &mut dyn SourceCalls,
    checkpoint: u64,
    counters: &Counters,
) -> Result<(), Cause> {
    counters.acked_batches.fetch_add(1, Ordering::Relaxed);
    match instance.ack(checkpoint).await {
        Err(trap) => Err(Cause::Trap(trap)),
        Ok(Err(error)) => Err(Cause::Error {
            function: "ack",
            error,
            record: None,
        }),
        Ok(Ok(())) => Ok(()),
    }
}

/// Sleep, unless drained or aborted first.
async fn pause(d: Duration, drain: &mut watch::Receiver<bool>, abort: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = drain.changed() => {}
        _ = abort.changed() => {}
    }
}

/// Sleep while idle, waking early for a completed batch; returns a newly deliverable checkpoint.
async fn pause_or_done(
    d: Duration,
    done: &mut mpsc::UnboundedReceiver<u64>,
    tracker: &mut AckTracker,
    drain: &mut watch::Receiver<bool>,
    abort: &mut watch::Receiver<bool>,
) -> Option<u64> {
    let deadline = tokio::time::sleep(d);
    tokio::pin!(deadline);
    let mut newest = None;
    loop {
        tokio::select! {
            _ = &mut deadline => return newest,
            _ = drain.changed() => return newest,
            _ = abort.changed() => return newest,
            seq = done.recv() => match seq {
                Some(seq) => newest = tracker.done(seq).or(newest),
                None => return newest,
            },
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
}
