//! Transform and sink stages: call the plugin, retry what may succeed later, restart an
//! instance that trapped, and settle every record that failed for good by the pipeline's
//! policy (stop, or store it in the dead-letter channel).
//!
//! Retries: `retryable` errors and traps are retried with exponential back-off and full jitter,
//! up to `retry.attempts` attempts per record; `invalid-data` and `fatal` are not retried, and
//! neither is a contract violation (a wrong number of answers). A retried record may be
//! delivered after records that followed it in its batch; everything else keeps its order.

#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::{Batch, Cause, Counters, Downstream, Enter, PipelineFailure, StageRef};
use crate::config::{Breaker, OnError, Retry, Role};
use crate::contract::{ErrorKind, Message, Outcome, WitError};
use crate::dead_letter::{DeadLetters, Entry, StoredMessage, timestamp};
use crate::plugin::{Instance, Trap};

/// Creates a fresh, initialised instance of a stage's plugin after a trap.
pub type Restart = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Instance>> + Send>>
        + Send
        + Sync,
>;

/// What a stage shares with the rest of its pipeline.
#[derive(Clone)]
pub struct Policy {
    /// Pipeline name.
    pub pipeline: String,
    /// Settle failed records by stopping or dead-lettering.
    pub on_error: OnError,
    /// Retry policy.
    pub retry: Retry,
    /// Circuit breaker settings.
    pub breaker: Breaker,
    /// The dead-letter channel.
    pub dead_letters: Arc<DeadLetters>,
    /// Live counters.
    pub counters: Arc<Counters>,
}

/// One stage at work.
pub struct Stage {
    /// Where it sits.
    pub stage: StageRef,
    /// Its plugin's version, for dead letters.
    pub version: String,
    /// The live instance.
    pub instance: Instance,
    /// How to replace it after a trap.
    pub restart: Restart,
    /// Where new code comes from on a hot swap.
    pub swap: Option<Arc<crate::reload::Swappable>>,
    /// The swap generation the instance runs.
    pub generation: u64,
    /// Pipeline-wide policy.
    pub policy: Policy,
    /// This stage's circuit breaker.
    pub circuit: Circuit,
}

/// The state of a stage's circuit breaker.
#[derive(Debug, Default)]
pub struct Circuit {
    traps: VecDeque<Instant>,
    open_until: Option<Instant>,
}

impl Circuit {
    /// Whether the plugin may be called now (closed, or open past its cool-down: a trial).
    fn allows(&self) -> bool {
        self.open_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Count a trap; true when this opens the breaker.
    fn trapped(&mut self, settings: &Breaker) -> bool {
        let now = Instant::now();
        let trial_failed = self.open_until.is_some();
        self.traps.push_back(now);
        while self
            .traps
            .front()
            .is_some_and(|t| now.duration_since(*t) > settings.window)
        {
            self.traps.pop_front();
        }
        if trial_failed || self.traps.len() >= settings.traps as usize {
            self.open_until = Some(now + settings.cooldown);
            self.traps.clear();
            true
        } else {
            false
        }
    }

    /// A call returned normally; true when that closes an open breaker.
    fn succeeded(&mut self) -> bool {
        self.open_until.take().is_some()
    }
}

/// Why one record failed, across attempts.
#[derive(Debug, Clone)]
struct Failure {
    kind: String,
    error: String,
    attempts: u32,
    first: SystemTime,
    last: SystemTime,
    cause: Cause,
}

impl Failure {
    fn new(kind: &str, error: String, cause: Cause) -> Failure {
        let now = SystemTime::now();
        Failure {
            kind: kind.to_owned(),
            error,
            attempts: 1,
            first: now,
            last: now,
            cause,
        }
    }

