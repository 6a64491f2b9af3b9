//! The pipeline file as written: typed, `deny_unknown_fields`, a doc comment on every field.
//! These doc comments are the user documentation: the JSON Schema (`patchbay schema`) and the
//! README's table of keys are generated from them. Values are checked in `check`; defaults
//! live in `crate::defaults`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::units::{Concurrency, HumanDuration, Size};
use super::{OnError, OnStartFailure, RoutingMode};
use crate::sandbox::DirMode;

/// The whole pipeline file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Patchbay pipeline file")]
pub(super) struct RawFile {
    /// Plugins, keyed by the name pipelines use to refer to them: `[plugins.NAME]`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawPlugin>")]
    pub(super) plugins: BTreeMap<Spanned<String>, RawPlugin>,
    /// Pipelines, each a `[[pipeline]]` table. They run concurrently.
    #[serde(default)]
    #[schemars(with = "Vec<RawPipeline>")]
    pub(super) pipeline: Vec<Spanned<RawPipeline>>,
    /// The admin API, off unless `[admin]` or `--admin` turns it on.
    #[serde(default)]
    pub(super) admin: Option<RawAdmin>,
    /// What `patchbay run` does when a pipeline cannot start (a plugin's `init` fails, traps
    /// or runs past its deadline): `continue` with the others (the default; the run ends with
    /// exit code 1 and `/health` says degraded) or `abort` the whole run.
    #[serde(default)]
    pub(super) on_start_failure: OnStartFailure,
    /// Durable host state: without `[state]` a plugin's `state` lives as long as the process.
    #[serde(default)]
    pub(super) state: Option<RawState>,
    /// Traces across plugins, exported over OpenTelemetry; off without `[telemetry]`.
    #[serde(default)]
    pub(super) telemetry: Option<RawTelemetry>,
}

/// `[telemetry]`: every record carries a W3C `traceparent` (kept when it came in, created at
/// the source otherwise) and each plugin call is a span, exported over OTLP/HTTP (protobuf).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    /// The collector's OTLP/HTTP address, e.g. `"http://127.0.0.1:4318"`; `/v1/traces` is
    /// added unless the address has a path. Plain `http://`: a local collector or agent.
    #[schemars(with = "String")]
    pub(super) otlp: Spanned<String>,
    /// Share of new traces recorded, 0 to 1 (default 1). A record that came with a
    /// `traceparent` follows its sampled flag.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub(super) sample: Option<Spanned<f64>>,
    /// The spans' `service.name` (default `patchbay`).
    #[serde(default)]
    pub(super) service: Option<String>,
}

/// `[state]`: keep every plugin's host state (the `state` interface) on disk, so a source that
/// keeps its position there resumes after a restart, even after `kill -9`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    /// Directory of the state store (`state.redb`), relative to the pipeline file; created
    /// when missing. One `patchbay` process at a time may use it.
    pub(super) dir: std::path::PathBuf,
}

/// `[admin]`: serve the admin API while pipelines run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Address to listen on, e.g. `"127.0.0.1:7400"`. `--admin` overrides it. The bearer token
    /// comes from `--admin-token` or `$PATCHBAY_ADMIN_TOKEN`, never from this file.
    #[schemars(with = "String")]
    pub(super) listen: Spanned<String>,
}

/// One plugin declaration: a component file, its configuration, grants and limits.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    /// Path of the component (`.wasm`), relative to the pipeline file.
    #[schemars(with = "String")]
    pub(super) path: Spanned<String>,
    /// Optional integrity pin: the hex sha256 of the component file. A mismatch refuses to load.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(super) sha256: Option<Spanned<String>>,
    /// Configuration handed to the plugin's `init`. Keys must be ones the plugin declares.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub(super) config: BTreeMap<Spanned<String>, toml::Value>,
    /// What the plugin may touch. Everything not granted is denied.
    #[serde(default)]
    pub(super) grants: RawGrants,
    /// Resource limits for each instance of the plugin.
    #[serde(default)]
    pub(super) limits: RawLimits,
    /// Swap the plugin for new code when its file changes (see `patchbay reload`).
    #[serde(default)]
    pub(super) watch: bool,
}

