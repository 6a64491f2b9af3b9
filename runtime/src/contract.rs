//! Host bindings of the WIT contract (`wit/`, package `patchbay:connector@0.2.0`; `v0_1` binds
//! the 0.1.0 contract that older plugins were built against) and the host side of the
//! interfaces every plugin imports: logging, metrics, state.
//!
//! Also the check of a plugin's configuration keys against its metadata.
//! It may import `config` and `sandbox` (for the log line rules).
//!
//! The three worlds share one set of types: `source` generates them, `transform` and `sink`
//! reuse them through `with`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::config::PluginDecl;
use crate::state_store::{RUN_ONLY, StateStore};

/// World `source`.
#[allow(missing_docs, clippy::all)]
pub mod source {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "source",
        exports: { default: async },
        additional_derives: [PartialEq],
    });
}

/// One more world of the contract, its types and host imports those of `source`.
macro_rules! world {
    ($(#[$doc:meta])* $module:ident, $world:literal) => {
        $(#[$doc])*
        #[allow(missing_docs, clippy::all)]
        pub mod $module {
            wasmtime::component::bindgen!({
                path: "../wit",
                world: $world,
                exports: { default: async },
                with: {
                    "patchbay:connector/types": super::source::patchbay::connector::types,
                    "patchbay:connector/logging": super::source::patchbay::connector::logging,
                    "patchbay:connector/metrics": super::source::patchbay::connector::metrics,
                    "patchbay:connector/state": super::source::patchbay::connector::state,
                },
            });
        }
    };
}

world!(
    /// World `transform`.
    transform,
    "transform"
);
world!(
    /// World `sink`.
    sink,
    "sink"
);
world!(
    /// World `source-bounded`: a source that honours a byte bound per poll (`poll-within`).
    source_bounded,
    "source-bounded"
);
world!(
    /// World `source-shared`: a bounded source whose instances can share its work (`share`).
    source_shared,
    "source-shared"
);
world!(
    /// World `transform-packed`: a transform with the packed fast path (`process-packed`).
    transform_packed,
    "transform-packed"
);
world!(
    /// World `sink-packed`: a sink with the packed fast path (`write-packed`).
    sink_packed,
    "sink-packed"
);
world!(
    /// World `source-reply`: a shared source that answers requests (`reply`, new in 0.2.0).
    source_reply,
    "source-reply"
);

pub mod v0_1;

pub use source::patchbay::connector::types::{
    Answer, ConfigEntry, ConfigKey, Error as WitError, ErrorKind, Header, Message, Metadata,
    Outcome, PollResult, SourceBatch,
};

use source::patchbay::connector::{logging, metrics, state};

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Retryable => "retryable",
            ErrorKind::InvalidData => "invalid-data",
            ErrorKind::Fatal => "fatal",
        })
    }
}

/// `KIND error: MESSAGE`, the way errors from plugins are shown to users.
pub fn describe(error: &WitError) -> String {
    format!("{} error: {}", error.kind, message_text(error))
}

/// A plugin error's message as users see it: WASI errno numbers named
/// (`sandbox::logline::wasi_errors`).
pub fn message_text(error: &WitError) -> String {
    crate::sandbox::logline::wasi_errors(&error.message).into_owned()
}

/// Largest state key, in bytes.
pub const MAX_STATE_KEY: usize = 1024;
/// Largest state value, in bytes.
pub const MAX_STATE_VALUE: usize = 1024 * 1024;
/// Largest total state of one plugin, in bytes.
pub const MAX_STATE_TOTAL: usize = 16 * 1024 * 1024;

/// The host-owned key-value store of one plugin in one pipeline. It outlives instances: a fresh
/// instance after a trap, or new code after a swap, sees what the old one wrote. With a
/// [`StateStore`] it outlives the process too (keys but `run:…` ones are written through).
#[derive(Debug, Default, Clone)]
pub struct PluginState {
    inner: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    durable: Option<Arc<dyn StateWriter>>,
}

