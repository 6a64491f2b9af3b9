//! The routing core: runs one pipeline as a chain of stages joined by bounded channels.
//!
//! ```text
//! source ──batch──▶ transform 1 ──▶ … ──▶ transform n ──▶ every sink
//!   ▲                                                        │
//!   └───────────── ack(checkpoint) once all sinks are done ◀─┘
//! ```
//!
//! A full channel stops the source from polling (back-pressure). Batches keep their order
//! through every stage, so a checkpoint is acknowledged only after every sink accepted every
//! record up to it.

// A failure ends its pipeline: the error path is cold, and carrying the whole context by value
// keeps the code plain.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Breaker, OnError, Retry, Role};
use crate::contract::{ErrorKind, Message, PollResult, WitError};
use crate::dead_letter::{DeadLetters, Entry};
use crate::plugin::{Instance, Trap};

mod router;
mod stage;

pub use router::Router;

use stage::{Policy, Stage, run_sink, run_transform};
pub use stage::{Restart, backoff};

/// How long a source that returned an empty batch rests before it is polled again: the first
/// empty poll rests [`IDLE_PAUSE`], each further one in a row twice as long, up to
/// [`MAX_IDLE_PAUSE`]. A source that is merely ahead of its data (a paced generator, a broker
/// between messages) is polled again soon; an idle one costs a poll every 20 ms.
const IDLE_PAUSE: Duration = Duration::from_millis(1);
const MAX_IDLE_PAUSE: Duration = Duration::from_millis(20);
/// Back-off after a `retryable` poll error, doubled up to [`MAX_POLL_BACKOFF`].
const POLL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(5);

/// One stage's plugin instance, ready to run (`init` done).
pub struct StageInstance {
    /// Name under `[plugins]`.
    pub plugin: String,
    /// The plugin's own version (from its metadata).
    pub version: String,
    /// The instance.
    pub instance: Instance,
    /// Creates a fresh instance after a trap.
    pub restart: Restart,
    /// Where new code comes from on a hot swap; `None` for a replay.
    pub swap: Option<Arc<crate::reload::Swappable>>,
}

/// A stage of a pipeline plan: running, or idle (a replay that does not reach it: its plugin
/// is not started, so its `init` has no side effects such as truncating a file).
pub enum Slot {
    /// Started and initialised.
    Live(Box<StageInstance>),
    /// Not started; batches pass it by.
    Idle {
        /// Plugin name.
        plugin: String,
    },
}

impl Slot {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        match self {
            Slot::Live(s) => &s.plugin,
            Slot::Idle { plugin } => plugin,
        }
    }
}

/// Where a pipeline's messages come from.
pub enum SourcePlan {
    /// Its source plugin.
    Plugin(Box<StageInstance>),
    /// Dead letters put back through the pipeline, each entering at the stage that failed it.
    Replay(Vec<Replayed>),
}

/// A dead letter to put back, with its message decoded.
pub struct Replayed {
    /// The entry as stored.
    pub entry: Entry,
    /// Its message.
    pub message: Message,
}

/// A pipeline ready to run.
pub struct PipelinePlan {
    /// Pipeline name.
    pub name: String,
    /// Source.
    pub source: SourcePlan,
    /// Transforms in order.
    pub transforms: Vec<Slot>,
    /// Sinks.
    pub sinks: Vec<Slot>,
    /// Largest batch per poll.
    pub batch_size: u32,
    /// Batches buffered between stages.
    pub buffer: usize,
    /// What happens to records that failed for good.
    pub on_error: OnError,
    /// Retry policy of every stage.
    pub retry: Retry,
    /// Circuit breaker settings of every stage.
    pub breaker: Breaker,
    /// The dead-letter channel.
    pub dead_letters: Arc<DeadLetters>,
    /// Content-based routes; `None` sends every message to every sink.
    pub router: Option<Arc<Router>>,
    /// Most payload bytes polled and not yet settled; a full budget pauses the source.
    pub max_in_flight: u64,
}

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
}

/// Where a failure happened.
#[derive(Debug, Clone)]
pub struct StageRef {
    /// Plugin name.
    pub plugin: String,
    /// Role.
    pub role: Role,
    /// 1-based position among transforms or sinks.
    pub index: usize,
}