/// Capability grants. Empty means deny all.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrants {
    /// Host directories the plugin may open, each mounted at a guest path.
    #[serde(default)]
    pub(super) dirs: Vec<RawDirGrant>,
    /// Let the plugin read the runtime's standard input.
    #[serde(default)]
    pub(super) stdin: bool,
    /// Let the plugin write to the runtime's standard output (otherwise it goes to the log).
    #[serde(default)]
    pub(super) stdout: bool,
    /// Outbound TCP targets as `HOST:PORT` patterns: `127.0.0.1:5432`, `localhost:4222`,
    /// `[::1]:*`, `*:443`. Host names are resolved once, at start.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) tcp: Vec<Spanned<String>>,
    /// UDP targets, same patterns as `tcp`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) udp: Vec<Spanned<String>>,
    /// Local addresses the plugin may listen on (TCP), same patterns.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) listen: Vec<Spanned<String>>,
    /// Outbound HTTP (wasi:http) destinations: `HOST`, `HOST:PORT`, `*.DOMAIN[:PORT]`, each
    /// optionally after `http://` or `https://` to allow only that scheme. A host with no
    /// port allows any port.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) http: Vec<Spanned<String>>,
    /// Let the plugin resolve host names.
    #[serde(default)]
    pub(super) dns: bool,
    /// Environment variables the plugin may read, by name (copied from the runtime's own).
    #[serde(default)]
    pub(super) env: Vec<String>,
    /// TLS (`wasi:tls`, done by the host over a granted TCP connection): `ca` replaces the
    /// system's roots with a PEM file's certificates; `cert` and `key` (PEM) are the client
    /// identity for servers that ask for one. Paths are relative to the pipeline file; the
    /// files stay in the host, never in the sandbox.
    #[serde(default)]
    pub(super) tls: Option<RawTlsGrant>,
}

/// `grants.tls`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsGrant {
    /// CA certificates (PEM) that servers are verified against, instead of the system's.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(super) ca: Option<Spanned<String>>,
    /// Client certificate chain (PEM), for mutual TLS.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(super) cert: Option<Spanned<String>>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(super) key: Option<Spanned<String>>,
}

/// One directory grant.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDirGrant {
    /// Directory on the host, relative to the pipeline file. It must exist.
    #[schemars(with = "String")]
    pub(super) host: Spanned<String>,
    /// Absolute path at which the plugin sees it, e.g. `/data`.
    #[schemars(with = "String")]
    pub(super) guest: Spanned<String>,
    /// `ro` (default) or `rw`.
    #[serde(default)]
    pub(super) mode: DirMode,
}

/// Resource limits for one plugin instance.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// Cap of linear memory.
    #[serde(default)]
    pub(super) memory: Option<Size>,
    /// Deadline of each data call.
    #[serde(default)]
    pub(super) call_timeout: Option<HumanDuration>,
    /// Deadline of `init`.
    #[serde(default)]
    pub(super) init_timeout: Option<HumanDuration>,
    /// Largest output of one call (messages returned by `poll` or `process`, counting
    /// payloads, keys, headers, 64 bytes per message and 64 per header).
    #[serde(default)]
    pub(super) max_output: Option<Size>,
    /// Most live handles (WASI resources: streams, sockets, header maps, pending lookups…) one
    /// instance may hold in the host at once; each header map also holds at most 16 KiB.
    #[serde(default)]
    pub(super) handles: Option<u32>,
    /// Most sockets one instance may have open at once (made by the plugin; connections a
    /// listening plugin accepts count against `handles`).
    #[serde(default)]
    pub(super) sockets: Option<u32>,
    /// Most files and directories one instance may have open at once (its granted
    /// directories themselves not counted).
    #[serde(default)]
    pub(super) files: Option<u32>,
}

