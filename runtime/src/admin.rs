//! The admin HTTP API (`patchbay run --admin ADDR`, `patchbay node --admin ADDR`): health,
//! Prometheus metrics, pipelines, plugins and hot swaps, dead letters, and on a cluster node
//! the cluster.
//!
//! Off unless asked for. Bound to loopback it needs no token; bound to any other address it
//! refuses to start without one (`--admin-token` or `PATCHBAY_ADMIN_TOKEN`). With a token, every
//! route but `/health` wants `Authorization: Bearer TOKEN`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;

use crate::assemble::{Replayer, Swappables};
use crate::pipeline::{Counters, DeadLetters};
use crate::plugin::Runtime;
use crate::reload::ReloadError;

mod console;
mod dead_letters;
mod events;
mod metrics;

use metrics::MetricsCollector;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Moving messages.
    Running,
    /// Its source ended and everything was delivered, or it was drained.
    Finished,
    /// It stopped on a failure.
    Failed,
}

/// What the admin API knows of one pipeline.
#[derive(Debug)]
pub struct PipelineStatus {
    /// Name.
    pub name: String,
    /// Sink names, in the order of `Counters::written`.
    pub sinks: Vec<String>,
    /// Live counters.
    pub counters: Arc<Counters>,
    phase: AtomicU8,
    /// Why it failed, once it did.
    error: std::sync::Mutex<Option<String>>,
    /// Its dead-letter channel, when its dead letters go to a file (`/v1/dead-letters`).
    pub dead_letters: Option<Arc<DeadLetters>>,
}

impl PipelineStatus {
    /// A running pipeline.
    pub fn new(name: String, sinks: Vec<String>, counters: Arc<Counters>) -> PipelineStatus {
        PipelineStatus {
            name,
            sinks,
            counters,
            phase: AtomicU8::new(0),
            error: std::sync::Mutex::new(None),
            dead_letters: None,
        }
    }

    /// With its dead-letter channel (kept only when it writes a file).
    pub fn with_dead_letters(mut self, channel: Arc<DeadLetters>) -> PipelineStatus {
        self.dead_letters = (!channel.path().as_os_str().is_empty()).then_some(channel);
        self
    }

