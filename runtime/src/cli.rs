//! The `patchbay` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use crate::admin::{Admin, PipelineStatus};
use crate::assemble;
use crate::config::{Config, Role, parse_duration};
use crate::contract::PluginState;
use crate::pipeline::dead_letter;
use crate::pipeline::{self, Control, Counters, Report, StageKind};
use crate::plugin::Runtime;
use crate::sandbox::capability;
use crate::scaffold;

/// Patchbay: an integration server made of sandboxed WebAssembly component plugins.
#[derive(Debug, Parser)]
#[command(name = "patchbay", version, about, long_about = None)]
pub struct Cli {
    /// Log level filter for the runtime's own log (stderr), e.g. `info`, `debug`,
    /// `patchbay_runtime=trace`. `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Compile plugins every time instead of using the precompiled cache
    /// (`$PATCHBAY_CACHE_DIR`, else `~/.cache/patchbay`).
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every pipeline of a pipeline file until its sources end (or Ctrl-C: drain, then exit).
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// How often to print progress (messages/s and totals) on stderr; `0s` turns it off.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        progress: Duration,
        /// Serve the admin API (/health, /metrics, /v1/…) on this address, e.g.
        /// `127.0.0.1:7400`. Off by default.
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        /// Bearer token the admin API requires (all routes but /health); needed to bind it to
        /// a non-loopback address. Default: `$PATCHBAY_ADMIN_TOKEN`.
        #[arg(long, value_name = "TOKEN")]
        admin_token: Option<String>,
    },
    /// Swap a plugin of a running `patchbay run --admin` for new code, between batches, with
    /// nothing lost: the new component is compiled, checked and initialised first, and a
    /// failed check leaves the old version serving.
    Reload {
        /// The plugin's name (`[plugins.NAME]`).
        plugin: String,
        /// The new component; default: the file the config names (rebuilt in place).
        #[arg(long)]
        path: Option<PathBuf>,
        /// The admin API's URL.
        #[arg(long, default_value = "http://127.0.0.1:7400")]
        admin: String,
        /// Bearer token (default: `$PATCHBAY_ADMIN_TOKEN`).
        #[arg(long, value_name = "TOKEN")]
        admin_token: Option<String>,
    },
    /// Show the pipelines, counters and sandbox denials of a running `patchbay run --admin`.
    Status {
        /// The admin API's URL.
        #[arg(long, default_value = "http://127.0.0.1:7400")]
        admin: String,
        /// Bearer token (default: `$PATCHBAY_ADMIN_TOKEN`).
        #[arg(long, value_name = "TOKEN")]
        admin_token: Option<String>,
    },
    /// Check a pipeline file: syntax, plugin files, worlds, roles and config keys. Runs nothing.
    Validate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Show a plugin's world, metadata, config keys and imports; with --config and --plugin,
    /// also what that pipeline file grants it, and imports nothing grants.
    Inspect {
        /// The component file (.wasm).
        plugin: PathBuf,
        /// A pipeline file that uses the plugin.
        #[arg(long, requires = "name")]
        config: Option<PathBuf>,
        /// The plugin's name in that file (`[plugins.NAME]`).
        #[arg(long = "plugin", requires = "config")]
        name: Option<String>,
    },
    /// Check a plugin against the contract's MUST rules (wit/README.md), each check on a fresh
    /// instance: pass or fail per check with the reason; exit 1 on any failure.
    TestPlugin {
        /// The component file (.wasm).
        plugin: PathBuf,
        /// A working configuration entry, KEY=VALUE (repeat it). VALUE is passed as text, as a
        /// TOML string would be; write tables and arrays as JSON.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Take configuration, grants and limits from a pipeline file (with --plugin NAME);
        /// --config entries override its configuration.
        #[arg(long, requires = "name")]
        pipeline: Option<PathBuf>,
        /// The plugin's name in that file (`[plugins.NAME]`).
        #[arg(long = "plugin", requires = "pipeline")]
        name: Option<String>,
        /// Sample payloads for a transform or a sink, one per line (default: JSON objects).
        #[arg(long)]
        input: Option<PathBuf>,
        /// How long a source may take to reach `end-of-stream` before that rule counts as not
        /// applicable (an endless source).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        source_budget: Duration,
    },
    /// Work with a pipeline's dead-letter channel.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Create a new plugin crate that builds as is.
    New {
        /// What the plugin is.
        kind: Kind,
        /// Crate and plugin name, e.g. `my-thing`.
        name: String,
        /// Directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path of the patchbay-sdk crate (default: the one this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// Put dead letters back through their pipeline, each at the stage that failed it. Entries
    /// that fail again land in the dead-letter channel again; nothing is dropped.
    Replay {
        /// The pipeline file (TOML).
        pipeline_file: PathBuf,
        /// The pipeline whose dead letters to replay.
        #[arg(long = "pipeline")]
        name: String,
        /// Read entries from this file instead of the pipeline's dead-letter file.
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

/// Plugin kinds for `patchbay new`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// Brings messages in.
    Source,
    /// Changes messages.
    Transform,
    /// Delivers messages out.
    Sink,
}

impl From<Kind> for Role {
    fn from(kind: Kind) -> Role {
        match kind {
            Kind::Source => Role::Source,
            Kind::Transform => Role::Transform,
            Kind::Sink => Role::Sink,
        }
    }
}

/// Parse arguments, run the command, return the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let result = match cli.command {
        Command::New {
            kind,
            name,
            dir,
            sdk,
        } => scaffold::create(kind.into(), &name, dir.as_deref(), sdk.as_deref()),
        command => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
            };
            runtime.block_on(async_main(command, cli.no_cache))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(message: &str) -> ExitCode {
    for line in message.lines() {
        eprintln!("error: {line}");
    }
    ExitCode::FAILURE
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn async_main(command: Command, no_cache: bool) -> anyhow::Result<ExitCode> {
    let cache = if no_cache {
        None
    } else {
        Runtime::default_cache_dir()
    };
    let runtime = Arc::new(Runtime::new(cache)?);
    match command {
        Command::Run {
            pipeline,
            progress,
            admin,
            admin_token,
        } => {
            run(
                &runtime,
                &pipeline,
                progress,
                admin,
                admin_token.or_else(env_token),
            )
            .await
        }
        Command::Reload {
            plugin,
            path,
            admin,
            admin_token,
        } => {
            crate::admin_client::reload(
                &admin,
                admin_token.or_else(env_token).as_deref(),
                &plugin,
                path.as_deref(),
            )
            .await
        }
        Command::Status { admin, admin_token } => {
            crate::admin_client::status(&admin, admin_token.or_else(env_token).as_deref()).await
        }
        Command::Dlq {
            action:
                DlqAction::Replay {
                    pipeline_file,
                    name,
                    from,
                },
        } => replay(&runtime, &pipeline_file, &name, from.as_deref()).await,
        Command::Validate { pipeline } => validate(&runtime, &pipeline).await,
        Command::Inspect {
            plugin,
            config,
            name,
        } => inspect(&runtime, &plugin, config.as_deref().zip(name.as_deref())).await,
        Command::TestPlugin {
            plugin,
            config,
            pipeline,
            name,
            input,
            source_budget,
        } => {
            test_plugin(
                &runtime,
                plugin,
                &config,
                pipeline.as_deref().zip(name.as_deref()),
                input.as_deref(),
                source_budget,
            )
            .await
        }
        Command::New { .. } => Ok(ExitCode::FAILURE),
    }
}

/// `patchbay test-plugin`: run the compliance checks and print one line per check.
async fn test_plugin(
    runtime: &Runtime,
    path: PathBuf,
    config: &[String],
    from: Option<(&Path, &str)>,
    input: Option<&Path>,
    source_budget: Duration,
) -> anyhow::Result<ExitCode> {
    let mut options = crate::compliance::Options {
        path,
        config: Vec::new(),
        grants: Default::default(),
        limits: Default::default(),
        input: input.map(crate::compliance::read_input).transpose()?,
        source_budget,
    };
    if let Some((file, name)) = from {
        let decl = plugin_decl(file, name)?;
        options.config = decl
            .config
            .iter()
            .map(|e| crate::contract::ConfigEntry {
                key: e.key.clone(),
                value: e.value.clone(),
            })
            .collect();
        options.grants = decl.grants;
        options.limits = decl.limits;
    }
    for pair in config {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("--config `{pair}`: write KEY=VALUE, e.g. --config path=/data/in.csv");
        };
        options.config.retain(|e| e.key != key);
        options.config.push(crate::contract::ConfigEntry {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    println!("test-plugin: {}", options.path.display());
    let report = crate::compliance::run(runtime, &options).await?;
    println!("{} ({})", report.plugin, report.role.noun());
    for check in &report.checks {
        println!("  {check}");
    }
    let failed = report.failures();
    let not_applicable = report
        .checks
        .iter()
        .filter(|c| matches!(c.verdict, crate::compliance::Verdict::NotApplicable(_)))
        .count();
    println!(
        "{} checks: {} passed, {failed} failed, {not_applicable} not applicable",
        report.checks.len(),
        report.checks.len() - failed - not_applicable
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A plugin's declaration in a pipeline file.
fn plugin_decl(file: &Path, name: &str) -> anyhow::Result<crate::config::PluginDecl> {
    let config = Config::load(file)?;
    match config.plugins.get(name) {
        Some(decl) => Ok(decl.clone()),
        None => anyhow::bail!(
            "{}: no plugin named `{name}`; it declares: {}",
            file.display(),
            config
                .plugins
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn validate(runtime: &Runtime, path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let loaded = assemble::load(runtime, &config).await?;
    println!(
        "{}: ok: {} pipeline{}, {} plugin{}",
        path.display(),
        config.pipelines.len(),
        plural(config.pipelines.len()),
        loaded.plugins.len(),
        plural(loaded.plugins.len())
    );
    for pipeline in &config.pipelines {
        let mut chain = vec![pipeline.source.name.clone()];
        chain.extend(pipeline.transforms.iter().map(|t| t.name.clone()));
        let sinks: Vec<&str> = pipeline.sinks.iter().map(|s| s.name.as_str()).collect();
        println!(
            "  pipeline `{}`: {} → [{}]",
            pipeline.name,
            chain.join(" → "),
            sinks.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn env_token() -> Option<String> {
    std::env::var("PATCHBAY_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
}

async fn run(
    runtime: &Arc<Runtime>,
    path: &Path,
    progress: Duration,
    admin: Option<std::net::SocketAddr>,
    admin_token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    // `--admin` wins over `[admin] listen` in the file.
    let admin = match admin.or(config.admin) {
        Some(addr) => Some((
            crate::admin::bind(addr, admin_token.is_some()).await?,
            admin_token,
        )),
        None => None,
    };
    let loaded = assemble::load(runtime, &config).await?;
    let (plans, swappables) = assemble::plan(runtime, &config, &loaded).await?;

    let (drain_tx, drain_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = watch::channel(false);
    let control = Control {
        drain: drain_rx,
        abort: abort_rx,
    };
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: finishing the messages in flight (interrupt again to abort)");
        let _ = drain_tx.send(true);
        wait_for_signal().await;
        tracing::warn!("aborting: messages in flight are not acknowledged and will be redelivered");
        let _ = abort_tx.send(true);
    });

    let started = Instant::now();
    let mut handles = Vec::new();
    let mut live: Vec<(String, Arc<Counters>)> = Vec::new();
    let mut statuses = Vec::new();
    for plan in plans {
        let counters = plan.counters();
        live.push((plan.name.clone(), counters.clone()));
        let sinks = config
            .pipelines
            .iter()
            .find(|p| p.name == plan.name)
            .map(|p| p.sinks.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default();
        let status = Arc::new(PipelineStatus::new(
            plan.name.clone(),
            sinks,
            counters.clone(),
        ));
        statuses.push(status.clone());
        let control = control.clone();
        handles.push(tokio::spawn(async move {
            let report = pipeline::run(plan, control, counters).await;
            status.end(report.failure.is_some());
            report
        }));
    }
    let mut watchers = Vec::new();
    for plugin in swappables.values().filter(|p| p.watched()) {
        watchers.push(crate::reload::watch(runtime.clone(), plugin.clone())?);
    }
    if let Some((listener, token)) = admin {
        crate::admin::spawn(
            listener,
            Admin::new(runtime.clone(), statuses, swappables, token),
        );
    }

    let mut ticker = tokio::time::interval(if progress.is_zero() {
        Duration::from_secs(3600)
    } else {
        progress
    });
    ticker.tick().await;
    let mut last: Vec<u64> = vec![0; live.len()];
    let mut last_at = Instant::now();
    let all = futures_join(handles);
    tokio::pin!(all);
    let reports: Vec<Report> = loop {
        tokio::select! {
            reports = &mut all => break reports,
            _ = ticker.tick(), if !progress.is_zero() => {
                let now = Instant::now();
                let secs = now.duration_since(last_at).as_secs_f64().max(1e-9);
                for (i, (name, counters)) in live.iter().enumerate() {
                    let polled = counters.polled.load(Ordering::Relaxed);
                    let rate = (polled - last[i]) as f64 / secs;
                    last[i] = polled;
                    let written: u64 = counters.written.iter().map(|w| w.load(Ordering::Relaxed)).sum();
                    eprintln!(
                        "progress: pipeline `{name}`: {polled} in, {written} written, {:.0} msg/s, {:.0}s",
                        rate,
                        started.elapsed().as_secs_f64()
                    );
                }
                last_at = now;
            }
        }
    };

    let mut failed = false;
    for report in &reports {
        print_summary(report);
        if let Some(failure) = &report.failure {
            failed = true;
            eprintln!("error: {failure}");
        }
    }
    print_denials(runtime);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `sandbox denied N accesses: CAPABILITY by PLUGIN (COUNT), …`, when any were denied.
fn print_denials(runtime: &Runtime) {
    let denied = runtime.audit().denied();
    if denied.is_empty() {
        return;
    }
    let total: u64 = denied.values().sum();
    let parts: Vec<String> = denied
        .iter()
        .map(|((plugin, capability), n)| format!("{capability} by {plugin} ({n})"))
        .collect();
    eprintln!(
        "sandbox denied {total} access{}: {}",
        if total == 1 { "" } else { "es" },
        parts.join(", ")
    );
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<Report>>) -> Vec<Report> {
    let mut reports = Vec::new();
    for handle in handles {
        match handle.await {
            Ok(report) => reports.push(report),
            Err(e) => tracing::error!("a pipeline task ended abnormally: {e}"),
        }
    }
    reports
}

async fn replay(
    runtime: &Arc<Runtime>,
    path: &Path,
    name: &str,
    from: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let Some(pipeline) = config.pipelines.iter().find(|p| p.name == name) else {
        let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
        anyhow::bail!(
            "{}: no pipeline named `{name}`; it has: {}",
            path.display(),
            names.join(", ")
        );
    };
    let file = from.map_or_else(|| pipeline.dead_letter.clone(), Path::to_path_buf);
    if !file.exists() && from.is_none() {
        println!(
            "pipeline `{name}`: no dead letters ({} does not exist)",
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let entries = dead_letter::read(&file).map_err(anyhow::Error::msg)?;
    let mut replayed = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let line = i + 1;
        let where_ = format!("{}: entry {line}", file.display());
        if entry.pipeline != name {
            anyhow::bail!(
                "{where_} belongs to pipeline `{}`, not `{name}`; replay it with --pipeline {}",
                entry.pipeline,
                entry.pipeline
            );
        }
        let expected = match entry.stage {
            StageKind::Transform => pipeline.transforms.get(entry.stage_index.wrapping_sub(1)),
            StageKind::Sink => pipeline.sinks.get(entry.stage_index.wrapping_sub(1)),
        };
        match expected {
            Some(r) if r.name == entry.plugin => {}
            _ => anyhow::bail!(
                "{where_} failed at {} #{} (`{}`), which pipeline `{name}` no longer has at that \
                 place; restore the pipeline as it was, or edit the entry's stage_index",
                entry.stage,
                entry.stage_index,
                entry.plugin
            ),
        }
        let message = entry
            .message
            .to_message()
            .map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
        replayed.push(pipeline::Replayed { entry, message });
    }
    if replayed.is_empty() {
        println!("pipeline `{name}`: no dead letters in {}", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let count = replayed.len();
    // New failures must not land in the file being read: set it aside first.
    let aside = if file == pipeline.dead_letter {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let aside = file.with_extension(format!("jsonl.replaying-{millis}"));
        std::fs::rename(&file, &aside)
            .map_err(|e| anyhow::anyhow!("cannot move {} aside for replay: {e}", file.display()))?;
        Some(aside)
    } else {
        None
    };
    let loaded = assemble::load(runtime, &config).await?;
    let plan = assemble::plan_replay(runtime, &config, &loaded, pipeline, replayed).await?;
    let (_drain_tx, drain) = watch::channel(false);
    let (_abort_tx, abort) = watch::channel(false);
    let counters = plan.counters();
    let report = pipeline::run(plan, Control { drain, abort }, counters).await;
    print_summary(&report);
    if let Some(failure) = &report.failure {
        if let Some(aside) = &aside {
            eprintln!(
                "error: replay stopped; the entries being replayed are kept in {}",
                aside.display()
            );
        }
        eprintln!("error: {failure}");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(aside) = aside {
        std::fs::remove_file(&aside)
            .map_err(|e| anyhow::anyhow!("replayed, but cannot remove {}: {e}", aside.display()))?;
    }
    let again = report.counters.dead_lettered.load(Ordering::Relaxed);
    println!(
        "replayed {count} dead letters of pipeline `{name}`: {} delivered, {again} dead-lettered again{}",
        count as u64 - again,
        if again > 0 {
            format!(" (in {})", pipeline.dead_letter.display())
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn print_summary(report: &Report) {
    let c = &report.counters;
    let polled = c.polled.load(Ordering::Relaxed);
    let secs = report.elapsed.as_secs_f64();
    let sinks: Vec<String> = report
        .sinks
        .iter()
        .zip(&c.written)
        .map(|(name, n)| format!("{} written to `{name}`", n.load(Ordering::Relaxed)))
        .collect();
    let dead = c.dead_lettered.load(Ordering::Relaxed);
    let dead = if dead > 0 {
        format!(", {dead} dead-lettered")
    } else {
        String::new()
    };
    eprintln!(
        "pipeline `{}`: {} in, {} dropped, {}{dead}; {:.2}s, {:.0} msg/s",
        report.name,
        polled,
        c.dropped.load(Ordering::Relaxed),
        sinks.join(", "),
        secs,
        if secs > 0.0 {
            polled as f64 / secs
        } else {
            0.0
        }
    );
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn inspect(
    runtime: &Runtime,
    path: &Path,
    granted_by: Option<(&Path, &str)>,
) -> anyhow::Result<ExitCode> {
    let decl = match granted_by {
        Some((file, name)) => Some(plugin_decl(file, name)?),
        None => None,
    };
    let loaded = runtime.load(path, None)?;
    let label: Arc<str> = Arc::from("inspect");
    let mut instance = runtime
        .instantiate(
            &loaded,
            label.clone(),
            label,
            &Default::default(),
            &Default::default(),
            PluginState::default(),
        )
        .await?;
    let meta = instance.metadata().await?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!("plugin   {} {}", meta.name, meta.version);
    if loaded.packed() {
        println!(
            "world    {}-packed (patchbay:connector@0.1.0): called through the packed fast path",
            loaded.role
        );
    } else {
        println!("world    {} (patchbay:connector@0.1.0)", loaded.role);
    }
    println!("about    {}", meta.description);
    println!(
        "file     {} ({})",
        path.display(),
        bytesize::ByteSize(size).display().iec()
    );
    println!("sha256   {}", loaded.sha256);
    println!();
    if meta.config_keys.is_empty() {
        println!("config keys: none");
    } else {
        println!("config keys:");
        let width = meta
            .config_keys
            .iter()
            .map(|k| k.name.len())
            .max()
            .unwrap_or(0);
        for key in &meta.config_keys {
            let need = if key.required {
                "required".to_owned()
            } else {
                match &key.default_value {
                    Some(d) => format!("default {d}"),
                    None => "optional".to_owned(),
                }
            };
            println!("  {:width$}  {}  [{need}]", key.name, key.description);
        }
    }
    println!();
    println!("imports (capability, then the interface):");
    for import in &loaded.imports {
        println!("  {:12} {import}", capability(import));
    }
    if let (Some((file, name)), Some(decl)) = (granted_by, &decl) {
        let g = &decl.grants;
        println!();
        println!("grants ([plugins.{name}] in {}):", file.display());
        for (capability, granted) in g.rows() {
            println!("  {capability:12} {granted}");
        }
        let mut warned = std::collections::BTreeSet::new();
        for import in &loaded.imports {
            let cap = capability(import);
            if !g.grants_capability(cap) && warned.insert(cap) {
                println!(
                    "warning: it imports {cap} ({import}) but the config grants no {cap} access: those calls will be denied"
                );
            }
        }
        println!();
        println!("limits: {}", decl.limits.line());
    }
    Ok(ExitCode::SUCCESS)
}
