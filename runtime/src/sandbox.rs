//! Turns a plugin's grants and limits into what wasmtime enforces: a WASI context that holds
//! only the granted capabilities, store limits, and the epoch ticker behind call deadlines.
//!
//! Deny by default: no environment, no arguments, no stdin, no preopened directories, no
//! network. A plugin's stdout and stderr go to the runtime's log with its name, rate-limited,
//! unless it is granted the real stdout.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncWrite;
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use crate::config::{DirMode, Grants, HttpPattern, Limits, NetPattern};

/// Interval of the epoch ticker: the granularity of deadlines and of yielding.
pub const TICK: Duration = Duration::from_millis(5);

/// Most log lines a plugin's stdout/stderr may produce per second; more are counted and dropped.
const LOG_LINES_PER_SECOND: u32 = 100;
/// Longest log line kept from a plugin's output, in bytes.
const LOG_LINE_MAX: usize = 4096;

/// Build the WASI context for one plugin instance from its grants.
/// Denied accesses, counted per plugin and capability, each also logged.
#[derive(Debug, Default)]
pub struct Audit {
    denied: Mutex<BTreeMap<(String, String), u64>>,
}

impl Audit {
    /// Record and log one denied access.
    pub fn deny(&self, plugin: &str, capability: &str, target: &str, why: &str) {
        tracing::warn!(
            plugin,
            capability,
            target,
            "sandbox: denied {capability} access to {target} for plugin `{plugin}` ({why})"
        );
        let mut denied = match self.denied.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        *denied
            .entry((plugin.to_owned(), capability.to_owned()))
            .or_insert(0) += 1;
    }

    /// Denied accesses so far, by (plugin, capability).
    pub fn denied(&self) -> BTreeMap<(String, String), u64> {
        match self.denied.lock() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// `stderr_tail` receives the plugin's last few stderr lines, for trap reports.
pub fn wasi_ctx(
    label: &Arc<str>,
    grants: &Grants,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    audit: &Arc<Audit>,
) -> anyhow::Result<WasiCtx> {
    let mut builder = WasiCtxBuilder::new();
    for name in &grants.env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    // TCP and UDP sockets may be created; every address they use is checked (and a denial
    // audited) by the address check below, which denies everything not granted.
    builder
        .allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(grants.dns);
    let net = Arc::new(NetCheck {
        tcp: grants.tcp.clone(),
        udp: grants.udp.clone(),
        listen: grants.listen.clone(),
        label: label.clone(),
        audit: audit.clone(),
    });
    builder.socket_addr_check(move |addr, usage| {
        let allowed = net.check(addr, usage);
        Box::pin(async move { allowed })
    });
    if grants.stdin {
        builder.inherit_stdin();
    }
    if grants.stdout {
        builder.inherit_stdout();
    } else {
        builder.stdout(LogStream::new(LogWriter::new(
            label.clone(),
            "stdout",
            None,
        )));
    }
    builder.stderr(LogStream::new(LogWriter::new(
        label.clone(),
        "stderr",
        Some(stderr_tail),
    )));
    for dir in &grants.dirs {
        let perms = match dir.mode {
            DirMode::Ro => FsPerms::ReadOnly,
            DirMode::Rw => FsPerms::ReadWrite,
        };
        builder
            .preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| {
                anyhow::anyhow!(
                    "plugin `{label}`: cannot open granted directory `{}`: {e:#}",
                    dir.host.display()
                )
            })?;
    }
    Ok(builder.build())
}

/// The network half of a plugin's grants, consulted for every socket address it uses.
struct NetCheck {
    tcp: Vec<NetPattern>,
    udp: Vec<NetPattern>,
    listen: Vec<NetPattern>,
    label: Arc<str>,
    audit: Arc<Audit>,
}

impl NetCheck {
    fn check(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        let implicit_bind = addr.ip().is_unspecified() && addr.port() == 0;
        let (allowed, capability, list) = match usage {
            SocketAddrUse::TcpConnect => (
                self.tcp.iter().any(|p| p.allows(&addr)),
                "tcp",
                "grants.tcp",
            ),
            SocketAddrUse::UdpSend => (
                self.udp.iter().any(|p| p.allows(&addr)),
                "udp",
                "grants.udp",
            ),
            // The ephemeral bind before a connect or send: harmless; the target is checked next.
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind if implicit_bind => (true, "tcp", ""),
            SocketAddrUse::TcpBind | SocketAddrUse::TcpListen => (
                self.listen.iter().any(|p| p.allows(&addr)),
                "listen",
                "grants.listen",
            ),
            SocketAddrUse::UdpBind => (
                self.listen.iter().any(|p| p.allows(&addr)),
                "listen",
                "grants.listen",
            ),
            SocketAddrUse::TcpAccept => (true, "tcp", "grants.listen"),
            SocketAddrUse::UdpReceive => (
                self.udp.iter().any(|p| p.allows(&addr)) || !self.listen.is_empty(),
                "udp",
                "grants.udp",
            ),
        };
        if !allowed {
            self.audit.deny(
                &self.label,
                capability,
                &addr.to_string(),
                &format!("not in {list}"),
            );
        }
        allowed
    }
}

/// The wasi:http half of a plugin's grants: every outgoing request is checked against
/// `grants.http` before a connection is made; a denied one is audited and fails in the plugin
/// with `HTTP-request-denied`. Hosts in grants are names, resolved by the host when it connects.
pub struct HttpGate {
    allow: Vec<HttpPattern>,
    label: Arc<str>,
    audit: Arc<Audit>,
}

/// Connect timeout for plugin HTTP requests that set none (wasmtime's default is 10 minutes).
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxedIo = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
type SendResult =
    wasmtime_wasi_http::Result<(http::Response<wasmtime_wasi_http::WasiBody>, BoxedIo)>;

impl HttpGate {
    /// The gate for one plugin instance.
    pub fn new(label: &Arc<str>, grants: &Grants, audit: &Arc<Audit>) -> HttpGate {
        HttpGate {
            allow: grants.http.clone(),
            label: label.clone(),
            audit: audit.clone(),
        }
    }
}

impl wasmtime_wasi_http::WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _done: BoxedIo,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or("").to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        if !self.allow.iter().any(|p| p.allows(&scheme, &host, port)) {
            self.audit.deny(
                &self.label,
                "http",
                &format!("{scheme}://{host}:{port}"),
                "not in grants.http",
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let mut options = options.unwrap_or_default();
        options.connect_timeout = Some(
            options
                .connect_timeout
                .map_or(HTTP_CONNECT_TIMEOUT, |t| t.min(HTTP_CONNECT_TIMEOUT)),
        );
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as BoxedIo))
        })
    }
}

