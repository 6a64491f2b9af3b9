//! The pipeline file: a typed TOML document, parsed once into validated types.
//!
//! ```toml
//! [plugins.gen]
//! path = "../../target/plugins/generator.wasm"
//! config = { count = 1000 }
//!
//! [plugins.out]
//! path = "../../target/plugins/file-sink.wasm"
//! config = { path = "-" }
//! grants = { stdout = true }
//!
//! [[pipeline]]
//! name = "demo"
//! source = "gen"
//! sinks = ["out"]
//! ```
//!
//! Every error names the file, line and column it comes from and says what to change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use crate::defaults;
pub use crate::defaults::{BATCH_SIZE as DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE};
use crate::sandbox::grants::GrantProblem;
pub use crate::sandbox::{DirGrant, DirMode, Grants, HttpPattern, Limits, NetPattern};

// ---------------------------------------------------------------------------------------------
// The file as written

/// The whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Plugins, keyed by the name pipelines use to refer to them: `[plugins.NAME]`.
    #[serde(default)]
    plugins: BTreeMap<Spanned<String>, RawPlugin>,
    /// Pipelines, each a `[[pipeline]]` table. They run concurrently.
    #[serde(default)]
    pipeline: Vec<Spanned<RawPipeline>>,
    /// The admin API, off unless `[admin]` or `--admin` turns it on.
    #[serde(default)]
    admin: Option<RawAdmin>,
}

/// `[admin]`: serve the admin API while pipelines run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Address to listen on, e.g. `"127.0.0.1:7400"`. `--admin` overrides it. The bearer token
    /// comes from `--admin-token` or `$PATCHBAY_ADMIN_TOKEN`, never from this file.
    listen: Spanned<String>,
}

/// One plugin declaration: a component file, its configuration, grants and limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    /// Path of the component (`.wasm`), relative to the pipeline file.
    path: Spanned<String>,
    /// Optional integrity pin: the hex sha256 of the component file. A mismatch refuses to load.
    #[serde(default)]
    sha256: Option<Spanned<String>>,
    /// Configuration handed to the plugin's `init`. Keys must be ones the plugin declares.
    #[serde(default)]
    config: BTreeMap<Spanned<String>, toml::Value>,
    /// What the plugin may touch. Everything not granted is denied.
    #[serde(default)]
    grants: RawGrants,
    /// Resource limits for each instance of the plugin.
    #[serde(default)]
    limits: RawLimits,
    /// Swap the plugin for new code when its file changes (see `patchbay reload`).
    #[serde(default)]
    watch: bool,
}

/// Capability grants. Empty means deny all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    /// Host directories the plugin may open, each mounted at a guest path.
    #[serde(default)]
    dirs: Vec<RawDirGrant>,
    /// Let the plugin read the runtime's standard input.
    #[serde(default)]
    stdin: bool,
    /// Let the plugin write to the runtime's standard output (otherwise it goes to the log).
    #[serde(default)]
    stdout: bool,
    /// Outbound TCP targets as `HOST:PORT` patterns: `127.0.0.1:5432`, `localhost:4222`,
    /// `[::1]:*`, `*:443`. Host names are resolved once, at start.
    #[serde(default)]
    tcp: Vec<Spanned<String>>,
    /// UDP targets, same patterns as `tcp`.
    #[serde(default)]
    udp: Vec<Spanned<String>>,
    /// Local addresses the plugin may listen on (TCP), same patterns.
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    /// Outbound HTTP (wasi:http) destinations: `HOST`, `HOST:PORT`, `*.DOMAIN[:PORT]`, each
    /// optionally after `http://` or `https://` to allow only that scheme. A host with no
    /// port allows any port.
    #[serde(default)]
    http: Vec<Spanned<String>>,
    /// Let the plugin resolve host names.
    #[serde(default)]
    dns: bool,
    /// Environment variables the plugin may read, by name (copied from the runtime's own).
    #[serde(default)]
    env: Vec<String>,
}

/// One directory grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirGrant {
    /// Directory on the host, relative to the pipeline file. It must exist.
    host: Spanned<String>,
    /// Absolute path at which the plugin sees it, e.g. `/data`.
    guest: Spanned<String>,
    /// `ro` (default) or `rw`.
    #[serde(default)]
    mode: DirMode,
}

