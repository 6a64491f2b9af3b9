//! Host bindings of the WIT contract (`wit/`, package `patchbay:connector@0.1.0`) and the host
//! side of the interfaces every plugin imports: logging, metrics, state.
//!
//! Also the check of a plugin's configuration keys against its metadata.
//! It may import `config` and `sandbox` (for the log line rules).
//!
//! The three worlds share one set of types: `source` generates them, `transform` and `sink`
//! reuse them through `with`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::config::PluginDecl;

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

/// World `transform`.
#[allow(missing_docs, clippy::all)]
pub mod transform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transform",
        exports: { default: async },
        with: {
            "patchbay:connector/types": super::source::patchbay::connector::types,
            "patchbay:connector/logging": super::source::patchbay::connector::logging,
            "patchbay:connector/metrics": super::source::patchbay::connector::metrics,
            "patchbay:connector/state": super::source::patchbay::connector::state,
        },
    });
}

/// World `sink`.
#[allow(missing_docs, clippy::all)]
pub mod sink {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sink",
        exports: { default: async },
        with: {
            "patchbay:connector/types": super::source::patchbay::connector::types,
            "patchbay:connector/logging": super::source::patchbay::connector::logging,
            "patchbay:connector/metrics": super::source::patchbay::connector::metrics,
            "patchbay:connector/state": super::source::patchbay::connector::state,
        },
    });
}

/// World `transform-packed`: a transform with the packed fast path (`process-packed`).
#[allow(missing_docs, clippy::all)]
pub mod transform_packed {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transform-packed",
        exports: { default: async },
        with: {
            "patchbay:connector/types": super::source::patchbay::connector::types,
            "patchbay:connector/logging": super::source::patchbay::connector::logging,
            "patchbay:connector/metrics": super::source::patchbay::connector::metrics,
            "patchbay:connector/state": super::source::patchbay::connector::state,
        },
    });
}

/// World `sink-packed`: a sink with the packed fast path (`write-packed`).
#[allow(missing_docs, clippy::all)]
pub mod sink_packed {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sink-packed",
        exports: { default: async },
        with: {
            "patchbay:connector/types": super::source::patchbay::connector::types,
            "patchbay:connector/logging": super::source::patchbay::connector::logging,
            "patchbay:connector/metrics": super::source::patchbay::connector::metrics,
            "patchbay:connector/state": super::source::patchbay::connector::state,
        },
    });
}

pub use source::patchbay::connector::types::{
    ConfigEntry, ConfigKey, Error as WitError, ErrorKind, Header, Message, Metadata, Outcome,
    PollResult, SourceBatch,
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
    format!("{} error: {}", error.kind, error.message)
}

/// Largest state key, in bytes.
pub const MAX_STATE_KEY: usize = 1024;
/// Largest state value, in bytes.
pub const MAX_STATE_VALUE: usize = 1024 * 1024;
/// Largest total state of one plugin, in bytes.
pub const MAX_STATE_TOTAL: usize = 16 * 1024 * 1024;

/// The host-owned key-value store of one plugin in one pipeline. It outlives instances: a fresh
/// instance after a trap, or new code after a swap, sees what the old one wrote.
#[derive(Debug, Default, Clone)]
pub struct PluginState {
    inner: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl PluginState {
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
            map.insert(key, value);
            Ok(())
        })
    }

    /// Remove a key.
    pub fn delete(&self, key: &str) {
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

/// Metrics reported by plugins, keyed by (plugin, metric name, labels).
#[derive(Debug, Default, Clone)]
pub struct PluginMetrics {
    inner: Arc<Mutex<BTreeMap<MetricKey, MetricValue>>>,
}

/// Identity of one plugin-reported series.
pub type MetricKey = (String, String, Vec<(String, String)>);

impl PluginMetrics {
    fn update(&self, key: MetricKey, f: impl FnOnce(Option<&MetricValue>) -> MetricValue) {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let value = f(guard.get(&key));
        guard.insert(key, value);
    }

    /// A copy of every series.
    pub fn snapshot(&self) -> BTreeMap<MetricKey, MetricValue> {
        match self.inner.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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

impl metrics::Host for HostImports {
    fn counter_add(&mut self, name: String, value: u64, labels: Vec<metrics::Label>) {
        let key = metric_key(&self.plugin, name, labels);
        self.metrics.update(key, |old| match old {
            Some(MetricValue::Counter(c)) => MetricValue::Counter(c.saturating_add(value)),
            _ => MetricValue::Counter(value),
        });
    }

    fn gauge_set(&mut self, name: String, value: f64, labels: Vec<metrics::Label>) {
        let key = metric_key(&self.plugin, name, labels);
        self.metrics.update(key, |_| MetricValue::Gauge(value));
    }

    fn histogram_observe(&mut self, name: String, value: f64, labels: Vec<metrics::Label>) {
        let key = metric_key(&self.plugin, name, labels);
        self.metrics.update(key, |old| match old {
            Some(MetricValue::Histogram { count, sum }) => MetricValue::Histogram {
                count: count + 1,
                sum: sum + value,
            },
            _ => MetricValue::Histogram {
                count: 1,
                sum: value,
            },
        });
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
    Ok(())
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
pub fn init_entries(decl: &PluginDecl) -> Vec<ConfigEntry> {
    decl.config
        .iter()
        .map(|e| ConfigEntry {
            key: e.key.clone(),
            value: e.value.clone(),
        })
        .collect()
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