impl fmt::Display for StageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Source => write!(f, "source `{}`", self.plugin),
            role => write!(f, "{role} `{}` (#{})", self.plugin, self.index),
        }
    }
}

/// What went wrong in a stage.
#[derive(Debug, Clone)]
pub enum Cause {
    /// The instance trapped.
    Trap(Trap),
    /// The plugin returned an error it meant to return.
    Error {
        /// Exported function.
        function: &'static str,
        /// The error.
        error: WitError,
        /// Position of the record in its batch, when the error is about one record.
        record: Option<usize>,
    },
    /// The plugin broke a MUST rule of the contract.
    Contract(String),
    /// The stage's circuit breaker is open after repeated traps.
    CircuitOpen(String),
}

/// A pipeline that stopped because of a failure.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PipelineFailure {
    /// Pipeline name.
    pub pipeline: String,
    /// The stage.
    pub stage: StageRef,
    /// The cause.
    pub cause: Cause,
}

impl fmt::Display for PipelineFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pipeline `{}`: {} ", self.pipeline, self.stage)?;
        match &self.cause {
            Cause::Trap(trap) => write!(f, "trapped in `{}`: {}", trap.function, trap.reason),
            Cause::Error {
                function,
                error,
                record,
            } => {
                write!(f, "failed in `{function}`")?;
                if let Some(i) = record {
                    write!(f, " on record {i} of its batch")?;
                }
                write!(f, " with {}", crate::contract::describe(error))
            }
            Cause::Contract(text) => write!(f, "broke the plugin contract: {text}"),
            Cause::CircuitOpen(text) => write!(f, "is shut off: {text}"),
        }
    }
}

/// The outcome of a finished pipeline.
#[derive(Debug)]
pub struct Report {
    /// Pipeline name.
    pub name: String,
    /// Sink names by position.
    pub sinks: Vec<String>,
    /// Final counters.
    pub counters: Arc<Counters>,
    /// Wall time.
    pub elapsed: Duration,
    /// Why it stopped early, if it did.
    pub failure: Option<PipelineFailure>,
}

struct Batch {
    seq: u64,
    records: Vec<Message>,
    enter: Enter,
}

/// Where a batch joins the pipeline: at the start, or (replayed dead letters) at the stage that
/// failed it. Stages before that point pass it on untouched; other sinks skip it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enter {
    Source,
    /// 0-based transform position.
    Transform(usize),
    /// 0-based sink position.
    Sink(usize),
}

enum Downstream {
    Stage(mpsc::Sender<Batch>),
    Sinks {
        txs: Vec<mpsc::Sender<Arc<Batch>>>,
        router: Option<Arc<Router>>,
        counters: Arc<Counters>,
    },
}

impl Downstream {
    /// Send a batch on; `false` when the next stage is gone.
    async fn send(&self, batch: Batch) -> bool {
        match self {
            Downstream::Stage(tx) => tx.send(batch).await.is_ok(),
            Downstream::Sinks {
                txs,
                router: Some(router),
                counters,
            } if !matches!(batch.enter, Enter::Sink(_)) => {
                let (per_sink, unrouted) = route_batch(router, batch.records, txs.len());
                counters.dropped.fetch_add(unrouted, Ordering::Relaxed);
                for (tx, records) in txs.iter().zip(per_sink) {
                    let part = Arc::new(Batch {
                        seq: batch.seq,
                        records,
                        enter: batch.enter,
                    });
                    if tx.send(part).await.is_err() {
                        return false;
                    }
                }
                true
            }
            Downstream::Sinks { txs, .. } => {
                let batch = Arc::new(batch);
                for tx in txs {
                    if tx.send(batch.clone()).await.is_err() {
                        return false;
                    }
                }
                true
            }
        }
    }
}

