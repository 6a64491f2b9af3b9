//! A pipeline's source instances: numbered among a cluster's slots and told so through
//! `share` (see `source-shared-api` in wit/worlds.wit).

use std::sync::Arc;

use super::{StartInstance, Started, as_source, boxed_start};
use crate::pipeline::{SourceInstance, SourcePlan};
use crate::plugin::Instance;

/// Where one node's source instances stand among a cluster's: this node holds slot `slot` of
/// `slots` (see [`crate::cluster`]), and its instance `i` (1-based) of `n` is told
/// `share((slot - 1) * n + i, slots * n)`, so that a consumer or client name derived from the
/// number differs from every other node's and stays the same when the slot moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbering {
    /// This node's slot, 1-based.
    pub slot: u32,
    /// Slots in the cluster (at least `slot`).
    pub slots: u32,
}

impl Default for Numbering {
    fn default() -> Self {
        Numbering { slot: 1, slots: 1 }
    }
}

/// A source's instances, each told its number through `share` when there are several (and so is
/// every fresh instance that replaces one after a trap); `None` when one of them cannot share.
///
/// Planned for slot 1 of several with one local instance, a source that refuses to share runs
/// as the only instance (`true` comes back): slot 1 is what a single node would run.
pub(super) async fn shared_source(
    started: Started,
    pipeline: &str,
    numbering: Numbering,
) -> Result<(SourcePlan, bool), String> {
    let all: Vec<Instance> = std::iter::once(started.instance)
        .chain(started.more)
        .collect();
    let local = u32::try_from(all.len()).unwrap_or(u32::MAX);
    let mut n = local.saturating_mul(numbering.slots.max(1));
    let mut alone = false;
    let first = numbering.slot.saturating_sub(1).saturating_mul(local);
    let mut instances = Vec::with_capacity(all.len());
    for (number, mut instance) in (first + 1..).zip(all) {
        if n > 1 {
            let refused = match instance.share(number, n).await {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(why),
                Err(trap) => Some(trap.to_string()),
            };
            if let Some(why) = refused.clone()
                && numbering.slots > 1
                && numbering.slot == 1
                && local == 1
            {
                tracing::info!(
                    "pipeline `{pipeline}`: source `{}` runs on one node only: {why}",
                    started.plugin
                );
                n = 1;
                alone = true;
            } else if let Some(why) = refused {
                return Err(if numbering.slots > 1 {
                    format!(
                        "pipeline `{pipeline}`: source `{}` cannot run on {} nodes of the \
                         cluster: {why}",
                        started.plugin, numbering.slots
                    )
                } else {
                    format!(
                        "pipeline `{pipeline}`: source `{}` cannot run {n} instances \
                         (`concurrency = {n}` in [pipeline.stages.{}]): {why}",
                        started.plugin, started.plugin
                    )
                });
            }
        }
        let start = started.start.clone();
        let start: StartInstance = Arc::new(move || {
            let fresh = start();
            Box::pin(async move {
                let mut instance = fresh.await?;
                if n > 1 {
                    match instance.share(number, n).await {
                        Ok(Ok(())) => {}
                        Ok(Err(why)) => anyhow::bail!("`share({number}, {n})` refused: {why}"),
                        Err(trap) => return Err(trap.into()),
                    }
                }
                Ok(instance)
            })
        });
        instances.push(SourceInstance {
            calls: as_source(instance),
            start: boxed_start(start, as_source),
        });
    }
    Ok((
        SourcePlan::Plugin {
            plugin: started.plugin,
            instances,
        },
        alone,
    ))
}
