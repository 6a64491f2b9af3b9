//! Turns a checked [`Config`] into runnable pipelines: load every component, check each one's
//! world against the role it plays, check its configuration keys against its metadata, then
//! create and `init` one instance per stage. The glue between the layers: it may import any of
//! them, and nothing below `cli` and `admin` imports it.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

use crate::config::{Config, PartitionBy, PipelineDecl, PluginDecl, PluginRef, Role};
use crate::contract::{Metadata, PluginState, check_keys, init_entries};
use crate::pipeline::{
    DeadLetters, PipelinePlan, Replayed, Router, Slot, SourcePlan, StageKind, StagePlan,
};
use crate::plugin::{
    Instance, LoadedPlugin, Runtime, SinkCalls, SourceCalls, Start, TransformCalls,
};
use crate::reload::Swappable;
use crate::state_store::StateStore;

mod replay;
mod source;

pub use replay::{Replay, ReplayError, Replayer, check_entries};
pub use source::Numbering;
use source::shared_source;

/// Problems found while assembling, one line each, ready to print.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct AssembleError {
    /// `file:line:col: …` or `pipeline …: …` lines.
    pub problems: Vec<String>,
}

impl AssembleError {
    fn check(problems: Vec<String>) -> Result<(), AssembleError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AssembleError { problems })
        }
    }
}

/// Loaded components and their metadata, by plugin name.
pub struct Loaded {
    /// Components.
    pub plugins: BTreeMap<String, LoadedPlugin>,
    /// What each plugin says about itself.
    pub metadata: BTreeMap<String, Metadata>,
}

/// Load and check every plugin the file declares: file, pin, component, world, role in each
/// pipeline, config keys. Nothing is initialised and no data moves.
pub async fn load(runtime: &Runtime, config: &Config) -> Result<Loaded, AssembleError> {
    let mut problems = Vec::new();
    let mut plugins = BTreeMap::new();
    for (name, decl) in &config.plugins {
        match runtime.load(&decl.path, decl.sha256.as_deref()) {
            Ok(loaded) => {
                plugins.insert(name.clone(), loaded);
            }
            Err(e) => problems.push(format!("{}: plugin `{name}`: {e}", decl.path_loc)),
        }
    }
    AssembleError::check(problems)?;

    let mut problems = Vec::new();
    for pipeline in &config.pipelines {
        let mut expect = |r: &PluginRef, role: Role| {
            if let Some(loaded) = plugins.get(&r.name)
                && loaded.role != role
            {
                problems.push(format!(
                    "{}: pipeline `{}`: plugin `{}` is a {} (it implements world `{}`), but it is \
                     used here as a {role}; use a {role} plugin here or move `{}` to the {} list",
                    r.loc,
                    pipeline.name,
                    r.name,
                    loaded.role,
                    loaded.role,
                    r.name,
                    match loaded.role {
                        Role::Source => "`source`",
                        Role::Transform => "`transforms`",
                        Role::Sink => "`sinks`",
                    }
                ));
            }
        };
        expect(&pipeline.source, Role::Source);
        if let Some(dead_letter_sink) = &pipeline.dead_letter_sink {
            expect(dead_letter_sink, Role::Sink);
        }
        for t in &pipeline.transforms {
            expect(t, Role::Transform);
        }
        for s in &pipeline.sinks {
            expect(s, Role::Sink);
        }
        let source = &pipeline.source;
        if source.parallel.instances > 1
            && let Some(loaded) = plugins.get(&source.name)
            && loaded.role == Role::Source
            && !loaded.shared()
        {
            problems.push(format!(
                "{}: pipeline `{}`: source `{}` cannot run {} instances: its plugin does not \
                 say that several instances can share its work (it exports no \
                 `source-shared-api`, see wit/worlds.wit); remove `concurrency` from \
                 [pipeline.stages.{}]",
                source.loc, pipeline.name, source.name, source.parallel.instances, source.name
            ));
        }
        if let Some(at) = &pipeline.reply
            && let Some(loaded) = plugins.get(&source.name)
            && loaded.role == Role::Source
            && !loaded.replies()
        {
            problems.push(format!(
                "{at}: pipeline `{}`: `reply` is one of its destinations, but source `{}` does \
                 not answer requests (it exports no `source-reply-api`); use a source that does \
                 (http-source with respond = \"pipeline\", nats-source with reply = true) or \
                 remove `reply` from `sinks`",
                pipeline.name, source.name
            ));
        }
    }
    AssembleError::check(problems)?;

    let mut problems = Vec::new();
    let mut metadata = BTreeMap::new();
    for (name, decl) in &config.plugins {
        let Some(loaded) = plugins.get(name) else {
            continue;
        };
        let label: Arc<str> = Arc::from(name.as_str());
        let result = runtime
            .instantiate(
                loaded,
                label.clone(),
                label,
                &decl.grants,
                &decl.limits,
                PluginState::default(),
            )
            .await;
        let mut instance = match result {
            Ok(i) => i,
            Err(e) => {
                problems.push(format!("{}: plugin `{name}`: {e:#}", decl.path_loc));
                continue;
            }
        };
        match instance.metadata().await {
            Ok(meta) => {
                check_keys(decl, &meta, &mut problems);
                metadata.insert(name.clone(), meta);
            }
            Err(trap) => problems.push(format!("{}: {trap}", decl.path_loc)),
        }
    }
    AssembleError::check(problems)?;
    Ok(Loaded { plugins, metadata })
}

