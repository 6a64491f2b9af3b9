//! The source task: poll batches (within the in-flight byte budget and `batch_bytes`), send
//! them on, acknowledge a checkpoint only once every sink settled every record up to it, and
//! recover from a failed poll instead of ending the pipeline. A source that shares its work
//! over several instances (`concurrency`) runs one such task per instance, each with its own
//! checkpoints and acks; they share the in-flight byte budget.
//!
//! Recovery, in the same spirit as the other stages' policy:
//! - a trap (in `poll` or `ack`) starts a fresh instance after a back-off; `retry.attempts`
//!   traps in a row with no good poll between them stop the pipeline. What the old instance
//!   sent and nobody acknowledged is settled without an ack: the source delivers it again.
//!   The fresh instance keeps one batch in flight until its first ack, so its position moves
//!   on even when it traps again a few polls later;
//! - an answer over `limits.max_output` or a poll that ran out of `limits.memory` halves how
//!   many messages are asked for (fresh instance, nothing counted against attempts); only a
//!   single message over the limits stops the pipeline, saying which limit to raise;
//! - a `retryable` error backs off and polls again, on a fresh instance after every
//!   `retry.attempts` in a row (a broker that is down for an hour is waited for);
//! - `fatal` and `invalid-data` stop the pipeline at once.

#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};

use super::acks::AckTracker;
use super::counters::Counters;
use super::failure::{Cause, PipelineFailure, StageRef};
use super::flow::{Batch, Downstream, Enter};
use super::reply::Requests;
use crate::config::Retry;
use crate::contract::{Answer, ErrorKind, Message, PollResult};
use crate::plugin::{SourceCalls, Start, Trap, message_size};

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
    /// Starts a fresh instance after a trap.
    pub(super) start: Start<dyn SourceCalls>,
    pub(super) retry: Retry,
    pub(super) batch_size: u32,
    /// Most bytes per poll (as `limits.max_output` counts them).
    pub(super) batch_bytes: u64,
    /// This instance's own batches, by its own sequence numbers, once every sink settled them.
    pub(super) done: mpsc::UnboundedReceiver<u64>,
    /// This instance's number (from 0) and how many instances the source runs.
    pub(super) lane: (u64, u64),
    pub(super) sinks: usize,
    pub(super) counters: Arc<Counters>,
    pub(super) drain: watch::Receiver<bool>,
    pub(super) abort: watch::Receiver<bool>,
    /// In-flight byte budget, in units of [`BUDGET_UNIT`] bytes.
    pub(super) budget: Arc<Semaphore>,
    pub(super) budget_units: u32,
    /// Its open requests, when the source answers requests (`reply.rs`).
    pub(super) requests: Option<Requests>,
    /// Its spans, when tracing is on (`trace.rs`).
    pub(super) spans: Option<super::trace::StageSpans>,
}

/// Granularity of the in-flight byte budget.
pub(super) const BUDGET_UNIT: usize = 1024;

/// What the task knows about its polls between two calls.
struct Polling {
    /// How many messages a poll asks for: `batch_size`, less after answers that were too big.
    max: u32,
    /// Traps (or failed starts) in a row without a good poll.
    traps: u32,
    /// Retryable errors in a row.
    retryable: u32,
    backoff: Duration,
    last_checkpoint: Option<u64>,
    /// Told the operator once that a bounded source went over `batch_bytes`.
    warned_bytes: bool,
    /// A fresh instance keeps one batch in flight until its first acknowledgement: a source
    /// that traps every few polls then still moves its position on between traps, instead of
    /// polling ahead and losing every unacknowledged batch to the next trap.
    probation: bool,
}

impl SourceTask {
    fn fail(&self, cause: Cause) -> PipelineFailure {
        PipelineFailure {
            pipeline: self.pipeline.clone(),
            stage: self.stage.clone(),
            cause,
        }
    }