    /// Fold a later attempt's failure into this one (a shut-off breaker is no attempt).
    fn again(mut self, later: Failure) -> Failure {
        if !matches!(later.cause, Cause::CircuitOpen(_)) {
            self.attempts += 1;
        }
        self.last = later.last;
        self.kind = later.kind;
        self.error = later.error;
        self.cause = later.cause;
        self
    }
}

fn merge(previous: Option<Failure>, now: Failure) -> Failure {
    match previous {
        Some(p) => p.again(now),
        None => now,
    }
}

fn error_failure(function: &'static str, error: WitError, record: usize) -> Failure {
    let kind = error.kind.to_string();
    let text = error.message.clone();
    Failure::new(
        &kind,
        text,
        Cause::Error {
            function,
            error,
            record: Some(record),
        },
    )
}

fn trap_failure(trap: Trap) -> Failure {
    Failure::new("trap", trap.reason.clone(), Cause::Trap(trap))
}

fn open_failure(stage: &StageRef, breaker: &Breaker) -> Failure {
    let text = format!(
        "circuit breaker of {stage} is open ({} traps within {}); retrying the plugin after {}",
        breaker.traps,
        humantime::format_duration(breaker.window),
        humantime::format_duration(breaker.cooldown)
    );
    Failure::new("circuit-open", text.clone(), Cause::CircuitOpen(text))
}

fn contract_failure(text: String) -> Failure {
    Failure::new("contract", text.clone(), Cause::Contract(text))
}

/// Back-off before attempt `attempt + 1`: doubling from `retry.backoff`, capped, with full
/// jitter in [half, whole].
pub fn backoff(retry: &Retry, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    let base = retry.backoff.saturating_mul(factor).min(retry.max_backoff);
    let half = base / 2;
    half + base.mul_f64(fastrand::f64() * 0.5)
}

impl Stage {
    fn failure(&self, cause: Cause) -> PipelineFailure {
        PipelineFailure {
            pipeline: self.policy.pipeline.clone(),
            stage: self.stage.clone(),
            cause,
        }
    }

    /// Replace a trapped instance with a fresh one (its host state carries over). `trap` says
    /// what happened, for the log.
    async fn restart(&mut self, trap: &Trap) -> Result<(), PipelineFailure> {
        self.policy
            .counters
            .restarts
            .fetch_add(1, Ordering::Relaxed);
        match (self.restart)().await {
            Ok(instance) => {
                tracing::warn!(
                    "pipeline `{}`: {} trapped in `{}`: {}; restarted it with a fresh instance",
                    self.policy.pipeline,
                    self.stage,
                    trap.function,
                    trap.reason
                );
                self.instance = instance;
                Ok(())
            }
            Err(e) => Err(self.failure(Cause::Contract(format!(
                "trapped, and a fresh instance could not start: {e:#}"
            )))),
        }
    }

    /// Between batches: if the plugin was swapped, move to a fresh instance of the new code.
    /// The old instance finished its last batch already; the host state carries over.
    async fn follow_swap(&mut self) {
        let Some(swap) = &self.swap else {
            return;
        };
        let generation = swap.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let version = swap.version();
        let started = Instant::now();
        match (self.restart)().await {
            Ok(instance) => {
                self.instance = instance;
                tracing::info!(
                    "pipeline `{}`: {} now runs version {version} (switched in {} µs)",
                    self.policy.pipeline,
                    self.stage,
                    started.elapsed().as_micros()
                );
                self.version = version;
            }
            Err(e) => tracing::error!(
                "pipeline `{}`: {}: version {version} could not start here ({e:#}); the \
                 previous version keeps serving",
                self.policy.pipeline,
                self.stage
            ),
        }
    }

