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
//!
//! - `raw`: the file as written (serde, `deny_unknown_fields`, a doc comment per field);
//! - `check`: raw → the validated types below, every problem a `Diagnostic`;
//! - `units`: sizes and durations; `diagnostic`: locations and problems;
//! - `schema`: the JSON Schema (`patchbay schema`) and the README's table of keys, both
//!   generated from `raw`.
//!
//! It keeps only what the file says: grant patterns are parsed and matched by `sandbox`, config
//! keys checked against plugins by `contract`, defaults kept in `defaults`. It may import
//! `sandbox` (for the grant and limit types) and `defaults`, nothing above them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::defaults;
pub use crate::sandbox::{DirGrant, DirMode, Grants, HttpPattern, Limits, NetPattern};

mod check;
mod diagnostic;
mod raw;
pub mod schema;
mod sections;
mod stages;
mod units;

pub use diagnostic::{ConfigError, Diagnostic, Loc};
pub use units::{Concurrency, HumanDuration, Size, parse_duration, parse_size};

use diagnostic::Locator;
use raw::RawFile;

/// How routes choose destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
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

/// What `patchbay run` does with the other pipelines when one cannot start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnStartFailure {
    /// Run the pipelines that started; report the others and end with exit code 1.
    #[default]
    Continue,
    /// Run none of them.
    Abort,
}

/// What to do with a record that failed for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
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
    /// `[telemetry]`, when the file turns tracing on.
    pub telemetry: Option<TelemetryDecl>,
    /// What `run` does when a pipeline cannot start.
    pub on_start_failure: OnStartFailure,
    /// `[state] dir`, resolved against the file's folder: plugins' host state is kept there.
    pub state_dir: Option<std::path::PathBuf>,
}

/// `[telemetry]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryDecl {
    /// The collector's OTLP/HTTP address, as written.
    pub otlp: String,
    /// Share of new traces recorded, 0 to 1.
    pub sample: f64,
    /// The spans' `service.name`.
    pub service: String,
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
    /// Where `reply` stands in `sinks` as written, when it does: the reply destination, which
    /// the pipeline places after the sink plugins (route targets count it as `sinks.len()`).
    pub reply: Option<Loc>,
    /// How long a request waits for its answer (`reply_timeout`).
    pub reply_timeout: std::time::Duration,
    /// Largest batch per poll.
    pub batch_size: u32,
    /// Most bytes per poll.
    pub batch_bytes: u64,
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
    /// Where it runs in a cluster.
    pub placement: Placement,
}

/// Where a pipeline runs in a cluster (`placement` in the pipeline table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// At most this many nodes (a shared source); `None`: every eligible node.
    pub nodes: Option<u32>,
    /// Tags a node must have, all of them.
    pub tags: BTreeMap<String, String>,
}

/// A reference to a declared plugin, with where it was written.
#[derive(Debug, Clone)]
pub struct PluginRef {
    /// Plugin name.
    pub name: String,
    /// Where it was written.
    pub loc: Loc,
    /// How many instances run, and how batches are spread over them (transforms and sinks).
    pub parallel: Parallel,
}

/// How many instances of a stage run and how a batch is spread over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parallel {
    /// Instances, 1 or more.
    pub instances: usize,
    /// Keep records of the same key on the same instance; `None`: whole batches, next free one.
    pub partition_by: Option<PartitionBy>,
}

impl Default for Parallel {
    fn default() -> Self {
        Parallel {
            instances: defaults::CONCURRENCY as usize,
            partition_by: None,
        }
    }
}

/// What a stage's records are partitioned by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionBy {
    /// The message key (records without a key share one instance).
    Key,
    /// The value of a CEL expression over `json`, `payload`, `key` and `headers`.
    Expression(String),
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

impl Config {
    /// Read and check a pipeline file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(Diagnostic::new(
                Loc::file(path),
                format!("cannot read the pipeline file: {e}"),
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
            let problem = Diagnostic::new(loc, message.to_owned());
            ConfigError::one(if message == "duplicate key" {
                problem.hint(
                    "a table or key appears twice: each [plugins.NAME] and each key may be \
                     defined once",
                )
            } else {
                problem
            })
        })?;
        check::check(raw, path, file, &locator)
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
        assert_eq!(
            check::config_value_text(toml::Value::String("a".into())),
            "a"
        );
        assert_eq!(check::config_value_text(toml::Value::Integer(3)), "3");
        let table: toml::Table = toml::from_str("x = { a = [1, true] }").unwrap();
        assert_eq!(
            check::config_value_text(table["x"].clone()),
            r#"{"a":[1,true]}"#
        );
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