    /// Replace the instance after `trap`, unless the policy says to stop.
    async fn recover(
        &mut self,
        trap: Trap,
        polling: &mut Polling,
        tracker: &mut AckTracker,
    ) -> Result<(), PipelineFailure> {
        let mut why = format!("trapped in `{}`: {}", trap.function, trap.reason);
        if trap.over_limit && trap.function == "poll" {
            if polling.max <= 1 {
                return Err(self.fail(Cause::Host(format!(
                    "a single message is over the plugin's limits ({}); raise \
                     `limits.max_output` or `limits.memory` of plugin `{}`, or make the records \
                     smaller",
                    trap.reason, self.stage.plugin
                ))));
            }
            polling.max = (polling.max / 2).max(1);
            why = format!(
                "{why}; polling at most {} messages from now on (a smaller `batch_size` or \
                 `batch_bytes` starts there)",
                polling.max
            );
        } else {
            polling.traps += 1;
            if polling.traps > self.retry.attempts {
                return Err(self.fail(Cause::Trap(trap)));
            }
        }
        self.restart(&why, polling, tracker).await
    }

    /// Start a fresh instance (after a back-off), trying again while attempts remain.
    async fn restart(
        &mut self,
        why: &str,
        polling: &mut Polling,
        tracker: &mut AckTracker,
    ) -> Result<(), PipelineFailure> {
        let mut why = why.to_owned();
        loop {
            let wait = super::backoff(&self.retry, polling.traps.max(1));
            tracing::warn!(
                pipeline = %self.pipeline,
                "{} {why}; starting a fresh instance in {} (restart {} of at most {} in a row)",
                self.stage,
                humantime::format_duration(wait),
                polling.traps.max(1),
                self.retry.attempts
            );
            pause(wait, &mut self.drain, &mut self.abort).await;
            self.counters.restarts.fetch_add(1, Ordering::Relaxed);
            tracker.orphan();
            if let Some(requests) = &mut self.requests {
                requests.orphan();
            }
            polling.last_checkpoint = None;
            match (self.start)().await {
                Ok(instance) => {
                    self.instance = instance;
                    polling.probation = true;
                    return Ok(());
                }
                Err(e) => {
                    polling.traps += 1;
                    if polling.traps > self.retry.attempts {
                        return Err(self.fail(Cause::Host(format!(
                            "a fresh instance could not start: {e:#}"
                        ))));
                    }
                    why = format!("could not start: {e:#}");
                }
            }
        }
    }

    /// Batches were settled: answer their requests, then acknowledge `newest` if there is one.
    async fn settled(
        &mut self,
        newest: Option<u64>,
        polling: &mut Polling,
        tracker: &mut AckTracker,
    ) -> Result<(), PipelineFailure> {
        let seqs = tracker.settled.as_mut().map(std::mem::take);
        if let (Some(seqs), Some(requests)) = (seqs, &mut self.requests) {
            let answers: Vec<_> = seqs.into_iter().flat_map(|s| requests.settled(s)).collect();
            for (token, answer) in answers {
                self.reply(&token, &answer, polling, tracker).await?;
            }
        }
        match newest {
            Some(checkpoint) => self.ack(checkpoint, polling, tracker).await,
            None => Ok(()),
        }
    }

    /// Answer the requests whose time is up.
    async fn expire(
        &mut self,
        polling: &mut Polling,
        tracker: &mut AckTracker,
    ) -> Result<(), PipelineFailure> {
        let Some(requests) = &mut self.requests else {
            return Ok(());
        };
        let late = requests.expired(std::time::Instant::now());
        for token in late {
            self.counters.reply_timeouts.fetch_add(1, Ordering::Relaxed);
            self.reply(&token, &Answer::TimedOut, polling, tracker)
                .await?;
        }
        Ok(())
    }