    /// Record how it ended: finished, or failed with the reason.
    pub fn end(&self, error: Option<String>) {
        let failed = error.is_some();
        if let Ok(mut slot) = self.error.lock() {
            *slot = error;
        }
        self.phase
            .store(if failed { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// Why it failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Its phase now.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Running,
            1 => Phase::Finished,
            _ => Phase::Failed,
        }
    }
}

/// What `/v1/cluster` answers on a cluster node: the whole cluster, read from its buckets.
pub type ClusterView = Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<serde_json::Value, String>> + Send>,
        > + Send
        + Sync,
>;

/// Everything the routes read.
pub struct Admin {
    runtime: Arc<Runtime>,
    /// A cluster node's pipelines come and go; `run`'s are fixed.
    pipelines: std::sync::RwLock<Vec<Arc<PipelineStatus>>>,
    plugins: Swappables,
    token: Option<String>,
    /// A cluster node's name (a `node` label on every metric) and its view of the cluster.
    node: Option<(String, ClusterView)>,
    /// Replays dead letters for `POST /v1/dead-letters/replay` (`run` only).
    replayer: Option<Arc<Replayer>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("pipelines", &self.pipelines())
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// The admin state for a running set of pipelines.
    pub fn new(
        runtime: Arc<Runtime>,
        pipelines: Vec<Arc<PipelineStatus>>,
        plugins: Swappables,
        token: Option<String>,
        replayer: Option<Arc<Replayer>>,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            runtime,
            pipelines: std::sync::RwLock::new(pipelines),
            plugins,
            token,
            node: None,
            replayer,
        })
    }

    /// The admin state of cluster node `name`, whose pipelines [`Admin::set_pipelines`] keeps
    /// up to date.
    pub fn for_node(
        runtime: Arc<Runtime>,
        name: String,
        view: ClusterView,
        token: Option<String>,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            runtime,
            pipelines: std::sync::RwLock::new(Vec::new()),
            plugins: Swappables::new(),
            token,
            node: Some((name, view)),
            replayer: None,
        })
    }

    /// The pipelines it shows from now on.
    pub fn set_pipelines(&self, pipelines: Vec<Arc<PipelineStatus>>) {
        match self.pipelines.write() {
            Ok(mut slot) => *slot = pipelines,
            Err(poisoned) => *poisoned.into_inner() = pipelines,
        }
    }

    /// The pipelines it shows now.
    fn pipelines(&self) -> Vec<Arc<PipelineStatus>> {
        match self.pipelines.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 9110, 11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, given)| given.trim())
            .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }

    /// The Prometheus text exposition of every metric.
    pub fn metrics_text(self: &Arc<Self>) -> Result<String, std::fmt::Error> {
        let mut registry = match &self.node {
            Some((name, _)) => Registry::with_labels(std::iter::once((
                std::borrow::Cow::Borrowed("node"),
                std::borrow::Cow::Owned(name.clone()),
            ))),
            None => Registry::default(),
        };
        registry.register_collector(Box::new(MetricsCollector(self.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }

    /// `/v1/pipelines` as JSON.
    pub fn status_json(&self) -> serde_json::Value {
        let pipelines: Vec<serde_json::Value> = self
            .pipelines()
            .iter()
            .map(|p| {
                let c = &p.counters;
                let written: serde_json::Map<String, serde_json::Value> = p
                    .sinks
                    .iter()
                    .zip(&c.written)
                    .map(|(sink, n)| (sink.clone(), n.load(Ordering::Relaxed).into()))
                    .collect();
                serde_json::json!({
                    "name": p.name,
                    "state": phase_name(p.phase()),
                    "in": c.polled.load(Ordering::Relaxed),
                    "dropped": c.dropped.load(Ordering::Relaxed),
                    "written": written,
                    "dead_lettered": c.dead_lettered.load(Ordering::Relaxed),
                    "retries": c.retries.load(Ordering::Relaxed),
                    "restarts": c.restarts.load(Ordering::Relaxed),
                    "acked_batches": c.acked_batches.load(Ordering::Relaxed),
                    "in_flight_batches": c.in_flight_batches.load(Ordering::Relaxed),
                    "in_flight_bytes": c.in_flight_bytes.load(Ordering::Relaxed),
                    "error": p.error(),
                })
            })
            .collect();
        let denied: Vec<serde_json::Value> = self
            .runtime
            .audit()
            .denied()
            .into_iter()
            .map(|((plugin, capability), n)| {
                serde_json::json!({"plugin": plugin, "capability": capability, "count": n})
            })
            .collect();
        serde_json::json!({ "pipelines": pipelines, "denied": denied })
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Running => "running",
        Phase::Finished => "finished",
        Phase::Failed => "failed",
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(admin): State<Arc<Admin>>) -> Response {
    let pipelines: Vec<serde_json::Value> = admin
        .pipelines()
        .iter()
        .map(|p| serde_json::json!({"name": p.name, "state": phase_name(p.phase())}))
        .collect();
    let failed = admin.pipelines().iter().any(|p| p.phase() == Phase::Failed);
    let mut body = serde_json::json!({
        "status": if failed { "degraded" } else { "ok" },
        "pipelines": pipelines,
    });
    if let Some((name, _)) = &admin.node {
        body["node"] = name.clone().into();
    }
    let code = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(body)).into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or wrong bearer token: send `Authorization: Bearer TOKEN`\n",
    )
        .into_response()
}

async fn metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    match admin.metrics_text() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn plugins(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    let list: Vec<serde_json::Value> = admin.plugins.values().map(|p| p.describe()).collect();
    axum::Json(serde_json::json!({ "plugins": list })).into_response()
}

async fn status(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    axum::Json(admin.status_json()).into_response()
}

/// `GET /v1/cluster`: on a cluster node, every node, pipeline and lease of the cluster.
async fn cluster(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    let Some((_, view)) = &admin.node else {
        return (
            StatusCode::NOT_FOUND,
            "not a cluster node: /v1/cluster is served by `patchbay node --admin ADDR`\n",
        )
            .into_response();
    };
    match view().await {
        Ok(json) => axum::Json(json).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the cluster's state: {why}\n"),
        )
            .into_response(),
    }
}