/// Where a plugin's host state is written through to, beyond memory: the process's
/// [`StateStore`], or a cluster's state bucket.
pub trait StateWriter: Send + Sync + std::fmt::Debug {
    /// Store `value` under `key` (`None`: remove the key).
    fn put(&self, key: &str, value: Option<&[u8]>) -> Result<(), String>;
}

/// One plugin's part of a [`StateStore`].
#[derive(Debug)]
struct FileScope {
    store: Arc<StateStore>,
    scope: String,
}

impl StateWriter for FileScope {
    fn put(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        self.store.put(&self.scope, key, value)
    }
}

impl PluginState {
    /// The state of `plugin` in `pipeline`, as the store last saw it, written through to it.
    pub fn durable(store: Arc<StateStore>, pipeline: &str, plugin: &str) -> Result<Self, String> {
        let scope = StateStore::scope(pipeline, plugin);
        let loaded = store.load(&scope)?;
        Ok(PluginState::with_writer(
            loaded,
            Arc::new(FileScope { store, scope }),
        ))
    }

    /// State read from elsewhere (`loaded`), written through `writer` from now on.
    pub fn with_writer(loaded: BTreeMap<String, Vec<u8>>, writer: Arc<dyn StateWriter>) -> Self {
        PluginState {
            inner: Arc::new(Mutex::new(loaded)),
            durable: Some(writer),
        }
    }

    /// Write through to the store, unless the key lives for this run only.
    fn save(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        match &self.durable {
            Some(writer) if !key.starts_with(RUN_ONLY) => writer.put(key, value),
            _ => Ok(()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> R) -> R {
        match self.inner.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// How many keys it holds and their total size in bytes (keys and values).
    pub fn usage(&self) -> (usize, usize) {
        self.with(|map| (map.len(), map.iter().map(|(k, v)| k.len() + v.len()).sum()))
    }

    /// Read a key.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.with(|map| map.get(key).cloned())
    }

    /// Write a key, within the size limits.
    pub fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.len() > MAX_STATE_KEY {
            return Err(format!(
                "state key is {} bytes; the limit is {MAX_STATE_KEY}",
                key.len()
            ));
        }
        if value.len() > MAX_STATE_VALUE {
            return Err(format!(
                "state value is {} bytes; the limit is {MAX_STATE_VALUE}",
                value.len()
            ));
        }
        self.with(|map| {
            let old = map.get(&key).map_or(0, |v| key.len() + v.len());
            let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
            if total - old + key.len() + value.len() > MAX_STATE_TOTAL {
                return Err(format!(
                    "state would exceed {MAX_STATE_TOTAL} bytes for this plugin; delete keys first"
                ));
            }
            // On disk first: what the plugin is told was set survives a crash.
            self.save(&key, Some(&value))
                .map_err(|e| format!("state not saved: {e}"))?;
            map.insert(key, value);
            Ok(())
        })
    }

    /// Remove a key.
    pub fn delete(&self, key: &str) {
        if let Err(e) = self.save(key, None) {
            tracing::warn!("state key `{key}` not removed from the store: {e}");
        }
        self.with(|map| map.remove(key));
    }
}

/// A metric a plugin reported, kept by the host.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// Monotonic counter.
    Counter(u64),
    /// Last value set.
    Gauge(f64),
    /// Count and sum of observations.
    Histogram {
        /// Observations.
        count: u64,
        /// Sum of observed values.
        sum: f64,
    },
}

/// Most series one plugin may report; a new one past this is refused and counted.
pub const MAX_SERIES_PER_PLUGIN: usize = 1000;
/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME: usize = 128;
/// Most labels on one series.
pub const MAX_LABELS: usize = 8;
/// Longest label name, in bytes.
pub const MAX_LABEL_NAME: usize = 64;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;

/// Metrics reported by plugins, keyed by (plugin, metric name, labels), within the caps above:
/// a plugin cannot grow the host's memory or `/metrics` without bound, forge another series
/// (the `plugin` label is the host's) or make the scrape unparseable (label values are escaped
/// when encoded). What is refused is counted per plugin.
#[derive(Debug, Default, Clone)]
pub struct PluginMetrics {
    inner: Arc<Mutex<MetricStore>>,
}

