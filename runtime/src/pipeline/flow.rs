//! How batches move between a pipeline's tasks: the batch itself (with where it joins the
//! pipeline), the channel to the next stage (or, after the last transform, to every sink through
//! the router), and the task loops of transform and sink stages.

#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::counters::Counters;
use super::failure::PipelineFailure;
use super::route::Router;
use super::stage::{SinkKind, Stage, TransformKind};
use crate::contract::Message;

/// A batch on its way, numbered in source order.
pub(super) struct Batch {
    pub(super) seq: u64,
    pub(super) records: Vec<Message>,
    pub(super) enter: Enter,
}

/// Where a batch joins the pipeline: at the start, or (replayed dead letters) at the stage that
/// failed it. Stages before that point pass it on untouched; other sinks skip it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Enter {
    /// From the source.
    Source,
    /// 0-based transform position.
    Transform(usize),
    /// 0-based sink position.
    Sink(usize),
}

/// Where a stage sends its batches on.
#[derive(Clone)]
pub(super) enum Downstream {
    Stage(mpsc::Sender<Batch>),
    Sinks {
        txs: Vec<mpsc::Sender<Arc<Batch>>>,
        router: Option<Arc<Router>>,
        counters: Arc<Counters>,
    },
}

impl Downstream {
    /// Send a batch on; `false` when the next stage is gone.
    pub(super) async fn send(&self, batch: Batch) -> bool {
        match self {
            Downstream::Stage(tx) => tx.send(batch).await.is_ok(),
            Downstream::Sinks {
                txs,
                router: Some(router),
                counters,
            } if !matches!(batch.enter, Enter::Sink(_)) => {
                let (per_sink, unrouted) = router.split(batch.records, txs.len());
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

/// The router's task (pipelines with routes): batches in, each split over the sinks by its
/// routes, in order.
pub(super) async fn run_router(
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

/// A transform task: batches in, transformed batches out, in order.
pub(super) async fn run_transform(
    mut stage: Stage<TransformKind>,
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
            batch.records = stage.transform(records, None).await?;
        }
        if !downstream.send(batch).await {
            return Ok(());
        }
    }
    Ok(())
}

/// A sink task: writes every batch, then reports it done to the source's tracker.
pub(super) async fn run_sink(
    mut stage: Stage<SinkKind>,
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
            let written = stage.deliver(&batch.records, None).await?;
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
pub(super) async fn run_idle_transform(
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
pub(super) async fn run_idle_sink(
    mut rx: mpsc::Receiver<Arc<Batch>>,
    done: mpsc::UnboundedSender<u64>,
) -> Result<(), PipelineFailure> {
    while let Some(batch) = rx.recv().await {
        let _ = done.send(batch.seq);
    }
    Ok(())
}
