//! OpenTelemetry export for `[telemetry]`: the process's tracer provider, sending the spans of
//! `pipeline::trace` in batches over OTLP/HTTP with protobuf bodies (`opentelemetry-otlp`,
//! its blocking reqwest client on the batch processor's own thread: no TLS, so the collector
//! is reached at an `http://` address, usually a local agent or collector).
//!
//! Beside the layers: `cli` starts it, `assemble` hands its tracer to the pipelines.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

use crate::config::TelemetryDecl;

/// How often finished spans leave in a batch.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// The running exporter. [`Telemetry::shutdown`] sends what is left.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Telemetry {
    /// Start exporting to `decl.otlp` (`/v1/traces` is added unless the address has a path).
    pub fn start(decl: &TelemetryDecl) -> anyhow::Result<Telemetry> {
        let endpoint = traces_endpoint(&decl.otlp);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| anyhow::anyhow!("[telemetry] otlp = `{}`: {e}", decl.otlp))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_EVERY)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                decl.sample,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(decl.service.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("patchbay");
        tracing::info!(
            "traces go to {endpoint} (OTLP/HTTP), {}% of new traces sampled",
            decl.sample * 100.0
        );
        Ok(Telemetry { provider, tracer })
    }

    /// The tracer the pipelines make spans with.
    pub fn tracer(&self) -> SdkTracer {
        self.tracer.clone()
    }

    /// Export what is left and stop (at the end of `run`).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("telemetry: the last spans could not be exported: {e}");
        }
    }
}

/// `http://host:4318` → `http://host:4318/v1/traces`; an address with a path is kept.
fn traces_endpoint(otlp: &str) -> String {
    let rest = otlp.split_once("://").map_or(otlp, |(_, rest)| rest);
    if rest.trim_end_matches('/').contains('/') {
        otlp.to_owned()
    } else {
        format!("{}/v1/traces", otlp.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_bare_address() {
        assert_eq!(
            traces_endpoint("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_endpoint("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_endpoint("http://collector/otlp/v1/traces"),
            "http://collector/otlp/v1/traces"
        );
    }
}
