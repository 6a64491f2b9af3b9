//! The pipeline layer: runs one pipeline as a chain of tasks joined by bounded channels.
//!
//! ```text
//! source ──batch──▶ transform 1 ──▶ … ──▶ transform n ──▶ (router) ──▶ every sink
//!   ▲                                                                   │
//!   └──────────────── ack(checkpoint) once all sinks are done ◀─────────┘
//! ```
//!
//! - `source`: polling, the in-flight byte budget, recovery from failed polls; `acks`: acks in
//!   order; `replay`: dead letters back in;
//! - `stage`: the one attempt/retry/breaker/settle loop of transforms and sinks; `breaker`,
//!   `retry`: its parts; `flow`: batches, channels and the stage tasks;
//! - `route`: content-based routing (CEL); `dead_letter`: the dead-letter channel;
//! - `swap`: how stages learn of new code; `failure`, `counters`: what it reports.
//!
//! A full channel stops the source from polling (back-pressure). Batches keep their order
//! through every stage, so a checkpoint is acknowledged only after every sink accepted every
//! record up to it. Plugins are reached only through `plugin::{SourceCalls, TransformCalls,
//! SinkCalls}`: this layer may import `plugin`, `contract` and `config`, never `reload`,
//! `assemble` or anything above them.

// A failure ends its pipeline: the error path is cold, and carrying the whole context by value
// keeps the code plain.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Breaker, OnError, PartitionBy, Retry, Role};
use crate::plugin::{SinkCalls, SourceCalls, Start, TransformCalls};

mod acks;
mod breaker;
mod counters;
pub mod dead_letter;
mod failure;
mod fields;
mod flow;
mod lanes;
mod native;
mod partition;
mod replay;
mod reply;
mod retry;
mod route;
mod source;
mod stage;
mod swap;
#[cfg(test)]
mod tests;
pub mod trace;

pub use counters::Counters;
pub use dead_letter::{DeadLetters, Entry, StageKind};
pub use failure::{Cause, PipelineFailure, StageRef};
use partition::Partitioner;
pub use replay::Replayed;
pub use reply::REQUEST;
pub use retry::backoff;
pub use route::Router;
pub use swap::{Code, CodeSender, CodeWatch};

use flow::{Batch, Downstream};
use source::{BUDGET_UNIT, SourceTask, run_source};
use stage::{Policy, Stage};

/// One stage's plugin instances, ready to run (`init` done), and how to start more.
pub struct StagePlan<C: ?Sized> {
    /// Name under `[plugins]`.
    pub plugin: String,
    /// The plugin's own version (from its metadata).
    pub version: String,
    /// The instances: one, or `concurrency` of them, sharing the plugin's host state.
    pub instances: Vec<Box<C>>,
    /// How batches are spread over several instances (`partition_by`).
    pub partition: Option<PartitionBy>,
    /// Starts a fresh instance after a trap, or of swapped-in code.
    pub start: Start<C>,
    /// Swaps of the plugin's code; `None` for a replay (which never swaps).
    pub code: Option<CodeWatch>,
}

/// A stage of a pipeline plan: running, or idle (a replay that does not reach it: its plugin
/// is not started, so its `init` has no side effects such as truncating a file).
pub enum Slot<C: ?Sized> {
    /// Started and initialised.
    Live(Box<StagePlan<C>>),
    /// Not started; batches pass it by.
    Idle {
        /// Plugin name.
        plugin: String,
    },
    /// The reply destination of a request/reply pipeline (sinks only, always the last).
    Reply,
}

impl<C: ?Sized> Slot<C> {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        match self {
            Slot::Live(s) => &s.plugin,
            Slot::Idle { plugin } => plugin,
            Slot::Reply => "reply",
        }
    }
}

/// Where a pipeline's messages come from.
pub enum SourcePlan {
    /// Its source plugin.
    Plugin {
        /// Name under `[plugins]`.
        plugin: String,
        /// The instances: one, or `concurrency` of them sharing the source's work (each told
        /// its number through `share` before it got here), each polling and acknowledging on
        /// its own.
        instances: Vec<SourceInstance>,
    },
    /// Dead letters put back through the pipeline, each entering at the stage that failed it.
    Replay(Vec<Replayed>),
}

/// One instance of a source, and how to start it afresh.
pub struct SourceInstance {
    /// The instance (`init` done).
    pub calls: Box<dyn SourceCalls>,
    /// Starts a fresh instance after a trap (its host state carries over; it is told the same
    /// instance number).
    pub start: Start<dyn SourceCalls>,
}

