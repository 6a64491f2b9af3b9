//! A node's part in rolling upgrades (see [`crate::cluster::rollout`]): prepare on `trial`,
//! publish on its turn, forget what was prepared when an upgrade is gone.

use std::collections::BTreeMap;

use super::Node;
use crate::cluster::rollout::{Answer, Phase, Rollout};
use crate::cluster::{Cluster, name_of};

impl Node {
    /// Answer the upgrades of pipelines this node runs: prepare on `trial`, publish when it is
    /// this node's turn, forget what was prepared when an upgrade is gone (halted).
    pub(super) async fn follow_rollouts(&mut self) {
        let entries = match Cluster::entries(&self.cluster.rollouts).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("cannot read the upgrades in progress: {e}");
                return;
            }
        };
        let rollouts: BTreeMap<String, Rollout> = entries
            .into_iter()
            .filter_map(|e| Some((name_of(&e.key), serde_json::from_slice(&e.value).ok()?)))
            .collect();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let Some(running) = self.running.get_mut(&name) else {
                continue;
            };
            let rollout = rollouts.get(&name).filter(|r| r.from == running.revision);
            let answered = running.answer.as_ref().map(|a| (a.id, a.result.as_str()));
            match rollout {
                None => {
                    running.candidates = None;
                    if answered.is_some_and(|(_, r)| r != "swapped") {
                        running.answer = None;
                    }
                }
                Some(r) if r.phase == Phase::Trial && answered.map(|(id, _)| id) != Some(r.id) => {
                    let r = r.clone();
                    self.trial(&name, &r).await;
                }
                Some(r)
                    if r.phase == Phase::Rolling
                        && r.next.as_deref() == Some(self.options.name.as_str())
                        && answered == Some((r.id, "ok")) =>
                {
                    let r = r.clone();
                    self.swap(&name, &r);
                }
                Some(_) => {}
            }
        }
    }

    /// Prepare every swap of upgrade `rollout` of pipeline `name`, and answer.
    async fn trial(&mut self, name: &str, rollout: &Rollout) {
        let mut prepared = Vec::new();
        let mut refused = None;
        for (plugin, sha) in &rollout.changes {
            if let Err(why) = self.fetch(sha).await {
                refused = Some(why);
                break;
            }
            let Some(swap) = self
                .running
                .get(name)
                .and_then(|r| r.swappables.get(plugin))
                .cloned()
            else {
                refused = Some(format!("pipeline `{name}` has no plugin `{plugin}` here"));
                break;
            };
            let path = self.cache.join(format!("{sha}.wasm"));
            match swap.prepare(&self.runtime, Some(&path), Some(sha)).await {
                Ok(candidate) => prepared.push((plugin.clone(), candidate)),
                Err(e) => {
                    refused = Some(format!(
                        "`{plugin}`@{}: {e}",
                        crate::cluster::report::short(sha)
                    ));
                    break;
                }
            }
        }
        let Some(running) = self.running.get_mut(name) else {
            return;
        };
        let result = match refused {
            Some(why) => {
                tracing::warn!("pipeline `{name}`: upgrade refused here: {why}");
                running.candidates = None;
                format!("refused: {why}")
            }
            None => {
                tracing::info!("pipeline `{name}`: upgrade prepared here (trial init ok)");
                running.candidates = Some((rollout.id, prepared));
                "ok".to_owned()
            }
        };
        running.answer = Some(Answer {
            id: rollout.id,
            result,
        });
    }

    /// Publish what was prepared for upgrade `rollout`: stages switch between batches.
    fn swap(&mut self, name: &str, rollout: &Rollout) {
        let Some(running) = self.running.get_mut(name) else {
            return;
        };
        let Some((id, prepared)) = running.candidates.take() else {
            return;
        };
        if id != rollout.id {
            return;
        }
        for (plugin, candidate) in prepared {
            let sha = candidate.sha256().to_owned();
            if let Some(swap) = running.swappables.get(&plugin) {
                let swapped = swap.publish(candidate);
                tracing::info!(
                    "pipeline `{name}`: plugin `{plugin}` swapped to {} (generation {})",
                    swapped.version,
                    swapped.generation
                );
                running.plugins.insert(plugin, sha);
            }
        }
        running.upgraded_to = Some(rollout.to.clone());
        running.answer = Some(Answer {
            id: rollout.id,
            result: "swapped".to_owned(),
        });
    }
}