#[derive(Debug, Default)]
struct MetricStore {
    series: BTreeMap<MetricKey, MetricValue>,
    per_plugin: BTreeMap<String, usize>,
    refused: BTreeMap<String, u64>,
}

/// Identity of one plugin-reported series.
pub type MetricKey = (String, String, Vec<(String, String)>);

/// Why a metric a plugin reported is refused; `None` when it is fine.
pub fn metric_problem(name: &str, labels: &[(String, String)]) -> Option<String> {
    let word = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    // `.`, `-` and `:` are allowed in names (OpenTelemetry style) and shown as `_`.
    let name_ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-:".contains(c));
    if name.len() > MAX_METRIC_NAME || !name_ok {
        return Some(format!(
            "metric name `{}` is not a word of letters, digits, `_`, `.`, `-` or `:` of at most \
             {MAX_METRIC_NAME} bytes",
            name.chars().take(64).collect::<String>().escape_debug()
        ));
    }
    if labels.len() > MAX_LABELS {
        return Some(format!(
            "metric `{name}` has {} labels; at most {MAX_LABELS}",
            labels.len()
        ));
    }
    for (i, (label, value)) in labels.iter().enumerate() {
        if label.len() > MAX_LABEL_NAME || !word(label) || label == "plugin" {
            return Some(format!(
                "metric `{name}`: label name `{}` is not a word of at most {MAX_LABEL_NAME} bytes, \
                 or is `plugin` (the host's)",
                label.chars().take(64).collect::<String>().escape_debug()
            ));
        }
        if labels[..i].iter().any(|(l, _)| l == label) {
            return Some(format!("metric `{name}`: label `{label}` is given twice"));
        }
        if value.len() > MAX_LABEL_VALUE {
            return Some(format!(
                "metric `{name}`: the value of label `{label}` is {} bytes; at most \
                 {MAX_LABEL_VALUE}",
                value.len()
            ));
        }
    }
    None
}

impl PluginMetrics {
    fn store(&self) -> std::sync::MutexGuard<'_, MetricStore> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Update one series; `Err` says why it was refused (and counts it).
    fn update(
        &self,
        key: MetricKey,
        f: impl FnOnce(Option<&MetricValue>) -> MetricValue,
    ) -> Result<(), String> {
        let mut store = self.store();
        let problem = metric_problem(&key.1, &key.2).or_else(|| {
            let count = store.per_plugin.get(&key.0).copied().unwrap_or(0);
            (!store.series.contains_key(&key) && count >= MAX_SERIES_PER_PLUGIN).then(|| {
                format!("it reports {MAX_SERIES_PER_PLUGIN} series already, the most a plugin may")
            })
        });
        if let Some(problem) = problem {
            *store.refused.entry(key.0).or_insert(0) += 1;
            return Err(problem);
        }
        let value = f(store.series.get(&key));
        let plugin = key.0.clone();
        if store.series.insert(key, value).is_none() {
            *store.per_plugin.entry(plugin).or_insert(0) += 1;
        }
        Ok(())
    }

    /// A copy of every series.
    pub fn snapshot(&self) -> BTreeMap<MetricKey, MetricValue> {
        self.store().series.clone()
    }

    /// Metric updates refused so far, by plugin.
    pub fn refused(&self) -> BTreeMap<String, u64> {
        self.store().refused.clone()
    }
}

/// What the host interfaces need to know about the calling plugin.
pub struct HostImports {
    /// `pipeline/plugin`, for log lines.
    pub label: Arc<str>,
    /// Plugin name, the `plugin` label of its metrics.
    pub plugin: Arc<str>,
    /// Its state store.
    pub state: PluginState,
    /// Shared metrics registry.
    pub metrics: PluginMetrics,
    /// The rate limit of its `logging.log` lines.
    pub log_budget: crate::sandbox::logline::LineBudget,
    /// Whether this instance was told already that a metric was refused.
    pub metric_refused: bool,
}

