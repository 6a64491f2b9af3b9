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

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::Role;
use crate::contract::{ErrorKind, Message, Outcome, PollResult, WitError};
use crate::plugin::{Instance, Trap};

/// How long a source that returned an empty batch rests before it is polled again.
const IDLE_PAUSE: Duration = Duration::from_millis(20);
/// Back-off after a `retryable` poll error, doubled up to [`MAX_POLL_BACKOFF`].
const POLL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(5);

/// One stage's plugin instance, ready to run (`init` done).
pub struct StageInstance {
    /// Name under `[plugins]`.
    pub plugin: String,
    /// The instance.
    pub instance: Instance,
}

/// A pipeline ready to run.
pub struct PipelinePlan {
    /// Pipeline name.
    pub name: String,
    /// Source.
    pub source: StageInstance,
    /// Transforms in order.
    pub transforms: Vec<StageInstance>,
    /// Sinks.
    pub sinks: Vec<StageInstance>,
    /// Largest batch per poll.
    pub batch_size: u32,
    /// Batches buffered between stages.
    pub buffer: usize,
}

/// Live counters of a pipeline, readable while it runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages the source produced.
    pub polled: AtomicU64,
    /// Messages transforms dropped.
    pub dropped: AtomicU64,
    /// Messages that reached the sink stage (after transforms).
    pub routed: AtomicU64,
    /// Messages each sink accepted, by sink position.
    pub written: Vec<AtomicU64>,
    /// Checkpoints acknowledged to the source.
    pub acked_batches: AtomicU64,
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
}

enum Downstream {
    Stage(mpsc::Sender<Batch>),
    Sinks(Vec<mpsc::Sender<Arc<Batch>>>),
}

