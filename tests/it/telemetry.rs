//! `[telemetry]`: spans over OTLP/HTTP to a receiver run by the test on 127.0.0.1 (axum, the
//! bodies decoded with opentelemetry-proto). One record's spans through source → transform →
//! sink share one trace id, chained parent to child, and an incoming HTTP request's
//! `traceparent` is kept as the root.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::admin::free_port;
use crate::{Running, Scratch, wait_until};

/// An OTLP/HTTP trace receiver: every span it was sent.
fn receiver(rt: &tokio::runtime::Runtime) -> (u16, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        kept.lock().unwrap().extend(scope.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move { axum::serve(listener, app).await });
    (port, spans)
}

fn attribute(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn post(port: u16, traceparent: Option<&str>, body: &str) {
    let mut request = format!(
        "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(tp) = traceparent {
        request.push_str(&format!("traceparent: {tp}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn spans_through_source_transform_and_sink_share_the_trace_the_caller_started() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (otlp, spans) = receiver(&rt);
    let s = Scratch::new();
    s.mkdir("out");
    let port = free_port();
    s.write(
        "p.toml",
        &format!(
            r#"
[telemetry]
otlp = "http://127.0.0.1:{otlp}"
service = "orders-test"

[plugins.api]
path = "{{plugin:http-source}}"
grants = {{ listen = ["127.0.0.1:{port}"] }}
config = {{ listen = "127.0.0.1:{port}", path = "/orders" }}

[plugins.stamp]
path = "{{plugin:map}}"
config = {{ set = {{ stamped = "true" }} }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "orders"
source = "api"
transforms = ["stamp"]
sinks = ["out"]
"#
        )
        .replace("{plugin:http-source}", &crate::plugin("http-source"))
        .replace("{plugin:map}", &crate::plugin("map"))
        .replace("{plugin:file-sink}", &crate::plugin("file-sink")),
    );
    let running = Running::start(s.path(), &["run", "p.toml"]);
    wait_until("the HTTP source listens", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    post(
        port,
        Some(&format!("00-{caller_trace}-{caller_span}-01")),
        r#"{"id":1}"#,
    );
    post(port, None, r#"{"id":2}"#);
    wait_until("six spans arrive", Duration::from_secs(60), || {
        spans.lock().unwrap().len() >= 6
    });
    let (code, stderr) = running.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 6, "{spans:#?}");

    // The caller's trace: poll (child of the caller's span) → process → write.
    let chain = |trace: &str| -> Vec<&Span> {
        let mut in_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
        in_trace.sort_by_key(|s| s.start_time_unix_nano);
        in_trace
    };
    let first = chain(caller_trace);
    let names: Vec<&str> = first.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["poll api", "process stamp", "write out"]);
    assert_eq!(hex(&first[0].parent_span_id), caller_span);
    assert_eq!(first[1].parent_span_id, first[0].span_id);
    assert_eq!(first[2].parent_span_id, first[1].span_id);
    let stages: Vec<String> = first
        .iter()
        .map(|s| attribute(s, "patchbay.stage"))
        .collect();
    assert_eq!(stages, ["source", "transform", "sink"]);
    let outcomes: Vec<String> = first
        .iter()
        .map(|s| attribute(s, "patchbay.outcome"))
        .collect();
    // map hands back a new document: one replacement.
    assert_eq!(outcomes, ["polled", "replaced", "written"]);
    assert_eq!(attribute(first[1], "patchbay.replacements"), "1");
    for span in &first {
        assert_eq!(attribute(span, "patchbay.pipeline"), "orders");
        assert_eq!(attribute(span, "messaging.batch.message_count"), "1");
    }

    // The other record started a trace of its own at the source.
    let other: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) != caller_trace)
        .collect();
    let trace = hex(&other[0].trace_id);
    let second = chain(&trace);
    assert_eq!(second.len(), 3);
    assert!(
        second[0].parent_span_id.is_empty(),
        "a new trace has a root"
    );
    assert_eq!(second[2].parent_span_id, second[1].span_id);

    // Both records were delivered.
    let written = s.read("out/out.jsonl");
    assert_eq!(written.lines().count(), 2, "{written}");
}
