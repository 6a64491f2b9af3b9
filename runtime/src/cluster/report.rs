//! What nodes publish about themselves (their heartbeat) and what `patchbay cluster status`
//! gathers from the buckets: deployed pipelines, nodes, leases.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Cluster, definition, name_of};

/// A node's heartbeat: who it is and what it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `--name`.
    pub name: String,
    /// `--tags`.
    pub tags: BTreeMap<String, String>,
    /// The patchbay version it runs.
    pub version: String,
    /// Seconds since it joined.
    pub uptime_secs: u64,
    /// Its pipelines.
    pub pipelines: Vec<PipelineInfo>,
}

/// One pipeline on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineInfo {
    /// Pipeline name.
    pub name: String,
    /// The slot it holds (1 for a single source); 0 when it holds none (refused here).
    pub slot: u32,
    /// The definition's revision it runs (its generation).
    pub revision: u64,
    /// `running`, `finished`, `stopping` or `failed: why`.
    pub state: String,
    /// Plugin name → sha256 of the component it runs.
    pub plugins: BTreeMap<String, String>,
    /// Messages polled from the source.
    pub polled: u64,
    /// Messages written, over all sinks.
    pub written: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Messages polled per second over the last heartbeat.
    pub rate: f64,
    /// Swaps of its plugins' code since it started here (rolling upgrades).
    #[serde(default)]
    pub generation: u64,
    /// Its answer to the rolling upgrade in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::rollout::Answer>,
}

/// A deployed pipeline, as its definition says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployed {
    /// Pipeline name.
    pub name: String,
    /// The definition's revision.
    pub revision: u64,
    /// Plugin name → sha256.
    pub plugins: BTreeMap<String, String>,
}

/// A held lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Pipeline name.
    pub pipeline: String,
    /// Slot.
    pub slot: u32,
    /// The node holding it.
    pub node: String,
}

/// The whole cluster, from its buckets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Deployed pipelines.
    pub pipelines: Vec<Deployed>,
    /// Live nodes.
    pub nodes: Vec<NodeInfo>,
    /// Held leases.
    pub leases: Vec<LeaseInfo>,
}

impl ClusterStatus {
    /// Read it from the buckets.
    pub async fn gather(cluster: &Cluster) -> anyhow::Result<ClusterStatus> {
        let mut pipelines = Vec::new();
        for entry in Cluster::entries(&cluster.pipelines).await? {
            let text = String::from_utf8_lossy(&entry.value);
            pipelines.push(Deployed {
                name: name_of(&entry.key),
                revision: entry.revision,
                plugins: definition::plugins(&text).unwrap_or_default(),
            });
        }
        let mut nodes = Vec::new();
        for entry in Cluster::entries(&cluster.nodes).await? {
            match serde_json::from_slice::<NodeInfo>(&entry.value) {
                Ok(node) => nodes.push(node),
                Err(e) => tracing::warn!("node entry `{}` is unreadable: {e}", entry.key),
            }
        }
        let mut leases = Vec::new();
        for entry in Cluster::entries(&cluster.leases).await? {
            let Some((pipeline, slot)) = entry.key.rsplit_once('.') else {
                continue;
            };
            leases.push(LeaseInfo {
                pipeline: name_of(pipeline),
                slot: slot.parse().unwrap_or(0),
                node: serde_json::from_slice::<super::lease::Holder>(&entry.value)
                    .map(|h| h.node)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&entry.value).into_owned()),
            });
        }
        Ok(ClusterStatus {
            pipelines,
            nodes,
            leases,
        })
    }

    /// As text, for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "pipelines ({}):", self.pipelines.len());
        for p in &self.pipelines {
            let plugins: Vec<String> = p
                .plugins
                .iter()
                .map(|(name, sha)| format!("{name}@{}", short(sha)))
                .collect();
            let holders: Vec<String> = self
                .leases
                .iter()
                .filter(|l| l.pipeline == p.name)
                .map(|l| format!("{}#{}", l.node, l.slot))
                .collect();
            let _ = writeln!(
                out,
                "  {}  revision {}  plugins {}  leases {}",
                p.name,
                p.revision,
                plugins.join(", "),
                if holders.is_empty() {
                    "none".to_owned()
                } else {
                    holders.join(", ")
                }
            );
        }
        let _ = writeln!(out, "nodes ({}):", self.nodes.len());
        for n in &self.nodes {
            let tags: Vec<String> = n.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                out,
                "  {}  up {}s  patchbay {}{}",
                n.name,
                n.uptime_secs,
                n.version,
                if tags.is_empty() {
                    String::new()
                } else {
                    format!("  tags {}", tags.join(","))
                }
            );
            for p in &n.pipelines {
                if p.slot == 0 {
                    // Refused here: no slot, nothing ran.
                    let _ = writeln!(out, "    {}  revision {}  {}", p.name, p.revision, p.state);
                    continue;
                }
                let _ = writeln!(
                    out,
                    "    {}#{}  revision {}  generation {}  {}  {} in, {} written{}, {:.0} msg/s",
                    p.name,
                    p.slot,
                    p.revision,
                    p.generation,
                    p.state,
                    p.polled,
                    p.written,
                    if p.dead_lettered > 0 {
                        format!(", {} dead-lettered", p.dead_lettered)
                    } else {
                        String::new()
                    },
                    p.rate
                );
            }
        }
        out
    }
}

/// The first 12 hex digits of a sha256, as status shows it.
pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