/// Split a batch by destination; also returns how many messages matched no route.
fn route_batch(router: &Router, records: Vec<Message>, sinks: usize) -> (Vec<Vec<Message>>, u64) {
    let root = cel::Context::default();
    let mut per_sink: Vec<Vec<Message>> = (0..sinks).map(|_| Vec::new()).collect();
    let mut flags = vec![false; sinks];
    let mut unrouted = 0;
    for message in records {
        router.destinations(&root, &message, &mut flags);
        // Clone for every destination but the last, which takes the message itself.
        let Some(last) = flags.iter().rposition(|&f| f) else {
            unrouted += 1;
            continue;
        };
        for (i, _) in flags[..last].iter().enumerate().filter(|(_, f)| **f) {
            per_sink[i].push(message.clone());
        }
        per_sink[last].push(message);
    }
    (per_sink, unrouted)
}

/// Signals from the supervisor to the pipeline's tasks.
#[derive(Clone)]
pub struct Control {
    /// `true`: stop polling, deliver what is in flight, then finish (graceful).
    pub drain: watch::Receiver<bool>,
    /// `true`: stop now (another stage failed, or a second interrupt).
    pub abort: watch::Receiver<bool>,
}

impl PipelinePlan {
    /// Fresh counters for this pipeline, to pass to [`run`] and read while it runs.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::new(Counters {
            written: self.sinks.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Counters::default()
        })
    }
}

/// Run a pipeline to the end: the source's end of stream, a drain request, or a failure.
pub async fn run(plan: PipelinePlan, control: Control, counters: Arc<Counters>) -> Report {
    let started = Instant::now();
    let name = plan.name.clone();
    let sink_names: Vec<String> = plan.sinks.iter().map(|s| s.plugin().to_owned()).collect();
    let (abort_tx, abort_rx) = watch::channel(false);
    let mut outer_abort = control.abort.clone();
    let (done_tx, done_rx) = mpsc::unbounded_channel::<u64>();
    let sink_count = plan.sinks.len();

    let mut tasks: JoinSet<Result<(), PipelineFailure>> = JoinSet::new();

    let policy = Policy {
        pipeline: name.clone(),
        on_error: plan.on_error,
        retry: plan.retry,
        breaker: plan.breaker,
        dead_letters: plan.dead_letters.clone(),
        counters: counters.clone(),
    };
    let stage = |si: StageInstance, role: Role, index: usize| Stage {
        stage: StageRef {
            plugin: si.plugin,
            role,
            index,
        },
        version: si.version,
        instance: si.instance,
        restart: si.restart,
        generation: si.swap.as_ref().map_or(0, |s| s.generation()),
        swap: si.swap,
        policy: policy.clone(),
        circuit: stage::Circuit::default(),
    };

    // Sinks first, so every channel has its receiver.
    let mut sink_txs = Vec::new();
    for (i, sink) in plan.sinks.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Arc<Batch>>(plan.buffer);
        sink_txs.push(tx);
        match sink {
            Slot::Live(sink) => {
                tasks.spawn(run_sink(
                    stage(*sink, Role::Sink, i + 1),
                    i,
                    rx,
                    done_tx.clone(),
                ));
            }
            Slot::Idle { .. } => {
                tasks.spawn(stage::run_idle_sink(rx, done_tx.clone()));
            }
        }
    }
    drop(done_tx);
    let mut downstream = Downstream::Sinks {
        txs: sink_txs,
        router: plan.router.clone(),
        counters: counters.clone(),
    };
    for (i, transform) in plan.transforms.into_iter().enumerate().rev() {
        let (tx, rx) = mpsc::channel::<Batch>(plan.buffer);
        match transform {
            Slot::Live(transform) => {
                tasks.spawn(run_transform(
                    stage(*transform, Role::Transform, i + 1),
                    i,
                    rx,
                    downstream,
                ));
            }
            Slot::Idle { .. } => {
                tasks.spawn(stage::run_idle_transform(rx, downstream));
            }
        }
        downstream = Downstream::Stage(tx);
    }
    let budget_units =
        u32::try_from((plan.max_in_flight as usize / BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
    match plan.source {
        SourcePlan::Plugin(source) => {
            let source_stage = StageRef {
                plugin: source.plugin.clone(),
                role: Role::Source,
                index: 1,
            };
            tasks.spawn(run_source(SourceTask {
                pipeline: name.clone(),
                stage: source_stage,
                instance: source.instance,
                batch_size: plan.batch_size,
                downstream,
                done: done_rx,
                sinks: sink_count,
                counters: counters.clone(),
                drain: control.drain.clone(),
                abort: abort_rx,
                budget: Arc::new(Semaphore::new(budget_units as usize)),
                budget_units,
            }));
        }
        SourcePlan::Replay(entries) => {
            tasks.spawn(run_replay(
                entries,
                plan.batch_size as usize,
                downstream,
                done_rx,
                counters.clone(),
            ));
        }
    }

    let mut failure = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(f))) => {
                    if failure.is_none() {
                        failure = Some(f);
                    }
                    let _ = abort_tx.send(true);
                }
                Some(Err(join_error)) => {
                    if failure.is_none() {
                        failure = Some(PipelineFailure {
                            pipeline: name.clone(),
                            stage: StageRef { plugin: "?".into(), role: Role::Source, index: 0 },
                            cause: Cause::Contract(format!("internal task failure: {join_error}")),
                        });
                    }
                    let _ = abort_tx.send(true);
                }
            },
            changed = outer_abort.changed(), if !*outer_abort.borrow() => {
                if changed.is_err() || *outer_abort.borrow() {
                    let _ = abort_tx.send(true);
                    tasks.abort_all();
                }
            }
        }
    }
    Report {
        name,
        sinks: sink_names,
        counters,
        elapsed: started.elapsed(),
        failure,
    }
}

