//! Traces across plugins: every record carries a W3C `traceparent` header (kept when it came
//! in, from an HTTP request or NATS headers say; created at the source otherwise), and each
//! plugin call is a span per traced record, child of the record's previous span: poll at the
//! source, then each transform and sink in order. Exported over OTLP by `crate::telemetry`.
//!
//! Off unless `[telemetry] otlp` is set: then no header is added and no span made, and the
//! stages pay one `Option` check per batch. Sampling is decided once per trace at its root (a
//! ratio for new traces, the caller's flag for one that came in). A record of an unsampled
//! trace makes no spans: a new one carries no `traceparent`, one that came in keeps its own.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

use crate::contract::{Header, Message};

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// `00-TRACEID-SPANID-FLAGS` → the span context it names; `None` for anything else (a
/// malformed header is replaced, as W3C trace context says).
pub fn parse(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let trace = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// The header value for a span context.
pub fn format(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// The record's trace context, if it carries a valid one.
pub fn of(message: &Message) -> Option<SpanContext> {
    message
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(TRACEPARENT))
        .and_then(|h| parse(&h.value))
}

/// The trace id of a record, for log lines.
pub fn trace_id(message: &Message) -> Option<String> {
    of(message).map(|c| c.trace_id().to_string())
}

/// Set (or replace) the record's `traceparent`.
pub fn set(message: &mut Message, value: &str) {
    match message
        .headers
        .iter_mut()
        .find(|h| h.name.eq_ignore_ascii_case(TRACEPARENT))
    {
        Some(h) => value.clone_into(&mut h.value),
        None => message.headers.push(Header {
            name: TRACEPARENT.to_owned(),
            value: value.to_owned(),
        }),
    }
}

/// What one plugin call did to one record, for its span.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Passed on unchanged (transform) or written (sink).
    Done(&'static str),
    /// Replaced by this many records (0: dropped).
    Replaced(usize),
    /// Failed for good (dead-lettered, answered, or stopping the pipeline).
    Failed(String),
}

/// Where the spans of one stage come from.
#[derive(Debug, Clone)]
pub struct StageSpans {
    tracer: SdkTracer,
    pipeline: Arc<str>,
    /// `source`, `transform` or `sink`.
    stage: &'static str,
    index: usize,
    plugin: Arc<str>,
}

impl StageSpans {
    /// Spans for plugin `plugin`, the `index`th (from 1) `stage` of `pipeline`.
    pub fn new(
        tracer: SdkTracer,
        pipeline: &str,
        stage: &'static str,
        index: usize,
        plugin: &str,
    ) -> StageSpans {
        StageSpans {
            tracer,
            pipeline: Arc::from(pipeline),
            stage,
            index,
            plugin: Arc::from(plugin),
        }
    }

    /// One span for one record, child of `parent` (a remote context, or none: a new trace, the
    /// sampler decides); the new span's context.
    fn span(
        &self,
        parent: Option<SpanContext>,
        batch: usize,
        outcome: &Outcome,
        started: SystemTime,
        ended: SystemTime,
    ) -> SpanContext {
        let parent_cx = match parent {
            Some(p) => Context::new().with_remote_span_context(p),
            None => Context::new(),
        };
        let (name, kind) = match self.stage {
            "source" => (format!("poll {}", self.plugin), SpanKind::Consumer),
            "sink" => (format!("write {}", self.plugin), SpanKind::Producer),
            _ => (format!("process {}", self.plugin), SpanKind::Internal),
        };
        let mut attributes = vec![
            KeyValue::new("patchbay.pipeline", self.pipeline.to_string()),
            KeyValue::new("patchbay.stage", self.stage),
            KeyValue::new("patchbay.stage_index", self.index as i64),
            KeyValue::new("patchbay.plugin", self.plugin.to_string()),
            KeyValue::new("messaging.batch.message_count", batch as i64),
        ];
        match outcome {
            Outcome::Done(what) => attributes.push(KeyValue::new("patchbay.outcome", *what)),
            Outcome::Replaced(0) => attributes.push(KeyValue::new("patchbay.outcome", "dropped")),
            Outcome::Replaced(n) => {
                attributes.push(KeyValue::new("patchbay.outcome", "replaced"));
                attributes.push(KeyValue::new("patchbay.replacements", *n as i64));
            }
            Outcome::Failed(_) => attributes.push(KeyValue::new("patchbay.outcome", "failed")),
        }
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent_cx);
        if let Outcome::Failed(why) = outcome {
            span.set_status(Status::error(why.to_string()));
        }
        let context = span.span_context().clone();
        span.end_with_timestamp(ended);
        context
    }

    /// The source's spans: one per polled record of a sampled trace, a new trace unless it
    /// came with a `traceparent`; each such record then carries its span's context. A record
    /// whose trace is not sampled makes no span: one that came with a `traceparent` keeps it
    /// as it came, a new one gets none (so `sample = 0` costs a sampling decision a record).
    pub fn polled(&self, records: &mut [Message], started: SystemTime) {
        let ended = SystemTime::now();
        let batch = records.len();
        for record in records {
            let parent = of(record);
            if parent.as_ref().is_some_and(|p| !p.is_sampled()) {
                continue;
            }
            let context = self.span(parent, batch, &Outcome::Done("polled"), started, ended);
            if context.is_sampled() {
                set(record, &format(&context));
            }
        }
    }

    /// A stage's spans: one per input record whose trace is sampled (`parents`, from [`of`]
    /// before the call), with what became of it; the `traceparent` each one's outputs carry
    /// from now on (`None`: untraced).
    pub fn called(
        &self,
        parents: &[Option<SpanContext>],
        outcomes: &[Outcome],
        started: SystemTime,
    ) -> Vec<Option<String>> {
        let ended = SystemTime::now();
        parents
            .iter()
            .zip(outcomes)
            .map(|(parent, outcome)| {
                let parent = parent.as_ref()?;
                if !parent.is_sampled() {
                    // Passed on as it came; replacements get it back.
                    return matches!(outcome, Outcome::Replaced(1..)).then(|| format(parent));
                }
                let context =
                    self.span(Some(parent.clone()), parents.len(), outcome, started, ended);
                Some(format(&context))
            })
            .collect()
    }
}

/// The trace contexts of a batch's records, when the stage traces.
pub fn parents(spans: Option<&StageSpans>, records: &[Message]) -> Vec<Option<SpanContext>> {
    match spans {
        Some(_) => records.iter().map(of).collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_malformed_ones_are_refused() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse(value).unwrap();
        assert!(context.is_sampled());
        assert_eq!(format(&context), value);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
