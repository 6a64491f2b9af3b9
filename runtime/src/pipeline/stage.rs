//! Transform and sink stages, one loop for both: call the plugin, retry what may succeed later,
//! restart an instance that trapped, feed the circuit breaker, and settle every record that
//! failed for good by the pipeline's policy (stop, or store it in the dead-letter channel).
//!
//! Retries: `retryable` errors and traps are retried with exponential back-off and full jitter,
//! up to `retry.attempts` attempts per record; `invalid-data` and `fatal` are not retried, and
//! neither is a contract violation (a wrong number of answers). A transform's output keeps its
//! input's order, retried records included.

#![allow(clippy::result_large_err)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::breaker::Circuit;
use super::counters::Counters;
use super::dead_letter::{DeadLetters, Entry, StageKind, StoredMessage, timestamp};
use super::failure::{Cause, PipelineFailure, StageRef};
use super::reply::{Book, carry, hidden, id_of};
use super::retry::{Failure, backoff, merge};
use super::swap::CodeWatch;
use super::trace::{self, StageSpans};
use crate::config::{Breaker, OnError, Retry};
use crate::contract::{ErrorKind, Message, Outcome, WitError};
use crate::plugin::{SinkCalls, Start, TransformCalls, Trap};

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
    /// The open requests of a request/reply pipeline (`reply.rs`); `None` otherwise.
    pub(super) book: Option<Arc<Book>>,
    /// Makes the spans of `[telemetry]`; `None`: tracing is off.
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
}

type Answers<'a, A> = Pin<Box<dyn Future<Output = Result<Vec<A>, Trap>> + Send + 'a>>;

/// What differs between a transform stage and a sink stage: the call, and what its answers mean.
pub trait Kind: Send + Sync + 'static {
    /// The plugin calls.
    type Calls: ?Sized + Send;
    /// One answer per input.
    type Answer: Send;
    /// A record done with (not failed).
    type Done: Send;
    /// Which stage this is in a dead-letter entry.
    const STAGE: StageKind;
    /// The exported function, for messages.
    const FUNCTION: &'static str;
    /// What its answers are called (`outcome`, `result`).
    const ANSWER: &'static str;
    /// Call the plugin.
    fn call<'a>(calls: &'a mut Self::Calls, batch: &'a [Message]) -> Answers<'a, Self::Answer>;
    /// Done, or the plugin's error about the record.
    fn judge(answer: Self::Answer) -> Result<Self::Done, WitError>;
}

/// What a transform did with a record.
pub enum Kept {
    /// Passed on as it was.
    Keep,
    /// Dropped.
    Drop,
    /// Replaced by these (none: dropped).
    Replace(Vec<Message>),
}

/// The transform kind.
pub struct TransformKind;

impl Kind for TransformKind {
    type Calls = dyn TransformCalls;
    type Answer = Outcome;
    type Done = Kept;
    const STAGE: StageKind = StageKind::Transform;
    const FUNCTION: &'static str = "process";
    const ANSWER: &'static str = "outcome";

    fn call<'a>(calls: &'a mut Self::Calls, batch: &'a [Message]) -> Answers<'a, Outcome> {
        calls.process(batch)
    }

    fn judge(answer: Outcome) -> Result<Kept, WitError> {
        match answer {
            Outcome::Keep => Ok(Kept::Keep),
            Outcome::Drop => Ok(Kept::Drop),
            Outcome::Replace(messages) => Ok(Kept::Replace(messages)),
            Outcome::Fail(error) => Err(error),
        }
    }
}

/// The sink kind.
pub struct SinkKind;

impl Kind for SinkKind {
    type Calls = dyn SinkCalls;
    type Answer = Result<(), WitError>;
    type Done = ();
    const STAGE: StageKind = StageKind::Sink;
    const FUNCTION: &'static str = "write";
    const ANSWER: &'static str = "result";

    fn call<'a>(calls: &'a mut Self::Calls, batch: &'a [Message]) -> Answers<'a, Self::Answer> {
        calls.write(batch)
    }

    fn judge(answer: Result<(), WitError>) -> Result<(), WitError> {
        answer
    }
}

