//! `patchbay node` and `patchbay cluster push|deploy|status|undeploy`: the bus mode's command
//! line, over [`crate::cluster`].

use std::collections::BTreeMap;

use super::*;
use crate::cluster::report::{ClusterStatus, short};
use crate::cluster::{Cluster, ConnectArgs, definition, key_of, node, rollout};

/// What `patchbay cluster` does.
#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Store a plugin component in the cluster's plugin store; prints NAME@SHA256.
    Push {
        /// The component file (.wasm).
        plugin: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Check a pipeline file as `validate` does, store the plugins it uses, then publish each
    /// of its pipelines (or only --pipeline NAME); nodes start them within a second or two.
    Deploy {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Deploy only this pipeline of the file.
        #[arg(long = "pipeline", value_name = "NAME")]
        only: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show deployed pipelines, live nodes with what each runs (rates, revisions, plugin
    /// versions) and who holds which lease.
    Status {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove a pipeline from the cluster: the nodes running it drain it and stop.
    Undeploy {
        /// The pipeline's name.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// `--tags k=v,…`.
pub(super) fn parse_tags(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                tags.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => {
                return Err(format!(
                    "`{pair}` is not KEY=VALUE; write e.g. zone=eu,disk=ssd"
                ));
            }
        }
    }
    Ok(tags)
}

/// The machine's host name, the default node name.
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("node-{}", std::process::id()))
}

pub(super) async fn node(
    runtime: &Arc<Runtime>,
    connect: &ConnectArgs,
    options: node::NodeOptions,
    admin: Option<(std::net::SocketAddr, Option<String>)>,
) -> anyhow::Result<ExitCode> {
    let listener = match &admin {
        Some((addr, token)) => Some(crate::admin::bind(*addr, token.is_some()).await?),
        None => None,
    };
    // A node waits for its cluster: it may start before the NATS servers do.
    let shutdown = wait_for_signal();
    tokio::pin!(shutdown);
    let client_name = format!("patchbay-node-{}", options.name);
    let cluster = loop {
        match Cluster::connect(connect, &client_name).await {
            Ok(cluster) => break cluster,
            Err(e) => {
                tracing::warn!("{e:#}; trying again in 5s");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    () = &mut shutdown => return Ok(ExitCode::FAILURE),
                }
            }
        }
    };
    let admin = match (listener, admin) {
        (Some(listener), Some((_, token))) => {
            let view_of = cluster.clone();
            let view: crate::admin::ClusterView = Arc::new(move || {
                let cluster = view_of.clone();
                Box::pin(async move {
                    let status = ClusterStatus::gather(&cluster)
                        .await
                        .map_err(|e| e.to_string())?;
                    serde_json::to_value(status).map_err(|e| e.to_string())
                })
            });
            let admin = Admin::for_node(runtime.clone(), options.name.clone(), view, token);
            crate::admin::spawn(listener, admin.clone());
            Some(admin)
        }
        _ => None,
    };
    node::run(runtime.clone(), cluster, options, admin, shutdown).await
}