impl Downstream {
    /// Send a batch on; `false` when the next stage is gone.
    async fn send(&self, batch: Batch) -> bool {
        match self {
            Downstream::Stage(tx) => tx.send(batch).await.is_ok(),
            Downstream::Sinks(txs) => {
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
    let sink_names: Vec<String> = plan.sinks.iter().map(|s| s.plugin.clone()).collect();
    let (abort_tx, abort_rx) = watch::channel(false);
    let mut outer_abort = control.abort.clone();
    let (done_tx, done_rx) = mpsc::unbounded_channel::<u64>();
    let sink_count = plan.sinks.len();

    let mut tasks: JoinSet<Result<(), PipelineFailure>> = JoinSet::new();

    // Sinks first, so every channel has its receiver.
    let mut sink_txs = Vec::new();
    for (i, sink) in plan.sinks.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Arc<Batch>>(plan.buffer);
        sink_txs.push(tx);
        let stage = StageRef {
            plugin: sink.plugin.clone(),
            role: Role::Sink,
            index: i + 1,
        };
        tasks.spawn(run_sink(
            name.clone(),
            stage,
            sink.instance,
            rx,
            done_tx.clone(),
            counters.clone(),
            i,
        ));
    }
    drop(done_tx);
    let mut downstream = Downstream::Sinks(sink_txs);
    for (i, transform) in plan.transforms.into_iter().enumerate().rev() {
        let (tx, rx) = mpsc::channel::<Batch>(plan.buffer);
        let stage = StageRef {
            plugin: transform.plugin.clone(),
            role: Role::Transform,
            index: i + 1,
        };
        tasks.spawn(run_transform(
            name.clone(),
            stage,
            transform.instance,
            rx,
            downstream,
            counters.clone(),
        ));
        downstream = Downstream::Stage(tx);
    }
    let source_stage = StageRef {
        plugin: plan.source.plugin.clone(),
        role: Role::Source,
        index: 1,
    };
    tasks.spawn(run_source(SourceTask {
        pipeline: name.clone(),
        stage: source_stage,
        instance: plan.source.instance,
        batch_size: plan.batch_size,
        downstream,
        done: done_rx,
        sinks: sink_count,
        counters: counters.clone(),
        drain: control.drain.clone(),
        abort: abort_rx,
    }));

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
}

/// Batches sent and not yet accepted by every sink, oldest first.
struct AckTracker {
    /// (seq, checkpoint, sinks still to finish)
    pending: VecDeque<(u64, u64, usize)>,
    first_seq: u64,
}

impl AckTracker {
    fn push(&mut self, seq: u64, checkpoint: u64, sinks: usize) {
        if self.pending.is_empty() {
            self.first_seq = seq;
        }
        self.pending.push_back((seq, checkpoint, sinks));
    }

    /// A sink finished batch `seq`. Returns the newest checkpoint that is now fully delivered.
    fn done(&mut self, seq: u64) -> Option<u64> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        if let Some(entry) = self.pending.get_mut(index) {
            entry.2 = entry.2.saturating_sub(1);
        }
        let mut newest = None;
        while let Some(&(_, checkpoint, 0)) = self.pending.front() {
            newest = Some(checkpoint);
            self.pending.pop_front();
            self.first_seq += 1;
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
    let mut tracker = AckTracker {
        pending: VecDeque::new(),
        first_seq: 0,
    };
    let mut seq = 0u64;
    let mut backoff = POLL_BACKOFF;
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
            let newest = pause_or_done(
                IDLE_PAUSE,
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
        task.counters
            .polled
            .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        tracker.push(seq, batch.checkpoint, task.sinks);
        let sent = match &downstream {
            Some(d) => {
                d.send(Batch {
                    seq,
                    records: batch.messages,
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

async fn run_transform(
    pipeline: String,
    stage: StageRef,
    mut instance: Instance,
    mut rx: mpsc::Receiver<Batch>,
    downstream: Downstream,
    counters: Arc<Counters>,
) -> Result<(), PipelineFailure> {
    let fail = |cause: Cause| PipelineFailure {
        pipeline: pipeline.clone(),
        stage: stage.clone(),
        cause,
    };
    while let Some(batch) = rx.recv().await {
        let inputs = batch.records.len();
        let records = if inputs == 0 {
            batch.records
        } else {
            let outcomes = instance
                .process(&batch.records)
                .await
                .map_err(|trap| fail(Cause::Trap(trap)))?;
            if outcomes.len() != inputs {
                return Err(fail(Cause::Contract(format!(
                    "`process` returned {} outcomes for {inputs} messages; it must return exactly \
                     one outcome per input, in order",
                    outcomes.len()
                ))));
            }
            let mut out = Vec::with_capacity(inputs);
            let mut dropped = 0u64;
            for (i, (message, outcome)) in batch.records.into_iter().zip(outcomes).enumerate() {
                match outcome {
                    Outcome::Keep => out.push(message),
                    Outcome::Drop => dropped += 1,
                    Outcome::Replace(replacements) => {
                        if replacements.is_empty() {
                            dropped += 1;
                        }
                        out.extend(replacements)
                    }
                    Outcome::Fail(error) => {
                        return Err(fail(Cause::Error {
                            function: "process",
                            error,
                            record: Some(i),
                        }));
                    }
                }
            }
            counters.dropped.fetch_add(dropped, Ordering::Relaxed);
            out
        };
        let batch = Batch {
            seq: batch.seq,
            records,
        };
        if matches!(downstream, Downstream::Sinks(_)) {
            counters
                .routed
                .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        }
        if !downstream.send(batch).await {
            return Ok(());
        }
    }
    Ok(())
}

async fn run_sink(
    pipeline: String,
    stage: StageRef,
    mut instance: Instance,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    done: mpsc::UnboundedSender<u64>,
    counters: Arc<Counters>,
    position: usize,
) -> Result<(), PipelineFailure> {
    let fail = |cause: Cause| PipelineFailure {
        pipeline: pipeline.clone(),
        stage: stage.clone(),
        cause,
    };
    while let Some(batch) = rx.recv().await {
        if !batch.records.is_empty() {
            let results = instance
                .write(&batch.records)
                .await
                .map_err(|trap| fail(Cause::Trap(trap)))?;
            if results.len() != batch.records.len() {
                return Err(fail(Cause::Contract(format!(
                    "`write` returned {} results for {} messages; it must return exactly one \
                     result per input, in order",
                    results.len(),
                    batch.records.len()
                ))));
            }
            if let Some((i, error)) = results
                .into_iter()
                .enumerate()
                .find_map(|(i, r)| r.err().map(|e| (i, e)))
            {
                return Err(fail(Cause::Error {
                    function: "write",
                    error,
                    record: Some(i),
                }));
            }
            if let Some(counter) = counters.written.get(position) {
                counter.fetch_add(batch.records.len() as u64, Ordering::Relaxed);
            }
        }
        // The source task may have finished already (abort); that is not this stage's failure.
        let _ = done.send(batch.seq);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_wait_for_every_sink_and_stay_in_order() {
        let mut t = AckTracker {
            pending: VecDeque::new(),
            first_seq: 0,
        };
        t.push(0, 10, 2);
        t.push(1, 20, 2);
        t.push(2, 30, 2);
        assert_eq!(t.done(1), None);
        assert_eq!(t.done(0), None);
        assert_eq!(t.done(0), Some(10));
        assert_eq!(t.done(1), Some(20));
        assert_eq!(t.done(2), None);
        assert_eq!(t.done(2), Some(30));
        assert!(t.pending.is_empty());
    }
}
