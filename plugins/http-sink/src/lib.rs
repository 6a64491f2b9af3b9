//! `http-sink`: sends messages to an HTTP endpoint with POST or PUT, one request per message or
//! one per batch (a JSON array or NDJSON), over `wasi:http` to a destination in `grants.http`.
//!
//! ```toml
//! [plugins.api]
//! path = "target/plugins/http-sink.wasm"
//! config = { url = "http://127.0.0.1:8080/ingest", batch = "ndjson", headers = { authorization = "Bearer t0ken" } }
//! grants = { http = ["127.0.0.1:8080"] }
//! ```
//!
//! - `batch = "none"` (default): one request per message, its payload as the body. Message
//!   headers go along as HTTP headers (`forward_headers`), the message key as `x-message-key`.
//! - `batch = "json"`: one request per batch with a JSON array of the payloads (each must be
//!   JSON, else that message fails as `invalid-data` and the rest go); `batch = "ndjson"`: the
//!   payloads one per line.
//! - The answer decides: 2xx is `ok`; 408, 429 and 5xx are `retryable` (the pipeline's `retry`
//!   policy backs off); any other status is `invalid-data` with the status and the start of the
//!   body; a connection failure or a timeout is `retryable`; a destination outside
//!   `grants.http`, or a server whose TLS certificate the host refuses, is `fatal`. Redirects
//!   are not followed.
//! - `https://` is TLS done by the host: the server verified against the system's roots or
//!   `grants.tls.ca`, and `grants.tls.cert`/`key` presented when the server asks for a client
//!   certificate.

use std::time::Duration;

use patchbay_sdk::http::{HttpError, Method, Request, send};
use patchbay_sdk::json::{Map, Value};
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Sink};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`http://` or `https://` URL; its host must be granted in `grants.http`. For https the host verifies the server against the system roots or `grants.tls.ca` and presents `grants.tls.cert` when asked.",
    )
    .required(),
    Key::choice("method", &["POST", "PUT", "PATCH"], "`POST`, `PUT` or `PATCH`.").default("POST"),
    Key::choice(
        "batch",
        &["none", "json", "ndjson"],
        "`none` (a request per message), `json` (a JSON array per batch) or `ndjson` (a line per message, per batch).",
    )
    .default("none"),
    Key::json(
        "headers",
        "Table of HTTP headers sent with every request, e.g. { authorization = \"Bearer …\" }.",
    )
    .default("{}"),
    Key::bool(
        "forward_headers",
        "Boolean, `batch = \"none\"` only: send each message's headers as HTTP headers, and its key as `x-message-key`.",
    )
    .default("true"),
    Key::text(
        "content_type",
        "Content type of per-message requests without their own `content-type` header.",
    )
    .default("application/octet-stream"),
    Key::duration(
        "timeout",
        "Time allowed to connect and for the answer to start, e.g. \"5s\"; keep it under `limits.call_timeout`.",
    )
    .default("5s")
    .range(1, u64::MAX)
    .alias_ms("timeout_ms"),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Batch {
    None,
    Json,
    Ndjson,
}

struct HttpSink {
    url: String,
    method: Method,
    batch: Batch,
    headers: Vec<(String, Vec<u8>)>,
    forward_headers: bool,
    timeout: Duration,
}

