//! A stage with several instances (`concurrency = N`): one lane per instance, each a task with
//! its own [`Stage`] (its own retries, breaker and restarts), fed by one dispatcher task.
//!
//! - Without `partition_by`, whole batches go to the next free lane (one shared queue).
//! - With it, each batch is split by partition (see `partition`) and part `i` goes to lane `i`,
//!   so all records of a key meet one instance, in order.
//!
//! A transform's dispatcher hands batches on in source order: it waits for the oldest batch's
//! parts before it sends it downstream, while later batches are already being worked on (at
//! most `2 × N` batches at once). A sink's lanes report a batch done to the source's tracker
//! when its last part is written, in any order: the tracker acknowledges a checkpoint only
//! once every batch up to it is done. Every batch carries the swap generation read when it was
//! handed out, and each lane moves to that code before it starts the batch: all parts of one
//! batch meet the same version.

#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;

use super::failure::{Cause, PipelineFailure};
use super::flow::{Batch, Downstream, Enter};
use super::partition::Partitioner;
use super::stage::{Kind, SinkKind, Stage, TransformKind};
use super::swap::CodeWatch;
use crate::contract::Message;

/// The instances of one stage and how batches are spread over them.
pub(super) struct Lanes<K: Kind> {
    /// One stage per instance (2 or more).
    pub(super) stages: Vec<Stage<K>>,
    /// `partition_by`, if set.
    pub(super) partition: Option<Arc<Partitioner>>,
    /// Swaps of the plugin's code, read when a batch is handed out.
    pub(super) code: Option<CodeWatch>,
}

impl<K: Kind> Lanes<K> {
    fn generation(&self) -> Option<u64> {
        self.code.as_ref().map(|c| c.borrow().generation)
    }

    fn failure(&self, what: &str) -> PipelineFailure {
        let first = self.stages.first();
        PipelineFailure {
            pipeline: first.map(|s| s.policy.pipeline.clone()).unwrap_or_default(),
            stage: first
                .map(|s| s.at.clone())
                .unwrap_or_else(|| super::StageRef {
                    plugin: "?".into(),
                    role: crate::config::Role::Transform,
                    index: 0,
                }),
            cause: Cause::Host(what.to_owned()),
        }
    }

    /// Start one task per lane; returns where to send each lane's work.
    fn spawn<J: Send + 'static>(
        &mut self,
        tasks: &mut JoinSet<Result<(), PipelineFailure>>,
        work: impl Fn(Stage<K>, Input<J>) -> LaneTask,
    ) -> Vec<mpsc::Sender<J>> {
        let n = self.stages.len();
        let stages = std::mem::take(&mut self.stages);
        if self.partition.is_some() {
            let mut txs = Vec::with_capacity(n);
            for stage in stages {
                let (tx, rx) = mpsc::channel(2);
                txs.push(tx);
                tasks.spawn(work(stage, Input::Own(rx)));
            }
            txs
        } else {
            let (tx, rx) = mpsc::channel(n);
            let shared = Arc::new(Mutex::new(rx));
            for stage in stages {
                tasks.spawn(work(stage, Input::Shared(shared.clone())));
            }
            vec![tx]
        }
    }
}

type LaneTask = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), PipelineFailure>> + Send + 'static>,
>;

/// Where a lane takes its work from: its own queue (partitioned) or the shared one.
enum Input<J> {
    Own(mpsc::Receiver<J>),
    Shared(Arc<Mutex<mpsc::Receiver<J>>>),
}

impl<J> Input<J> {
    async fn next(&mut self) -> Option<J> {
        match self {
            Input::Own(rx) => rx.recv().await,
            Input::Shared(rx) => rx.lock().await.recv().await,
        }
    }
}

/// Split a batch's records for the lanes: one part per lane when partitioned, else one part
/// for whichever lane is free. Returns `(lane, records)` pairs, empty parts left out.
fn parts(
    partition: Option<&Partitioner>,
    records: Vec<Message>,
    lanes: usize,
) -> Vec<(usize, Vec<Message>)> {
    match partition {
        Some(p) => p
            .split(records, lanes)
            .into_iter()
            .enumerate()
            .filter(|(_, part)| !part.is_empty())
            .collect(),
        None => vec![(0, records)],
    }
}

type Answer = Result<Vec<Message>, PipelineFailure>;

/// A part of a batch for a transform lane.
struct TransformJob {
    generation: Option<u64>,
    records: Vec<Message>,
    reply: oneshot::Sender<Answer>,
}

fn transform_lane(mut stage: Stage<TransformKind>, mut input: Input<TransformJob>) -> LaneTask {
    Box::pin(async move {
        while let Some(job) = input.next().await {
            let answer = stage.transform(job.records, job.generation).await;
            let failed = answer.is_err();
            let _ = job.reply.send(answer);
            if failed {
                break;
            }
        }
        Ok(())
    })
}