/// Every plugin of a running file, swappable by name (see [`crate::reload`]).
pub type Swappables = BTreeMap<String, Arc<Swappable>>;

/// What [`plan`] made of a file's pipelines.
pub struct Planned {
    /// The pipelines that started, ready to run.
    pub plans: Vec<PipelinePlan>,
    /// Every plugin, swappable by name.
    pub swappables: Swappables,
    /// The pipelines that could not start, each with why (its other stages are stopped).
    pub failed: Vec<(String, AssembleError)>,
    /// Pipelines planned for slot 1 of several ([`plan_numbered`]) whose source refused to
    /// share its work: each runs as the source's only instance, and no other slot may run.
    pub alone: Vec<String>,
}

/// Create and `init` one instance per stage of every pipeline. Pipelines start independently:
/// one that cannot start is reported in `failed` and the others are planned all the same. The
/// plugins come back swappable: reloads may come from the directories the file's plugins are in.
pub async fn plan(runtime: &Arc<Runtime>, config: &Config, loaded: &Loaded) -> Planned {
    plan_numbered(runtime, config, loaded, Numbering::default(), None).await
}

/// [`plan`] for one node of a cluster: source instances numbered by `numbering`, and with
/// `states`, each plugin's host state (by plugin name) given instead of the file's `[state]`.
pub async fn plan_numbered(
    runtime: &Arc<Runtime>,
    config: &Config,
    loaded: &Loaded,
    numbering: Numbering,
    states: Option<BTreeMap<String, PluginState>>,
) -> Planned {
    let mut allowed: Vec<std::path::PathBuf> = config
        .plugins
        .values()
        .filter_map(|d| d.path.canonicalize().ok())
        .filter_map(|p| p.parent().map(std::path::Path::to_path_buf))
        .collect();
    allowed.sort();
    allowed.dedup();
    let swappables: Swappables = config
        .plugins
        .iter()
        .filter_map(|(name, decl)| {
            let plugin = loaded.plugins.get(name)?;
            let version = loaded
                .metadata
                .get(name)
                .map(|m| m.version.clone())
                .unwrap_or_default();
            Some((
                name.clone(),
                Swappable::new(decl, plugin, version, allowed.clone()),
            ))
        })
        .collect();
    // Opened once for the process; a store that cannot open stops every pipeline.
    let store = match (states, &config.state_dir) {
        (Some(states), _) => Durable::Given(states),
        (None, Some(dir)) => match StateStore::open(dir) {
            Ok(store) => Durable::File(Arc::new(store)),
            Err(e) => Durable::Unopened(e),
        },
        (None, None) => Durable::Memory,
    };
    let mut plans = Vec::new();
    let mut failed = Vec::new();
    let mut alone = Vec::new();
    for pipeline in &config.pipelines {
        let mut problems = Vec::new();
        let mut single = false;
        let plan = plan_one(
            runtime,
            config,
            loaded,
            pipeline,
            Origin::Source {
                numbering,
                alone: &mut single,
            },
            Some(&swappables),
            &store,
            &mut problems,
        )
        .await;
        match (plan, AssembleError::check(problems)) {
            (Some(plan), Ok(())) => {
                if single {
                    alone.push(plan.name.clone());
                }
                plans.push(plan);
            }
            (_, Err(problems)) => failed.push((pipeline.name.clone(), problems)),
            (None, Ok(())) => failed.push((
                pipeline.name.clone(),
                AssembleError {
                    problems: vec![format!("pipeline `{}` could not start", pipeline.name)],
                },
            )),
        }
    }
    Planned {
        plans,
        swappables,
        failed,
        alone,
    }
}

