//! The engine every plugin shares: wasmtime configured for async calls with epoch interruption,
//! the pooling instance allocator, the linker (WASI, wasi:http, the audited `open-at`, the host
//! interfaces), and the epoch ticker behind call deadlines.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Linker;

use super::instance::HostState;
use super::metrics::CallMetrics;
use crate::contract::{self, PluginMetrics};
use crate::sandbox;

/// Interval of the epoch ticker: the granularity of deadlines and of yielding.
pub const TICK: Duration = Duration::from_millis(5);

/// The shared engine, linker and compile cache.
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Linker<HostState>,
    pub(super) cache_dir: Option<PathBuf>,
    pub(super) engine_key: String,
    pub(super) metrics: PluginMetrics,
    pub(super) audit: Arc<sandbox::Audit>,
    pub(super) calls: Arc<CallMetrics>,
    pub(super) enforce: bool,
    pub(super) pool: Option<u32>,
    _ticker: Option<EpochTicker>,
}

impl Runtime {
    /// `cache_dir` holds precompiled components; `None` compiles every time.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        Runtime::build(cache_dir, true)
    }

    /// A runtime that enforces no time or memory limits: no epoch deadlines, no memory cap,
    /// no wall-clock guard. Grants still apply. It exists to measure what the limits cost
    /// (`cargo xtask bench`); never run untrusted plugins with it.
    pub fn without_limits(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        Runtime::build(cache_dir, false)
    }

    /// Where components uploaded through the admin API are kept: `uploads/` in the cache
    /// directory, or in the system's temporary directory without one.
    pub fn uploads_dir(&self) -> PathBuf {
        self.cache_dir.as_ref().map_or_else(
            || std::env::temp_dir().join("patchbay-uploads"),
            |dir| dir.join("uploads"),
        )
    }

    fn build(cache_dir: Option<PathBuf>, enforce: bool) -> anyhow::Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(enforce);
        config.wasm_component_model(true);
        // `PATCHBAY_PROFILE=perfmap` writes /tmp/perf-PID.map so `perf report` names the
        // plugins' compiled functions.
        if std::env::var_os("PATCHBAY_PROFILE").is_some_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let (engine, pool) = match pool_slots()? {
            Some(slots) => {
                config.allocation_strategy(pooling(slots));
                match Engine::new(&config) {
                    Ok(engine) => (engine, Some(slots)),
                    Err(e) => {
                        // The pool reserves its address space up front; where that is refused
                        // (a `ulimit -v`, a 32-bit address space) instances are allocated one by
                        // one instead: slower to create, otherwise the same.
                        tracing::warn!(
                            "cannot reserve the instance pool ({slots} slots): {e:#}; creating \
                             instances on demand (set PATCHBAY_INSTANCE_POOL=off to skip the try)"
                        );
                        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
                        (Engine::new(&config)?, None)
                    }
                }
            }
            None => (Engine::new(&config)?, None),
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let mut tls = wasmtime_wasi_tls::p2::LinkOptions::default();
        tls.tls(true);
        wasmtime_wasi_tls::p2::add_to_linker(&mut linker, &tls)?;
        sandbox::audit_open_at(&mut linker)?;
        sandbox::audit_name_lookup(&mut linker)?;
        sandbox::audit_socket_creation(&mut linker)?;
        contract::add_to_linker(&mut linker, |s: &mut HostState| &mut s.imports)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        let ticker = if enforce {
            Some(EpochTicker::start(&engine)?)
        } else {
            None
        };
        Ok(Runtime {
            engine,
            linker,
            cache_dir,
            engine_key,
            metrics: PluginMetrics::default(),
            audit: Arc::new(sandbox::Audit::default()),
            calls: Arc::new(CallMetrics::default()),
            enforce,
            pool,
            _ticker: ticker,
        })
    }

    /// How many instances the pooling allocator has slots for, or `None` when instances are
    /// allocated on demand (`PATCHBAY_INSTANCE_POOL=off`, or the pool could not be reserved).
    pub fn instance_pool(&self) -> Option<u32> {
        self.pool
    }

    /// The default cache directory: `$PATCHBAY_CACHE_DIR`, else `$XDG_CACHE_HOME/patchbay`,
    /// else `$HOME/.cache/patchbay`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("PATCHBAY_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(dir).join("patchbay"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/patchbay"))
    }

    /// Accesses the sandbox denied.
    pub fn audit(&self) -> &sandbox::Audit {
        &self.audit
    }

    /// What the host measured of plugin calls.
    pub fn call_metrics(&self) -> &CallMetrics {
        &self.calls
    }

    /// Metrics plugins reported through the host interface.
    pub fn plugin_metrics(&self) -> &PluginMetrics {
        &self.metrics
    }
}