/// Resource limits for one plugin instance.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    /// Cap of linear memory, e.g. `"64MiB"` (the default).
    #[serde(default)]
    memory: Option<Size>,
    /// Deadline of each data call, e.g. `"1s"` (the default).
    #[serde(default)]
    call_timeout: Option<HumanDuration>,
    /// Deadline of `init`, e.g. `"10s"` (the default).
    #[serde(default)]
    init_timeout: Option<HumanDuration>,
    /// Largest output of one call (messages returned by `poll` or `process`, counting
    /// payloads, keys, headers and 64 bytes per message), e.g. `"16MiB"` (the default).
    #[serde(default)]
    max_output: Option<Size>,
}

/// One pipeline: a source, a chain of transforms, one or more sinks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    /// Unique name, used in logs and metrics.
    name: Spanned<String>,
    /// Name of the source plugin (a key of `[plugins]`).
    source: Spanned<String>,
    /// Names of transform plugins, applied in order.
    #[serde(default)]
    transforms: Vec<Spanned<String>>,
    /// Names of sink plugins; every message goes to each of them.
    #[serde(default)]
    sinks: Vec<Spanned<String>>,
    /// Largest number of messages the source returns per poll (default 256).
    #[serde(default)]
    batch_size: Option<Spanned<u32>>,
    /// Batches buffered between two stages (default 4). A full buffer pauses the source.
    #[serde(default)]
    buffer: Option<Spanned<u32>>,
    /// Most payload bytes polled and not yet delivered, e.g. "64MiB" (the default). When the
    /// budget is spent the source is not polled until earlier batches are settled.
    #[serde(default)]
    max_in_flight: Option<Size>,
    /// What happens to a record a plugin refuses, after retries: `stop` the pipeline (default)
    /// or send it to the `dead-letter` channel and go on.
    #[serde(default)]
    on_error: OnError,
    /// Retries of `retryable` errors and of traps, per stage.
    #[serde(default)]
    retry: RawRetry,
    /// The dead-letter channel (used with `on_error = "dead-letter"`).
    #[serde(default)]
    dead_letter: Option<RawDeadLetter>,
    /// Circuit breaker of each stage against a plugin that keeps trapping.
    #[serde(default)]
    breaker: RawBreaker,
    /// How routes choose sinks: `all` matching routes (recipient list, the default) or only the
    /// `first` one that matches.
    #[serde(default)]
    routing: RoutingMode,
    /// Content-based routes, tried in order (`[[pipeline.route]]`). Without routes every
    /// message goes to every sink.
    #[serde(default)]
    route: Vec<RawRoute>,
}

/// One content-based route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    /// CEL condition over `json`, `payload`, `key` and `headers`; absent means always.
    #[serde(default)]
    when: Option<Spanned<String>>,
    /// Sinks that get matching messages; an empty list drops them (a filter).
    to: Spanned<Vec<Spanned<String>>>,
}

/// How routes choose destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Every route that matches (recipient list, fan-out).
    #[default]
    All,
    /// The first route that matches (content-based router).
    First,
}

/// A checked route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecl {
    /// CEL condition; `None` always matches.
    pub when: Option<String>,
    /// Positions in the pipeline's `sinks`.
    pub to: Vec<usize>,
}

/// Retry policy of a pipeline's stages.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    /// Most attempts per record, the first one included (default 10; 1 = no retry).
    #[serde(default)]
    attempts: Option<Spanned<u32>>,
    /// Wait before the first retry (default "50ms"); it doubles per attempt, with jitter.
    #[serde(default)]
    backoff: Option<HumanDuration>,
    /// Longest wait between two attempts (default "5s").
    #[serde(default)]
    max_backoff: Option<HumanDuration>,
}

/// Circuit breaker settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    /// Traps within `window` that open the breaker (default 5).
    #[serde(default)]
    traps: Option<Spanned<u32>>,
    /// The window traps are counted in (default "10s").
    #[serde(default)]
    window: Option<HumanDuration>,
    /// How long the breaker stays open before one trial batch is let through (default "30s").
    #[serde(default)]
    cooldown: Option<HumanDuration>,
}

/// A checked circuit breaker: while open, a stage's batches skip the plugin and are settled by
/// `on_error` (dead-lettered, or the pipeline stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Traps that open it.
    pub traps: u32,
    /// Counting window.
    pub window: Duration,
    /// Open time before a trial.
    pub cooldown: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            traps: defaults::BREAKER_TRAPS,
            window: defaults::BREAKER_WINDOW,
            cooldown: defaults::BREAKER_COOLDOWN,
        }
    }
}

