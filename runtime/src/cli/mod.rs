//! The `patchbay` command line: arguments and dispatch here; `run` holds `run` and
//! `dlq replay` (the long-running commands), `inspect` holds `inspect`, `validate` and
//! `test-plugin`. The top of the crate: it may import every module, and none imports it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use crate::admin::{Admin, Phase, PipelineStatus};
use crate::assemble;
use crate::config::{Config, OnStartFailure, Role, parse_duration};
use crate::contract::PluginState;
use crate::pipeline::dead_letter;
use crate::pipeline::{self, Control, Counters, Report};
use crate::plugin::Runtime;
use crate::sandbox::capability;
use crate::scaffold;

mod cluster;
mod inspect;
mod run;

use cluster::ClusterAction;
use inspect::*;
use run::*;

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
        #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
        admin: Option<std::net::SocketAddr>,
        /// Bearer token the admin API requires (all routes but /health); needed to bind it to
        /// a non-loopback address. Default: `$PATCHBAY_ADMIN_TOKEN`.
        #[arg(long, value_name = "TOKEN", value_parser = non_empty_token)]
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
        #[arg(long, value_name = "TOKEN", value_parser = non_empty_token)]
        admin_token: Option<String>,
    },
    /// Show the pipelines, counters and sandbox denials of a running `patchbay run --admin`.
    Status {
        /// The admin API's URL.
        #[arg(long, default_value = "http://127.0.0.1:7400")]
        admin: String,
        /// Bearer token (default: `$PATCHBAY_ADMIN_TOKEN`).
        #[arg(long, value_name = "TOKEN", value_parser = non_empty_token)]
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
        /// Before the checks, print each sample and the plugin's answer to it (the messages a
        /// transform made of it, or a sink's ok or error), the samples sent as one batch.
        #[arg(long)]
        show: bool,
        /// For a sink: skip the checks that write messages (they write real data where the
        /// config points; the config checks still open connections).
        #[arg(long)]
        no_data: bool,
        /// How long a source may take to reach `end-of-stream` before that rule counts as not
        /// applicable (an endless source).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        source_budget: Duration,
    },
    /// Join a cluster (bus mode): run the pipelines deployed to it that this node may run,
    /// sharing the work with the other nodes over NATS JetStream.
    Node {
        #[command(flatten)]
        connect: crate::cluster::ConnectArgs,
        /// This node's name, unique in the cluster (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Tags that pipelines' `placement.tags` select, e.g. `zone=eu,disk=ssd`.
        #[arg(long, value_parser = cluster::parse_tags, default_value = "")]
        tags: std::collections::BTreeMap<String, String>,
        /// Where relative paths of pipeline definitions resolve and plugins are cached
        /// (default: the current directory).
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Serve the admin API (/health, /metrics with a `node` label, /v1/pipelines,
        /// /v1/cluster) on this address, e.g. `127.0.0.1:7400`. Off by default.
        #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
        admin: Option<std::net::SocketAddr>,
        /// Bearer token the admin API requires (all routes but /health); needed to bind it to
        /// a non-loopback address. Default: `$PATCHBAY_ADMIN_TOKEN`.
        #[arg(long, value_name = "TOKEN", value_parser = non_empty_token)]
        admin_token: Option<String>,
    },
    /// Work with a cluster: push plugins, deploy and undeploy pipelines, show its status.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Work with a pipeline's dead-letter channel.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Print the JSON Schema of the pipeline file, for editors (e.g. with taplo or the Even
    /// Better TOML extension); with --markdown, the table of keys the README shows.
    Schema {
        /// Print the README's table of keys instead.
        #[arg(long)]
        markdown: bool,
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
        /// A local patchbay-sdk crate to depend on (a checkout's plugin-sdk folder, or an
        /// unpacked .crate); also from PATCHBAY_SDK. Default: patchbay-sdk from crates.io, by
        /// the version of this binary.
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
    // A command that prints and exits stops quietly when its output is closed (`patchbay
    // inspect X | head`), as Unix tools do, instead of panicking on the broken pipe. The
    // long-running ones (`run`, `node`) keep the signal ignored: a closed log pipe must not
    // kill a server; their writes to sockets fail with EPIPE as before.
    if !matches!(cli.command, Command::Run { .. } | Command::Node { .. }) {
        sigpipe::reset();
    }
    let result = match cli.command {
        Command::New {
            kind,
            name,
            dir,
            sdk,
        } => scaffold::create(kind.into(), &name, dir.as_deref(), sdk.as_deref()),
        Command::Schema { markdown } => {
            if markdown {
                print!("{}", crate::config::schema::markdown());
            } else {
                match serde_json::to_string_pretty(&crate::config::schema::json()) {
                    Ok(text) => println!("{text}"),
                    Err(e) => return fail(&format!("cannot print the schema: {e}")),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
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
        // The NATS client's own connection chatter stays out unless asked for.
        .or_else(|_| EnvFilter::try_new(format!("{level},async_nats=warn")))
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
            show,
            no_data,
            source_budget,
        } => {
            test_plugin(
                &runtime,
                plugin,
                &config,
                pipeline.as_deref().zip(name.as_deref()),
                (input.as_deref(), show, no_data),
                source_budget,
            )
            .await
        }
        Command::Node {
            connect,
            name,
            tags,
            workdir,
            admin,
            admin_token,
        } => {
            let workdir = match workdir {
                Some(dir) => dir,
                None => std::env::current_dir()?,
            };
            let options = crate::cluster::node::NodeOptions {
                name: name.unwrap_or_else(cluster::host_name),
                tags,
                workdir,
            };
            let admin = admin.map(|addr| (addr, admin_token.or_else(env_token)));
            cluster::node(&runtime, &connect, options, admin).await
        }
        Command::Cluster { action } => cluster::cluster(&runtime, action).await,
        Command::New { .. } | Command::Schema { .. } => Ok(ExitCode::FAILURE),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `--admin ADDR`: `IP:PORT`, or `HOST:PORT` with a name that resolves (`localhost:7400`).
fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<std::net::SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}` is not HOST:PORT ({e}); e.g. 127.0.0.1:7400"))?
        .collect();
    // `localhost` may resolve to ::1 first; prefer IPv4, as most clients try it first.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{text}` resolves to no address; e.g. 127.0.0.1:7400"))
}

/// `--admin-token TOKEN`: an empty token would lock every route, so it is refused.
fn non_empty_token(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("the token is empty; give a token, or leave the flag out for none".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

fn env_token() -> Option<String> {
    std::env::var("PATCHBAY_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
}
