//! Rolling upgrades: deploying a definition that differs from the running one only in the
//! components of its transforms and sinks swaps them under traffic, one node at a time, instead
//! of restarting the pipeline. `patchbay cluster deploy` drives it through the rollouts bucket
//! (one entry per pipeline):
//!
//! 1. `trial`: every node running the pipeline fetches the new components and prepares the
//!    swap (compile, world and config-key checks, a trial `init` with its own grants), and
//!    says `ok` or why it refuses in its heartbeat. One refusal halts the upgrade: nothing was
//!    swapped anywhere, and the definition keeps its revision.
//! 2. `rolling`: node by node (`next`), the node publishes what it prepared (each stage switches
//!    between batches, as a hot reload does) and says `swapped`; the next node goes only then.
//! 3. The new definition is published; nodes that swapped adopt its revision without a restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use super::report::ClusterStatus;
use super::{Cluster, key_of};

/// How long a node may take to answer a trial or a swap.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Where an upgrade is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Every node prepares and answers.
    Trial,
    /// Nodes publish one at a time.
    Rolling,
}

/// One upgrade of one pipeline, as the rollouts bucket holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    /// Tells this upgrade from earlier ones.
    pub id: u64,
    /// The definition revision it upgrades from.
    pub from: u64,
    /// The definition it upgrades to (stored form).
    pub to: String,
    /// Plugin name → the new component's sha256.
    pub changes: BTreeMap<String, String>,
    /// Where it is.
    pub phase: Phase,
    /// While rolling: the node to swap now.
    pub next: Option<String>,
}

/// A node's answer, in its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answer {
    /// The upgrade it answers.
    pub id: u64,
    /// `ok`, `refused: why` or `swapped`.
    pub result: String,
}

/// The plugins whose components differ when `new` is `old` with only components of plugins
/// changed; `None` when anything else differs (or nothing does).
pub fn component_changes(old: &str, new: &str) -> Option<BTreeMap<String, String>> {
    let strip = |text: &str| -> Option<(Table, BTreeMap<String, String>)> {
        let mut doc: Table = toml::from_str(text).ok()?;
        let mut shas = BTreeMap::new();
        if let Some(Value::Table(plugins)) = doc.get_mut("plugins") {
            for (name, raw) in plugins.iter_mut() {
                if let Value::Table(raw) = raw {
                    raw.remove("path");
                    if let Some(Value::String(sha)) = raw.remove("sha256") {
                        shas.insert(name.clone(), sha);
                    }
                }
            }
        }
        Some((doc, shas))
    };
    let (old_doc, old_shas) = strip(old)?;
    let (new_doc, new_shas) = strip(new)?;
    if old_doc != new_doc {
        return None;
    }
    let changes: BTreeMap<String, String> = new_shas
        .into_iter()
        .filter(|(name, sha)| old_shas.get(name) != Some(sha))
        .collect();
    (!changes.is_empty()).then_some(changes)
}

/// The source plugin's name of a stored definition.
pub fn source_of(text: &str) -> Option<String> {
    let doc: Table = toml::from_str(text).ok()?;
    doc.get("pipeline")?
        .as_array()?
        .first()?
        .get("source")?
        .as_str()
        .map(ToOwned::to_owned)
}

/// How a rolling upgrade ended.
pub enum Rolled {
    /// No node runs the pipeline at that revision: publish the definition as usual.
    NobodyRuns,
    /// Every node swapped; the definition is published at this revision.
    Done(u64),
}