/// Where dead letters go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeadLetter {
    /// JSON Lines file, relative to the pipeline file (default `dead-letter/PIPELINE.jsonl`).
    #[serde(default)]
    path: Option<Spanned<String>>,
    /// Or a sink plugin (a key of `[plugins]`) that receives each entry as a JSON message.
    #[serde(default)]
    sink: Option<Spanned<String>>,
}

/// What to do with a record that failed for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Stop the pipeline with an error naming the plugin, stage and cause (nothing is acked
    /// past the failed record).
    #[default]
    Stop,
    /// Store the record with its context in the dead-letter channel, then go on.
    DeadLetter,
}

/// A checked retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Most attempts, first included.
    pub attempts: u32,
    /// First back-off.
    pub backoff: Duration,
    /// Back-off cap.
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: defaults::RETRY_ATTEMPTS,
            backoff: defaults::RETRY_BACKOFF,
            max_backoff: defaults::RETRY_MAX_BACKOFF,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value types with their own syntax

/// A size such as `"64MiB"`, `"512KiB"` or `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_size(&text).map(Size).map_err(de::Error::custom)
    }
}

/// Parse a size with a unit: `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let has_unit = trimmed.chars().any(|c| c.is_ascii_alphabetic());
    if has_unit && let Ok(size) = trimmed.parse::<bytesize::ByteSize>() {
        return Ok(size.as_u64());
    }
    Err(format!(
        "invalid size `{text}`: write a number and a unit, e.g. \"64MiB\", \"512KiB\", \"1GB\""
    ))
}

/// A duration such as `"250ms"`, `"5s"` or `"1m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

/// Parse a duration with a unit: `ms`, `s`, `m`, `h` (and combinations like `1m30s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        format!(
            "invalid duration `{text}`: write a number and a unit, e.g. \"250ms\", \"5s\", \"1m\""
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Validated configuration

/// A place in the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// The pipeline file.
    pub file: Arc<Path>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A parsed, checked pipeline file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: Arc<Path>,
    /// Declared plugins by name.
    pub plugins: BTreeMap<String, PluginDecl>,
    /// Pipelines in file order.
    pub pipelines: Vec<PipelineDecl>,
    /// `[admin] listen`, when the file turns the admin API on.
    pub admin: Option<std::net::SocketAddr>,
}

/// A checked plugin declaration.
#[derive(Debug, Clone)]
pub struct PluginDecl {
    /// The name under `[plugins]`.
    pub name: String,
    /// Component file, absolute or relative to the working directory.
    pub path: PathBuf,
    /// Where `path` was written.
    pub path_loc: Loc,
    /// Integrity pin, lowercase hex.
    pub sha256: Option<String>,
    /// `init` entries: key, value (raw string or JSON), where the key was written.
    pub config: Vec<ConfigEntry>,
    /// What the plugin may touch.
    pub grants: Grants,
    /// Resource limits.
    pub limits: Limits,
    /// Hot-swap when the file changes.
    pub watch: bool,
}

/// One `init` entry.
#[derive(Debug, Clone)]
pub struct ConfigEntry {
    /// Key.
    pub key: String,
    /// Raw string for TOML strings, JSON text otherwise.
    pub value: String,
    /// Where the key was written.
    pub loc: Loc,
}

/// A checked pipeline.
#[derive(Debug, Clone)]
pub struct PipelineDecl {
    /// Unique name.
    pub name: String,
    /// Where the pipeline table starts.
    pub loc: Loc,
    /// Source plugin name.
    pub source: PluginRef,
    /// Transform plugin names in order.
    pub transforms: Vec<PluginRef>,
    /// Sink plugin names.
    pub sinks: Vec<PluginRef>,
    /// Largest batch per poll.
    pub batch_size: u32,
    /// Batches buffered between stages.
    pub buffer: u32,
    /// In-flight byte budget.
    pub max_in_flight: u64,
    /// Policy for records that failed for good.
    pub on_error: OnError,
    /// Retry policy.
    pub retry: Retry,
    /// Circuit breaker.
    pub breaker: Breaker,
    /// Dead-letter file (JSON Lines), when no sink plugin takes the entries.
    pub dead_letter: PathBuf,
    /// A sink plugin that takes the dead letters instead of the file.
    pub dead_letter_sink: Option<PluginRef>,
    /// Routing mode.
    pub routing: RoutingMode,
    /// Routes; empty means every sink gets every message.
    pub routes: Vec<RouteDecl>,
}

