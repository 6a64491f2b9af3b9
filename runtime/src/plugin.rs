//! Loading plugins (read, pin check, compile with a precompiled cache, world check) and running
//! instances (one store each, limits and deadlines, calls that tell a trap from a WIT error).

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::{Grants, Limits, Role};
use crate::contract::{
    self, ConfigEntry, HostImports, Message, Metadata, Outcome, PluginMetrics, PluginState,
    PollResult, WitError, sink, sink_packed, source, transform, transform_packed,
};
use crate::sandbox;

/// Everything one plugin instance's store holds.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: sandbox::Limiter,
    imports: HostImports,
    deadline: Instant,
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_gate: sandbox::HttpGate,
    label: Arc<str>,
    audit: Arc<sandbox::Audit>,
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_gate,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Labels of the per-call metrics: `plugin` (`pipeline/plugin`) and `function` or `kind`.
pub type CallLabels = Vec<(String, String)>;

type HistogramFamily = prometheus_client::metrics::family::Family<
    CallLabels,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;
type CounterFamily = prometheus_client::metrics::family::Family<
    CallLabels,
    prometheus_client::metrics::counter::Counter,
>;

/// What the host measures of every plugin call, for `/metrics`.
#[derive(Debug)]
pub struct CallMetrics {
    /// Duration of each call, by plugin and function.
    pub seconds: HistogramFamily,
    /// Records handed to `process` and `write`, by plugin and function.
    pub records: CounterFamily,
    /// Errors plugins returned, by plugin and kind (`retryable`, `invalid-data`, `fatal`), and
    /// traps (`trap`).
    pub errors: CounterFamily,
}

fn call_histogram() -> prometheus_client::metrics::histogram::Histogram {
    // 10 µs to ~2.6 s.
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(1e-5, 4.0, 10),
    )
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            seconds: HistogramFamily::new_with_constructor(call_histogram),
            records: CounterFamily::default(),
            errors: CounterFamily::default(),
        }
    }
}

impl CallMetrics {
    fn labels(plugin: &str, key: &str, value: &str) -> CallLabels {
        vec![
            ("plugin".to_owned(), plugin.to_owned()),
            (key.to_owned(), value.to_owned()),
        ]
    }

    fn error(&self, plugin: &str, kind: &str) {
        self.errors
            .get_or_create(&CallMetrics::labels(plugin, "kind", kind))
            .inc();
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read `{path}`")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The sha256 pin does not match.
    #[error(
        "`{path}`: sha256 mismatch: the config pins {expected} but the file has {actual}; \
         the file changed since it was pinned: check where it came from, then update `sha256`"
    )]
    PinMismatch {
        /// File.
        path: PathBuf,
        /// Pinned hash.
        expected: String,
        /// Actual hash.
        actual: String,
    },
    /// Not a component.
    #[error("`{path}` is not a WebAssembly component: {reason}")]
    NotAComponent {
        /// File.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// The component does not implement a Patchbay world.
    #[error("`{path}` does not implement a patchbay:connector@0.1.0 world: {reason}")]
    NoWorld {
        /// File.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The component imports something the host does not provide.
    #[error(
        "`{path}` imports {import}, which Patchbay does not provide; a plugin may import \
         patchbay:connector/{{logging,metrics,state}}@0.1.0 and WASI 0.2 interfaces"
    )]
    UnknownImport {
        /// File.
        path: PathBuf,
        /// The import wasmtime could not satisfy.
        import: String,
    },
}

/// A plugin call that did not return normally: the instance is gone.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin `{plugin}` trapped in `{function}`: {reason}")]
pub struct Trap {
    /// `pipeline/plugin`.
    pub plugin: Arc<str>,
    /// The exported function that was running.
    pub function: &'static str,
    /// What happened, with the plugin's last words on stderr when it left some.
    pub reason: String,
}