struct SourceTask {
    pipeline: String,
    stage: StageRef,
    instance: Instance,
    batch_size: u32,
    downstream: Downstream,
    done: mpsc::UnboundedReceiver<u64>,
    sinks: usize,
    counters: Arc<Counters>,
    drain: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
    /// In-flight byte budget, in units of [`BUDGET_UNIT`] bytes.
    budget: Arc<Semaphore>,
    budget_units: u32,
}

/// Granularity of the in-flight byte budget.
const BUDGET_UNIT: usize = 1024;

/// Batches sent and not yet accepted by every sink, oldest first.
struct AckTracker {
    pending: VecDeque<InFlight>,
    first_seq: u64,
    /// Where the queue depth is published.
    counters: Arc<Counters>,
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

async fn run_source(mut task: SourceTask) -> Result<(), PipelineFailure> {
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
            ack(&mut task.instance, checkpoint, &task.counters)
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
                ack(&mut task.instance, checkpoint, &task.counters)
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
            ack(&mut task.instance, checkpoint, &task.counters)
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
            ack(&mut task.instance, checkpoint, &task.counters)
                .await
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// Feed dead letters back in: consecutive entries that failed at the same stage form a batch
/// that enters there. Waits until every batch is settled.
async fn run_replay(
    entries: Vec<Replayed>,
    batch_size: usize,
    downstream: Downstream,
    mut done: mpsc::UnboundedReceiver<u64>,
    counters: Arc<Counters>,
) -> Result<(), PipelineFailure> {
    let mut batches: Vec<Batch> = Vec::new();
    for Replayed { entry, message } in entries {
        let enter = match entry.stage.as_str() {
            "transform" => Enter::Transform(entry.stage_index.saturating_sub(1)),
            _ => Enter::Sink(entry.stage_index.saturating_sub(1)),
        };
        match batches.last_mut() {
            Some(last) if last.enter == enter && last.records.len() < batch_size => {
                last.records.push(message)
            }
            _ => batches.push(Batch {
                seq: batches.len() as u64,
                records: vec![message],
                enter,
            }),
        }
    }
    let mut outstanding = 0usize;
    for batch in batches {
        counters
            .polled
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        if !downstream.send(batch).await {
            return Ok(());
        }
        outstanding += 1;
    }
    drop(downstream);
    // Each sink reports every batch once.
    let mut reports = 0usize;
    let expected = outstanding * counters.written.len();
    while reports < expected {
        match done.recv().await {
            Some(_) => reports += 1,
            None => break,
        }
    }
    Ok(())
}

async fn ack(instance: &mut Instance, checkpoint: u64, counters: &Counters) -> Result<(), Cause> {
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