/// One pipeline: a source, a chain of transforms, one or more sinks.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    /// Unique name, used in logs and metrics.
    #[schemars(with = "String")]
    pub(super) name: Spanned<String>,
    /// Name of the source plugin (a key of `[plugins]`).
    #[schemars(with = "String")]
    pub(super) source: Spanned<String>,
    /// Names of transform plugins, applied in order.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) transforms: Vec<Spanned<String>>,
    /// Names of sink plugins; every message goes to each of them. `reply` names the
    /// pipeline's reply destination: what reaches it answers the request the message came
    /// from (a source that answers requests: `http-source` with `respond = "pipeline"`,
    /// `nats-source` with `reply = true`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) sinks: Vec<Spanned<String>>,
    /// Largest number of messages the source returns per poll.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub(super) batch_size: Option<Spanned<u32>>,
    /// Most bytes per poll (payload, key and headers, plus 64 per message and per header), so
    /// that a batch of large records stays well under `limits.max_output`. Sources built with
    /// the Rust SDK keep to it; others are asked for fewer messages once they go over it.
    #[serde(default)]
    pub(super) batch_bytes: Option<Size>,
    /// Batches buffered between two stages. A full buffer pauses the source.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub(super) buffer: Option<Spanned<u32>>,
    /// Most payload bytes polled and not yet delivered. When the
    /// budget is spent the source is not polled until earlier batches are settled.
    #[serde(default)]
    pub(super) max_in_flight: Option<Size>,
    /// What happens to a record a plugin refuses, after retries: `stop` the pipeline (default)
    /// or send it to the `dead-letter` channel and go on.
    #[serde(default)]
    pub(super) on_error: OnError,
    /// Retries of `retryable` errors and of traps, per stage.
    #[serde(default)]
    pub(super) retry: RawRetry,
    /// The dead-letter channel (used with `on_error = "dead-letter"`).
    #[serde(default)]
    pub(super) dead_letter: Option<RawDeadLetter>,
    /// Circuit breaker of each stage against a plugin that keeps trapping.
    #[serde(default)]
    pub(super) breaker: RawBreaker,
    /// How routes choose sinks: `all` matching routes (recipient list, the default) or only the
    /// `first` one that matches.
    #[serde(default)]
    pub(super) routing: RoutingMode,
    /// Content-based routes, tried in order (`[[pipeline.route]]`). Without routes every
    /// message goes to every sink.
    #[serde(default)]
    pub(super) route: Vec<RawRoute>,
    /// Instances of each transform and sink, taking batches in turn (`"auto"`: one per core).
    /// Output keeps source order either way. `[pipeline.stages.NAME]` sets it per stage.
    #[serde(default)]
    #[schemars(with = "Option<Concurrency>")]
    pub(super) concurrency: Option<Spanned<Concurrency>>,
    /// Spread each batch over a stage's instances by `"key"` (the message key) or by the value
    /// of a CEL expression (same variables as routes), so that all records of a key go to the
    /// same instance and keep their order; without it whole batches go to the next free one.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(super) partition_by: Option<Spanned<String>>,
    /// Settings of one stage, by plugin name (`[pipeline.stages.NAME]`): they override the
    /// pipeline's `concurrency` and `partition_by` for that stage.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawStage>")]
    pub(super) stages: BTreeMap<Spanned<String>, RawStage>,
    /// Where the pipeline runs in a cluster (`patchbay cluster deploy`); `patchbay run` ignores
    /// it. Without it a pipeline whose source can be shared runs on every node, and one whose
    /// source is single on exactly one.
    #[serde(default)]
    pub(super) placement: Option<RawPlacement>,
    /// How long a request waits for its answer before the source is told it timed out
    /// (HTTP 504), e.g. "30s" (the default).
    #[serde(default)]
    pub(super) reply_timeout: Option<HumanDuration>,
}

/// `placement = { nodes = N, tags = { zone = "eu" } }`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlacement {
    /// At most this many nodes run the pipeline (a shared source only: a single one always
    /// runs on one).
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub(super) nodes: Option<Spanned<u32>>,
    /// Only nodes started with all of these tags (`patchbay node --tags k=v,…`) run it.
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
}

/// One stage's own settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    /// Instances of this stage (`"auto"`: one per core). A source runs one.
    #[serde(default)]
    #[schemars(with = "Option<Concurrency>")]
    pub(super) concurrency: Option<Spanned<Concurrency>>,
    /// `"key"` or a CEL expression: records with the same value go to the same instance.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(super) partition_by: Option<Spanned<String>>,
}

/// One content-based route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// CEL condition over `json`, `payload`, `key` and `headers`; absent means always.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(super) when: Option<Spanned<String>>,
    /// Sinks that get matching messages; an empty list drops them (a filter).
    #[schemars(with = "Vec<String>")]
    pub(super) to: Spanned<Vec<Spanned<String>>>,
}

/// Retry policy of a pipeline's stages.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    /// Most attempts per record, the first one included (1 = no retry).
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub(super) attempts: Option<Spanned<u32>>,
    /// Wait before the first retry; it doubles per attempt, with jitter.
    #[serde(default)]
    pub(super) backoff: Option<HumanDuration>,
    /// Longest wait between two attempts.
    #[serde(default)]
    pub(super) max_backoff: Option<HumanDuration>,
}

/// Circuit breaker settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    /// Traps within `window` that open the breaker.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub(super) traps: Option<Spanned<u32>>,
    /// The window traps are counted in.
    #[serde(default)]
    pub(super) window: Option<HumanDuration>,
    /// How long the breaker stays open before one trial batch is let through.
    #[serde(default)]
    pub(super) cooldown: Option<HumanDuration>,
}

/// Where dead letters go.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeadLetter {
    /// JSON Lines file, relative to the pipeline file.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(super) path: Option<Spanned<String>>,
    /// Or a sink plugin (a key of `[plugins]`) that receives each entry as a JSON message.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(super) sink: Option<Spanned<String>>,
}