/// One stage at work.
pub struct Stage<K: Kind> {
    /// Where it sits.
    pub at: StageRef,
    /// Its plugin's version, for dead letters.
    pub version: String,
    /// The live instance.
    pub instance: Box<K::Calls>,
    /// Starts a fresh instance after a trap, or of swapped-in code.
    pub start: Start<K::Calls>,
    /// Swaps of the plugin's code, when it is swappable.
    pub code: Option<CodeWatch>,
    /// The swap generation the instance runs.
    pub generation: u64,
    /// Pipeline-wide policy.
    pub policy: Policy,
    /// This stage's circuit breaker.
    pub circuit: Circuit,
    /// Its spans, when tracing is on.
    pub spans: Option<StageSpans>,
}

/// Per input: done (with what), or failed for good (with why), by position.
struct Attempted<D> {
    done: Vec<Option<D>>,
    dead: Vec<(usize, Failure)>,
}

impl<K: Kind> Stage<K> {
    fn failure(&self, cause: Cause) -> PipelineFailure {
        PipelineFailure {
            pipeline: self.policy.pipeline.clone(),
            stage: self.at.clone(),
            cause,
        }
    }

    /// Replace a trapped instance with a fresh one (its host state carries over).
    async fn restart(&mut self, trap: &Trap) -> Result<(), PipelineFailure> {
        self.policy
            .counters
            .restarts
            .fetch_add(1, Ordering::Relaxed);
        match (self.start)().await {
            Ok(instance) => {
                tracing::warn!(
                    "pipeline `{}`: {} trapped in `{}`: {}; restarted it with a fresh instance",
                    self.policy.pipeline,
                    self.at,
                    trap.function,
                    trap.reason
                );
                self.instance = instance;
                Ok(())
            }
            Err(e) => Err(self.failure(Cause::Host(format!(
                "it trapped, and a fresh instance could not start: {e:#}"
            )))),
        }
    }

    /// Between batches: if the plugin was swapped, move to a fresh instance of the new code.
    /// The old instance finished its last batch already; the host state carries over. `wanted`
    /// is the generation the batch must meet (the lanes of a parallel stage all get the one
    /// read when the batch was handed out); `None` follows the latest swap.
    async fn follow_swap(&mut self, wanted: Option<u64>) {
        let Some(code) = &mut self.code else {
            return;
        };
        let current = code.borrow_and_update().clone();
        if wanted.unwrap_or(current.generation) <= self.generation {
            return;
        }
        let version = current.version;
        let started = Instant::now();
        match (self.start)().await {
            Ok(instance) => {
                self.instance = instance;
                tracing::info!(
                    "pipeline `{}`: {} now runs version {version} (switched in {} µs)",
                    self.policy.pipeline,
                    self.at,
                    started.elapsed().as_micros()
                );
                self.version = version;
                self.generation = current.generation;
            }
            Err(e) => {
                tracing::error!(
                    "pipeline `{}`: {}: version {version} could not start here ({e:#}); the \
                     previous version keeps serving",
                    self.policy.pipeline,
                    self.at
                );
                // Not again for every batch: the next swap tries anew.
                self.generation = current.generation;
            }
        }
    }