/// Drive the upgrade of pipeline `name` from revision `from` to definition `to`, saying what
/// happens through `say`. `Err`: it halted, with why; nodes that had not swapped keep the old
/// version, and the definition keeps its revision.
pub async fn roll(
    cluster: &Cluster,
    name: &str,
    from: u64,
    to: &str,
    changes: BTreeMap<String, String>,
    say: &mut dyn FnMut(String),
) -> anyhow::Result<Rolled> {
    let key = key_of(name);
    let status = ClusterStatus::gather(cluster).await?;
    let mut targets: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| {
            n.pipelines
                .iter()
                .any(|p| p.name == name && p.revision == from && p.state == "running")
        })
        .map(|n| n.name.clone())
        .collect();
    targets.sort();
    if targets.is_empty() {
        return Ok(Rolled::NobodyRuns);
    }
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut rollout = Rollout {
        id,
        from,
        to: to.to_owned(),
        changes: changes.clone(),
        phase: Phase::Trial,
        next: None,
    };
    let listed: Vec<String> = changes
        .iter()
        .map(|(p, sha)| format!("{p}@{}", super::report::short(sha)))
        .collect();
    say(format!(
        "pipeline `{name}`: rolling upgrade of {} on {} node{} ({}): trial first",
        listed.join(", "),
        targets.len(),
        if targets.len() == 1 { "" } else { "s" },
        targets.join(", ")
    ));
    put(cluster, &key, &rollout).await?;
    let answers = wait_for(cluster, name, id, &targets, |r| r != "pending").await;
    let answers = match answers {
        Ok(answers) => answers,
        Err(e) => return halt(cluster, &key, name, from, e.to_string()).await,
    };
    let refused: Vec<String> = answers
        .iter()
        .filter(|(_, r)| r.as_str() != "ok")
        .map(|(node, r)| format!("node {node}: {r}"))
        .collect();
    if !refused.is_empty() {
        return halt(cluster, &key, name, from, refused.join("; ")).await;
    }
    say("  trial init ok on every node".to_owned());
    rollout.phase = Phase::Rolling;
    for node in &targets {
        rollout.next = Some(node.clone());
        put(cluster, &key, &rollout).await?;
        let swapped = wait_for(cluster, name, id, std::slice::from_ref(node), |r| {
            r == "swapped" || r.starts_with("refused")
        })
        .await;
        match swapped {
            Ok(answers) if answers.values().all(|r| r == "swapped") => {
                say(format!("  {node}: swapped"));
            }
            Ok(answers) => {
                let why = answers.values().cloned().collect::<Vec<_>>().join("; ");
                return halt(cluster, &key, name, from, format!("node {node}: {why}")).await;
            }
            Err(e) => return halt(cluster, &key, name, from, e.to_string()).await,
        }
    }
    let revision = cluster
        .pipelines
        .put(key.as_str(), to.to_owned().into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot publish pipeline `{name}`: {e}"))?;
    let _ = cluster.rollouts.purge(key.as_str()).await;
    Ok(Rolled::Done(revision))
}

async fn put(cluster: &Cluster, key: &str, rollout: &Rollout) -> anyhow::Result<()> {
    let value = serde_json::to_vec(rollout)?;
    cluster
        .rollouts
        .put(key, value.into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot publish the upgrade: {e}"))?;
    Ok(())
}

async fn halt(
    cluster: &Cluster,
    key: &str,
    name: &str,
    from: u64,
    why: String,
) -> anyhow::Result<Rolled> {
    let _ = cluster.rollouts.purge(key).await;
    anyhow::bail!(
        "pipeline `{name}`: upgrade halted: {why}; nodes that had not swapped keep the version \
         they run, and the definition stays at revision {from}"
    )
}

/// Poll heartbeats until every node of `nodes` answered upgrade `id` with a result `done`
/// accepts; node → result.
async fn wait_for(
    cluster: &Cluster,
    name: &str,
    id: u64,
    nodes: &[String],
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + ANSWER_WITHIN;
    loop {
        let status = ClusterStatus::gather(cluster).await?;
        let mut answers = BTreeMap::new();
        for node in nodes {
            let Some(info) = status.nodes.iter().find(|n| &n.name == node) else {
                anyhow::bail!("node {node} left the cluster during the upgrade");
            };
            let answer = info
                .pipelines
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.rollout.as_ref())
                .filter(|a| a.id == id)
                .map(|a| a.result.clone());
            if let Some(result) = answer.filter(|r| done(r)) {
                answers.insert(node.clone(), result);
            }
        }
        if answers.len() == nodes.len() {
            return Ok(answers);
        }
        if Instant::now() > deadline {
            let silent: Vec<&str> = nodes
                .iter()
                .filter(|n| !answers.contains_key(*n))
                .map(String::as_str)
                .collect();
            anyhow::bail!(
                "no answer from {} within {}s",
                silent.join(", "),
                ANSWER_WITHIN.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(tag_sha: &str, batch: u32) -> String {
        format!(
            "[plugins.tag]\npath = \"patchbay-store:{tag_sha}\"\nsha256 = \"{tag_sha}\"\n\
             [plugins.src]\npath = \"patchbay-store:{s}\"\nsha256 = \"{s}\"\n\
             [[pipeline]]\nname = \"p\"\nsource = \"src\"\ntransforms = [\"tag\"]\nbatch_size = {batch}\n",
            s = "c".repeat(64)
        )
    }

    #[test]
    fn only_a_change_of_components_is_rolled() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let changes = component_changes(&def(&a, 10), &def(&b, 10)).unwrap();
        assert_eq!(
            changes.into_iter().collect::<Vec<_>>(),
            [("tag".to_owned(), b.clone())]
        );
        // Anything else changed: a restart, not a swap. Nothing changed: nothing to roll.
        assert!(component_changes(&def(&a, 10), &def(&b, 20)).is_none());
        assert!(component_changes(&def(&a, 10), &def(&a, 10)).is_none());
        assert_eq!(source_of(&def(&a, 10)).as_deref(), Some("src"));
    }
}