impl logging::Host for HostImports {
    /// Rate-limited, cut and escaped like the plugin's stderr (`sandbox::logline`).
    fn log(&mut self, level: logging::Level, message: String) {
        if !self.log_budget.admit(std::time::Instant::now()) {
            return;
        }
        let plugin = &*self.label;
        let message = crate::sandbox::logline::clean_line(&message);
        match level {
            logging::Level::Trace => tracing::trace!("{plugin}: {message}"),
            logging::Level::Debug => tracing::debug!("{plugin}: {message}"),
            logging::Level::Info => tracing::info!("{plugin}: {message}"),
            logging::Level::Warn => tracing::warn!("{plugin}: {message}"),
            logging::Level::Error => tracing::error!("{plugin}: {message}"),
        }
    }
}

fn metric_key(plugin: &str, name: String, labels: Vec<metrics::Label>) -> MetricKey {
    let mut labels: Vec<(String, String)> = labels.into_iter().map(|l| (l.name, l.value)).collect();
    labels.sort();
    (plugin.to_owned(), name, labels)
}

impl HostImports {
    /// Say once per instance that a metric was refused, and why (every refusal is counted in
    /// `patchbay_plugin_metrics_refused`).
    fn refused(&mut self, result: Result<(), String>) {
        if let Err(why) = result
            && !self.metric_refused
        {
            self.metric_refused = true;
            tracing::warn!(
                "{}: a metric was refused: {why}; further refusals are only counted \
                 (patchbay_plugin_metrics_refused)",
                self.label
            );
        }
    }
}

impl metrics::Host for HostImports {
    fn counter_add(&mut self, name: String, value: u64, labels: Vec<metrics::Label>) {
        let key = metric_key(&self.plugin, name, labels);
        let result = self.metrics.update(key, |old| match old {
            Some(MetricValue::Counter(c)) => MetricValue::Counter(c.saturating_add(value)),
            _ => MetricValue::Counter(value),
        });
        self.refused(result);
    }

    fn gauge_set(&mut self, name: String, value: f64, labels: Vec<metrics::Label>) {
        let key = metric_key(&self.plugin, name, labels);
        let result = self.metrics.update(key, |_| MetricValue::Gauge(value));
        self.refused(result);
    }

    fn histogram_observe(&mut self, name: String, value: f64, labels: Vec<metrics::Label>) {
        let key = metric_key(&self.plugin, name, labels);
        let result = self.metrics.update(key, |old| match old {
            Some(MetricValue::Histogram { count, sum }) => MetricValue::Histogram {
                count: count + 1,
                sum: sum + value,
            },
            _ => MetricValue::Histogram {
                count: 1,
                sum: value,
            },
        });
        self.refused(result);
    }
}

impl state::Host for HostImports {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.state.get(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.state.set(key, value)
    }

    fn delete(&mut self, key: String) {
        self.state.delete(&key)
    }
}

/// Add the host interfaces every world imports to a linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut HostImports,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    logging::add_to_linker::<T, HasSelf<HostImports>>(linker, get)?;
    metrics::add_to_linker::<T, HasSelf<HostImports>>(linker, get)?;
    state::add_to_linker::<T, HasSelf<HostImports>>(linker, get)?;
    v0_1::add_to_linker(linker, get)
}

/// A message with the given payload and nothing else.
pub fn message(payload: Vec<u8>) -> Message {
    Message {
        payload,
        key: None,
        headers: Vec::new(),
        timestamp: None,
    }
}

/// The `init` entries of a plugin declaration, as the plugin receives them.
///
/// A value that is exactly `${env:NAME}` is replaced by the environment variable `NAME` of this
/// process, read at `init`: secrets (a broker's password, a token) stay out of pipeline files
/// and out of a cluster's stored definitions, and each node supplies its own. `Err` names the
/// key and the variable when it is not set.
pub fn init_entries(decl: &PluginDecl) -> Result<Vec<ConfigEntry>, String> {
    decl.config
        .iter()
        .map(|e| {
            let value = match env_reference(&e.value) {
                Some(name) => std::env::var(name).map_err(|_| {
                    format!(
                        "{}: plugin `{}`: config key `{}` is `${{env:{name}}}`, but the \
                         environment variable `{name}` is not set for this process; set it \
                         where patchbay runs",
                        e.loc, decl.name, e.key
                    )
                })?,
                None => e.value.clone(),
            };
            Ok(ConfigEntry {
                key: e.key.clone(),
                value,
            })
        })
        .collect()
}