/// A reference to a declared plugin, with where it was written.
#[derive(Debug, Clone)]
pub struct PluginRef {
    /// Plugin name.
    pub name: String,
    /// Where it was written.
    pub loc: Loc,
}

/// Everything wrong with a pipeline file, each with its place.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// One line per problem, each `file:line:col: what; what to do`.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.problems.join("\n"))
    }
}

impl ConfigError {
    fn one(problem: String) -> Self {
        ConfigError {
            problems: vec![problem],
        }
    }
}

/// Maps byte offsets of the file to lines and columns.
struct Locator {
    file: Arc<Path>,
    line_starts: Vec<usize>,
    text: String,
}

impl Locator {
    fn new(file: Arc<Path>, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Locator {
            file,
            line_starts,
            text: text.to_owned(),
        }
    }

    fn loc(&self, offset: usize) -> Loc {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Loc {
            file: self.file.clone(),
            line,
            col,
        }
    }

    fn at<T>(&self, spanned: &Spanned<T>) -> Loc {
        self.loc(spanned.span().start)
    }
}

impl Config {
    /// Read and check a pipeline file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(format!(
                "{}: cannot read the pipeline file: {e}",
                path.display()
            ))
        })?;
        Config::parse(path, &text)
    }

    /// Check a pipeline file's text. `path` locates errors and relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: Arc<Path> = Arc::from(path);
        let locator = Locator::new(file.clone(), text);
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let loc = e
                .span()
                .map(|s| locator.loc(s.start))
                .unwrap_or_else(|| locator.loc(0));
            let message = e.message().trim_end();
            let hint = if message == "duplicate key" {
                "; a table or key appears twice: each [plugins.NAME] and each key may be defined once"
            } else {
                ""
            };
            ConfigError::one(format!("{loc}: {message}{hint}"))
        })?;
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut problems = Vec::new();

        let admin = raw.admin.as_ref().and_then(|a| {
            match a.listen.get_ref().parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problems.push(format!(
                        "{}: [admin] listen = `{}` is not an address; write IP:PORT, e.g. \"127.0.0.1:7400\"",
                        locator.at(&a.listen),
                        a.listen.get_ref()
                    ));
                    None
                }
            }
        });
        let declared: BTreeSet<String> = raw.plugins.keys().map(|k| k.get_ref().clone()).collect();
        let mut plugins = BTreeMap::new();
        for (name, raw_plugin) in raw.plugins {
            let loc = locator.at(&name);
            let name = name.into_inner();
            if let Some(decl) =
                check_plugin(&name, &loc, raw_plugin, &base, &locator, &mut problems)
            {
                plugins.insert(name, decl);
            }
        }

        if raw.pipeline.is_empty() {
            problems.push(format!(
                "{}: no pipeline defined; add a [[pipeline]] table with a name, a source and sinks",
                locator.loc(0)
            ));
        }
        let mut names = BTreeSet::new();
        let mut pipelines = Vec::new();
        for spanned in raw.pipeline {
            let loc = locator.at(&spanned);
            let raw_pipeline = spanned.into_inner();
            let name_loc = locator.at(&raw_pipeline.name);
            let name = raw_pipeline.name.get_ref().clone();
            if name.trim().is_empty() {
                problems.push(format!(
                    "{name_loc}: pipeline name is empty; give every pipeline a unique name"
                ));
            } else if !names.insert(name.clone()) {
                problems.push(format!(
                    "{name_loc}: duplicate pipeline name `{name}`; pipeline names must be unique"
                ));
            }
            let reference = |r: &Spanned<String>,
                             role: Role,
                             problems: &mut Vec<String>|
             -> PluginRef {
                let plugin_ref = PluginRef {
                    name: r.get_ref().clone(),
                    loc: locator.at(r),
                };
                if !declared.contains(&plugin_ref.name) {
                    let known = declared.iter().cloned().collect::<Vec<_>>().join(", ");
                    problems.push(format!(
                            "{}: pipeline `{name}`: {} `{}` is not declared; declare [plugins.{}] or use one of: {}",
                            plugin_ref.loc,
                            role.noun(),
                            plugin_ref.name,
                            plugin_ref.name,
                            if known.is_empty() { "(none declared)".to_owned() } else { known }
                        ));
                }
                plugin_ref
            };
            let source = reference(&raw_pipeline.source, Role::Source, &mut problems);
            let transforms = raw_pipeline
                .transforms
                .iter()
                .map(|t| reference(t, Role::Transform, &mut problems))
                .collect();
            let sinks: Vec<PluginRef> = raw_pipeline
                .sinks
                .iter()
                .map(|s| reference(s, Role::Sink, &mut problems))
                .collect();
            if sinks.is_empty() {
                problems.push(format!(
                    "{loc}: pipeline `{name}` has no sinks; add sinks = [\"NAME\"] naming at least one sink plugin"
                ));
            }
            let mut seen_sinks = BTreeSet::new();
            for sink in &sinks {
                if !seen_sinks.insert(&sink.name) {
                    problems.push(format!(
                        "{}: pipeline `{name}` lists sink `{}` twice; every message would be delivered twice",
                        sink.loc, sink.name
                    ));
                }
            }
            let batch_size = match raw_pipeline.batch_size {
                Some(b) if *b.get_ref() == 0 || *b.get_ref() > MAX_BATCH_SIZE => {
                    problems.push(format!(
                        "{}: batch_size {} is out of range; use 1 to {MAX_BATCH_SIZE}",
                        locator.at(&b),
                        b.get_ref()
                    ));
                    DEFAULT_BATCH_SIZE
                }
                Some(b) => b.into_inner(),
                None => DEFAULT_BATCH_SIZE,
            };
            let buffer = match raw_pipeline.buffer {
                Some(b) if *b.get_ref() == 0 || *b.get_ref() > 1024 => {
                    problems.push(format!(
                        "{}: buffer {} is out of range; use 1 to 1024 batches",
                        locator.at(&b),
                        b.get_ref()
                    ));
                    defaults::BUFFER
                }
                Some(b) => b.into_inner(),
                None => defaults::BUFFER,
            };
            let defaults = Retry::default();
            let attempts = match raw_pipeline.retry.attempts {
                Some(a) if *a.get_ref() == 0 => {
                    problems.push(format!(
                        "{}: retry.attempts must be at least 1 (1 means no retry)",
                        locator.at(&a)
                    ));
                    1
                }
                Some(a) => a.into_inner(),
                None => defaults.attempts,
            };
            let retry = Retry {
                attempts,
                backoff: raw_pipeline.retry.backoff.map_or(defaults.backoff, |d| d.0),
                max_backoff: raw_pipeline
                    .retry
                    .max_backoff
                    .map_or(defaults.max_backoff, |d| d.0),
            };
            let breaker_defaults = Breaker::default();
            let breaker = Breaker {
                traps: match raw_pipeline.breaker.traps {
                    Some(t) if *t.get_ref() == 0 => {
                        problems.push(format!(
                            "{}: breaker.traps must be at least 1",
                            locator.at(&t)
                        ));
                        1
                    }
                    Some(t) => t.into_inner(),
                    None => breaker_defaults.traps,
                },
                window: raw_pipeline
                    .breaker
                    .window
                    .map_or(breaker_defaults.window, |d| d.0),
                cooldown: raw_pipeline
                    .breaker
                    .cooldown
                    .map_or(breaker_defaults.cooldown, |d| d.0),
            };
            let dead_letter = match raw_pipeline
                .dead_letter
                .as_ref()
                .and_then(|d| d.path.as_ref())
            {
                Some(path) => base.join(path.get_ref()),
                None => base.join(defaults::dead_letter_path(&name)),
            };
            let dead_letter_sink = raw_pipeline
                .dead_letter
                .as_ref()
                .and_then(|d| d.sink.as_ref())
                .map(|s| reference(s, Role::Sink, &mut problems));
            if let Some(dls) = &dead_letter_sink
                && sinks.iter().any(|s| s.name == dls.name)
            {
                problems.push(format!(
                    "{}: pipeline `{name}`: dead-letter sink `{}` is also one of its destinations, so its own failures would be dead-lettered into itself (a cycle); declare a separate plugin for the dead letters",
                    dls.loc, dls.name
                ));
            }
            if let Some(d) = &raw_pipeline.dead_letter
                && d.path.is_some() == d.sink.is_some()
            {
                problems.push(format!(
                    "{loc}: pipeline `{name}`: dead_letter needs exactly one of `path` (a JSON Lines file) or `sink` (a sink plugin)"
                ));
            }
            if raw_pipeline.dead_letter.is_some() && raw_pipeline.on_error == OnError::Stop {
                problems.push(format!(
                    "{loc}: pipeline `{name}` configures dead_letter but on_error is \"stop\"; set on_error = \"dead-letter\" to use it"
                ));
            }
            let mut routes = Vec::new();
            for raw_route in &raw_pipeline.route {
                let mut to = Vec::new();
                for target in raw_route.to.get_ref() {
                    match sinks.iter().position(|s| &s.name == target.get_ref()) {
                        Some(i) => to.push(i),
                        None => problems.push(format!(
                            "{}: pipeline `{name}`: route target `{}` is not one of its sinks ({}); add it to `sinks` or fix the name",
                            locator.at(target),
                            target.get_ref(),
                            sinks.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                        )),
                    }
                }
                let when = raw_route.when.as_ref().map(|w| {
                    if let Err(e) = cel::Program::compile(w.get_ref()) {
                        let first = e.to_string();
                        let first = first
                            .lines()
                            .next()
                            .unwrap_or("syntax error")
                            .trim()
                            .to_owned();
                        problems.push(format!(
                            "{}: pipeline `{name}`: route condition `{}` is not valid CEL: {first}",
                            locator.at(w),
                            w.get_ref()
                        ));
                    }
                    w.get_ref().clone()
                });
                routes.push(RouteDecl { when, to });
            }
            if !raw_pipeline.route.is_empty() {
                for (i, sink) in sinks.iter().enumerate() {
                    if !routes.iter().any(|r| r.to.contains(&i)) {
                        problems.push(format!(
                            "{}: pipeline `{name}`: sink `{}` is the target of no route, so it would never get a message; route to it or remove it from `sinks`",
                            sink.loc, sink.name
                        ));
                    }
                }
            }
            pipelines.push(PipelineDecl {
                name,
                loc,
                source,
                transforms,
                sinks,
                routing: raw_pipeline.routing,
                routes,
                batch_size,
                buffer,
                max_in_flight: raw_pipeline
                    .max_in_flight
                    .map_or(defaults::MAX_IN_FLIGHT, |s| s.0),
                on_error: raw_pipeline.on_error,
                retry,
                breaker,
                dead_letter,
                dead_letter_sink,
            });
        }

        if problems.is_empty() {
            Ok(Config {
                file,
                plugins,
                pipelines,
                admin,
            })
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// The role a plugin plays in a pipeline, matching the WIT world it must implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// World `source`.
    Source,
    /// World `transform`.
    Transform,
    /// World `sink`.
    Sink,
}