pub(super) async fn cluster(
    runtime: &Arc<Runtime>,
    action: ClusterAction,
) -> anyhow::Result<ExitCode> {
    match action {
        ClusterAction::Push { plugin, connect } => {
            // Only components the runtime can load go into the store.
            runtime.load(&plugin, None)?;
            let cluster = Cluster::connect(&connect, "patchbay-cli").await?;
            let name = plugin_name(&plugin);
            let sha = push(&cluster, &plugin, &name).await?;
            println!("{name}@{sha}");
            Ok(ExitCode::SUCCESS)
        }
        ClusterAction::Deploy {
            pipeline,
            only,
            connect,
        } => deploy(runtime, &pipeline, only.as_deref(), &connect).await,
        ClusterAction::Status { json, connect } => {
            let cluster = Cluster::connect(&connect, "patchbay-cli").await?;
            let status = ClusterStatus::gather(&cluster).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterAction::Undeploy { name, connect } => {
            let cluster = Cluster::connect(&connect, "patchbay-cli").await?;
            let key = key_of(&name);
            let exists = cluster
                .pipelines
                .entry(key.as_str())
                .await?
                .is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put);
            if !exists {
                let status = ClusterStatus::gather(&cluster).await?;
                let names: Vec<&str> = status.pipelines.iter().map(|p| p.name.as_str()).collect();
                anyhow::bail!(
                    "no pipeline named `{name}` is deployed; deployed: {}",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                );
            }
            cluster.pipelines.delete(key.as_str()).await?;
            println!("undeployed pipeline `{name}`: the nodes running it drain it and stop");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn deploy(
    runtime: &Arc<Runtime>,
    path: &Path,
    only: Option<&str>,
    connect: &ConnectArgs,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the pipeline file: {e}", path.display()))?;
    // Exactly what `validate` checks: the file, then every plugin against its role and keys.
    let config = Config::parse(path, &text)?;
    assemble::load(runtime, &config).await?;
    let mut definitions = definition::split(&config, &text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(only) = only {
        definitions.retain(|d| d.name == only);
        if definitions.is_empty() {
            let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
            anyhow::bail!(
                "{}: no pipeline named `{only}`; it has: {}",
                path.display(),
                names.join(", ")
            );
        }
    }
    let cluster = Cluster::connect(connect, "patchbay-cli").await?;
    for def in &definitions {
        let mut pushed = Vec::new();
        for (name, (file, sha)) in &def.plugins {
            push(&cluster, file, &plugin_name(file)).await?;
            pushed.push(format!("{name}@{}", short(sha)));
        }
        let key = key_of(&def.name);
        let existing = cluster
            .pipelines
            .entry(key.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("cannot read pipeline `{}`: {e}", def.name))?
            .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put);
        if let Some(existing) = existing {
            let old = String::from_utf8_lossy(&existing.value);
            if same_document(&old, &def.text) {
                println!(
                    "pipeline `{}` is deployed as it is (revision {}): nothing to do",
                    def.name, existing.revision
                );
                continue;
            }
            // Only components of transforms or sinks changed: swap them node by node.
            if let Some(changes) = rollout::component_changes(&old, &def.text)
                && rollout::source_of(&def.text).is_none_or(|s| !changes.contains_key(&s))
            {
                let mut say = |line: String| println!("{line}");
                match rollout::roll(
                    &cluster,
                    &def.name,
                    existing.revision,
                    &def.text,
                    changes,
                    &mut say,
                )
                .await?
                {
                    rollout::Rolled::Done(revision) => {
                        println!(
                            "deployed pipeline `{}` (revision {revision}): rolled out node by \
                             node without a restart: {}",
                            def.name,
                            pushed.join(", ")
                        );
                        continue;
                    }
                    rollout::Rolled::NobodyRuns => {}
                }
            }
        }
        let revision = cluster
            .pipelines
            .put(key.as_str(), def.text.clone().into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot publish pipeline `{}`: {e}", def.name))?;
        println!(
            "deployed pipeline `{}` (revision {revision}): {}",
            def.name,
            pushed.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether two stored definitions say the same (comments and layout aside).
fn same_document(a: &str, b: &str) -> bool {
    match (
        toml::from_str::<toml::Table>(a),
        toml::from_str::<toml::Table>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A component's name in the store: its file name without `.wasm`.
fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into())
}

/// Store a component under its sha256 unless it is there already; its sha256.
async fn push(cluster: &Cluster, path: &Path, name: &str) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let sha = definition::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if cluster.plugins.info(&sha).await.is_ok() {
        return Ok(sha);
    }
    let meta = async_nats::jetstream::object_store::ObjectMetadata {
        name: sha.clone(),
        description: Some(format!("{name} ({})", path.display())),
        ..Default::default()
    };
    cluster
        .plugins
        .put(meta, &mut bytes.as_slice())
        .await
        .map_err(|e| anyhow::anyhow!("cannot store {} in the plugin store: {e}", path.display()))?;
    Ok(sha)
}
