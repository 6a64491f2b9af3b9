//! `patchbay node`: one member of a cluster. Its keeper heartbeats (what it runs, with rates)
//! and renews its leases every [`TICK`] on a task of its own; its main loop, every [`TICK`],
//! reads the pipeline definitions and upgrades, and
//!
//! - stops what was undeployed or redeployed (drain, then release the lease);
//! - for each definition it may run (its placement's tags are among the node's) and does not
//!   run yet: fetches the plugins into its cache by sha256 (checked), then takes a slot lease
//!   and starts the pipeline. A pipeline whose source can share its work (exports
//!   `source-shared-api`) has one slot per eligible node, up to `placement.nodes`; any other
//!   has one slot, so it runs on exactly one node.
//!
//! On SIGTERM or Ctrl-C it drains its pipelines, releases their leases and leaves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::keeper::Keeper;
use super::lease::{Holder, Lease};
use super::report::{NodeInfo, PipelineInfo};
use super::rollout::Answer;
use super::{Cluster, TICK, definition, key_of, name_of, state};
use crate::admin::{Admin, PipelineStatus};
use crate::assemble::{self, Loaded, Numbering};
use crate::config::Config;
use crate::pipeline::{self, Control, Counters, Report};
use crate::plugin::Runtime;
use crate::reload::Candidate;

mod upgrade;

/// Who this node is.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Its unique name in the cluster.
    pub name: String,
    /// Its tags, matched by pipelines' `placement.tags`.
    pub tags: BTreeMap<String, String>,
    /// Relative paths of definitions resolve here; plugins are cached in `.patchbay/plugins`.
    pub workdir: PathBuf,
}

/// A pipeline this node runs (or ran to its end and still holds).
struct Running {
    revision: u64,
    /// The slot it holds (the keeper renews the lease).
    slot: u32,
    plugins: BTreeMap<String, String>,
    counters: Arc<Counters>,
    drain: watch::Sender<bool>,
    abort: watch::Sender<bool>,
    task: Option<JoinHandle<Report>>,
    /// What the node's admin API shows of it.
    status: Arc<PipelineStatus>,
    state: String,
    last_polled: u64,
    rate: f64,
    /// Every plugin of it, swappable (rolling upgrades).
    swappables: assemble::Swappables,
    /// The swaps prepared for the upgrade in progress: its id, and the new code by plugin.
    candidates: Option<(u64, Vec<(String, Candidate)>)>,
    /// This node's answer to the upgrade in progress.
    answer: Option<Answer>,
    /// The stored definition it runs since a rolling upgrade swapped its code, until that
    /// definition's revision is published and adopted.
    upgraded_to: Option<String>,
}

/// A definition loaded and checked here, kept until its revision changes.
struct Prepared {
    revision: u64,
    config: Config,
    loaded: Loaded,
    /// The source exports `source-shared-api` (whether it accepts sharing, with its
    /// configuration, the holder of slot 1 finds out).
    shared: bool,
    plugins: BTreeMap<String, String>,
}

/// A definition this node could not run: tried again after [`RETRY`] (what failed may be
/// passing, e.g. a broker down or a stream not created yet), or at once for a new revision.
struct Refused {
    revision: u64,
    why: String,
    at: Instant,
}

/// How long a node waits before trying a definition it could not run again.
const RETRY: Duration = Duration::from_secs(10);

struct Node {
    runtime: Arc<Runtime>,
    cluster: Cluster,
    options: NodeOptions,
    cache: PathBuf,
    started: Instant,
    running: BTreeMap<String, Running>,
    prepared: BTreeMap<String, Prepared>,
    refused: BTreeMap<String, Refused>,
    stopping: Vec<JoinHandle<()>>,
    admin: Option<Arc<Admin>>,
    keeper: Arc<Keeper>,
}