impl HttpSink {
    fn request(&self, body: Vec<u8>, content_type: &str) -> Request {
        let mut request = Request::new(self.method, self.url.clone())
            .body(body)
            .timeout(self.timeout);
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", content_type);
        }
        for (name, value) in &self.headers {
            request = request.header(name.clone(), value.clone());
        }
        request
    }

    /// Send; `Ok` for 2xx, else the error that status or failure stands for.
    fn deliver(&self, request: &Request) -> Result<(), Error> {
        match send(request) {
            Ok(response) if (200..300).contains(&response.status) => Ok(()),
            Ok(response) => {
                let body = String::from_utf8_lossy(&response.body);
                let body: String = body.chars().take(200).collect();
                let text = format!(
                    "{} {} answered {}: {body}",
                    method_name(self.method),
                    self.url,
                    response.status
                );
                Err(match response.status {
                    408 | 429 | 500..=599 => Error::retryable(text),
                    _ => Error::invalid_data(text),
                })
            }
            Err(HttpError::Denied) => Err(Error::fatal(format!(
                "{}: {}; grant it in the pipeline file, e.g. grants = {{ http = [\"{}\"] }}",
                self.url,
                HttpError::Denied,
                authority(&self.url)
            ))),
            Err(HttpError::Certificate) => Err(Error::fatal(format!(
                "{} {}: {}",
                method_name(self.method),
                self.url,
                HttpError::Certificate
            ))),
            Err(HttpError::BadUrl(why)) => {
                Err(Error::fatal(format!("{}: bad URL: {why}", self.url)))
            }
            Err(HttpError::Failed(why)) => Err(Error::retryable(format!(
                "{} {}: {why}",
                method_name(self.method),
                self.url
            ))),
        }
    }
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        _ => "POST",
    }
}

/// `host:port` of a URL, for the grant hint.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

impl Sink for HttpSink {
    fn metadata() -> Metadata {
        Metadata::new(
            "http-sink",
            env!("CARGO_PKG_VERSION"),
            "Sends messages to an HTTP endpoint (POST or PUT), one request per message or per batch.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = c.text("url")?.to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(c.invalid("url", "an http:// or https:// URL"));
        }
        let method = match c.choice("method")? {
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            _ => Method::Post,
        };
        let batch = match c.choice("batch")? {
            "json" => Batch::Json,
            "ndjson" => Batch::Ndjson,
            _ => Batch::None,
        };
        let headers = c
            .json::<Map<String, Value>>("headers")?
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| match value {
                Value::String(v) => Ok((name, v.into_bytes())),
                other => Err(c.invalid(
                    "headers",
                    &format!("a table of strings (header `{name}` is {other})"),
                )),
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let forward_headers = c.bool("forward_headers")?;
        let content_type = c.text("content_type")?.to_owned();
        let mut headers = headers;
        if batch == Batch::None
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("content-type".into(), content_type.into_bytes()));
        }
        let timeout = c.duration("timeout")?;
        Ok(HttpSink {
            url,
            method,
            batch,
            headers,
            forward_headers,
            timeout,
        })
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        let mut request = self.request(message.payload.clone(), "application/octet-stream");
        if self.forward_headers {
            for h in &message.headers {
                if h.name.eq_ignore_ascii_case("content-type") {
                    request
                        .headers
                        .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
                }
                request = request.header(h.name.clone(), h.value.clone().into_bytes());
            }
            if let Some(key) = &message.key {
                request = request.header("x-message-key", key.clone());
            }
        }
        self.deliver(&request)
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        if batch.is_empty() {
            return Vec::new();
        }
        if self.batch == Batch::None {
            return batch.iter().map(|m| self.write(m)).collect();
        }
        // Messages that cannot go into the body fail alone; the rest go in one request.
        let mut results: Vec<Option<Result<(), Error>>> = vec![None; batch.len()];
        let mut body = Vec::new();
        let mut items = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            match self.batch {
                Batch::Json => match serde_json_value(&m.payload) {
                    Ok(v) => items.push(v),
                    Err(e) => results[i] = Some(Err(e)),
                },
                _ => {
                    if m.payload.contains(&b'\n') {
                        results[i] = Some(Err(Error::invalid_data(
                            "payload holds a newline: it cannot be one NDJSON line",
                        )));
                    } else {
                        body.extend_from_slice(&m.payload);
                        body.push(b'\n');
                    }
                }
            }
        }
        let content_type = if self.batch == Batch::Json {
            body = Value::Array(items).to_string().into_bytes();
            "application/json"
        } else {
            "application/x-ndjson"
        };
        let sent = if results.iter().all(Option::is_some) {
            Ok(())
        } else {
            self.deliver(&self.request(body, content_type))
        };
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| sent.clone()))
            .collect()
    }
}

fn serde_json_value(payload: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(payload)
        .map_err(|e| Error::invalid_data(format!("payload is not JSON: {e}")))
}

patchbay_sdk::export_sink!(HttpSink);