/// A transform stage with several instances; output in source order.
pub(super) async fn run_transform(
    mut lanes: Lanes<TransformKind>,
    position: usize,
    mut rx: mpsc::Receiver<Batch>,
    downstream: Downstream,
) -> Result<(), PipelineFailure> {
    let n = lanes.stages.len();
    let gone = lanes.failure("an instance of the stage stopped without answering");
    let mut tasks = JoinSet::new();
    let txs = lanes.spawn(&mut tasks, transform_lane);
    let mut ordered = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            Some(batch) = ordered.next(), if !ordered.is_empty() => {
                let batch: Batch = batch?;
                if !downstream.send(batch).await {
                    return Ok(());
                }
            }
            received = rx.recv(), if open && ordered.len() < 2 * n => {
                let Some(mut batch) = received else {
                    open = false;
                    continue;
                };
                let applies = match batch.enter {
                    Enter::Source => true,
                    Enter::Transform(first) => position >= first,
                    Enter::Sink(_) => false,
                };
                if !applies || batch.records.is_empty() {
                    ordered.push_back(futures_util::future::Either::Left(
                        std::future::ready(Ok(batch)),
                    ));
                    continue;
                }
                let generation = lanes.generation();
                let records = std::mem::take(&mut batch.records);
                let mut replies = Vec::new();
                for (lane, records) in parts(lanes.partition.as_deref(), records, n) {
                    let (reply, answer) = oneshot::channel();
                    let job = TransformJob { generation, records, reply };
                    let sent = match txs.get(lane).or(txs.first()) {
                        Some(tx) => tx.send(job).await.is_ok(),
                        None => false,
                    };
                    if !sent {
                        // The lane ended on a failure, which an earlier batch's answer carries.
                        open = false;
                    }
                    replies.push(answer);
                }
                let gone = gone.clone();
                ordered.push_back(futures_util::future::Either::Right(Box::pin(async move {
                    for answer in replies {
                        match answer.await {
                            Ok(Ok(mut records)) => batch.records.append(&mut records),
                            Ok(Err(failure)) => return Err(failure),
                            Err(_) => return Err(gone),
                        }
                    }
                    Ok(batch)
                })));
            }
            else => break,
        }
    }
    drop(txs);
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(failure)) = joined {
            return Err(failure);
        }
    }
    Ok(())
}

/// A part of a batch for a sink lane, and the batch it belongs to.
struct SinkJob {
    generation: Option<u64>,
    records: Part,
    tally: Arc<Tally>,
}

/// The whole batch (shared with the other sinks) or this lane's part of it.
enum Part {
    Whole(Arc<Batch>),
    Some(Vec<Message>),
}

/// Parts of one batch still being written; the lane that writes the last reports it done.
struct Tally {
    seq: u64,
    remaining: AtomicUsize,
}

/// A sink stage with several instances; every batch is reported done once all its parts are
/// written (or settled).
pub(super) async fn run_sink(
    mut lanes: Lanes<SinkKind>,
    position: usize,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    done: mpsc::UnboundedSender<u64>,
) -> Result<(), PipelineFailure> {
    let n = lanes.stages.len();
    let broken = lanes.failure("internal task failure");
    let mut tasks = JoinSet::new();
    let lane_done = done.clone();
    let work = move |stage: Stage<SinkKind>, input: Input<SinkJob>| -> LaneTask {
        Box::pin(sink_lane(stage, input, position, lane_done.clone()))
    };
    let mut txs = Some(lanes.spawn(&mut tasks, work));
    loop {
        tokio::select! {
            joined = tasks.join_next(), if !tasks.is_empty() => match joined {
                Some(Ok(Err(failure))) => return Err(failure),
                Some(Err(e)) => {
                    let mut failure = broken;
                    failure.cause = Cause::Host(format!("internal task failure: {e}"));
                    return Err(failure);
                }
                _ => {}
            },
            received = rx.recv(), if txs.is_some() => {
                let Some(batch) = received else {
                    // Lanes finish what they were given, then end.
                    txs = None;
                    continue;
                };
                let Some(queues) = &txs else { continue };
                let applies = match batch.enter {
                    Enter::Sink(only) => only == position,
                    _ => true,
                };
                if !applies || batch.records.is_empty() {
                    let _ = done.send(batch.seq);
                    continue;
                }
                let generation = lanes.generation();
                let work: Vec<(usize, Part)> = match lanes.partition.as_deref() {
                    Some(p) => parts(Some(p), batch.records.clone(), n)
                        .into_iter()
                        .map(|(lane, records)| (lane, Part::Some(records)))
                        .collect(),
                    None => vec![(0, Part::Whole(batch.clone()))],
                };
                let tally = Arc::new(Tally {
                    seq: batch.seq,
                    remaining: AtomicUsize::new(work.len()),
                });
                for (lane, records) in work {
                    let job = SinkJob { generation, records, tally: tally.clone() };
                    if let Some(tx) = queues.get(lane).or(queues.first()) {
                        // A lane that is gone failed; its failure comes from `join_next`.
                        let _ = tx.send(job).await;
                    }
                }
            }
            else => break,
        }
    }
    Ok(())
}

async fn sink_lane(
    mut stage: Stage<SinkKind>,
    mut input: Input<SinkJob>,
    position: usize,
    done: mpsc::UnboundedSender<u64>,
) -> Result<(), PipelineFailure> {
    while let Some(job) = input.next().await {
        let records: &[Message] = match &job.records {
            Part::Whole(batch) => &batch.records,
            Part::Some(records) => records,
        };
        let written = stage.deliver(records, job.generation).await?;
        if let Some(counter) = stage.policy.counters.written.get(position) {
            counter.fetch_add(written, Ordering::Relaxed);
        }
        if job.tally.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = done.send(job.tally.seq);
        }
    }
    Ok(())
}
