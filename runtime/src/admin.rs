//! The admin HTTP API (`patchbay run --admin ADDR`, `patchbay node --admin ADDR`): health,
//! Prometheus metrics, pipelines, plugins and hot swaps, and on a cluster node the cluster.
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
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::assemble::Swappables;
use crate::contract::MetricValue;
use crate::pipeline::Counters;
use crate::plugin::Runtime;
use crate::reload::ReloadError;

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
        }
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
    ) -> Arc<Admin> {
        Arc::new(Admin {
            runtime,
            pipelines: std::sync::RwLock::new(pipelines),
            plugins,
            token,
            node: None,
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

#[derive(Debug)]
struct MetricsCollector(Arc<Admin>);

/// Label sets with their values.
type Series<V> = Vec<(Vec<(String, String)>, V)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &Series<u64>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &Series<f64>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A metric name made safe for Prometheus: `[a-zA-Z0-9_]`, not starting with a digit.
/// A label value as the Prometheus text format wants it: `\\`, `"` and newlines escaped
/// (prometheus-client writes label values as they are).
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn metric_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let admin = &self.0;
        let per_pipeline = |f: &dyn Fn(&Counters) -> u64| -> Series<u64> {
            admin
                .pipelines()
                .iter()
                .map(|p| {
                    (
                        vec![("pipeline".to_owned(), p.name.clone())],
                        f(&p.counters),
                    )
                })
                .collect()
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut encoder,
            "patchbay_messages_in",
            "Messages the pipeline's source produced.",
            &per_pipeline(&|c| load(&c.polled)),
        )?;
        counter(
            &mut encoder,
            "patchbay_messages_dropped",
            "Messages a transform dropped.",
            &per_pipeline(&|c| load(&c.dropped)),
        )?;
        let written: Series<u64> = admin
            .pipelines()
            .iter()
            .flat_map(|p| {
                p.sinks.iter().zip(&p.counters.written).map(|(sink, n)| {
                    (
                        vec![
                            ("pipeline".to_owned(), p.name.clone()),
                            ("sink".to_owned(), sink.clone()),
                        ],
                        load(n),
                    )
                })
            })
            .collect();
        counter(
            &mut encoder,
            "patchbay_messages_written",
            "Messages a sink accepted.",
            &written,
        )?;
        counter(
            &mut encoder,
            "patchbay_messages_dead_lettered",
            "Messages stored in the dead-letter channel.",
            &per_pipeline(&|c| load(&c.dead_lettered)),
        )?;
        counter(
            &mut encoder,
            "patchbay_retries",
            "Retry rounds: a batch's failed messages sent again.",
            &per_pipeline(&|c| load(&c.retries)),
        )?;
        counter(
            &mut encoder,
            "patchbay_plugin_restarts",
            "Plugin instances replaced after a trap.",
            &per_pipeline(&|c| load(&c.restarts)),
        )?;
        counter(
            &mut encoder,
            "patchbay_acked_batches",
            "Checkpoints acknowledged to the source.",
            &per_pipeline(&|c| load(&c.acked_batches)),
        )?;
        let up: Series<f64> = admin
            .pipelines()
            .iter()
            .map(|p| {
                (
                    vec![("pipeline".to_owned(), p.name.clone())],
                    if p.phase() == Phase::Running {
                        1.0
                    } else {
                        0.0
                    },
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "patchbay_pipeline_up",
            "1 while the pipeline runs, 0 once it finished or failed.",
            &up,
        )?;
        let depth = |f: &dyn Fn(&Counters) -> u64| -> Series<f64> {
            per_pipeline(f)
                .into_iter()
                .map(|(labels, v)| (labels, v as f64))
                .collect()
        };
        gauge(
            &mut encoder,
            "patchbay_pipeline_in_flight_batches",
            "Batches the source sent on that not every sink has settled yet (queue depth).",
            &depth(&|c| load(&c.in_flight_batches)),
        )?;
        gauge(
            &mut encoder,
            "patchbay_pipeline_in_flight_bytes",
            "Payload bytes of the batches in flight (bounded by max_in_flight).",
            &depth(&|c| load(&c.in_flight_bytes)),
        )?;
        let denied: Series<u64> = admin
            .runtime
            .audit()
            .denied()
            .into_iter()
            .map(|((plugin, capability), n)| {
                (
                    vec![
                        ("plugin".to_owned(), plugin),
                        ("capability".to_owned(), capability),
                    ],
                    n,
                )
            })
            .collect();
        counter(
            &mut encoder,
            "patchbay_denied",
            "Accesses the sandbox denied, by plugin (pipeline/plugin) and capability.",
            &denied,
        )?;
        let calls = admin.runtime.call_metrics();
        calls.seconds.encode(encoder.encode_descriptor(
            "patchbay_plugin_call_seconds",
            "Duration of plugin calls, by plugin (pipeline/plugin) and function.",
            None,
            calls.seconds.metric_type(),
        )?)?;
        calls.records.encode(encoder.encode_descriptor(
            "patchbay_plugin_records",
            "Records handed to (process, write) or returned by (poll) a plugin.",
            None,
            calls.records.metric_type(),
        )?)?;
        calls.errors.encode(encoder.encode_descriptor(
            "patchbay_plugin_errors",
            "Errors plugins returned, by kind (retryable, invalid-data, fatal), and traps (trap).",
            None,
            calls.errors.metric_type(),
        )?)?;
        let swaps: Series<u64> = admin
            .plugins
            .values()
            .map(|p| {
                (
                    vec![("plugin".to_owned(), p.name().to_owned())],
                    p.generation(),
                )
            })
            .collect();
        counter(
            &mut encoder,
            "patchbay_swaps",
            "Hot swaps of a plugin to new code.",
            &swaps,
        )?;
        let refused: Series<u64> = admin
            .runtime
            .plugin_metrics()
            .refused()
            .into_iter()
            .map(|(plugin, n)| (vec![("plugin".to_owned(), plugin)], n))
            .collect();
        counter(
            &mut encoder,
            "patchbay_plugin_metrics_refused",
            "Metric updates refused from a plugin (a bad name or label, or over its series cap).",
            &refused,
        )?;
        // What plugins report through the metrics interface, one family per metric name.
        let mut families: std::collections::BTreeMap<String, Series<MetricValue>> =
            std::collections::BTreeMap::new();
        for ((plugin, name, labels), value) in admin.runtime.plugin_metrics().snapshot() {
            let mut all = vec![("plugin".to_owned(), plugin)];
            all.extend(
                labels
                    .into_iter()
                    .map(|(k, v)| (metric_name(&k), escape_label_value(&v))),
            );
            families
                .entry(format!("plugin_{}", metric_name(&name)))
                .or_default()
                .push((all, value));
        }
        for (name, series) in families {
            let counters: Vec<_> = series
                .iter()
                .filter_map(|(l, v)| match v {
                    MetricValue::Counter(n) => Some((l.clone(), *n)),
                    _ => None,
                })
                .collect();
            let gauges: Vec<_> = series
                .iter()
                .filter_map(|(l, v)| match v {
                    MetricValue::Gauge(g) => Some((l.clone(), *g)),
                    _ => None,
                })
                .collect();
            let histograms: Vec<_> = series
                .iter()
                .filter_map(|(l, v)| match v {
                    MetricValue::Histogram { count, sum } => Some((l.clone(), *count, *sum)),
                    _ => None,
                })
                .collect();
            let help = "Reported by the plugin through patchbay:connector/metrics.";
            if !counters.is_empty() {
                // The exposition adds `_total`: a name that has it already is not doubled.
                let bare = name.strip_suffix("_total").unwrap_or(&name);
                counter(&mut encoder, bare, help, &counters)?;
            }
            if !gauges.is_empty() {
                gauge(&mut encoder, &name, help, &gauges)?;
            }
            if !histograms.is_empty() {
                let counts: Vec<_> = histograms.iter().map(|(l, c, _)| (l.clone(), *c)).collect();
                let sums: Vec<_> = histograms.iter().map(|(l, _, s)| (l.clone(), *s)).collect();
                counter(&mut encoder, &format!("{name}_observations"), help, &counts)?;
                gauge(&mut encoder, &format!("{name}_sum"), help, &sums)?;
            }
        }
        Ok(())
    }
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
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/pipelines", get(status))
        .route("/v1/plugins", get(plugins))
        .route("/v1/cluster", get(cluster))
        .route("/v1/plugins/{name}/reload", post(reload))
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
    fn names_are_made_safe() {
        assert_eq!(metric_name("rows.read-total"), "rows_read_total");
        assert_eq!(metric_name("9lives"), "_9lives");
    }

    #[test]
    fn label_values_cannot_break_out_of_their_quotes() {
        assert_eq!(
            escape_label_value("a\"} 0\npatchbay_pipeline_up{pipeline=\"x\\"),
            "a\\\"} 0\\npatchbay_pipeline_up{pipeline=\\\"x\\\\"
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
