//! `/metrics`: every series of the admin API's Prometheus exposition, collected from the
//! pipelines' counters, the plugins' call statistics and metrics, and the sandbox's audit at
//! each scrape.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{Admin, Phase};
use crate::contract::MetricValue;
use crate::pipeline::Counters;

#[derive(Debug)]
pub(super) struct MetricsCollector(pub(super) Arc<Admin>);

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
}