/// Plan one pipeline whose source is replaced by dead letters to put back.
pub async fn plan_replay(
    runtime: &Arc<Runtime>,
    config: &Config,
    loaded: &Loaded,
    pipeline: &PipelineDecl,
    entries: Vec<Replayed>,
) -> Result<PipelinePlan, AssembleError> {
    let mut problems = Vec::new();
    let plan = plan_one(
        runtime,
        config,
        loaded,
        pipeline,
        Origin::Replay(entries),
        None,
        // A replay keeps its plugins' state in memory: the running process owns the store.
        &Durable::Memory,
        &mut problems,
    )
    .await;
    AssembleError::check(problems)?;
    plan.ok_or_else(|| AssembleError {
        problems: vec![format!("pipeline `{}` could not start", pipeline.name)],
    })
}

/// Where a planned pipeline's records come from.
enum Origin<'a> {
    /// Its source plugin, its instances numbered so; `alone` is set when the source refused
    /// to share its work across the cluster's slots and so runs as the only instance (slot 1).
    Source {
        numbering: Numbering,
        alone: &'a mut bool,
    },
    /// Dead letters to put back.
    Replay(Vec<Replayed>),
}

/// A started instance, and how to start more of the same plugin.
struct Started {
    plugin: String,
    version: String,
    instance: Instance,
    /// Further instances of a stage with `concurrency` over 1.
    more: Vec<Instance>,
    partition: Option<PartitionBy>,
    start: StartInstance,
    swap: Option<Arc<Swappable>>,
}

impl Started {
    /// As a transform or sink stage (`boxed` makes the instance its calls).
    fn stage<C: ?Sized + 'static>(self, boxed: fn(Instance) -> Box<C>) -> StagePlan<C> {
        StagePlan {
            plugin: self.plugin,
            version: self.version,
            instances: std::iter::once(self.instance)
                .chain(self.more)
                .map(boxed)
                .collect(),
            partition: self.partition,
            start: boxed_start(self.start, boxed),
            code: self.swap.map(|s| s.subscribe()),
        }
    }
}

/// `start`, with its instances as calls of one role (`boxed`).
fn boxed_start<C: ?Sized + 'static>(
    start: StartInstance,
    boxed: fn(Instance) -> Box<C>,
) -> Start<C> {
    Arc::new(move || {
        let started = start();
        let boxed: Pin<Box<dyn Future<Output = anyhow::Result<Box<C>>> + Send>> =
            Box::pin(async move { Ok(boxed(started.await?)) });
        boxed
    })
}

/// Where a run keeps its plugins' host state.
enum Durable {
    /// In memory only.
    Memory,
    /// In the file's `[state]` store.
    File(Arc<StateStore>),
    /// The `[state]` store could not be opened: why.
    Unopened(String),
    /// Given by the caller, by plugin name (a cluster node's, kept in JetStream).
    Given(BTreeMap<String, PluginState>),
}

fn as_source(i: Instance) -> Box<dyn SourceCalls> {
    Box::new(i)
}

fn as_transform(i: Instance) -> Box<dyn TransformCalls> {
    Box::new(i)
}

fn as_sink(i: Instance) -> Box<dyn SinkCalls> {
    Box::new(i)
}