/// Memory, table and instance caps for one plugin instance.
///
/// A memory grow past `limits.memory` is refused (`memory.grow` answers -1) rather than trapped
/// on the spot: a garbage-collected guest (JavaScript's SpiderMonkey, Python) collects and
/// carries on, and a guest that cannot (Rust's allocator aborts) traps by itself. The refusal is
/// remembered, so that trap is reported as the memory limit it is.
pub fn store_limits(limits: &Limits) -> Limiter {
    Limiter {
        limits: StoreLimitsBuilder::new()
            .memory_size(usize::try_from(limits.memory).unwrap_or(usize::MAX))
            .table_elements(100_000)
            .instances(100)
            .tables(100)
            .memories(100)
            .build(),
        refused: false,
    }
}

/// The store's resource limiter: [`StoreLimits`], remembering a refused memory grow.
pub struct Limiter {
    limits: StoreLimits,
    refused: bool,
}

impl Limiter {
    /// Whether a memory grow was refused since the last [`Limiter::clear`].
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Forget refusals (at the start of each call).
    pub fn clear(&mut self) {
        self.refused = false;
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
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

/// Sends a plugin's output stream to the log, one line per event, rate-limited.
struct LogWriter {
    label: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
    window: Instant,
    lines_in_window: u32,
    suppressed: u64,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
}

/// Lines of stderr kept for trap reports.
const TAIL_LINES: usize = 4;

impl LogWriter {
    fn new(
        label: Arc<str>,
        stream: &'static str,
        tail: Option<Arc<Mutex<VecDeque<String>>>>,
    ) -> Self {
        LogWriter {
            label,
            stream,
            line: Vec::new(),
            window: Instant::now(),
            lines_in_window: 0,
            suppressed: 0,
            tail,
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line).trim_end().to_owned();
        self.line.clear();
        if text.trim().is_empty() || text.starts_with("note: run with `RUST_BACKTRACE") {
            return;
        }
        if let Some(tail) = &self.tail
            && let Ok(mut tail) = tail.lock()
        {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.clone());
        }
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(
                    "{} ({}): {} lines dropped by the rate limit ({LOG_LINES_PER_SECOND}/s)",
                    self.label,
                    self.stream,
                    self.suppressed
                );
            }
            self.window = now;
            self.lines_in_window = 0;
            self.suppressed = 0;
        }
        if self.lines_in_window < LOG_LINES_PER_SECOND {
            self.lines_in_window += 1;
            tracing::info!("{} ({}): {text}", self.label, self.stream);
        } else {
            self.suppressed += 1;
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.emit();
            } else if self.line.len() < LOG_LINE_MAX {
                self.line.push(byte);
            }
        }
    }
}

impl Drop for LogWriter {
    /// A last line without its newline still reaches the log when the instance goes.
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

/// A plugin's stdout or stderr as WASI sees it: every write goes straight to its [`LogWriter`],
/// in the calling thread. (wasmtime-wasi's `AsyncStdoutStream` would spawn a task per stream
/// and per instance — a sixth of an instantiation — and log a trapping plugin's last words
/// only after the trap report had been written.)
#[derive(Clone)]
struct LogStream(Arc<Mutex<LogWriter>>);

impl LogStream {
    fn new(writer: LogWriter) -> Self {
        LogStream(Arc::new(Mutex::new(writer)))
    }

    fn write(&self, bytes: &[u8]) {
        // A writer poisoned by a panic elsewhere still takes lines: it holds no invariant.
        let mut writer = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        writer.write(bytes);
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// How much a plugin may write per `write` call; the log takes any amount at once.
const LOG_WRITE_PERMIT: usize = 64 * 1024;

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        LogStream::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(LOG_WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    /// Always ready: writes never wait.
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        LogStream::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_output_reaches_the_stderr_tail_as_it_is_written_and_at_the_end() {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stream = LogStream::new(LogWriter::new(
            Arc::from("p/t"),
            "stderr",
            Some(tail.clone()),
        ));
        let lines = |tail: &Arc<Mutex<VecDeque<String>>>| -> Vec<String> {
            tail.lock()
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default()
        };
        let mut p2 = stream.p2_stream();
        assert_eq!(p2.check_write().ok(), Some(LOG_WRITE_PERMIT));
        assert!(p2.write(bytes::Bytes::from_static(b"one\ntw")).is_ok());
        assert_eq!(lines(&tail), ["one"]);
        assert!(p2.write(bytes::Bytes::from_static(b"o\nthree")).is_ok());
        assert_eq!(lines(&tail), ["one", "two"]);
        drop(p2);
        drop(stream);
        // The unfinished last line is logged when the instance (its last stream) goes.
        assert_eq!(lines(&tail), ["one", "two", "three"]);
    }
}
