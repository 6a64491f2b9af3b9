//! Patchbay runtime: loads WebAssembly component plugins (sources, transforms, sinks described
//! by the WIT package `patchbay:connector@0.2.0`; plugins built against 0.1.0 still load),
//! gives each only what it was granted, and pipes batches of messages between them.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use patchbay_runtime::{assemble, config::Config, pipeline, plugin::Runtime};
//! let config = Config::load("examples/quickstart/pipeline.toml".as_ref())?;
//! let runtime = std::sync::Arc::new(Runtime::new(Runtime::default_cache_dir())?);
//! let loaded = assemble::load(&runtime, &config).await?;
//! let planned = assemble::plan(&runtime, &config, &loaded).await;
//! for (name, why) in &planned.failed {
//!     eprintln!("pipeline `{name}` could not start: {why}");
//! }
//! for plan in planned.plans {
//!     let (_drain_tx, drain) = tokio::sync::watch::channel(false);
//!     let (_abort_tx, abort) = tokio::sync::watch::channel(false);
//!     let counters = plan.counters();
//!     let report = pipeline::run(plan, pipeline::Control { drain, abort }, counters).await;
//!     println!("{}: {:?}", report.name, report.failure);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! Three layers, each importing only the ones below it:
//!
//! - [`sandbox`]: grants from parsing to audit, limits (imports only [`defaults`]);
//! - [`plugin`]: engine, cache, components, instances, behind small call traits;
//! - [`pipeline`]: source task, stages, retries, breaker, acks, routing, dead letters.
//!
//! Beside them: [`config`] (the pipeline file, checked), [`contract`] (the WIT bindings and host
//! interfaces), [`reload`] (hot swap), [`assemble`] (config + plugins → pipeline plans), and at
//! the top [`cli`], [`cluster`] (bus mode over NATS JetStream), [`admin`], [`compliance`],
//! [`scaffold`].

pub mod admin;
pub mod admin_client;
pub mod assemble;
pub mod cli;
pub mod cluster;
pub mod compliance;
pub mod config;
pub mod contract;
pub mod defaults;
pub mod pipeline;
pub mod plugin;
pub mod reload;
pub mod sandbox;
pub mod scaffold;
pub mod state_store;
pub mod telemetry;
