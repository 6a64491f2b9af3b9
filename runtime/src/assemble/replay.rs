//! Dead letters back into their pipeline: the checks both `patchbay dlq replay` and the admin
//! API's `POST /v1/dead-letters/replay` make on entries ([`check_entries`]), and the
//! [`Replayer`] a running process hands the admin API to replay chosen entries while the
//! pipeline itself goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::{Loaded, plan_replay};
use crate::config::{Config, PipelineDecl};
use crate::pipeline::{self, Control, DeadLetters, Entry, Replayed, StageKind};
use crate::plugin::Runtime;

/// Check that each entry belongs to `pipeline` and failed at a stage it still has, and decode
/// its message. `origin` names where the entries come from (a file), for the errors.
pub fn check_entries(
    pipeline: &PipelineDecl,
    entries: Vec<Entry>,
    origin: &str,
) -> Result<Vec<Replayed>, String> {
    let name = &pipeline.name;
    let mut replayed = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let where_ = format!("{origin}: entry {}", i + 1);
        if &entry.pipeline != name {
            return Err(format!(
                "{where_} belongs to pipeline `{}`, not `{name}`; replay it with --pipeline {}",
                entry.pipeline, entry.pipeline
            ));
        }
        let expected = match entry.stage {
            StageKind::Transform => pipeline.transforms.get(entry.stage_index.wrapping_sub(1)),
            StageKind::Sink => pipeline.sinks.get(entry.stage_index.wrapping_sub(1)),
        };
        match expected {
            Some(r) if r.name == entry.plugin => {}
            _ => {
                return Err(format!(
                    "{where_} failed at {} #{} (`{}`), which pipeline `{name}` no longer has at \
                     that place; restore the pipeline as it was, or edit the entry's stage_index",
                    entry.stage, entry.stage_index, entry.plugin
                ));
            }
        }
        let message = entry
            .message
            .to_message()
            .map_err(|e| format!("{where_}: {e}"))?;
        replayed.push(Replayed { entry, message });
    }
    Ok(replayed)
}

/// What one replay did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replay {
    /// Pipeline.
    pub pipeline: String,
    /// Entries taken from the dead-letter file and sent through.
    pub replayed: u64,
    /// Of them, delivered to every sink they were meant for.
    pub delivered: u64,
    /// Of them, failed again (back in the dead-letter file, at its end).
    pub dead_lettered_again: u64,
}

/// Why a replay did not happen, or stopped.
#[derive(Debug)]
pub enum ReplayError {
    /// No such pipeline, or not one whose dead letters are in a file here.
    Unknown(String),
    /// The request names entries that are not there, or that cannot go back.
    Refused(String),
    /// The replay started and stopped on a failure; the entries are back in the file.
    Failed(String),
}

/// Replays chosen dead letters of the running pipelines: each entry is taken out of the live
/// dead-letter file, run through fresh instances of its pipeline's stages (as `dlq replay`
/// does) and, failing again, stored again through the same channel the live pipeline writes
/// to. One replay at a time.
pub struct Replayer {
    runtime: Arc<Runtime>,
    config: Arc<Config>,
    loaded: Arc<Loaded>,
    live: BTreeMap<String, Arc<DeadLetters>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Replayer {
    /// For the pipelines of `config` whose dead letters go to the files in `live`.
    pub fn new(
        runtime: Arc<Runtime>,
        config: Arc<Config>,
        loaded: Arc<Loaded>,
        live: BTreeMap<String, Arc<DeadLetters>>,
    ) -> Replayer {
        Replayer {
            runtime,
            config,
            loaded,
            live,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Replay the entries at 1-based positions `numbers` of pipeline `name`'s dead-letter file.
    pub async fn replay(
        &self,
        name: &str,
        numbers: &BTreeSet<usize>,
    ) -> Result<Replay, ReplayError> {
        let _one = self.one_at_a_time.lock().await;
        let (Some(decl), Some(channel)) = (
            self.config.pipelines.iter().find(|p| p.name == name),
            self.live.get(name),
        ) else {
            let names: Vec<&str> = self.live.keys().map(String::as_str).collect();
            return Err(ReplayError::Unknown(format!(
                "no pipeline `{name}` with a dead-letter file; replayable here: {}",
                names.join(", ")
            )));
        };
        let origin = channel.path().display().to_string();
        // Check before anything is taken out of the file.
        let all = channel.entries().map_err(ReplayError::Refused)?;
        if let Some(past) = numbers.iter().find(|&&n| n == 0 || n > all.len()) {
            return Err(ReplayError::Refused(format!(
                "no dead letter `{name}:{past}`: pipeline `{name}` has {} (ids change after a \
                 replay; list them again)",
                all.len()
            )));
        }
        let chosen: Vec<Entry> = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| numbers.contains(&(i + 1)))
            .map(|(_, e)| e)
            .collect();
        check_entries(decl, chosen, &origin).map_err(ReplayError::Refused)?;
        let taken = channel.take(numbers).map_err(ReplayError::Refused)?;
        let count = taken.len() as u64;
        let replayed = check_entries(decl, taken.clone(), &origin).map_err(ReplayError::Refused)?;
        let put_back = |why: String| {
            let back = match channel.append(&taken) {
                Ok(()) => format!("the {count} entries are back in {origin}"),
                Err(e) => format!("and they could not be put back: {e}"),
            };
            ReplayError::Failed(format!("{why}; {back}"))
        };
        let mut plan =
            match plan_replay(&self.runtime, &self.config, &self.loaded, decl, replayed).await {
                Ok(plan) => plan,
                Err(e) => return Err(put_back(e.to_string())),
            };
        // Failures go where the live pipeline's go, through its lock.
        plan.dead_letters = channel.clone();
        let (_drain_tx, drain) = watch::channel(false);
        let (_abort_tx, abort) = watch::channel(false);
        let counters = plan.counters();
        let report = pipeline::run(plan, Control { drain, abort }, counters).await;
        if let Some(failure) = report.failure {
            return Err(put_back(format!("replay stopped: {failure}")));
        }
        let again = report.counters.dead_lettered.load(Ordering::Relaxed);
        Ok(Replay {
            pipeline: name.to_owned(),
            replayed: count,
            delivered: count.saturating_sub(again),
            dead_lettered_again: again,
        })
    }
}