/// A pipeline ready to run.
pub struct PipelinePlan {
    /// Pipeline name.
    pub name: String,
    /// Source.
    pub source: SourcePlan,
    /// Transforms in order.
    pub transforms: Vec<Slot<dyn TransformCalls>>,
    /// Sinks.
    pub sinks: Vec<Slot<dyn SinkCalls>>,
    /// Largest batch per poll.
    pub batch_size: u32,
    /// Most bytes per poll, as `limits.max_output` counts them.
    pub batch_bytes: u64,
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
    /// How long a request waits for its answer (a source that answers requests).
    pub reply_timeout: Duration,
    /// Makes spans when `[telemetry]` is on (`trace.rs`).
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
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

/// The stages of a plan: one per instance (the first instance first).
fn stages<C: ?Sized, K: stage::Kind<Calls = C>>(
    plan: StagePlan<C>,
    role: Role,
    index: usize,
    policy: &Policy,
) -> Result<lanes::Lanes<K>, PipelineFailure> {
    let at = StageRef {
        plugin: plan.plugin,
        role,
        index,
    };
    let partition = match &plan.partition {
        Some(by) => Some(Arc::new(Partitioner::new(by).map_err(|e| {
            PipelineFailure {
                pipeline: policy.pipeline.clone(),
                stage: at.clone(),
                cause: Cause::Host(e),
            }
        })?)),
        None => None,
    };
    let generation = plan.code.as_ref().map_or(0, |c| c.borrow().generation);
    let stages = plan
        .instances
        .into_iter()
        .map(|instance| Stage {
            at: at.clone(),
            version: plan.version.clone(),
            instance,
            start: plan.start.clone(),
            code: plan.code.clone(),
            generation,
            policy: policy.clone(),
            circuit: breaker::Circuit::default(),
            spans: policy.tracer.clone().map(|tracer| {
                let stage = if role == Role::Sink {
                    "sink"
                } else {
                    "transform"
                };
                trace::StageSpans::new(tracer, &policy.pipeline, stage, index, &at.plugin)
            }),
        })
        .collect();
    Ok(lanes::Lanes {
        stages,
        partition,
        code: plan.code,
    })
}

type Task =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PipelineFailure>> + Send>>;

/// The task of a transform stage: one instance, or lanes.
fn transform_task(
    plan: StagePlan<dyn TransformCalls>,
    i: usize,
    policy: &Policy,
    rx: mpsc::Receiver<Batch>,
    downstream: Downstream,
) -> Task {
    match stages(plan, Role::Transform, i + 1, policy) {
        Err(failure) => Box::pin(std::future::ready(Err(failure))),
        Ok(mut lanes) if lanes.stages.len() == 1 => match lanes.stages.pop() {
            Some(stage) => Box::pin(flow::run_transform(stage, i, rx, downstream)),
            None => Box::pin(std::future::ready(Ok(()))),
        },
        Ok(lanes) => Box::pin(lanes::run_transform(lanes, i, rx, downstream)),
    }
}

/// The task of a sink stage: one instance, or lanes.
fn sink_task(
    plan: StagePlan<dyn SinkCalls>,
    i: usize,
    policy: &Policy,
    rx: mpsc::Receiver<Arc<Batch>>,
    done: mpsc::UnboundedSender<u64>,
) -> Task {
    match stages(plan, Role::Sink, i + 1, policy) {
        Err(failure) => Box::pin(std::future::ready(Err(failure))),
        Ok(mut lanes) if lanes.stages.len() == 1 => match lanes.stages.pop() {
            Some(stage) => Box::pin(flow::run_sink(stage, i, rx, done)),
            None => Box::pin(std::future::ready(Ok(()))),
        },
        Ok(lanes) => Box::pin(lanes::run_sink(lanes, i, rx, done)),
    }
}

pub async fn run(plan: PipelinePlan, control: Control, counters: Arc<Counters>) -> Report {
    let started = Instant::now();
    let name = plan.name.clone();
    let sink_names: Vec<String> = plan.sinks.iter().map(|s| s.plugin().to_owned()).collect();
    let (abort_tx, abort_rx) = watch::channel(false);
    let mut outer_abort = control.abort.clone();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let sink_count = plan.sinks.len();

    let mut tasks: JoinSet<Result<(), PipelineFailure>> = JoinSet::new();

    // A source that answers requests: the book of what its requests gathered.
    let book = match &plan.source {
        SourcePlan::Plugin { instances, .. } if instances.iter().any(|i| i.calls.replies()) => {
            Some(Arc::new(reply::Book::default()))
        }
        _ => None,
    };
    let policy = Policy {
        book: book.clone(),
        pipeline: name.clone(),
        on_error: plan.on_error,
        retry: plan.retry,
        breaker: plan.breaker,
        dead_letters: plan.dead_letters.clone(),
        counters: counters.clone(),
        tracer: plan.tracer.clone(),
    };
    // Sinks first, so every channel has its receiver.
    let mut sink_txs = Vec::new();
    for (i, sink) in plan.sinks.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Arc<Batch>>(plan.buffer);
        sink_txs.push(tx);
        match sink {
            Slot::Live(sink) => {
                tasks.spawn(sink_task(*sink, i, &policy, rx, done_tx.clone()));
            }
            Slot::Idle { .. } => {
                tasks.spawn(flow::run_idle_sink(rx, done_tx.clone()));
            }
            Slot::Reply => {
                let (book, counters) = (book.clone(), counters.clone());
                tasks.spawn(reply::run_reply(rx, done_tx.clone(), book, counters, i));
            }
        }
    }
    drop(done_tx);
    let mut downstream = Downstream::Sinks {
        txs: sink_txs,
        router: plan.router.clone(),
        counters: counters.clone(),
    };
    if plan.router.is_some() {
        // Routing on its own task: its CEL work runs beside the last stage's, not after it.
        let (tx, rx) = mpsc::channel::<Batch>(plan.buffer);
        tasks.spawn(flow::run_router(rx, downstream));
        downstream = Downstream::Stage(tx);
    }
    for (i, transform) in plan.transforms.into_iter().enumerate().rev() {
        let (tx, rx) = mpsc::channel::<Batch>(plan.buffer);
        match transform {
            Slot::Live(transform) => {
                tasks.spawn(transform_task(*transform, i, &policy, rx, downstream));
            }
            // (`Reply` is a destination; it never stands among transforms.)
            Slot::Idle { .. } | Slot::Reply => {
                tasks.spawn(flow::run_idle_transform(rx, downstream));
            }
        }
        downstream = Downstream::Stage(tx);
    }
    let budget_units =
        u32::try_from((plan.max_in_flight as usize / BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
    match plan.source {
        SourcePlan::Plugin { plugin, instances } => {
            let budget = Arc::new(Semaphore::new(budget_units as usize));
            let lanes = instances.len() as u64;
            if lanes > 1 {
                tracing::info!(
                    pipeline = %name,
                    "source `{plugin}` runs {lanes} instances, each polling and acknowledging \
                     its own share"
                );
            }
            // Each instance acknowledges its own batches: batch `seq` of instance `i` of `n`
            // travels as `seq * n + i`, and the sinks' "done" goes back to its instance.
            let mut dones = Vec::with_capacity(instances.len());
            for (lane, source) in instances.into_iter().enumerate() {
                let done = if lanes == 1 {
                    std::mem::replace(&mut done_rx, mpsc::unbounded_channel().1)
                } else {
                    let (tx, rx) = mpsc::unbounded_channel();
                    dones.push(tx);
                    rx
                };
                let task = SourceTask {
                    pipeline: name.clone(),
                    stage: StageRef {
                        plugin: plugin.clone(),
                        role: Role::Source,
                        index: 1,
                    },
                    instance: source.calls,
                    start: source.start,
                    retry: plan.retry,
                    batch_size: plan.batch_size,
                    batch_bytes: plan.batch_bytes,
                    done,
                    lane: (lane as u64, lanes),
                    sinks: sink_count,
                    counters: counters.clone(),
                    drain: control.drain.clone(),
                    abort: abort_rx.clone(),
                    budget: budget.clone(),
                    budget_units,
                    requests: book
                        .clone()
                        .map(|b| reply::Requests::new(b, plan.reply_timeout)),
                    spans: plan
                        .tracer
                        .clone()
                        .map(|tracer| trace::StageSpans::new(tracer, &name, "source", 1, &plugin)),
                };
                tasks.spawn(run_source(task, downstream.clone()));
            }
            drop(downstream);
            if lanes > 1 {
                tasks.spawn(source::route_done(done_rx, dones));
            }
        }
        SourcePlan::Replay(entries) => {
            tasks.spawn(replay::run_replay(
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
                // A task cancelled by the abort below is not a failure of its own.
                Some(Err(join_error)) if join_error.is_cancelled() => {}
                Some(Err(join_error)) => {
                    if failure.is_none() {
                        failure = Some(PipelineFailure {
                            pipeline: name.clone(),
                            stage: StageRef { plugin: "?".into(), role: Role::Source, index: 0 },
                            cause: Cause::Host(format!("internal task failure: {join_error}")),
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