/// Join the cluster and work until `shutdown` resolves; `admin` (the node's admin API, when it
/// serves one) is kept up to date with the pipelines it runs.
pub async fn run(
    runtime: Arc<Runtime>,
    cluster: Cluster,
    options: NodeOptions,
    admin: Option<Arc<Admin>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let cache = options.workdir.join(".patchbay").join("plugins");
    std::fs::create_dir_all(&cache)
        .map_err(|e| anyhow::anyhow!("cannot create the plugin cache {}: {e}", cache.display()))?;
    if let Ok(Some(entry)) = cluster.nodes.entry(options.name.as_str()).await
        && entry.operation == kv::Operation::Put
    {
        anyhow::bail!(
            "a node named `{}` is already in the cluster (its last heartbeat is under {}s old); \
             give this one another --name, or, if that node was just stopped, start again once \
             its entry has expired",
            options.name,
            super::NODE_TTL.as_secs()
        );
    }
    let keeper = Keeper::start(
        cluster.nodes.clone(),
        cluster.leases.clone(),
        options.name.clone(),
    );
    let mut node = Node {
        runtime,
        cluster,
        cache,
        started: Instant::now(),
        options,
        running: BTreeMap::new(),
        prepared: BTreeMap::new(),
        refused: BTreeMap::new(),
        stopping: Vec::new(),
        admin,
        keeper,
    };
    tracing::info!(
        "node `{}` joined the cluster (tags: {:?})",
        node.options.name,
        node.options.tags
    );
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => node.tick().await,
            () = &mut shutdown => break,
        }
    }
    tracing::info!(
        "node `{}` leaving: draining its pipelines",
        node.options.name
    );
    let names: Vec<String> = node.running.keys().cloned().collect();
    for name in names {
        node.stop(&name, "the node is leaving");
    }
    for stopping in std::mem::take(&mut node.stopping) {
        let _ = stopping.await;
    }
    node.keeper.retire();
    let _ = node.cluster.nodes.purge(node.options.name.as_str()).await;
    tracing::info!("node `{}` left the cluster", node.options.name);
    Ok(ExitCode::SUCCESS)
}

impl Node {
    async fn tick(&mut self) {
        self.reap();
        self.lost();
        self.work().await;
        if let Some(admin) = &self.admin {
            admin.set_pipelines(self.running.values().map(|r| r.status.clone()).collect());
        }
        self.heartbeat();
    }

