//! One live plugin instance: its own store (WASI context from its grants, limits, host state),
//! the calls of its world with deadlines armed, traps told apart from WIT errors, metrics of
//! every call, and the packed fast path when the plugin exports it. After a [`Trap`] an
//! instance must be discarded; the pipeline layer starts a fresh one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::component::{LoadedPlugin, RolePre};
use super::engine::Runtime;
use super::metrics::CallMetrics;
use super::packed;
use super::trap::{Blocked, Trap, guard};

mod source_calls;
use crate::contract::{
    ConfigEntry, HostImports, Message, Metadata, Outcome, PluginState, PollResult, WitError, sink,
    sink_packed, source, source_bounded, source_reply, source_shared, transform, transform_packed,
    v0_1,
};
use crate::sandbox::{self, Grants, Limits};

/// Why a source that does not export `share` runs as one instance.
const NOT_SHARED: &str = "it does not say that several instances can share its work (it exports \
     no `source-shared-api`, see wit/worlds.wit); remove `concurrency` from the source";

/// Everything one plugin instance's store holds.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: sandbox::Limiter,
    pub(super) imports: HostImports,
    deadline: Instant,
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_gate: sandbox::HttpGate,
    label: Arc<str>,
    audit: Arc<sandbox::Audit>,
    /// `grants.dns`.
    dns: bool,
    /// Which sockets the grants allow.
    sockets: sandbox::SocketGrants,
    /// Name lookups started and maybe not dropped yet (`sandbox::audit_name_lookup`).
    lookups: Vec<u32>,
    /// Sockets and files it holds open (`limits.sockets`, `limits.files`).
    opened: sandbox::Opened,
    /// `wasi:tls`, as `grants.tls` configures it.
    tls: wasmtime_wasi_tls::WasiTlsCtx,
}

impl wasmtime_wasi_tls::WasiTlsView for HostState {
    fn tls(&mut self) -> wasmtime_wasi_tls::WasiTlsCtxView<'_> {
        wasmtime_wasi_tls::WasiTlsCtxView {
            ctx: &mut self.tls,
            table: &mut self.table,
        }
    }
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

impl sandbox::Audited for HostState {
    fn audit(&self) -> (&Arc<sandbox::Audit>, &str) {
        (&self.audit, &self.label)
    }

    fn dns_granted(&self) -> bool {
        self.dns
    }

    fn sockets_granted(&self) -> sandbox::SocketGrants {
        self.sockets
    }

    fn lookups(&mut self) -> &mut Vec<u32> {
        &mut self.lookups
    }

    fn opened(&mut self) -> &mut sandbox::Opened {
        &mut self.opened
    }
}

enum Bindings {
    Source(source::Source),
    /// A source that exports `poll-within` too: polled through it.
    SourceBounded(source_bounded::SourceBounded),
    /// A bounded source that exports `share` too.
    SourceShared(source_shared::SourceShared),
    Transform(transform::Transform),
    /// A transform that exports `process-packed` too: called through it.
    TransformPacked(transform_packed::TransformPacked),
    Sink(sink::Sink),
    /// A sink that exports `write-packed` too: called through it.
    SinkPacked(sink_packed::SinkPacked),
    /// A shared source that also answers requests (`reply`).
    SourceReply(source_reply::SourceReply),
    // The same worlds of contract 0.1.0 (the same calls, distinct binding types).
    SourceV1(v0_1::source::Source),
    SourceBoundedV1(v0_1::source_bounded::SourceBounded),
    SourceSharedV1(v0_1::source_shared::SourceShared),
    TransformV1(v0_1::transform::Transform),
    TransformPackedV1(v0_1::transform_packed::TransformPacked),
    SinkV1(v0_1::sink::Sink),
    SinkPackedV1(v0_1::sink_packed::SinkPacked),
}

