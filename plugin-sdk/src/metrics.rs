//! Metrics exported by the host on its Prometheus endpoint. The host adds a `plugin` label.
//!
//! ```no_run
//! use patchbay_sdk::metrics;
//!
//! metrics::counter_add("rows_skipped_total", 2, &[("reason", "empty")]);
//! metrics::gauge_set("queue_depth", 17.0, &[]);
//! ```
//!
//! Built for another target than wasm32 (a plugin's own unit tests, a native benchmark), there
//! is no host: the calls do nothing.

use crate::bindings::metrics::Label;
#[cfg(target_arch = "wasm32")]
use crate::bindings::metrics::{self as host};

/// No host: metrics go nowhere.
#[cfg(not(target_arch = "wasm32"))]
mod host {
    use super::Label;

    pub fn counter_add(_: &str, _: u64, _: &[Label]) {}
    pub fn gauge_set(_: &str, _: f64, _: &[Label]) {}
    pub fn histogram_observe(_: &str, _: f64, _: &[Label]) {}
}

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(name, value)| Label {
            name: (*name).to_owned(),
            value: (*value).to_owned(),
        })
        .collect()
}

/// Add `value` to the counter `name` (snake_case, ending in `_total`).
pub fn counter_add(name: &str, value: u64, labels: &[(&str, &str)]) {
    host::counter_add(name, value, &self::labels(labels))
}

/// Set the gauge `name` to `value`.
pub fn gauge_set(name: &str, value: f64, labels: &[(&str, &str)]) {
    host::gauge_set(name, value, &self::labels(labels))
}

/// Record one observation of `value` in the histogram `name`.
pub fn histogram_observe(name: &str, value: f64, labels: &[(&str, &str)]) {
    host::histogram_observe(name, value, &self::labels(labels))
}