/// `NAME` when `value` is exactly `${env:NAME}` (letters, digits and `_`).
fn env_reference(value: &str) -> Option<&str> {
    let name = value.strip_prefix("${env:")?.strip_suffix('}')?;
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some(name)
}

/// Check a plugin declaration's `config` against the keys the plugin declares in its
/// metadata: an unknown key or a missing required one is a problem naming where to fix it.
pub fn check_keys(decl: &PluginDecl, meta: &Metadata, problems: &mut Vec<String>) {
    let known: Vec<&str> = meta.config_keys.iter().map(|k| k.name.as_str()).collect();
    for entry in &decl.config {
        if !known.contains(&entry.key.as_str()) {
            problems.push(format!(
                "{}: plugin `{}` ({} {}) has no config key `{}`; it accepts: {} (see `patchbay inspect {}`)",
                entry.loc,
                decl.name,
                meta.name,
                meta.version,
                entry.key,
                if known.is_empty() {
                    "no keys".to_owned()
                } else {
                    known.join(", ")
                },
                decl.path.display()
            ));
        }
    }
    for key in meta.config_keys.iter().filter(|k| k.required) {
        if !decl.config.iter().any(|e| e.key == key.name) {
            problems.push(format!(
                "{}: plugin `{}` requires config key `{}` ({}); add it under [plugins.{}.config]",
                decl.path_loc, decl.name, key.name, key.description, decl.name
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_whole_env_reference_is_one() {
        assert_eq!(env_reference("${env:NATS_PASSWORD}"), Some("NATS_PASSWORD"));
        for not in [
            "${env:}",
            "x${env:A}",
            "${env:A}x",
            "${env:A-B}",
            "$env:A",
            "{env:A}",
        ] {
            assert_eq!(env_reference(not), None, "{not}");
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metrics_are_refused_past_their_caps_and_counted() {
        assert_eq!(
            metric_problem("rows.read-total", &labels(&[("k", "v")])),
            None
        );
        for (name, l) in [
            ("", labels(&[])),
            ("9lives", labels(&[])),
            ("a b", labels(&[])),
            ("x", labels(&[("plugin", "other")])),
            ("x", labels(&[("k", "1"), ("k", "2")])),
            ("x", labels(&[("bad-label", "v")])),
            ("x", labels(&[("k", &"v".repeat(MAX_LABEL_VALUE + 1))])),
        ] {
            assert!(metric_problem(name, &l).is_some(), "{name} {l:?}");
        }
        assert_eq!(
            metric_problem("x", &labels(&[("plugin", "other")])).unwrap(),
            "metric `x`: label name `plugin` is not a word of at most 64 bytes, or is `plugin` \
             (the host's)"
        );
        let metrics = PluginMetrics::default();
        for i in 0..MAX_SERIES_PER_PLUGIN + 5 {
            let key = (
                "p".to_owned(),
                "n".to_owned(),
                labels(&[("i", &i.to_string())]),
            );
            let result = metrics.update(key, |_| MetricValue::Gauge(1.0));
            assert_eq!(result.is_ok(), i < MAX_SERIES_PER_PLUGIN, "series {i}");
        }
        // A series it has may still be updated; another plugin has its own cap.
        let known = ("p".to_owned(), "n".to_owned(), labels(&[("i", "0")]));
        assert!(metrics.update(known, |_| MetricValue::Gauge(2.0)).is_ok());
        let other = ("q".to_owned(), "n".to_owned(), labels(&[]));
        assert!(metrics.update(other, |_| MetricValue::Gauge(2.0)).is_ok());
        assert_eq!(metrics.snapshot().len(), MAX_SERIES_PER_PLUGIN + 1);
        assert_eq!(metrics.refused().get("p"), Some(&5));
    }
}