// The run-wide context (runtime, config, loaded plugins, state store) and this pipeline's
// own inputs; a struct bundling them would be used only here.
#[allow(clippy::too_many_arguments)]
async fn plan_one(
    runtime: &Arc<Runtime>,
    config: &Config,
    loaded: &Loaded,
    pipeline: &PipelineDecl,
    origin: Origin<'_>,
    swappables: Option<&Swappables>,
    store: &Durable,
    problems: &mut Vec<String>,
) -> Option<PipelinePlan> {
    let replaying = matches!(origin, Origin::Replay(_));
    let mut stage = async |r: &PluginRef, role: Role| -> Option<Started> {
        let (Some(decl), Some(component)) =
            (config.plugins.get(&r.name), loaded.plugins.get(&r.name))
        else {
            problems.push(format!("{}: plugin `{}` is not loaded", r.loc, r.name));
            return None;
        };
        let version = loaded
            .metadata
            .get(&r.name)
            .map(|m| m.version.clone())
            .unwrap_or_default();
        // One state store per plugin per pipeline, shared by every instance it will have.
        let state = match store {
            Durable::Memory => PluginState::default(),
            Durable::Given(states) => states.get(&r.name).cloned().unwrap_or_default(),
            Durable::File(store) => {
                match PluginState::durable(store.clone(), &pipeline.name, &r.name) {
                    Ok(state) => state,
                    Err(e) => {
                        problems.push(format!(
                            "pipeline `{}`: {role} `{}`: its state could not be read: {e}",
                            pipeline.name, r.name
                        ));
                        return None;
                    }
                }
            }
            Durable::Unopened(e) => {
                problems.push(e.clone());
                return None;
            }
        };
        let swap = swappables.and_then(|m| m.get(&r.name)).cloned();
        if let Some(swap) = &swap {
            swap.track_state(&pipeline.name, &state);
        }
        let start = starter(
            runtime,
            &pipeline.name,
            decl,
            component,
            &state,
            swap.clone(),
        );
        // A replay is a small batch of dead letters: one instance per stage does.
        let count = if replaying {
            1
        } else {
            r.parallel.instances.max(1)
        };
        let mut started = Vec::with_capacity(count);
        let mut failed = None;
        for _ in 0..count {
            match start_instance(runtime, &pipeline.name, decl, component, state.clone()).await {
                Ok(instance) => started.push(instance),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let mut started = started.into_iter();
        match (failed, started.next()) {
            (None, Some(instance)) => Some(Started {
                plugin: r.name.clone(),
                version,
                instance,
                more: started.collect(),
                partition: r.parallel.partition_by.clone(),
                start,
                swap,
            }),
            (failed, _) => {
                let e = failed.unwrap_or_else(|| anyhow::anyhow!("no instance started"));
                problems.push(format!(
                    "pipeline `{}`: {role} `{}` could not start: {e}",
                    pipeline.name, r.name
                ));
                None
            }
        }
    };
    // Said once `stage` (which holds `problems`) is done.
    let mut source_refused = None;
    let source = match origin {
        Origin::Replay(entries) => Some(SourcePlan::Replay(entries)),
        Origin::Source { numbering, alone } => match stage(&pipeline.source, Role::Source).await {
            Some(started) => match shared_source(started, &pipeline.name, numbering).await {
                Ok((source, single)) => {
                    *alone = single;
                    Some(source)
                }
                Err(refused) => {
                    source_refused = Some(refused);
                    None
                }
            },
            None => None,
        },
    };
    // A replay starts only the stages its entries reach: transforms from the earliest one an
    // entry re-enters at (and then every sink), or just the sinks entries failed at.
    let (first_transform, sinks_needed): (usize, Option<Vec<usize>>) = match &source {
        Some(SourcePlan::Replay(entries)) => {
            let first = entries
                .iter()
                .filter(|r| r.entry.stage == StageKind::Transform)
                .map(|r| r.entry.stage_index.saturating_sub(1))
                .min();
            match first {
                Some(first) => (first, None),
                None => (
                    pipeline.transforms.len(),
                    Some(
                        entries
                            .iter()
                            .map(|r| r.entry.stage_index.saturating_sub(1))
                            .collect(),
                    ),
                ),
            }
        }
        _ => (0, None),
    };
    let mut transforms = Vec::new();
    for (i, t) in pipeline.transforms.iter().enumerate() {
        if i < first_transform {
            transforms.push(Some(Slot::Idle {
                plugin: t.name.clone(),
            }));
        } else {
            transforms.push(
                stage(t, Role::Transform)
                    .await
                    .map(|s| Slot::Live(Box::new(s.stage(as_transform)))),
            );
        }
    }
    let mut sinks = Vec::new();
    for (i, s) in pipeline.sinks.iter().enumerate() {
        if sinks_needed
            .as_ref()
            .is_some_and(|needed| !needed.contains(&i))
        {
            sinks.push(Some(Slot::Idle {
                plugin: s.name.clone(),
            }));
        } else {
            sinks.push(
                stage(s, Role::Sink)
                    .await
                    .map(|s| Slot::Live(Box::new(s.stage(as_sink)))),
            );
        }
    }
    // (`load` checked that the source answers requests.)
    if pipeline.reply.is_some() {
        sinks.push(Some(Slot::Reply));
    }
    let dead_letters = match &pipeline.dead_letter_sink {
        Some(r) => {
            let sink = stage(r, Role::Sink).await?;
            Arc::new(DeadLetters::to_sink(sink.plugin, Box::new(sink.instance)))
        }
        None => Arc::new(DeadLetters::new(pipeline.dead_letter.clone())),
    };
    if let Some(refused) = source_refused {
        problems.push(refused);
        return None;
    }
    let router = if pipeline.routes.is_empty() {
        None
    } else {
        match Router::new(&pipeline.routes, pipeline.routing) {
            Ok(router) => Some(Arc::new(router)),
            Err(e) => {
                problems.push(format!(
                    "{}: pipeline `{}`: {e}",
                    pipeline.loc, pipeline.name
                ));
                return None;
            }
        }
    };
    Some(PipelinePlan {
        router,
        name: pipeline.name.clone(),
        source: source?,
        transforms: transforms.into_iter().collect::<Option<Vec<_>>>()?,
        sinks: sinks.into_iter().collect::<Option<Vec<_>>>()?,
        batch_size: pipeline.batch_size,
        batch_bytes: pipeline.batch_bytes,
        buffer: pipeline.buffer as usize,
        max_in_flight: pipeline.max_in_flight,
        on_error: pipeline.on_error,
        retry: pipeline.retry,
        breaker: pipeline.breaker,
        dead_letters,
        reply_timeout: pipeline.reply_timeout,
        tracer: None,
    })
}

/// Starts a fresh, initialised instance of one plugin in one pipeline.
type StartInstance =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<Instance>> + Send>> + Send + Sync>;

fn starter(
    runtime: &Arc<Runtime>,
    pipeline: &str,
    decl: &PluginDecl,
    component: &LoadedPlugin,
    state: &PluginState,
    swap: Option<Arc<Swappable>>,
) -> StartInstance {
    let runtime = runtime.clone();
    let pipeline = pipeline.to_owned();
    let decl = decl.clone();
    let component = component.clone();
    let state = state.clone();
    Arc::new(move || {
        let runtime = runtime.clone();
        let pipeline = pipeline.clone();
        let decl = decl.clone();
        // A swapped plugin restarts (after a trap, or to switch code) from its current code.
        let component = swap
            .as_ref()
            .map_or_else(|| component.clone(), |s| s.component());
        let state = state.clone();
        Box::pin(async move { start_instance(&runtime, &pipeline, &decl, &component, state).await })
    })
}

async fn start_instance(
    runtime: &Runtime,
    pipeline: &str,
    decl: &PluginDecl,
    component: &LoadedPlugin,
    state: PluginState,
) -> anyhow::Result<Instance> {
    let label: Arc<str> = Arc::from(format!("{pipeline}/{}", decl.name));
    let entries = init_entries(decl).map_err(anyhow::Error::msg)?;
    // `retryable` from `init` (a server not up yet) is tried again on a fresh instance with
    // back-off, for up to INIT_RETRY_FOR; `fatal` stops at once.
    let started = std::time::Instant::now();
    let mut wait = crate::defaults::INIT_RETRY_FIRST;
    loop {
        let mut instance = runtime
            .instantiate(
                component,
                label.clone(),
                Arc::from(decl.name.as_str()),
                &decl.grants,
                &decl.limits,
                state.clone(),
            )
            .await?;
        let error = match instance.init(&entries).await? {
            Ok(()) => return Ok(instance),
            Err(error) => error,
        };
        let retry = error.kind == crate::contract::ErrorKind::Retryable
            && started.elapsed() + wait < crate::defaults::INIT_RETRY_FOR;
        if !retry {
            anyhow::bail!(
                "`init` returned {}; {}",
                crate::contract::describe(&error),
                init_hint(&error, &decl.name)
            );
        }
        tracing::warn!(
            plugin = %label,
            "`init` returned {}; trying again in {}",
            crate::contract::describe(&error),
            humantime::format_duration(wait)
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(crate::defaults::INIT_RETRY_MAX);
    }
}

/// What to do about an `init` error, by its cause: a grant the sandbox wants (the message
/// names it), a service that did not answer (`retryable`), or the config.
fn init_hint(error: &crate::contract::WitError, name: &str) -> String {
    let message = error.message.as_str();
    if message.contains("sandbox") && message.contains("grant") {
        format!("the grant goes in [plugins.{name}]")
    } else if error.kind == crate::contract::ErrorKind::Retryable {
        format!(
            "the service did not answer: start it, or fix its address in [plugins.{name}.config]"
        )
    } else {
        format!("fix [plugins.{name}.config] in the pipeline file")
    }
}