impl Role {
    /// Lowercase name, equal to the WIT world's name.
    pub fn noun(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Transform => "transform",
            Role::Sink => "sink",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

fn check_plugin(
    name: &str,
    loc: &Loc,
    raw: RawPlugin,
    base: &Path,
    locator: &Locator,
    problems: &mut Vec<String>,
) -> Option<PluginDecl> {
    let before = problems.len();
    if !valid_name(name) {
        problems.push(format!(
            "{loc}: plugin name `{name}` is not allowed; use letters, digits, `-` and `_`"
        ));
    }
    let path_loc = locator.at(&raw.path);
    let path = base.join(raw.path.get_ref());
    if raw.path.get_ref().trim().is_empty() {
        problems.push(format!(
            "{path_loc}: plugin `{name}`: path is empty; give the component file (.wasm)"
        ));
    } else if !path.is_file() {
        problems.push(format!(
            "{path_loc}: plugin `{name}`: component file `{}` not found (resolved to `{}`); build the plugins with `cargo xtask build` or fix `path` (it is relative to the pipeline file)",
            raw.path.get_ref(),
            absolute(&path).display()
        ));
    }
    let sha256 = raw.sha256.and_then(|pin| {
        let hex = pin.get_ref().trim().to_ascii_lowercase();
        if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Some(hex)
        } else {
            problems.push(format!(
                "{}: plugin `{name}`: sha256 must be 64 hex digits (run `sha256sum` on the .wasm file)",
                locator.at(&pin)
            ));
            None
        }
    });
    let config = raw
        .config
        .into_iter()
        .map(|(key, value)| ConfigEntry {
            loc: locator.at(&key),
            key: key.into_inner(),
            value: config_value_text(value),
        })
        .collect();
    let mut dirs = Vec::new();
    let mut guests = BTreeSet::new();
    for dir in raw.grants.dirs {
        let guest = dir.guest.get_ref();
        let checked = DirGrant::check(
            dir.host.get_ref(),
            base.join(dir.host.get_ref()),
            guest,
            dir.mode,
        );
        match checked {
            Ok(grant) => {
                if !guests.insert(guest.clone()) {
                    problems.push(format!(
                        "{}: plugin `{name}`: guest path `{guest}` is granted twice",
                        locator.at(&dir.guest)
                    ));
                }
                dirs.push(grant);
            }
            Err(found) => {
                for problem in found {
                    let (at, text) = match problem {
                        GrantProblem::Host(text) => (locator.at(&dir.host), text),
                        GrantProblem::Guest(text) => (locator.at(&dir.guest), text),
                    };
                    problems.push(format!("{at}: plugin `{name}`: {text}"));
                }
            }
        }
    }
    let mut patterns = |list: &[Spanned<String>]| -> Vec<NetPattern> {
        list.iter()
            .filter_map(|p| match NetPattern::parse(p.get_ref()) {
                Ok(pattern) => Some(pattern),
                Err(e) => {
                    problems.push(format!("{}: plugin `{name}`: {e}", locator.at(p)));
                    None
                }
            })
            .collect()
    };
    let tcp = patterns(&raw.grants.tcp);
    let udp = patterns(&raw.grants.udp);
    let listen = patterns(&raw.grants.listen);
    let http = raw
        .grants
        .http
        .iter()
        .filter_map(|p| match HttpPattern::parse(p.get_ref()) {
            Ok(pattern) => Some(pattern),
            Err(e) => {
                problems.push(format!("{}: plugin `{name}`: {e}", locator.at(p)));
                None
            }
        })
        .collect();
    let defaults = Limits::default();
    let limits = Limits {
        memory: raw.limits.memory.map_or(defaults.memory, |s| s.0),
        call_timeout: raw
            .limits
            .call_timeout
            .map_or(defaults.call_timeout, |d| d.0),
        init_timeout: raw
            .limits
            .init_timeout
            .map_or(defaults.init_timeout, |d| d.0),
        max_output: raw.limits.max_output.map_or(defaults.max_output, |s| s.0),
    };
    if limits.memory < 64 * 1024 {
        problems.push(format!(
            "{loc}: plugin `{name}`: limits.memory is below one Wasm page (64KiB)"
        ));
    }
    if limits.call_timeout.is_zero() || limits.init_timeout.is_zero() {
        problems.push(format!(
            "{loc}: plugin `{name}`: a timeout of zero would stop every call; use e.g. \"1s\""
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(PluginDecl {
        name: name.to_owned(),
        path,
        path_loc,
        sha256,
        config,
        watch: raw.watch,
        grants: Grants {
            dirs,
            stdin: raw.grants.stdin,
            stdout: raw.grants.stdout,
            tcp,
            udp,
            listen,
            http,
            dns: raw.grants.dns,
            env: raw.grants.env,
        },
        limits,
    })
}

use crate::sandbox::grants::absolute;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A TOML string is passed as itself; anything else as JSON text.
fn config_value_text(value: toml::Value) -> String {
    match value {
        toml::Value::String(s) => s,
        other => toml_to_json(other).to_string(),
    }
}

fn toml_to_json(value: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => J::Object(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert!(parse_size("64").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn values_become_text() {
        assert_eq!(config_value_text(toml::Value::String("a".into())), "a");
        assert_eq!(config_value_text(toml::Value::Integer(3)), "3");
        let table: toml::Table = toml::from_str("x = { a = [1, true] }").unwrap();
        assert_eq!(config_value_text(table["x"].clone()), r#"{"a":[1,true]}"#);
    }

    #[test]
    fn unknown_key_has_location() {
        let err = Config::parse(
            Path::new("p.toml"),
            "[[pipeline]]\nname = \"a\"\nsorce = \"x\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("p.toml:3:1: unknown field `sorce`"),
            "{err}"
        );
    }
}