/// Instance slots in the pool when `PATCHBAY_INSTANCE_POOL` is unset.
pub const DEFAULT_INSTANCE_POOL: u32 = 1000;

/// How much of a pooled slot's memory (and of its tables) is reset in place when its instance
/// goes, rather than decommitted.
const KEEP_RESIDENT: usize = 1 << 20;

/// `PATCHBAY_INSTANCE_POOL`: a number of instance slots, or `off` for on-demand allocation.
fn pool_slots() -> anyhow::Result<Option<u32>> {
    let Some(value) = std::env::var_os("PATCHBAY_INSTANCE_POOL") else {
        return Ok(Some(DEFAULT_INSTANCE_POOL));
    };
    let value = value.to_string_lossy();
    match value.trim() {
        "off" | "0" => Ok(None),
        n => match n.parse::<u32>() {
            Ok(slots) if slots <= 100_000 => Ok(Some(slots)),
            _ => anyhow::bail!(
                "PATCHBAY_INSTANCE_POOL is `{value}`: give a number of instance slots from 1 to \
                 100000, or `off` to create instances on demand"
            ),
        },
    }
}

/// The pooling allocator: each live plugin instance (its store, with the component's core
/// instances, memory, table and async stack) takes one slot that is prepared ahead and reused,
/// which makes instantiation several times faster than mapping fresh memory each time.
///
/// Slots are sized so that every component Patchbay runs fits, whatever its language: memories
/// may grow to 4 GiB (the per-plugin `limits.memory` is enforced by the store's limiter, not by
/// the slot), a component may hold any number of core instances and memories (componentize-py
/// links a dozen modules), and tables up to 100,000 entries (an interpreter's function table).
/// Only address space is reserved up front; memory is committed as instances touch it.
fn pooling(slots: u32) -> wasmtime::InstanceAllocationStrategy {
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    // A component instance brings several core instances (a Rust plugin 1 to 4, componentize-py
    // and componentize-js ones more) but, in every language here, one linear memory: memory
    // slots are the ones that reserve address space (4 GiB and a guard each), so they are
    // counted per component.
    let core = slots.saturating_mul(16);
    pool.total_component_instances(slots)
        .total_core_instances(core)
        .total_memories(slots)
        .total_tables(core)
        .total_stacks(slots)
        .max_memories_per_module(1)
        .max_tables_per_module(2)
        .table_elements(100_000)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        // When an instance goes, reset the pages its memory and tables dirtied with `memset`
        // (found by the PAGEMAP_SCAN ioctl, Linux 6.7+) instead of handing them back with
        // `madvise` and faulting them in again on the slot's next instance: a restart or a
        // swap then costs less. Beyond these sizes, and on older kernels, pages are decommitted
        // as before.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT);
    wasmtime::InstanceAllocationStrategy::Pooling(pool)
}

/// Advances the engine's epoch every [`TICK`] until dropped. Calls check their deadline at each
/// tick and yield to the async runtime, so a busy plugin never starves the others.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    /// Start the ticker thread.
    pub fn start(engine: &Engine) -> anyhow::Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.weak();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("patchbay-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("cannot start the epoch ticker thread")?;
        Ok(EpochTicker { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