    /// Settle records that failed for good: stop, or store them as dead letters.
    async fn settle(&mut self, dead: Vec<(Message, Failure)>) -> Result<(), PipelineFailure> {
        let Some((_, first)) = dead.first() else {
            return Ok(());
        };
        if self.policy.on_error == OnError::Stop {
            let mut cause = first.cause.clone();
            if first.attempts > 1
                && let Cause::Trap(trap) = &mut cause
            {
                trap.reason = format!("{} (after {} attempts)", trap.reason, first.attempts);
            }
            return Err(self.failure(cause));
        }
        let stage = match self.stage.role {
            Role::Transform => "transform",
            Role::Sink => "sink",
            Role::Source => "source",
        };
        let entries: Vec<Entry> = dead
            .iter()
            .map(|(message, failure)| Entry {
                pipeline: self.policy.pipeline.clone(),
                stage: stage.to_owned(),
                stage_index: self.stage.index,
                plugin: self.stage.plugin.clone(),
                plugin_version: self.version.clone(),
                error_kind: failure.kind.clone(),
                error: failure.error.clone(),
                attempts: failure.attempts,
                first_failure: timestamp(failure.first),
                last_failure: timestamp(failure.last),
                message: StoredMessage::from_message(message),
            })
            .collect();
        let stored = self.policy.dead_letters.store(&entries).await;
        stored.map_err(|e| self.failure(Cause::Contract(format!("dead-letter channel: {e}"))))?;
        self.policy
            .counters
            .dead_lettered
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// After a trap: restart the instance and feed the breaker. True when the breaker opened.
    async fn after_trap(&mut self, trap: &Trap) -> Result<bool, PipelineFailure> {
        self.restart(trap).await?;
        let opened = self.circuit.trapped(&self.policy.breaker);
        if opened {
            tracing::warn!(
                "pipeline `{}`: circuit breaker of {} opened after repeated traps; its batches are \
                 settled by on_error for {}",
                self.policy.pipeline,
                self.stage,
                humantime::format_duration(self.policy.breaker.cooldown)
            );
        }
        Ok(opened)
    }

    fn called_ok(&mut self) {
        if self.circuit.succeeded() {
            tracing::info!(
                "pipeline `{}`: circuit breaker of {} closed: the trial batch succeeded",
                self.policy.pipeline,
                self.stage
            );
        }
    }

    /// Count a retry round and say how long to wait before it.
    fn retry_wait(&self, attempt: u32) -> Duration {
        self.policy.counters.retries.fetch_add(1, Ordering::Relaxed);
        backoff(&self.policy.retry, attempt)
    }

    /// Run a batch through a transform: every input ends kept, dropped, replaced, or settled.
    pub async fn transform(
        &mut self,
        records: Vec<Message>,
    ) -> Result<Vec<Message>, PipelineFailure> {
        self.follow_swap().await;
        let mut out = Vec::with_capacity(records.len());
        // The messages still to process, and their failures so far (same positions).
        let mut pending: Vec<Message> = records;
        let mut failures: Vec<Option<Failure>> = Vec::new();
        let mut dead: Vec<(Message, Failure)> = Vec::new();
        let mut dropped = 0u64;
        let mut attempt = 1;
        loop {
            failures.resize(pending.len(), None);
            if !self.circuit.allows() {
                let failure = open_failure(&self.stage, &self.policy.breaker);
                dead.extend(
                    pending
                        .into_iter()
                        .zip(failures)
                        .map(|(m, f)| (m, merge(f, failure.clone()))),
                );
                break;
            }
            let mut retry: Vec<(Message, Option<Failure>)> = Vec::new();
            let called = self.instance.process(&pending).await;
            if called.is_ok() {
                self.called_ok();
            }
            match called {
                Err(trap) => {
                    let failure = trap_failure(trap.clone());
                    retry = pending
                        .into_iter()
                        .zip(failures)
                        .map(|(m, f)| (m, Some(merge(f, failure.clone()))))
                        .collect();
                    if self.after_trap(&trap).await? {
                        let open = open_failure(&self.stage, &self.policy.breaker);
                        dead.extend(retry.into_iter().map(|(m, f)| (m, merge(f, open.clone()))));
                        break;
                    }
                }
                Ok(outcomes) if outcomes.len() != pending.len() => {
                    let failure = contract_failure(format!(
                        "`process` returned {} outcomes for {} messages; it must return exactly \
                         one outcome per input, in order",
                        outcomes.len(),
                        pending.len()
                    ));
                    dead.extend(
                        pending
                            .into_iter()
                            .zip(failures)
                            .map(|(m, f)| (m, merge(f, failure.clone()))),
                    );
                }
                Ok(outcomes) => {
                    for (i, ((message, previous), outcome)) in
                        pending.into_iter().zip(failures).zip(outcomes).enumerate()
                    {
                        match outcome {
                            Outcome::Keep => out.push(message),
                            Outcome::Drop => dropped += 1,
                            Outcome::Replace(replacements) => {
                                if replacements.is_empty() {
                                    dropped += 1;
                                }
                                out.extend(replacements);
                            }
                            Outcome::Fail(error) => {
                                let retryable = error.kind == ErrorKind::Retryable;
                                let failure = merge(previous, error_failure("process", error, i));
                                if retryable {
                                    retry.push((message, Some(failure)));
                                } else {
                                    dead.push((message, failure));
                                }
                            }
                        }
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            if attempt >= self.policy.retry.attempts {
                dead.extend(retry.into_iter().filter_map(|(m, f)| f.map(|f| (m, f))));
                break;
            }
            let wait = self.retry_wait(attempt);
            tokio::time::sleep(wait).await;
            attempt += 1;
            (pending, failures) = retry.into_iter().unzip();
        }
        self.policy
            .counters
            .dropped
            .fetch_add(dropped, Ordering::Relaxed);
        self.settle(dead).await?;
        Ok(out)
    }

    /// Deliver a batch to a sink: every record ends written or settled.
    pub async fn deliver(&mut self, records: &[Message]) -> Result<u64, PipelineFailure> {
        self.follow_swap().await;
        let mut written = 0u64;
        // Indices into `records` still to send, with their failures so far.
        let mut pending: Vec<(usize, Option<Failure>)> =
            (0..records.len()).map(|i| (i, None)).collect();
        let mut dead: Vec<(Message, Failure)> = Vec::new();
        let mut attempt = 1;
        loop {
            if !self.circuit.allows() {
                let failure = open_failure(&self.stage, &self.policy.breaker);
                dead.extend(
                    pending
                        .into_iter()
                        .map(|(i, f)| (records[i].clone(), merge(f, failure.clone()))),
                );
                break;
            }
            let subset: Vec<Message>;
            let inputs: &[Message] = if pending.len() == records.len() {
                records
            } else {
                subset = pending.iter().map(|(i, _)| records[*i].clone()).collect();
                &subset
            };
            let mut retry = Vec::new();
            let called = self.instance.write(inputs).await;
            if called.is_ok() {
                self.called_ok();
            }
            match called {
                Err(trap) => {
                    let failure = trap_failure(trap.clone());
                    retry = pending
                        .into_iter()
                        .map(|(i, f)| (i, Some(merge(f, failure.clone()))))
                        .collect();
                    if self.after_trap(&trap).await? {
                        let open = open_failure(&self.stage, &self.policy.breaker);
                        dead.extend(
                            retry
                                .into_iter()
                                .map(|(i, f)| (records[i].clone(), merge(f, open.clone()))),
                        );
                        break;
                    }
                }
                Ok(results) if results.len() != inputs.len() => {
                    let failure = contract_failure(format!(
                        "`write` returned {} results for {} messages; it must return exactly one \
                         result per input, in order",
                        results.len(),
                        inputs.len()
                    ));
                    dead.extend(
                        pending
                            .into_iter()
                            .map(|(i, f)| (records[i].clone(), merge(f, failure.clone()))),
                    );
                }
                Ok(results) => {
                    for (position, ((i, previous), result)) in
                        pending.into_iter().zip(results).enumerate()
                    {
                        match result {
                            Ok(()) => written += 1,
                            Err(error) => {
                                let retryable = error.kind == ErrorKind::Retryable;
                                let failure =
                                    merge(previous, error_failure("write", error, position));
                                if retryable {
                                    retry.push((i, Some(failure)));
                                } else {
                                    dead.push((records[i].clone(), failure));
                                }
                            }
                        }
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            if attempt >= self.policy.retry.attempts {
                dead.extend(
                    retry
                        .into_iter()
                        .filter_map(|(i, f)| f.map(|f| (records[i].clone(), f))),
                );
                break;
            }
            let wait = self.retry_wait(attempt);
            tokio::time::sleep(wait).await;
            attempt += 1;
            pending = retry;
        }
        self.settle(dead).await?;
        Ok(written)
    }
}

/// A transform task: batches in, transformed batches out, in order.
pub async fn run_transform(
    mut stage: Stage,
    position: usize,
    mut rx: mpsc::Receiver<Batch>,
    downstream: Downstream,
) -> Result<(), PipelineFailure> {
    while let Some(mut batch) = rx.recv().await {
        let applies = match batch.enter {
            Enter::Source => true,
            Enter::Transform(first) => position >= first,
            Enter::Sink(_) => false,
        };
        if applies && !batch.records.is_empty() {
            let records = std::mem::take(&mut batch.records);
            batch.records = stage.transform(records).await?;
        }
        if !downstream.send(batch).await {
            return Ok(());
        }
    }
    Ok(())
}

/// A sink task: writes every batch, then reports it done to the source's tracker.
pub async fn run_sink(
    mut stage: Stage,
    position: usize,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    done: mpsc::UnboundedSender<u64>,
) -> Result<(), PipelineFailure> {
    while let Some(batch) = rx.recv().await {
        let applies = match batch.enter {
            Enter::Sink(only) => only == position,
            _ => true,
        };
        if applies && !batch.records.is_empty() {
            let written = stage.deliver(&batch.records).await?;
            if let Some(counter) = stage.policy.counters.written.get(position) {
                counter.fetch_add(written, Ordering::Relaxed);
            }
        }
        // The source task may have finished already (abort); that is not this stage's failure.
        let _ = done.send(batch.seq);
    }
    Ok(())
}

/// A transform a replay does not reach: batches pass through untouched.
pub async fn run_idle_transform(
    mut rx: mpsc::Receiver<Batch>,
    downstream: Downstream,
) -> Result<(), PipelineFailure> {
    while let Some(batch) = rx.recv().await {
        if !downstream.send(batch).await {
            break;
        }
    }
    Ok(())
}

/// A sink a replay does not reach: every batch is reported done without writing.
pub async fn run_idle_sink(
    mut rx: mpsc::Receiver<Arc<Batch>>,
    done: mpsc::UnboundedSender<u64>,
) -> Result<(), PipelineFailure> {
    while let Some(batch) = rx.recv().await {
        let _ = done.send(batch.seq);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let retry = Retry {
            attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = backoff(&retry, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&retry, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&retry, 30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