/// The shared engine, linker and compile cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    engine_key: String,
    metrics: PluginMetrics,
    audit: Arc<sandbox::Audit>,
    calls: Arc<CallMetrics>,
    enforce: bool,
    pool: Option<u32>,
    _ticker: Option<sandbox::EpochTicker>,
}

/// A loaded, checked component, ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// File it came from.
    pub path: PathBuf,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// The world it implements.
    pub role: Role,
    /// Everything it imports, as `name` strings.
    pub imports: Vec<String>,
    pre: RolePre,
}

impl LoadedPlugin {
    /// Whether it is called through the packed fast path (`process-packed`, `write-packed`).
    pub fn packed(&self) -> bool {
        matches!(
            self.pre,
            RolePre::TransformPacked(_) | RolePre::SinkPacked(_)
        )
    }
}

#[derive(Clone)]
enum RolePre {
    Source(source::SourcePre<HostState>),
    Transform(transform::TransformPre<HostState>),
    TransformPacked(transform_packed::TransformPackedPre<HostState>),
    Sink(sink::SinkPre<HostState>),
    SinkPacked(sink_packed::SinkPackedPre<HostState>),
}

enum Bindings {
    Source(source::Source),
    Transform(transform::Transform),
    /// A transform that exports `process-packed` too: called through it.
    TransformPacked(transform_packed::TransformPacked),
    Sink(sink::Sink),
    /// A sink that exports `write-packed` too: called through it.
    SinkPacked(sink_packed::SinkPacked),
}

