//! What the host measures of every plugin call (duration, records, errors and traps by plugin
//! and function), for the admin API's `/metrics`.

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
    pub(super) fn labels(plugin: &str, key: &str, value: &str) -> CallLabels {
        vec![
            ("plugin".to_owned(), plugin.to_owned()),
            (key.to_owned(), value.to_owned()),
        ]
    }

    pub(super) fn error(&self, plugin: &str, kind: &str) {
        self.errors
            .get_or_create(&CallMetrics::labels(plugin, "kind", kind))
            .inc();
    }
}