    /// Settle records that failed for good: stop, or store them as dead letters.
    async fn settle(&mut self, mut dead: Vec<(Message, Failure)>) -> Result<(), PipelineFailure> {
        // A request's message is answered with its failure, not dead-lettered nor stopping.
        if let Some(book) = &self.policy.book {
            dead.retain(|(message, failure)| match id_of(message) {
                Some(id) => {
                    book.fail(id, failure);
                    false
                }
                None => true,
            });
        }
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
        let entries: Vec<Entry> = dead
            .iter()
            .map(|(message, failure)| Entry {
                pipeline: self.policy.pipeline.clone(),
                stage: K::STAGE,
                stage_index: self.at.index,
                plugin: self.at.plugin.clone(),
                plugin_version: self.version.clone(),
                error_kind: failure.kind.clone(),
                error: failure.error.clone(),
                attempts: failure.attempts,
                first_failure: timestamp(failure.first),
                last_failure: timestamp(failure.last),
                message: StoredMessage::from_message(message),
            })
            .collect();
        if self.spans.is_some() {
            // With tracing on, each dead letter is a log line carrying its trace id.
            for (message, failure) in &dead {
                tracing::warn!(
                    pipeline = %self.policy.pipeline,
                    plugin = %self.at.plugin,
                    trace_id = %trace::trace_id(message).unwrap_or_default(),
                    "dead-lettered a record: {}: {}",
                    failure.kind,
                    failure.error
                );
            }
        }
        let stored = self.policy.dead_letters.store(&entries).await;
        stored.map_err(|e| self.failure(Cause::Host(format!("dead-letter channel: {e}"))))?;
        self.policy
            .counters
            .dead_lettered
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// After a trap: restart the instance and feed the breaker. True when the breaker opened.
    async fn after_trap(&mut self, trap: &Trap) -> Result<bool, PipelineFailure> {
        self.restart(trap).await?;
        let opened = self.circuit.trapped(&self.policy.breaker, Instant::now());
        if opened {
            tracing::warn!(
                "pipeline `{}`: circuit breaker of {} opened after repeated traps; its batches are \
                 settled by on_error for {}",
                self.policy.pipeline,
                self.at,
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
                self.at
            );
        }
    }

    /// Count a retry round and say how long to wait before it.
    fn retry_wait(&self, attempt: u32) -> Duration {
        self.policy.counters.retries.fetch_add(1, Ordering::Relaxed);
        backoff(&self.policy.retry, attempt)
    }

    /// Attempt `records` until each one is done or failed for good.
    async fn attempt(
        &mut self,
        records: &[Message],
    ) -> Result<Attempted<K::Done>, PipelineFailure> {
        let mut done: Vec<Option<K::Done>> = (0..records.len()).map(|_| None).collect();
        let mut dead: Vec<(usize, Failure)> = Vec::new();
        // Positions in `records` still to send, with their failures so far.
        let mut pending: Vec<(usize, Option<Box<Failure>>)> =
            (0..records.len()).map(|i| (i, None)).collect();
        let mut attempt = 1;
        loop {
            if !self.circuit.allows(Instant::now()) {
                let open = Failure::open(&self.at, &self.policy.breaker);
                dead.extend(
                    pending
                        .into_iter()
                        .map(|(i, f)| (i, merge(f, open.clone()))),
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
            let called = K::call(&mut *self.instance, inputs).await;
            if called.is_ok() {
                self.called_ok();
            }
            let mut retry: Vec<(usize, Failure)> = Vec::new();
            match called {
                Err(trap) => {
                    let failure = Failure::trap(trap.clone());
                    retry = pending
                        .into_iter()
                        .map(|(i, f)| (i, merge(f, failure.clone())))
                        .collect();
                    if self.after_trap(&trap).await? {
                        let open = Failure::open(&self.at, &self.policy.breaker);
                        dead.extend(retry.into_iter().map(|(i, f)| (i, f.again(open.clone()))));
                        break;
                    }
                }
                Ok(answers) if answers.len() != inputs.len() => {
                    let failure = Failure::contract(format!(
                        "`{}` returned {} {}s for {} messages; it must return exactly one {} per \
                         input, in order",
                        K::FUNCTION,
                        answers.len(),
                        K::ANSWER,
                        inputs.len(),
                        K::ANSWER
                    ));
                    dead.extend(
                        pending
                            .into_iter()
                            .map(|(i, f)| (i, merge(f, failure.clone()))),
                    );
                }
                Ok(answers) => {
                    for (position, ((i, previous), answer)) in
                        pending.into_iter().zip(answers).enumerate()
                    {
                        match K::judge(answer) {
                            Ok(d) => done[i] = Some(d),
                            Err(error) => {
                                let retryable = error.kind == ErrorKind::Retryable;
                                let failure =
                                    merge(previous, Failure::error(K::FUNCTION, error, position));
                                if retryable {
                                    retry.push((i, failure));
                                } else {
                                    dead.push((i, failure));
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
                dead.extend(retry);
                break;
            }
            let wait = self.retry_wait(attempt);
            tokio::time::sleep(wait).await;
            attempt += 1;
            pending = retry
                .into_iter()
                .map(|(i, f)| (i, Some(Box::new(f))))
                .collect();
        }
        dead.sort_by_key(|(i, _)| *i);
        Ok(Attempted { done, dead })
    }
}

impl Stage<TransformKind> {
    /// Run a batch through a transform: every input ends kept, dropped, replaced, or settled.
    pub async fn transform(
        &mut self,
        records: Vec<Message>,
        code: Option<u64>,
    ) -> Result<Vec<Message>, PipelineFailure> {
        self.follow_swap(code).await;
        let requests = self.policy.book.is_some();
        let parents = trace::parents(self.spans.as_ref(), &records);
        let started = self.spans.as_ref().map(|_| std::time::SystemTime::now());
        let Attempted { done, dead } = if requests {
            let view = hidden(&records);
            self.attempt(&view).await?
        } else {
            self.attempt(&records).await?
        };
        let mut out = Vec::with_capacity(records.len());
        let mut dropped = 0u64;
        let mut failed = Vec::with_capacity(dead.len());
        let mut dead = dead.into_iter().peekable();
        // With tracing: what became of each input, and which input each output came from.
        let tracing = self.spans.is_some();
        let mut outcomes = Vec::new();
        let mut origins = Vec::new();
        for (i, (message, kept)) in records.into_iter().zip(done).enumerate() {
            match kept {
                Some(Kept::Keep) => {
                    if tracing {
                        outcomes.push(trace::Outcome::Done("kept"));
                        origins.push(i);
                    }
                    out.push(message);
                }
                Some(Kept::Drop) => {
                    dropped += 1;
                    if tracing {
                        outcomes.push(trace::Outcome::Replaced(0));
                    }
                }
                Some(Kept::Replace(mut replacements)) => {
                    if replacements.is_empty() {
                        dropped += 1;
                    }
                    if requests {
                        carry(&message, &mut replacements);
                    }
                    if tracing {
                        outcomes.push(trace::Outcome::Replaced(replacements.len()));
                        origins.extend(std::iter::repeat_n(i, replacements.len()));
                    }
                    out.extend(replacements);
                }
                None => {
                    let failure = dead.next_if(|(d, _)| *d == i).map(|(_, f)| f);
                    if tracing {
                        outcomes.push(trace::Outcome::Failed(failure.as_ref().map_or_else(
                            || "unsettled".to_owned(),
                            |f| format!("{}: {}", f.kind, f.error),
                        )));
                    }
                    if let Some(failure) = failure {
                        failed.push((message, failure));
                    }
                }
            }
        }
        if let Some(spans) = &self.spans {
            let next = spans.called(
                &parents,
                &outcomes,
                started.unwrap_or_else(std::time::SystemTime::now),
            );
            for (message, origin) in out.iter_mut().zip(origins) {
                if let Some(Some(traceparent)) = next.get(origin) {
                    trace::set(message, traceparent);
                }
            }
        }
        self.policy
            .counters
            .dropped
            .fetch_add(dropped, Ordering::Relaxed);
        self.settle(failed).await?;
        Ok(out)
    }
}

impl Stage<SinkKind> {
    /// Deliver a batch to a sink: every record ends written or settled. Returns how many were
    /// written.
    pub async fn deliver(
        &mut self,
        records: &[Message],
        code: Option<u64>,
    ) -> Result<u64, PipelineFailure> {
        self.follow_swap(code).await;
        let parents = trace::parents(self.spans.as_ref(), records);
        let started = self.spans.as_ref().map(|_| std::time::SystemTime::now());
        let Attempted { done, dead } = match &self.policy.book {
            Some(_) => self.attempt(&hidden(records)).await?,
            None => self.attempt(records).await?,
        };
        if let Some(spans) = &self.spans {
            let mut dead = dead.iter().peekable();
            let outcomes: Vec<trace::Outcome> = (0..records.len())
                .map(|i| match dead.next_if(|(d, _)| *d == i) {
                    Some((_, f)) => trace::Outcome::Failed(format!("{}: {}", f.kind, f.error)),
                    None => trace::Outcome::Done("written"),
                })
                .collect();
            spans.called(
                &parents,
                &outcomes,
                started.unwrap_or_else(std::time::SystemTime::now),
            );
        }
        let written = done.iter().filter(|d| d.is_some()).count() as u64;
        let failed = dead
            .into_iter()
            .map(|(i, failure)| (records[i].clone(), failure))
            .collect();
        self.settle(failed).await?;
        Ok(written)
    }
}