    /// `reply(token, answer)`; an error is logged, a trap recovered like one in `poll`.
    async fn reply(
        &mut self,
        token: &str,
        answer: &Answer,
        polling: &mut Polling,
        tracker: &mut AckTracker,
    ) -> Result<(), PipelineFailure> {
        self.counters.replies.fetch_add(1, Ordering::Relaxed);
        match self.instance.reply(token, answer).await {
            Err(trap) => self.recover(trap, polling, tracker).await,
            Ok(Err(error)) => {
                tracing::warn!(
                    pipeline = %self.pipeline,
                    "{} could not answer request `{token}`: {}",
                    self.stage,
                    crate::contract::describe(&error)
                );
                Ok(())
            }
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Acknowledge `checkpoint`; a trap here is recovered like one in `poll`.
    async fn ack(
        &mut self,
        checkpoint: u64,
        polling: &mut Polling,
        tracker: &mut AckTracker,
    ) -> Result<(), PipelineFailure> {
        self.counters.acked_batches.fetch_add(1, Ordering::Relaxed);
        match self.instance.ack(checkpoint).await {
            Err(trap) => self.recover(trap, polling, tracker).await,
            Ok(Err(error)) if error.kind == ErrorKind::Retryable => {
                // The next ack covers this one (acks are cumulative).
                tracing::warn!(
                    pipeline = %self.pipeline,
                    "{} could not acknowledge checkpoint {checkpoint}: {}; the next \
                     acknowledgement covers it",
                    self.stage,
                    crate::contract::describe(&error)
                );
                Ok(())
            }
            Ok(Err(error)) => Err(self.fail(Cause::Error {
                function: "ack",
                error,
                record: None,
            })),
            Ok(Ok(())) => {
                polling.probation = false;
                Ok(())
            }
        }
    }

    /// Wait until every batch in flight is settled, acknowledging as they are (the
    /// probation of a fresh instance). Returns false when aborted.
    async fn settle(
        &mut self,
        polling: &mut Polling,
        tracker: &mut AckTracker,
    ) -> Result<bool, PipelineFailure> {
        while !tracker.pending.is_empty() {
            let newest = tokio::select! {
                done = self.done.recv() => match done {
                    Some(seq) => tracker.done(seq),
                    None => return Ok(true),
                },
                _ = self.abort.changed() => return Ok(false),
            };
            self.settled(newest, polling, tracker).await?;
        }
        Ok(true)
    }
}

pub(super) async fn run_source(
    mut task: SourceTask,
    downstream: Downstream,
) -> Result<(), PipelineFailure> {
    let mut tracker = AckTracker::new(task.counters.clone());
    if task.requests.is_some() {
        tracker.settled = Some(Vec::new());
    }
    let mut seq = 0u64;
    let mut idle = IDLE_PAUSE;
    let mut polling = Polling {
        max: task.batch_size,
        traps: 0,
        retryable: 0,
        backoff: POLL_BACKOFF,
        last_checkpoint: None,
        warned_bytes: false,
        probation: false,
    };
    let mut downstream = Some(downstream);

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
        task.settled(newest, &mut polling, &mut tracker).await?;
        task.expire(&mut polling, &mut tracker).await?;
        if *task.drain.borrow() {
            break;
        }
        if polling.probation && !task.settle(&mut polling, &mut tracker).await? {
            return Ok(());
        }
        let poll_started = task.spans.as_ref().map(|_| std::time::SystemTime::now());
        let polled = task.instance.poll(polling.max, task.batch_bytes).await;
        let mut batch = match polled {
            Err(trap) => {
                task.recover(trap, &mut polling, &mut tracker).await?;
                continue;
            }
            Ok(Err(error)) if error.kind == ErrorKind::Retryable => {
                polling.retryable += 1;
                tracing::warn!(
                    pipeline = %task.pipeline,
                    "{} returned {}; polling again in {}",
                    task.stage,
                    crate::contract::describe(&error),
                    humantime::format_duration(polling.backoff)
                );
                pause(polling.backoff, &mut task.drain, &mut task.abort).await;
                polling.backoff = (polling.backoff * 2).min(MAX_POLL_BACKOFF);
                if polling.retryable.is_multiple_of(task.retry.attempts.max(1)) {
                    let why = format!(
                        "returned {polling_errors} retryable errors in a row",
                        polling_errors = polling.retryable
                    );
                    task.restart(&why, &mut polling, &mut tracker).await?;
                }
                continue;
            }
            Ok(Err(error)) => {
                return Err(task.fail(Cause::Error {
                    function: "poll",
                    error,
                    record: None,
                }));
            }
            Ok(Ok(PollResult::EndOfStream)) => break,
            Ok(Ok(PollResult::Batch(batch))) => batch,
        };
        polling.backoff = POLL_BACKOFF;
        polling.traps = 0;
        polling.retryable = 0;
        if batch.messages.len() > polling.max as usize {
            return Err(task.fail(Cause::Contract(format!(
                "`poll({})` returned {} messages; a source must return at most `max`",
                polling.max,
                batch.messages.len()
            ))));
        }
        if let Some(last) = polling.last_checkpoint
            && batch.checkpoint < last
        {
            return Err(task.fail(Cause::Contract(format!(
                "checkpoint went backwards from {last} to {}; checkpoints must not decrease",
                batch.checkpoint
            ))));
        }
        polling.last_checkpoint = Some(batch.checkpoint);
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
            task.settled(newest, &mut polling, &mut tracker).await?;
            continue;
        }
        idle = IDLE_PAUSE;
        task.counters
            .polled
            .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        keep_to_batch_bytes(&task, &mut polling, &batch.messages);
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
        tracker.push(seq, batch.checkpoint, bytes as u64, task.sinks, budget);
        if let Some(requests) = &mut task.requests {
            requests.tag(seq, &mut batch.messages);
        }
        if let Some(spans) = &task.spans {
            spans.polled(
                &mut batch.messages,
                poll_started.unwrap_or_else(std::time::SystemTime::now),
            );
        }
        task.settled(newest, &mut polling, &mut tracker).await?;
        let sent = match &downstream {
            Some(d) => {
                d.send(Batch {
                    seq: seq * task.lane.1 + task.lane.0,
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
    task.settle(&mut polling, &mut tracker).await?;
    Ok(())
}

/// Hand each batch the sinks settled back to the source instance that polled it: batch `seq`
/// of instance `i` of `n` travels as `seq * n + i`.
pub(super) async fn route_done(
    mut done: mpsc::UnboundedReceiver<u64>,
    instances: Vec<mpsc::UnboundedSender<u64>>,
) -> Result<(), PipelineFailure> {
    let n = instances.len() as u64;
    while let Some(seq) = done.recv().await {
        let lane = seq.checked_rem(n).and_then(|i| usize::try_from(i).ok());
        if let Some(to) = lane.and_then(|i| instances.get(i)) {
            // An instance that already ended (end of stream) has nothing left to acknowledge.
            let _ = to.send(seq / n);
        }
    }
    Ok(())
}

/// Keep later polls within `batch_bytes`. A source that takes the bound (`poll-within`) and
/// went over it with more than one message is told so, once; one that cannot take it is
/// asked for fewer messages from now on.
fn keep_to_batch_bytes(task: &SourceTask, polling: &mut Polling, messages: &[Message]) {
    if messages.len() < 2 {
        return;
    }
    let size: u64 = messages.iter().map(message_size).sum();
    if size <= task.batch_bytes {
        return;
    }
    if task.instance.bounded() {
        if !polling.warned_bytes {
            polling.warned_bytes = true;
            tracing::warn!(
                pipeline = %task.pipeline,
                "{} returned {} messages of {} for a poll bounded to {} (batch_bytes); a \
                 source must keep to the bound (only a single message may exceed it)",
                task.stage,
                messages.len(),
                bytesize::ByteSize(size).display().iec(),
                bytesize::ByteSize(task.batch_bytes).display().iec()
            );
        }
        return;
    }
    let fits = (messages.len() as u64 * task.batch_bytes / size).max(1);
    let max = u32::try_from(fits).unwrap_or(u32::MAX).min(polling.max);
    if max < polling.max {
        tracing::info!(
            pipeline = %task.pipeline,
            "{} returned {} messages of {}, over batch_bytes ({}); polling at most {max} \
             messages from now on",
            task.stage,
            messages.len(),
            bytesize::ByteSize(size).display().iec(),
            bytesize::ByteSize(task.batch_bytes).display().iec()
        );
        polling.max = max;
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