/// Body of `POST /v1/plugins/NAME/reload`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// The new component (absolute, or relative to the runtime's working directory); default:
    /// the file the config names.
    pub path: Option<std::path::PathBuf>,
}

impl ReloadRequest {
    /// The request in a body: nothing (or only white space) means the default; anything else
    /// must be the JSON object, or the error says what to send.
    pub fn from_body(body: &[u8]) -> Result<ReloadRequest, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(ReloadRequest::default());
        }
        serde_json::from_slice(body)
            .map_err(|e| format!("body: {e}; send {{\"path\": \"/abs/plugin.wasm\"}} or nothing"))
    }
}

fn refusal(code: StatusCode, error: String) -> Response {
    (code, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

async fn reload(
    State(admin): State<Arc<Admin>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    let Some(plugin) = admin.plugins.get(&name) else {
        let known: Vec<&str> = admin.plugins.keys().map(String::as_str).collect();
        return refusal(
            StatusCode::NOT_FOUND,
            format!("no plugin `{name}`; this file has {}", known.join(", ")),
        );
    };
    let wasm = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/wasm"));
    if wasm {
        return match plugin.reload_upload(&admin.runtime, &body).await {
            Ok(swapped) => axum::Json(swapped).into_response(),
            Err(ReloadError::Forbidden(e)) => refusal(StatusCode::FORBIDDEN, e),
            Err(ReloadError::Invalid(e)) => refusal(StatusCode::UNPROCESSABLE_ENTITY, e),
        };
    }
    let request = match ReloadRequest::from_body(&body) {
        Ok(r) => r,
        Err(e) => return refusal(StatusCode::BAD_REQUEST, e),
    };
    match plugin.reload(&admin.runtime, request.path.as_deref()).await {
        Ok(swapped) => axum::Json(swapped).into_response(),
        Err(ReloadError::Forbidden(e)) => refusal(StatusCode::FORBIDDEN, e),
        Err(ReloadError::Invalid(e)) => refusal(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

/// Largest component `POST /v1/plugins/NAME/reload` accepts as an upload.
const MAX_UPLOAD: usize = 64 << 20;

/// Bind the admin API's address, before any pipeline starts. Refuses a non-loopback address
/// without a token.
pub async fn bind(addr: SocketAddr, has_token: bool) -> anyhow::Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() && !has_token {
        anyhow::bail!(
            "admin API at {addr}: a non-loopback address needs a token; set --admin-token or \
             PATCHBAY_ADMIN_TOKEN, or bind to 127.0.0.1"
        );
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin API at {addr}: cannot listen: {e}"))
}

/// Serve the admin API on a bound listener until the process ends.
pub fn spawn(listener: tokio::net::TcpListener, admin: Arc<Admin>) {
    let app = Router::new()
        .route("/", get(console::index))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::style))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/pipelines", get(status))
        .route("/v1/plugins", get(plugins))
        .route("/v1/cluster", get(cluster))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/replay", post(dead_letters::replay))
        .route("/v1/events", get(events::stream))
        // An uploaded component may be larger than axum's 2 MB default.
        .route(
            "/v1/plugins/{name}/reload",
            post(reload).layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .with_state(admin);
    if let Ok(bound) = listener.local_addr() {
        tracing::info!("admin API on http://{bound}");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin API stopped: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
