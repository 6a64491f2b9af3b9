//! Replaying dead letters: entries go back through their pipeline, each batch entering at the
//! stage that failed it (`patchbay dlq replay`).

#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::counters::Counters;
use super::dead_letter::{Entry, StageKind};
use super::failure::PipelineFailure;
use super::flow::{Batch, Downstream, Enter};
use crate::contract::Message;

/// A dead letter to put back, with its message decoded.
pub struct Replayed {
    /// The entry as stored.
    pub entry: Entry,
    /// Its message.
    pub message: Message,
}

/// Feed dead letters back in: consecutive entries that failed at the same stage form a batch
/// that enters there. Waits until every batch is settled.
pub(super) async fn run_replay(
    entries: Vec<Replayed>,
    batch_size: usize,
    downstream: Downstream,
    mut done: mpsc::UnboundedReceiver<u64>,
    counters: Arc<Counters>,
) -> Result<(), PipelineFailure> {
    let mut batches: Vec<Batch> = Vec::new();
    for Replayed { entry, message } in entries {
        let enter = match entry.stage {
            StageKind::Transform => Enter::Transform(entry.stage_index.saturating_sub(1)),
            StageKind::Sink => Enter::Sink(entry.stage_index.saturating_sub(1)),
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