    /// Follow the definitions and upgrades: stop, swap and start what they say.
    async fn work(&mut self) {
        let definitions = match Cluster::entries(&self.cluster.pipelines).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("cannot read the pipeline definitions: {e}");
                return;
            }
        };
        let deployed: BTreeMap<String, (u64, Bytes)> = definitions
            .into_iter()
            .map(|e| (name_of(&e.key), (e.revision, e.value)))
            .collect();
        self.follow_rollouts().await;
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let Some(running) = self.running.get_mut(&name) else {
                continue;
            };
            match deployed.get(&name) {
                None => self.stop(&name, "it was undeployed"),
                Some((revision, text)) if running.revision != *revision => {
                    // The definition a rolling upgrade already swapped in: nothing to restart.
                    if running.upgraded_to.as_deref().map(str::as_bytes) == Some(text.as_ref()) {
                        tracing::info!(
                            "pipeline `{name}`: revision {revision} is what runs here since the \
                             rolling upgrade"
                        );
                        running.revision = *revision;
                        running.upgraded_to = None;
                    } else {
                        self.stop(&name, &format!("revision {revision} was deployed"));
                    }
                }
                Some(_) => {}
            }
        }
        self.prepared.retain(|name, _| deployed.contains_key(name));
        self.refused.retain(|name, _| deployed.contains_key(name));
        let live = match Cluster::entries(&self.cluster.nodes).await {
            Ok(nodes) => u32::try_from(nodes.len()).unwrap_or(u32::MAX).max(1),
            Err(_) => 1,
        };
        for (name, (revision, text)) in deployed {
            if self.running.contains_key(&name)
                || self
                    .refused
                    .get(&name)
                    .is_some_and(|r| r.revision == revision && r.at.elapsed() < RETRY)
            {
                continue;
            }
            if let Err(why) = self.prepare(&name, revision, &text).await {
                tracing::error!(
                    "pipeline `{name}` (revision {revision}) cannot run on this node: {why}"
                );
                self.refused.insert(
                    name,
                    Refused {
                        revision,
                        why,
                        at: Instant::now(),
                    },
                );
                continue;
            }
            self.claim(&name, live).await;
        }
    }

    /// Load and check a definition once per revision.
    async fn prepare(&mut self, name: &str, revision: u64, text: &[u8]) -> Result<(), String> {
        if self
            .prepared
            .get(name)
            .is_some_and(|p| p.revision == revision)
        {
            return Ok(());
        }
        let text =
            std::str::from_utf8(text).map_err(|_| "the definition is not UTF-8".to_owned())?;
        let plugins = definition::plugins(text)?;
        for sha in plugins.values() {
            self.fetch(sha).await?;
        }
        let local = definition::materialize(text, &self.cache)?;
        let file = self.options.workdir.join(format!("{}.toml", key_of(name)));
        let config = Config::parse(&file, &local).map_err(|e| e.to_string())?;
        let loaded = assemble::load(&self.runtime, &config)
            .await
            .map_err(|e| e.to_string())?;
        let shared = config
            .pipelines
            .first()
            .and_then(|p| loaded.plugins.get(&p.source.name))
            .is_some_and(crate::plugin::LoadedPlugin::shared);
        self.prepared.insert(
            name.to_owned(),
            Prepared {
                revision,
                config,
                loaded,
                shared,
                plugins,
            },
        );
        Ok(())
    }

    /// Put component `sha` into the cache, from the plugin store, checked.
    async fn fetch(&self, sha: &str) -> Result<(), String> {
        let path = self.cache.join(format!("{sha}.wasm"));
        if path.is_file() {
            return Ok(());
        }
        let mut object = self
            .cluster
            .plugins
            .get(sha)
            .await
            .map_err(|e| format!("component {sha} is not in the plugin store: {e}"))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("reading component {sha} from the plugin store: {e}"))?;
        let actual = definition::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if actual != sha {
            return Err(format!(
                "the plugin store's component {sha} has sha256 {actual}; it is not run"
            ));
        }
        let partial = self.cache.join(format!("{sha}.wasm.partial"));
        std::fs::write(&partial, &bytes)
            .and_then(|()| std::fs::rename(&partial, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Take a free slot of a prepared pipeline this node may run, and start it there. Slot 1
    /// first: its holder learns whether the source shares its work (it asks the plugin with
    /// `share(1, n)`) and says so in the lease; only then do other nodes take slots 2, 3, ….
    async fn claim(&mut self, name: &str, live: u32) {
        let Some(prepared) = self.prepared.get(name) else {
            return;
        };
        let Some(decl) = prepared.config.pipelines.first() else {
            return;
        };
        let tags = &decl.placement.tags;
        if !tags
            .iter()
            .all(|(k, v)| self.options.tags.get(k) == Some(v))
        {
            return;
        }
        let slots = if prepared.shared {
            decl.placement.nodes.map_or(live, |n| n.min(live)).max(1)
        } else {
            1
        };
        let leases = &self.cluster.leases;
        let node = self.options.name.as_str();
        let (lease, numbering) = match Lease::acquire(leases, name, 1, node).await {
            Some(lease) => {
                // Asked to share with a second slot, a source that cannot runs alone.
                let slots = if prepared.shared { slots.max(2) } else { 1 };
                (lease, Numbering { slot: 1, slots })
            }
            None => {
                if slots < 2 {
                    return;
                }
                match Holder::of(leases, name, 1).await {
                    Some(Holder {
                        alone: Some(false), ..
                    }) => {}
                    // Alone, or not known yet: nothing for this node to take.
                    _ => return,
                }
                let mut taken = None;
                for slot in 2..=slots {
                    if let Some(lease) = Lease::acquire(leases, name, slot, node).await {
                        taken = Some(lease);
                        break;
                    }
                }
                let Some(lease) = taken else {
                    return;
                };
                let slot = lease.slot;
                (lease, Numbering { slot, slots })
            }
        };
        let mut lease = lease;
        // Host state from the cluster's bucket, per slot: slot 1 (the only one of a single
        // source) under the pipeline's name, slot N under `NAME#N`.
        let fence = Arc::new(AtomicBool::new(false));
        let plugin_names: Vec<String> = prepared.config.plugins.keys().cloned().collect();
        let scope = match lease.slot {
            1 => name.to_owned(),
            n => format!("{name}#{n}"),
        };
        let states = match state::load(&self.cluster, &scope, &plugin_names, fence.clone()).await {
            Ok(states) => states,
            Err(e) => {
                tracing::warn!("pipeline `{name}`: its plugins' state could not be read: {e:#}");
                lease.release(&self.cluster.leases).await;
                return;
            }
        };
        let planned = assemble::plan_numbered(
            &self.runtime,
            &prepared.config,
            &prepared.loaded,
            numbering,
            Some(states),
        )
        .await;
        let revision = prepared.revision;
        let plugins = prepared.plugins.clone();
        let alone = !prepared.shared || planned.alone.iter().any(|p| p == name);
        let swappables = planned.swappables;
        let Some(plan) = planned.plans.into_iter().next() else {
            let why = planned
                .failed
                .iter()
                .map(|(_, e)| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            tracing::error!("pipeline `{name}` (revision {revision}) could not start: {why}");
            self.refused.insert(
                name.to_owned(),
                Refused {
                    revision,
                    why,
                    at: Instant::now(),
                },
            );
            lease.release(&self.cluster.leases).await;
            return;
        };
        if lease.slot == 1 {
            lease.set_alone(alone);
            if let Err(why) = lease.renew(&self.cluster.leases).await {
                tracing::warn!("pipeline `{name}`: {why}; not starting it");
                return;
            }
        }
        let slot = lease.slot;
        self.keeper.hold(name, lease, fence).await;
        let counters = plan.counters();
        let sinks = decl.sinks.iter().map(|s| s.name.clone()).collect();
        let mut status = PipelineStatus::new(name.to_owned(), sinks, counters.clone());
        if decl.dead_letter_sink.is_none() {
            status = status.with_dead_letters(plan.dead_letters.clone());
        }
        let status = Arc::new(status);
        let (drain, drain_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let control = Control {
            drain: drain_rx,
            abort: abort_rx,
        };
        let task = tokio::spawn(pipeline::run(plan, control, counters.clone()));
        tracing::info!(
            "pipeline `{name}` (revision {revision}) started here in slot {}{}",
            slot,
            if alone {
                " (its source runs on one node)"
            } else {
                ""
            }
        );
        self.refused.remove(name);
        self.running.insert(
            name.to_owned(),
            Running {
                revision,
                slot,
                plugins,
                counters,
                drain,
                abort,
                task: Some(task),
                status,
                state: "running".into(),
                last_polled: 0,
                rate: 0.0,
                swappables,
                candidates: None,
                answer: None,
                upgraded_to: None,
            },
        );
    }

    /// Notice pipelines that ended on their own (a bounded source, or a failure). They keep
    /// their lease, so that no other node runs them again.
    fn reap(&mut self) {
        for (name, running) in &mut self.running {
            if running.task.as_ref().is_some_and(JoinHandle::is_finished) {
                let Some(task) = running.task.take() else {
                    continue;
                };
                let report = futures_util::FutureExt::now_or_never(task);
                running.state = match report {
                    Some(Ok(Report {
                        failure: Some(f), ..
                    })) => {
                        tracing::error!("pipeline `{name}` stopped: {f}");
                        format!("failed: {f}")
                    }
                    Some(Ok(_)) => {
                        tracing::info!("pipeline `{name}` finished: its source ended");
                        "finished".into()
                    }
                    _ => "failed: its task ended abnormally".into(),
                };
                running.status.end(
                    running
                        .state
                        .strip_prefix("failed: ")
                        .map(ToOwned::to_owned),
                );
            }
        }
    }

    fn heartbeat(&mut self) {
        let secs = TICK.as_secs_f64();
        let mut pipelines = Vec::new();
        for (name, r) in &mut self.running {
            let polled = r.counters.polled.load(Ordering::Relaxed);
            r.rate = polled.saturating_sub(r.last_polled) as f64 / secs;
            r.last_polled = polled;
            pipelines.push(PipelineInfo {
                name: name.clone(),
                slot: r.slot,
                revision: r.revision,
                state: r.state.clone(),
                plugins: r.plugins.clone(),
                polled,
                written: r
                    .counters
                    .written
                    .iter()
                    .map(|w| w.load(Ordering::Relaxed))
                    .sum(),
                dead_lettered: r.counters.dead_lettered.load(Ordering::Relaxed),
                rate: r.rate,
                generation: r.swappables.values().map(|s| s.generation()).sum(),
                rollout: r.answer.clone(),
            });
        }
        for (name, refused) in &self.refused {
            pipelines.push(PipelineInfo {
                name: name.clone(),
                slot: 0,
                revision: refused.revision,
                state: format!("failed: {}", refused.why),
                plugins: BTreeMap::new(),
                polled: 0,
                written: 0,
                dead_lettered: 0,
                rate: 0.0,
                generation: 0,
                rollout: None,
            });
        }
        let info = NodeInfo {
            name: self.options.name.clone(),
            tags: self.options.tags.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            pipelines,
        };
        let value = match serde_json::to_vec(&info) {
            Ok(v) => Bytes::from(v),
            Err(_) => return,
        };
        self.keeper.set_heartbeat(value);
    }

    /// Stop the pipelines whose lease the keeper could not keep.
    fn lost(&mut self) {
        for (name, why) in self.keeper.lost() {
            tracing::error!("pipeline `{name}`: {why}; stopping it here");
            self.stop(&name, &why);
        }
    }

    /// Drain a pipeline (abort what is still in flight after 10 s), then release its lease.
    fn stop(&mut self, name: &str, why: &str) {
        let Some(running) = self.running.remove(name) else {
            return;
        };
        tracing::info!("pipeline `{name}`: stopping here: {why}");
        let leases = self.cluster.leases.clone();
        let keeper = self.keeper.clone();
        let name = name.to_owned();
        self.stopping.push(tokio::spawn(async move {
            let _ = running.drain.send(true);
            if let Some(mut task) = running.task {
                let report = match tokio::time::timeout(Duration::from_secs(10), &mut task).await {
                    Ok(report) => report,
                    Err(_) => {
                        let _ = running.abort.send(true);
                        task.await
                    }
                };
                if let Ok(report) = report {
                    let c = &report.counters;
                    tracing::info!(
                        "pipeline `{name}` stopped here: {} in, {} written",
                        c.polled.load(Ordering::Relaxed),
                        c.written
                            .iter()
                            .map(|w| w.load(Ordering::Relaxed))
                            .sum::<u64>()
                    );
                }
            }
            // Renewed by the keeper until here, so nobody starts it while it drains.
            if let Some(lease) = keeper.take(&name).await {
                lease.release(&leases).await;
            }
        }));
        self.stopping.retain(|t| !t.is_finished());
    }
}