/// `$call` on the `plugin` interface of whichever world the instance implements (`$b` names
/// its bindings), under the call guard; `wrong_role` when it has none.
macro_rules! plugin_call {
    ($self:ident, $timeout:expr, $what:literal, |$b:ident| $call:expr) => {
        match &$self.bindings {
            Some(Bindings::Source($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::Transform($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::TransformPacked($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::Sink($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SinkPacked($b)) => guard($self.guard_for($timeout), $call).await,
            None => return Err($self.wrong_role($what)),
        }
    };
}

impl Runtime {
    /// Create the engine (async, epoch interruption) and the linker with WASI and host imports.
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
        audit_open_at(&mut linker)?;
        contract::add_to_linker(&mut linker, |s: &mut HostState| &mut s.imports)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        let ticker = if enforce {
            Some(sandbox::EpochTicker::start(&engine)?)
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

    /// Read, verify, compile and check a component.
    pub fn load(&self, path: &Path, pin: Option<&str>) -> Result<LoadedPlugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        if let Some(expected) = pin
            && expected != sha256
        {
            return Err(LoadError::PinMismatch {
                path: path.to_owned(),
                expected: expected.to_owned(),
                actual: sha256,
            });
        }
        check_header(path, &bytes)?;
        let component = self.compile(path, &bytes, &sha256)?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exports_api = |api: &str| {
            exports
                .iter()
                .any(|e| e == &format!("patchbay:connector/{api}@0.1.0"))
        };
        let role = if exports_api("source-api") {
            Role::Source
        } else if exports_api("transform-api") {
            Role::Transform
        } else if exports_api("sink-api") {
            Role::Sink
        } else {
            let found = if exports.is_empty() {
                "it exports nothing".to_owned()
            } else {
                format!("it exports {}", exports.join(", "))
            };
            return Err(LoadError::NoWorld {
                path: path.to_owned(),
                reason: format!(
                    "{found}; a plugin exports patchbay:connector/plugin@0.1.0 and one of \
                     source-api, transform-api or sink-api (see wit/worlds.wit)"
                ),
            });
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let text = format!("{e:#}");
            match text.split('`').nth(1) {
                Some(import) if text.contains("matching implementation was not found") => {
                    LoadError::UnknownImport {
                        path: path.to_owned(),
                        import: format!("`{import}`"),
                    }
                }
                _ => LoadError::UnknownImport {
                    path: path.to_owned(),
                    import: text,
                },
            }
        })?;
        let world_error = |e: wasmtime::Error| LoadError::NoWorld {
            path: path.to_owned(),
            reason: format!(
                "it looks like a {role} but its exports do not match world `{role}`: {e:#}"
            ),
        };
        let pre = match role {
            Role::Source => {
                RolePre::Source(source::SourcePre::new(instance_pre).map_err(world_error)?)
            }
            Role::Transform if exports_api("transform-packed-api") => RolePre::TransformPacked(
                transform_packed::TransformPackedPre::new(instance_pre).map_err(world_error)?,
            ),
            Role::Transform => {
                RolePre::Transform(transform::TransformPre::new(instance_pre).map_err(world_error)?)
            }
            Role::Sink if exports_api("sink-packed-api") => RolePre::SinkPacked(
                sink_packed::SinkPackedPre::new(instance_pre).map_err(world_error)?,
            ),
            Role::Sink => RolePre::Sink(sink::SinkPre::new(instance_pre).map_err(world_error)?),
        };
        Ok(LoadedPlugin {
            path: path.to_owned(),
            sha256,
            role,
            imports,
            pre,
        })
    }

    fn compile(&self, path: &Path, bytes: &[u8], sha256: &str) -> Result<Component, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::NotAComponent {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        };
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(invalid);
        };
        let cached = dir.join(format!("{sha256}-{}.cwasm", self.engine_key));
        if cached.is_file() {
            match deserialize_cached(&self.engine, &cached) {
                Ok(component) => return Ok(component),
                Err(e) => tracing::debug!("ignoring cache entry {}: {e:#}", cached.display()),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(invalid)?;
        if let Err(e) = store_cached(dir, &cached, &component) {
            tracing::debug!("cannot write cache entry {}: {e:#}", cached.display());
        }
        Ok(component)
    }

    /// Create an instance of a loaded plugin, with its own store, grants and limits. `init` is
    /// not called.
    pub async fn instantiate(
        &self,
        plugin: &LoadedPlugin,
        label: Arc<str>,
        plugin_name: Arc<str>,
        grants: &Grants,
        limits: &Limits,
        state: PluginState,
    ) -> anyhow::Result<Instance> {
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let wasi = sandbox::wasi_ctx(&label, grants, stderr_tail.clone(), &self.audit)?;
        let host = HostState {
            wasi,
            table: ResourceTable::new(),
            limits: sandbox::store_limits(limits),
            imports: HostImports {
                label: label.clone(),
                plugin: plugin_name,
                state,
                metrics: self.metrics.clone(),
            },
            deadline: Instant::now() + limits.init_timeout,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_gate: sandbox::HttpGate::new(&label, grants, &self.audit),
            label: label.clone(),
            audit: self.audit.clone(),
        };
        let mut store = Store::new(&self.engine, host);
        if self.enforce {
            store.limiter(|s| &mut s.limits);
            store.epoch_deadline_callback(|ctx| {
                if Instant::now() >= ctx.data().deadline {
                    Ok(UpdateDeadline::Interrupt)
                } else {
                    Ok(UpdateDeadline::Yield(1))
                }
            });
            store.set_epoch_deadline(1);
        }
        let mut instance = Instance {
            store,
            bindings: None,
            label,
            limits: *limits,
            stderr_tail,
            enforce: self.enforce,
            calls: self.calls.clone(),
            frame: Vec::new(),
            typed_only: false,
            pool: self.pool,
        };
        let result = match &plugin.pre {
            RolePre::Source(pre) => pre
                .instantiate_async(&mut instance.store)
                .await
                .map(Bindings::Source),
            RolePre::Transform(pre) => pre
                .instantiate_async(&mut instance.store)
                .await
                .map(Bindings::Transform),
            RolePre::TransformPacked(pre) => pre
                .instantiate_async(&mut instance.store)
                .await
                .map(Bindings::TransformPacked),
            RolePre::Sink(pre) => pre
                .instantiate_async(&mut instance.store)
                .await
                .map(Bindings::Sink),
            RolePre::SinkPacked(pre) => pre
                .instantiate_async(&mut instance.store)
                .await
                .map(Bindings::SinkPacked),
        };
        match result {
            Ok(bindings) => instance.bindings = Some(bindings),
            Err(e) => return Err(instance.trap("instantiate", limits.init_timeout, e).into()),
        }
        Ok(instance)
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

/// Re-define `wasi:filesystem` `open-at` around wasmtime-wasi's own, so that an open the sandbox
/// refuses (a `..` or symlink escape from a granted directory, a write under a read-only grant)
/// is audited like a network denial. Paths outside every granted directory never reach the host:
/// the guest's libc finds no directory to resolve them against.
fn audit_open_at(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::filesystem::WasiFilesystemView;
    use wasmtime_wasi::p2::bindings::filesystem::types::{self as fs, HostDescriptor as _};
    type Args = (
        Resource<fs::Descriptor>,
        fs::PathFlags,
        String,
        fs::OpenFlags,
        fs::DescriptorFlags,
    );
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:filesystem/types@0.2.12")?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: wasmtime::StoreContextMut<'_, HostState>,
         (fd, path_flags, path, open_flags, flags): Args| {
            Box::new(async move {
                let state = store.data_mut();
                let opened = state
                    .filesystem()
                    .open_at(fd, path_flags, path.clone(), open_flags, flags)
                    .await;
                match opened {
                    Ok(fd) => Ok((Ok(fd),)),
                    Err(e) => {
                        let code = e.downcast()?;
                        if matches!(
                            code,
                            fs::ErrorCode::NotPermitted
                                | fs::ErrorCode::Access
                                | fs::ErrorCode::ReadOnly
                        ) {
                            state.audit.deny(
                                &state.label,
                                "filesystem",
                                &path,
                                "outside its granted directories, or a write under a read-only grant",
                            );
                        }
                        Ok((Err(code),))
                    }
                }
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[allow(unsafe_code)]
fn deserialize_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `store_cached` from `Component::serialize` into the
    // user's own cache directory, under a name that includes the component's sha256 and the
    // engine's compatibility hash; wasmtime also checks the header and engine settings.
    unsafe { Component::deserialize_file(engine, path) }
}

fn store_cached(dir: &Path, path: &Path, component: &Component) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let fail = |reason: &str| {
        Err(LoadError::NotAComponent {
            path: path.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if bytes.len() < 8 {
        return fail("the file is too short to be WebAssembly (truncated?)");
    }
    if &bytes[0..4] != b"\0asm" {
        return fail(
            "the file does not start with the WebAssembly magic number; is it the right file?",
        );
    }
    match bytes[4..8] {
        [0x01, 0x00, 0x00, 0x00] => fail(
            "it is a core WebAssembly module; build the plugin for the wasm32-wasip2 target (which \
             emits a component) or wrap it with `wasm-tools component new`",
        ),
        [_, _, 0x01, 0x00] => Ok(()),
        _ => fail("unknown WebAssembly version or layer"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a message costs in memory, roughly: its bytes and a fixed overhead.
fn message_size(m: &Message) -> u64 {
    let headers: usize = m.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    (m.payload.len() + m.key.as_ref().map_or(0, Vec::len) + headers + 64) as u64
}

/// The sha256 of a file, as lowercase hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}

/// Marks a call stopped by the wall-clock guard: it was waiting on the host (I/O, a timer), where
/// the epoch deadline cannot reach it.
#[derive(Debug, thiserror::Error)]
#[error("blocked past its deadline")]
struct Blocked;

/// Extra time the wall-clock guard allows past a deadline, so that a busy call is stopped by the
/// epoch deadline (which can say so) before the guard drops it.
const GUARD_GRACE: Duration = Duration::from_millis(50);

/// Run a plugin call with a wall-clock limit as well as the epoch deadline: a plugin that
/// blocks in a host call (a sleep, a socket read) runs no Wasm code, so only this stops it.
/// The dropped call leaves the instance unusable; the caller discards it like any trap.
async fn guard<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let Some(timeout) = timeout else {
        return call.await;
    };
    match tokio::time::timeout(timeout + GUARD_GRACE, call).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Error::new(Blocked)),
    }
}

/// One live plugin instance. After a [`Trap`] it must be discarded.
pub struct Instance {
    store: Store<HostState>,
    bindings: Option<Bindings>,
    label: Arc<str>,
    limits: Limits,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    enforce: bool,
    calls: Arc<CallMetrics>,
    /// The packed batch buffer, reused from call to call.
    frame: Vec<u8>,
    /// Call `process` / `write` even when the plugin has the packed form (the compliance kit
    /// compares the two).
    typed_only: bool,
    /// The runtime's instance pool slots (for the message when they run out).
    pool: Option<u32>,
}

impl Instance {
    /// Record one finished call: its duration, the records it was handed, a trap.
    fn observe<T>(
        &self,
        function: &str,
        started: Instant,
        records: usize,
        result: &Result<T, Trap>,
    ) {
        let labels = CallMetrics::labels(&self.label, "function", function);
        self.calls
            .seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if records > 0 {
            self.calls
                .records
                .get_or_create(&labels)
                .inc_by(records as u64);
        }
        if result.is_err() {
            self.calls.error(&self.label, "trap");
        }
    }

    fn errors<'a>(&self, errors: impl Iterator<Item = &'a WitError>) {
        for e in errors {
            self.calls.error(&self.label, &e.kind.to_string());
        }
    }

    fn arm(&mut self, timeout: Duration) {
        if self.enforce {
            let state = self.store.data_mut();
            state.deadline = Instant::now() + timeout;
            state.limits.clear();
            self.store.set_epoch_deadline(1);
        }
    }

    fn guard_for(&self, timeout: Duration) -> Option<Duration> {
        self.enforce.then_some(timeout)
    }

    fn trap(&self, function: &'static str, timeout: Duration, e: wasmtime::Error) -> Trap {
        let mut reason = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => format!(
                "the call ran past its deadline of {} and was stopped after {} (limits.{})",
                humantime::format_duration(timeout),
                {
                    let started = self.store.data().deadline.checked_sub(timeout);
                    let ran = started.map_or(timeout, |s| s.elapsed());
                    humantime::format_duration(Duration::from_millis(ran.as_millis() as u64))
                },
                if function == "init" || function == "instantiate" {
                    "init_timeout"
                } else {
                    "call_timeout"
                }
            ),
            _ if e.downcast_ref::<Blocked>().is_some() => format!(
                "the call was still waiting (on I/O or a timer) at its deadline of {} and was \
                 stopped (limits.{})",
                humantime::format_duration(timeout),
                if function == "init" || function == "instantiate" {
                    "init_timeout"
                } else {
                    "call_timeout"
                }
            ),
            Some(wasmtime::Trap::StackOverflow) => {
                "call stack exhausted (runaway recursion?)".to_owned()
            }
            // The guest was refused memory and could not go on without it (a Rust allocator
            // aborts: an `unreachable` trap): say which limit.
            _ if self.store.data().limits.refused() => format!(
                "memory limit of {} reached (limits.memory)",
                bytesize::ByteSize(self.limits.memory).display().iec()
            ),
            Some(trap) => trap.to_string(),
            None => {
                let text = e.root_cause().to_string();
                match self.pool {
                    Some(slots) if text.contains("maximum concurrent limit") => format!(
                        "all {slots} instance slots of the pool are in use ({text}); raise \
                         PATCHBAY_INSTANCE_POOL, or set it to `off` to create instances on demand"
                    ),
                    _ => text,
                }
            }
        };
        let tail = match self.stderr_tail.lock() {
            Ok(tail) => tail.iter().cloned().collect::<Vec<_>>(),
            Err(_) => Vec::new(),
        };
        if !tail.is_empty() {
            let said: Vec<&str> = tail
                .iter()
                .map(|line| match line.strip_prefix("thread '") {
                    Some(rest) => rest.split_once(") ").map_or(line.as_str(), |(_, r)| r),
                    None => line.as_str(),
                })
                .collect();
            reason.push_str("; its last words on stderr: ");
            reason.push_str(&said.join(" "));
        }
        Trap {
            plugin: self.label.clone(),
            function,
            reason,
        }
    }

    fn check_output(&self, function: &'static str, messages: &[Message]) -> Result<(), Trap> {
        self.check_size(function, messages.iter().map(message_size).sum())
    }

    /// Refuse a call's output over `limits.max_output`; the instance is treated as trapped.
    fn check_size(&self, function: &'static str, size: u64) -> Result<(), Trap> {
        if size <= self.limits.max_output {
            return Ok(());
        }
        Err(Trap {
            plugin: self.label.clone(),
            function,
            reason: format!(
                "output of {} is over the limit of {} (limits.max_output)",
                bytesize::ByteSize(size).display().iec(),
                bytesize::ByteSize(self.limits.max_output).display().iec()
            ),
        })
    }

    fn wrong_role(&self, function: &'static str) -> Trap {
        Trap {
            plugin: self.label.clone(),
            function,
            reason: "this function is not part of the plugin's world".to_owned(),
        }
    }

    /// `metadata()`.
    pub async fn metadata(&mut self) -> Result<Metadata, Trap> {
        let timeout = self.limits.call_timeout;
        self.arm(timeout);
        let result = plugin_call!(self, timeout, "metadata", |b| b
            .patchbay_connector_plugin()
            .call_describe(&mut self.store));
        result.map_err(|e| self.trap("describe", timeout, e))
    }

    /// `init(config)`.
    async fn init_inner(&mut self, config: &[ConfigEntry]) -> Result<Result<(), WitError>, Trap> {
        let timeout = self.limits.init_timeout;
        self.arm(timeout);
        let result = plugin_call!(self, timeout, "init", |b| b
            .patchbay_connector_plugin()
            .call_init(&mut self.store, config));
        result.map_err(|e| self.trap("init", timeout, e))
    }

    /// `poll(max)` of a source.
    async fn poll_inner(&mut self, max: u32) -> Result<Result<PollResult, WitError>, Trap> {
        let timeout = self.limits.call_timeout;
        self.arm(timeout);
        let Some(Bindings::Source(b)) = &self.bindings else {
            return Err(self.wrong_role("poll"));
        };
        let result = guard(
            self.guard_for(timeout),
            b.patchbay_connector_source_api()
                .call_poll(&mut self.store, max),
        )
        .await;
        let result = result.map_err(|e| self.trap("poll", timeout, e))?;
        if let Ok(PollResult::Batch(batch)) = &result {
            self.check_output("poll", &batch.messages)?;
        }
        Ok(result)
    }

    /// `ack(checkpoint)` of a source.
    async fn ack_inner(&mut self, checkpoint: u64) -> Result<Result<(), WitError>, Trap> {
        let timeout = self.limits.call_timeout;
        self.arm(timeout);
        let Some(Bindings::Source(b)) = &self.bindings else {
            return Err(self.wrong_role("ack"));
        };
        let result = guard(
            self.guard_for(timeout),
            b.patchbay_connector_source_api()
                .call_ack(&mut self.store, checkpoint),
        )
        .await;
        result.map_err(|e| self.trap("ack", timeout, e))
    }

    /// `process(batch)` of a transform, through `process-packed` when it has it.
    async fn process_inner(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, Trap> {
        let timeout = self.limits.call_timeout;
        self.arm(timeout);
        // The typed call, for a world with or without the packed export (distinct binding types).
        macro_rules! typed {
            ($b:ident) => {
                guard(
                    self.guard_for(timeout),
                    $b.patchbay_connector_transform_api()
                        .call_process(&mut self.store, batch),
                )
                .await
                .map_err(|e| self.trap("process", timeout, e))?
            };
        }
        let outcomes = match &self.bindings {
            Some(Bindings::TransformPacked(b)) if !self.typed_only => {
                let frame = packed::batch(std::mem::take(&mut self.frame), batch);
                let result = guard(
                    self.guard_for(timeout),
                    b.patchbay_connector_transform_packed_api()
                        .call_process_packed(&mut self.store, &frame),
                )
                .await;
                self.frame = frame;
                let answer = result.map_err(|e| self.trap("process", timeout, e))?;
                packed::outcomes(&answer)
                    .map_err(|e| self.malformed("process", "process-packed", &e))?
            }
            Some(Bindings::Transform(b)) => typed!(b),
            Some(Bindings::TransformPacked(b)) => typed!(b),
            _ => return Err(self.wrong_role("process")),
        };
        let size: u64 = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Replace(messages) => messages.iter().map(message_size).sum(),
                _ => 0,
            })
            .sum();
        self.check_size("process", size)?;
        Ok(outcomes)
    }

    /// `write(batch)` of a sink, through `write-packed` when it has it.
    async fn write_inner(&mut self, batch: &[Message]) -> Result<Vec<Result<(), WitError>>, Trap> {
        let timeout = self.limits.call_timeout;
        self.arm(timeout);
        macro_rules! typed {
            ($b:ident) => {
                guard(
                    self.guard_for(timeout),
                    $b.patchbay_connector_sink_api()
                        .call_write(&mut self.store, batch),
                )
                .await
                .map_err(|e| self.trap("write", timeout, e))
            };
        }
        match &self.bindings {
            Some(Bindings::SinkPacked(b)) if !self.typed_only => {
                let frame = packed::batch(std::mem::take(&mut self.frame), batch);
                let result = guard(
                    self.guard_for(timeout),
                    b.patchbay_connector_sink_packed_api()
                        .call_write_packed(&mut self.store, &frame),
                )
                .await;
                self.frame = frame;
                let answer = result.map_err(|e| self.trap("write", timeout, e))?;
                packed::results(&answer).map_err(|e| self.malformed("write", "write-packed", &e))
            }
            Some(Bindings::Sink(b)) => typed!(b),
            Some(Bindings::SinkPacked(b)) => typed!(b),
            _ => Err(self.wrong_role("write")),
        }
    }

    /// A packed answer that is not a well-formed frame: the instance is treated as trapped.
    /// (Traps in a packed call are reported under the typed name, `process` or `write`: the
    /// function the plugin's author wrote.)
    fn malformed(
        &self,
        function: &'static str,
        packed: &str,
        e: &patchbay_frame::FrameError,
    ) -> Trap {
        Trap {
            plugin: self.label.clone(),
            function,
            reason: format!(
                "its answer through `{packed}` is not a valid frame ({e}); see \"Packed \
                 frames\" in wit/README.md"
            ),
        }
    }

    /// From now on, call the typed `process` / `write` even if the plugin exports their
    /// packed form.
    pub fn use_typed_calls(&mut self) {
        self.typed_only = true;
    }

    /// `init(config)`.
    pub async fn init(&mut self, config: &[ConfigEntry]) -> Result<Result<(), WitError>, Trap> {
        let started = Instant::now();
        let result = self.init_inner(config).await;
        self.observe("init", started, 0, &result);
        if let Ok(Err(e)) = &result {
            self.errors(std::iter::once(e));
        }
        result
    }

    /// `poll(max)` of a source.
    pub async fn poll(&mut self, max: u32) -> Result<Result<PollResult, WitError>, Trap> {
        let started = Instant::now();
        let result = self.poll_inner(max).await;
        let records = match &result {
            Ok(Ok(PollResult::Batch(batch))) => batch.messages.len(),
            _ => 0,
        };
        self.observe("poll", started, records, &result);
        if let Ok(Err(e)) = &result {
            self.errors(std::iter::once(e));
        }
        result
    }

    /// `ack(checkpoint)` of a source.
    pub async fn ack(&mut self, checkpoint: u64) -> Result<Result<(), WitError>, Trap> {
        let started = Instant::now();
        let result = self.ack_inner(checkpoint).await;
        self.observe("ack", started, 0, &result);
        if let Ok(Err(e)) = &result {
            self.errors(std::iter::once(e));
        }
        result
    }

    /// `process(batch)` of a transform.
    pub async fn process(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, Trap> {
        let started = Instant::now();
        let result = self.process_inner(batch).await;
        self.observe("process", started, batch.len(), &result);
        if let Ok(outcomes) = &result {
            self.errors(outcomes.iter().filter_map(|o| match o {
                Outcome::Fail(e) => Some(e),
                _ => None,
            }));
        }
        result
    }

    /// `write(batch)` of a sink.
    pub async fn write(&mut self, batch: &[Message]) -> Result<Vec<Result<(), WitError>>, Trap> {
        let started = Instant::now();
        let result = self.write_inner(batch).await;
        self.observe("write", started, batch.len(), &result);
        if let Ok(results) = &result {
            self.errors(results.iter().filter_map(|r| r.as_ref().err()));
        }
        result
    }
}

/// The packed fast path: messages into a batch frame, answers out of theirs
/// (`patchbay-frame`, "Packed frames" in wit/README.md).
mod packed {
    use patchbay_frame::{FrameError, Kind, MessageRef, OutcomeRef, Reader, Writer};

    use crate::contract::{ErrorKind, Header, Message, Outcome, WitError};

    /// `batch` as a frame, in `buf`'s allocation.
    pub fn batch(buf: Vec<u8>, batch: &[Message]) -> Vec<u8> {
        let mut w = Writer::new(buf);
        w.count(batch.len());
        for m in batch {
            w.message(
                &m.payload,
                m.key.as_deref(),
                m.headers
                    .iter()
                    .map(|h| (h.name.as_str(), h.value.as_str())),
                m.timestamp,
            );
        }
        w.finish()
    }

    fn message(m: MessageRef<'_>) -> Message {
        Message {
            payload: m.payload.to_vec(),
            key: m.key.map(<[u8]>::to_vec),
            headers: m
                .headers
                .into_iter()
                .map(|(name, value)| Header {
                    name: name.to_owned(),
                    value: value.to_owned(),
                })
                .collect(),
            timestamp: m.timestamp,
        }
    }

    fn error(kind: Kind, message: &str) -> WitError {
        WitError {
            kind: match kind {
                Kind::Retryable => ErrorKind::Retryable,
                Kind::InvalidData => ErrorKind::InvalidData,
                Kind::Fatal => ErrorKind::Fatal,
            },
            message: message.to_owned(),
        }
    }

    /// An outcomes frame.
    pub fn outcomes(frame: &[u8]) -> Result<Vec<Outcome>, FrameError> {
        let mut r = Reader::new(frame);
        let n = r.count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match r.outcome()? {
                OutcomeRef::Keep => Outcome::Keep,
                OutcomeRef::Drop => Outcome::Drop,
                OutcomeRef::Replace(n) => {
                    let mut messages = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        messages.push(message(r.message()?));
                    }
                    Outcome::Replace(messages)
                }
                OutcomeRef::Fail(kind, text) => Outcome::Fail(error(kind, text)),
            });
        }
        r.end()?;
        Ok(out)
    }

    /// A results frame.
    pub fn results(frame: &[u8]) -> Result<Vec<Result<(), WitError>>, FrameError> {
        let mut r = Reader::new(frame);
        let n = r.count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(r.result()?.map_err(|(kind, text)| error(kind, text)));
        }
        r.end()?;
        Ok(out)
    }
}