/// `$call` on the `plugin` interface of whichever world the instance implements (`$b` names
/// its bindings), under the call guard; `wrong_role` when it has none.
macro_rules! plugin_call {
    ($self:ident, $timeout:expr, $what:literal, |$b:ident| $call:expr) => {
        match &$self.bindings {
            Some(Bindings::Source($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SourceBounded($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SourceShared($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::Transform($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::TransformPacked($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::Sink($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SinkPacked($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SourceReply($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SourceV1($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SourceBoundedV1($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SourceSharedV1($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::TransformV1($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::TransformPackedV1($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SinkV1($b)) => guard($self.guard_for($timeout), $call).await,
            Some(Bindings::SinkPackedV1($b)) => guard($self.guard_for($timeout), $call).await,
            None => return Err($self.wrong_role($what)),
        }
    };
}

impl Runtime {
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
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(limits.handles);
                table
            },
            limits: sandbox::store_limits(limits),
            imports: HostImports {
                label: label.clone(),
                plugin: plugin_name,
                state,
                metrics: self.metrics.clone(),
                log_budget: sandbox::logline::LineBudget::new(label.clone(), "log"),
                metric_refused: false,
            },
            deadline: Instant::now() + limits.init_timeout,
            http: {
                let mut http = wasmtime_wasi_http::WasiHttpCtx::new();
                http.set_field_size_limit(crate::defaults::HTTP_FIELDS_SIZE);
                http
            },
            http_gate: sandbox::HttpGate::new(&label, grants, &self.audit),
            label: label.clone(),
            audit: self.audit.clone(),
            dns: grants.dns,
            sockets: sandbox::SocketGrants {
                tcp: !grants.tcp.is_empty() || !grants.listen.is_empty(),
                udp: !grants.udp.is_empty(),
            },
            lookups: Vec::new(),
            opened: sandbox::Opened::new(limits.sockets, limits.files),
            tls: wasmtime_wasi_tls::WasiTlsCtxBuilder::new()
                .provider(Box::new(sandbox::TlsProvider::new(
                    &label,
                    grants.tls.as_ref(),
                )))
                .build(),
        };
        let mut store = Store::new(&self.engine, host);
        // Handles of resources the guest defines itself (`resource.new`), and the bytes one
        // call into the host may copy out of the guest: both within the guest's own caps.
        store.set_max_component_handles(limits.handles);
        store.set_hostcall_fuel(usize::try_from(limits.memory).unwrap_or(usize::MAX));
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
        macro_rules! start {
            ($pre:ident, $variant:ident) => {
                $pre.instantiate_async(&mut instance.store)
                    .await
                    .map(Bindings::$variant)
            };
        }
        let result = match &plugin.pre {
            RolePre::Source(pre) => start!(pre, Source),
            RolePre::SourceBounded(pre) => start!(pre, SourceBounded),
            RolePre::SourceShared(pre) => start!(pre, SourceShared),
            RolePre::Transform(pre) => start!(pre, Transform),
            RolePre::TransformPacked(pre) => start!(pre, TransformPacked),
            RolePre::Sink(pre) => start!(pre, Sink),
            RolePre::SinkPacked(pre) => start!(pre, SinkPacked),
            RolePre::SourceReply(pre) => start!(pre, SourceReply),
            RolePre::SourceV1(pre) => start!(pre, SourceV1),
            RolePre::SourceBoundedV1(pre) => start!(pre, SourceBoundedV1),
            RolePre::SourceSharedV1(pre) => start!(pre, SourceSharedV1),
            RolePre::TransformV1(pre) => start!(pre, TransformV1),
            RolePre::TransformPackedV1(pre) => start!(pre, TransformPackedV1),
            RolePre::SinkV1(pre) => start!(pre, SinkV1),
            RolePre::SinkPackedV1(pre) => start!(pre, SinkPackedV1),
        };
        match result {
            Ok(bindings) => instance.bindings = Some(bindings),
            Err(e) => return Err(instance.trap("instantiate", limits.init_timeout, e).into()),
        }
        Ok(instance)
    }
}

/// What a message costs against `limits.max_output` and `batch_bytes`: its bytes and a fixed
/// overhead per message and per header (as `packed::message_size` counts it).
pub fn message_size(m: &Message) -> u64 {
    let headers: usize = m
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + packed::PER_HEADER)
        .sum();
    (m.payload.len() + m.key.as_ref().map_or(0, Vec::len) + headers + packed::PER_MESSAGE) as u64
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
        let mut over_limit = false;
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
            _ if self.store.data().limits.refused() => {
                over_limit = true;
                format!(
                    "memory limit of {} reached (limits.memory)",
                    bytesize::ByteSize(self.limits.memory).display().iec()
                )
            }
            Some(trap) => trap.to_string(),
            None => {
                let text = e.root_cause().to_string();
                match self.pool {
                    Some(slots) if text.contains("maximum concurrent limit") => format!(
                        "all {slots} instance slots of the pool are in use ({text}); raise \
                         PATCHBAY_INSTANCE_POOL, or set it to `off` to create instances on demand"
                    ),
                    _ if text.contains("resource table has no free keys")
                        || text.contains("store handle limit exceeded") =>
                    {
                        format!(
                            "the instance holds {} live handles in the host (streams, sockets, \
                         header maps…), its limit (limits.handles; {text})",
                            self.limits.handles
                        )
                    }
                    _ if text.contains("total size of fields exceeds limit") => format!(
                        "{text}: a `wasi:http` header map holds at most {} in the host",
                        bytesize::ByteSize(crate::defaults::HTTP_FIELDS_SIZE as u64)
                            .display()
                            .iec()
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
            over_limit,
            reason,
        }
    }

    fn check_output(&self, function: &'static str, messages: &[Message]) -> Result<(), Trap> {
        self.check_size(function, messages.iter().map(message_size).sum())
    }

    /// Refuse a call's output over `limits.max_output`; the instance is treated as trapped.
    fn check_size(&self, function: &'static str, size: u64) -> Result<(), Trap> {
        self.limits.check_output(size).map_err(|reason| Trap {
            plugin: self.label.clone(),
            function,
            over_limit: true,
            reason,
        })
    }

    fn wrong_role(&self, function: &'static str) -> Trap {
        Trap {
            plugin: self.label.clone(),
            function,
            over_limit: false,
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
        macro_rules! packed {
            ($b:ident) => {{
                let frame = packed::batch(std::mem::take(&mut self.frame), batch);
                let result = guard(
                    self.guard_for(timeout),
                    $b.patchbay_connector_transform_packed_api()
                        .call_process_packed(&mut self.store, &frame),
                )
                .await;
                self.frame = frame;
                Some(result.map_err(|e| self.trap("process", timeout, e))?)
            }};
        }
        let answer = match &self.bindings {
            Some(Bindings::TransformPacked(b)) if !self.typed_only => packed!(b),
            Some(Bindings::TransformPackedV1(b)) if !self.typed_only => packed!(b),
            _ => None,
        };
        let outcomes = match (answer, &self.bindings) {
            (Some(answer), _) => {
                match packed::outcomes(&answer, batch.len(), self.limits.max_output) {
                    Ok(outcomes) => outcomes,
                    Err(packed::Refusal::Frame(e)) => {
                        return Err(self.malformed("process", "process-packed", &e));
                    }
                    // Decoding stopped once over the limit: this refuses it (an empty answer,
                    // if it ever passed, is a wrong count the stage reports).
                    Err(packed::Refusal::Output(size)) => {
                        self.check_size("process", size)?;
                        Vec::new()
                    }
                    // Far more outcomes than inputs: refused before anything was built (a count
                    // a little off is decoded, and the stage reports it).
                    Err(packed::Refusal::Count(n)) => {
                        return Err(Trap {
                            plugin: self.label.clone(),
                            function: "process",
                            over_limit: false,
                            reason: format!(
                                "`process-packed` returned {n} outcomes for {} messages (not \
                                 decoded); it must return exactly one outcome per input, in order",
                                batch.len()
                            ),
                        });
                    }
                }
            }
            (None, Some(Bindings::Transform(b))) => typed!(b),
            (None, Some(Bindings::TransformPacked(b))) => typed!(b),
            (None, Some(Bindings::TransformV1(b))) => typed!(b),
            (None, Some(Bindings::TransformPackedV1(b))) => typed!(b),
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
        macro_rules! packed {
            ($b:ident) => {{
                let frame = packed::batch(std::mem::take(&mut self.frame), batch);
                let result = guard(
                    self.guard_for(timeout),
                    $b.patchbay_connector_sink_packed_api()
                        .call_write_packed(&mut self.store, &frame),
                )
                .await;
                self.frame = frame;
                Some(result.map_err(|e| self.trap("write", timeout, e))?)
            }};
        }
        let answer = match &self.bindings {
            Some(Bindings::SinkPacked(b)) if !self.typed_only => packed!(b),
            Some(Bindings::SinkPackedV1(b)) if !self.typed_only => packed!(b),
            _ => None,
        };
        match (answer, &self.bindings) {
            (Some(answer), _) => match packed::results(&answer, batch.len()) {
                Ok(results) => Ok(results),
                Err(packed::Refusal::Count(n)) => Err(Trap {
                    plugin: self.label.clone(),
                    function: "write",
                    over_limit: false,
                    reason: format!(
                        "`write-packed` returned {n} results for {} messages (not decoded); \
                         it must return exactly one result per input, in order",
                        batch.len()
                    ),
                }),
                Err(packed::Refusal::Frame(e)) => Err(self.malformed("write", "write-packed", &e)),
                // Results carry no messages: never over the output limit.
                Err(packed::Refusal::Output(size)) => {
                    self.check_size("write", size)?;
                    Ok(Vec::new())
                }
            },
            (None, Some(Bindings::Sink(b))) => typed!(b),
            (None, Some(Bindings::SinkPacked(b))) => typed!(b),
            (None, Some(Bindings::SinkV1(b))) => typed!(b),
            (None, Some(Bindings::SinkPackedV1(b))) => typed!(b),
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
            over_limit: false,
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
