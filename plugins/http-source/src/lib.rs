//! `http-source`: webhook ingress. Listens on a granted address, takes records POSTed (or PUT)
//! to it, and answers each request only once the pipeline has delivered every record in it:
//! `200` means delivered (or stored in the dead-letter channel), so a client that got no answer
//! can send again. At-least-once, end to end, in the request/reply style of an API gateway.
//!
//! ```toml
//! [plugins.webhook]
//! path = "target/plugins/http-source.wasm"
//! config = { listen = "127.0.0.1:8080", path = "/events", split = "lines", token = "s3cret" }
//! grants = { listen = ["127.0.0.1:8080"] }
//! ```
//!
//! - `split = "none"` (default): the body is one record; `"lines"`: each non-empty line is one
//!   (NDJSON); `"json-array"`: each element of a JSON array is one (serialized compactly).
//! - Answers: `200 {"accepted":N}` after delivery; `400` a body `split` cannot cut; `401` a
//!   missing or wrong bearer token; `404` another path; `405` another method; `411` a body
//!   without `Content-Length`; `413` a body over `max_body`; `431` headers over 16 KiB; `503`
//!   with `Retry-After` when more than `max_pending` records or `max_pending_bytes` of bodies
//!   wait for delivery (back-pressure; a body is admitted before it is read, so the plugin
//!   stays within its memory limit) or more than `max_connections` clients are connected.
//! - Each record gets the request headers named in `forward_headers` (and always the W3C
//!   trace context, `traceparent` and `tracestate`) as message headers, and
//!   with `key_header` the value of that header as its key.
//! - `respond = "pipeline"`: request/reply (the API-gateway pattern). The response is what the
//!   pipeline sends to its `reply` destination for the request (status from header
//!   `http-status`, `content-type` from the header of that name), `204` when nothing reaches
//!   it, `422` for a record a stage refused, `502` when the pipeline failed it, `504` after the
//!   pipeline's `reply_timeout` (`respond.rs`).
//! - HTTP/1.1 with keep-alive; one request at a time per connection (a pipelined request is
//!   read once the one before it is answered). Idle connections close after 60 s.
//!
//! The plugin is one single-threaded guest: each `poll` accepts new connections, reads what
//! has arrived on every one, and hands the complete requests' records to the pipeline; each
//! `ack` answers the requests whose records are all delivered.
//!
//! The listen queue is 128 connections deep (what Rust's `std::net` asks of wasi:sockets). A
//! burst of more new connections than that arriving faster than the plugin accepts them (1,000
//! clients connecting at the same instant on a busy machine) sees some connections reset
//! before any request is read: nothing of theirs entered the pipeline, and a caller that sends
//! again is served. Keep-alive clients are not affected.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use patchbay_sdk::{
    Answer, Config, Error, Header, Key, Message, Metadata, PollResult, REQUEST, Replies, Source,
    log, net,
};

mod request;
mod respond;
use request::{Parsed, Reply, has_head};
use respond::Gathering;

const KEYS: &[Key] = &[
    Key::text(
        "listen",
        "`HOST:PORT` to listen on; it must be granted in `grants.listen`.",
    )
    .default("127.0.0.1:8080"),
    Key::text(
        "path",
        "The path records are posted to (and paths below it); other paths get 404. `/` takes every path.",
    )
    .default("/"),
    Key::text(
        "token",
        "A bearer token every request must carry (`Authorization: Bearer TOKEN`); none when absent.",
    ),
    Key::size(
        "max_body",
        "Largest body, e.g. \"1MiB\" (a plain integer is a number of bytes); a larger one gets 413.",
    )
    .default("1MiB")
    .range(1, 64 * 1024 * 1024),
    Key::choice(
        "split",
        &["none", "lines", "json-array"],
        "`none`: the body is one record; `lines`: one record per non-empty line (NDJSON); `json-array`: one per array element.",
    )
    .default("none"),
    Key::choice(
        "respond",
        &["delivery", "pipeline"],
        "`delivery`: answer `200 {\"accepted\":N}` once the records are delivered; `pipeline`: answer with what the pipeline sends to its `reply` destination (request/reply).",
    )
    .default("delivery"),
    Key::json(
        "forward_headers",
        "Array of request header names copied into each record's headers.",
    )
    .default("[\"content-type\"]"),
    Key::text(
        "key_header",
        "A request header whose value becomes each record's key.",
    ),
    Key::uint(
        "max_pending",
        "Most records waiting for delivery; past it, requests get 503 with Retry-After (back-pressure).",
    )
    .default("10000")
    .range(1, u64::MAX),
    Key::size(
        "max_pending_bytes",
        "Most body bytes read or waiting for delivery, e.g. \"16MiB\"; a request whose body would go past it gets 503 with Retry-After before its body is read (keeps the plugin within its memory limit).",
    )
    .default("16MiB")
    .range(1, 1024 * 1024 * 1024),
    Key::uint(
        "max_connections",
        "Most open client connections; one more gets 503 and is closed.",
    )
    .default("1024")
    .range(1, u64::MAX),
    Key::duration(
        "wait",
        "How long an idle poll waits for a first request, e.g. \"50ms\" (at most 900ms).",
    )
    .default("50ms")
    .range(0, 900)
    .note("a poll must end within its call deadline")
    .alias_ms("wait_ms"),
];

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// A keep-alive connection with nothing to do for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two looks at the sockets while a poll waits for a first request.
const TICK: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    None,
    Lines,
    JsonArray,
}

struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    input: Vec<u8>,
    /// Bytes of answers not yet written.
    output: Vec<u8>,
    /// A request of this connection waits for delivery: read nothing more until it is answered.
    waiting: bool,
    /// Close once `output` is written.
    close: bool,
    /// The peer closed its side.
    eof: bool,
    /// Body bytes admitted under `max_pending_bytes` for the request being read.
    reserved: usize,
    /// Body bytes of a refused request still to read and throw away (so that the client,
    /// still sending, reads its answer instead of a reset).
    skip: usize,
    /// Close once `skip` is done (the client asked for `connection: close`).
    close_after_skip: bool,
    last_active: Instant,
}

/// A request whose records are in the pipeline.
struct Pending {
    conn: u64,
    records: usize,
    /// Records of it not yet handed to the pipeline.
    unpolled: usize,
    /// Their payload bytes.
    bytes: usize,
    keep_alive: bool,
}

struct HttpSource {
    listener: TcpListener,
    listen: String,
    path: String,
    token: Option<String>,
    max_body: usize,
    split: Split,
    forward_headers: Vec<String>,
    key_header: Option<String>,
    max_pending: usize,
    max_pending_bytes: usize,
    max_connections: usize,
    wait: Duration,
    /// `respond = "pipeline"`: requests are answered through `reply`, not at `ack`.
    respond_pipeline: bool,
    /// Answers gathered so far, by request (`respond = "pipeline"`).
    gathering: HashMap<u64, Gathering>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// Records not yet polled, with the request each belongs to.
    queue: VecDeque<(u64, Message)>,
    requests: HashMap<u64, Pending>,
    next_request: u64,
    /// Requests whose records are all polled, with the checkpoint of the last one: answered
    /// when that checkpoint is acknowledged. In checkpoint order.
    sealed: VecDeque<(u64, u64)>,
    /// Records in `queue` or polled and not yet acknowledged.
    in_flight: usize,
    /// Their payload bytes.
    pending_bytes: usize,
    /// Body bytes admitted for requests still being read (`Conn::reserved`, summed).
    reserved: usize,
    checkpoint: u64,
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl HttpSource {
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let mut conn = Conn {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        waiting: false,
                        close: false,
                        eof: false,
                        reserved: 0,
                        skip: 0,
                        close_after_skip: false,
                        last_active: Instant::now(),
                    };
                    if self.conns.len() >= self.max_connections {
                        let mut reply = Reply::error(
                            503,
                            format!(
                                "more than {} connections (max_connections)",
                                self.max_connections
                            ),
                        );
                        reply.extra = "retry-after: 1\r\n";
                        reply.write(&mut conn.output, false);
                        conn.close = true;
                    }
                    self.next_conn += 1;
                    self.conns.insert(self.next_conn, conn);
                }
                Err(e) if would_block(&e) => return,
                Err(e) => {
                    log::warn(&format!("http {}: accept failed: {e}", self.listen));
                    return;
                }
            }
        }
    }

    /// Read every connection, turn whole requests into queued records or answers, write what
    /// is due, and close what is finished. Returns whether anything arrived.
    fn pump(&mut self) -> bool {
        self.accept();
        let mut arrived = false;
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(mut conn) = self.conns.remove(&id) else {
                continue;
            };
            if !conn.waiting && !conn.close && !conn.eof {
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    match conn.stream.read(&mut chunk) {
                        Ok(0) => {
                            conn.eof = true;
                            break;
                        }
                        Ok(n) => {
                            let mut data = &chunk[..n];
                            if conn.skip > 0 {
                                let k = conn.skip.min(data.len());
                                conn.skip -= k;
                                data = &data[k..];
                                if conn.skip == 0 && conn.close_after_skip {
                                    conn.close = true;
                                }
                            }
                            conn.input.extend_from_slice(data);
                            conn.last_active = Instant::now();
                            if conn.input.len() > MAX_HEAD + self.max_body {
                                break;
                            }
                            // A whole head and a body not yet admitted: parse before reading on.
                            if conn.reserved == 0 && has_head(&conn.input) {
                                break;
                            }
                        }
                        Err(e) if would_block(&e) => break,
                        Err(_) => {
                            conn.eof = true;
                            conn.close = true;
                            break;
                        }
                    }
                }
                while !conn.waiting && !conn.close && conn.skip == 0 && !conn.input.is_empty() {
                    match self.parse(&mut conn.input, &mut conn.reserved) {
                        Parsed::Incomplete => break,
                        Parsed::Answer { reply, close } => {
                            reply.write(&mut conn.output, !close);
                            conn.close = close;
                        }
                        Parsed::Skip {
                            reply,
                            keep_alive,
                            body,
                        } => {
                            reply.write(&mut conn.output, keep_alive);
                            conn.skip = body;
                            conn.close_after_skip = !keep_alive;
                            conn.close = body == 0 && !keep_alive;
                        }
                        Parsed::Records {
                            records,
                            keep_alive,
                        } if records.is_empty() => {
                            Reply {
                                status: 200,
                                body: r#"{"accepted":0}"#.into(),
                                extra: "",
                            }
                            .write(&mut conn.output, keep_alive);
                            conn.close = !keep_alive;
                        }
                        Parsed::Records {
                            records,
                            keep_alive,
                        } => {
                            arrived = true;
                            let bytes: usize = records.iter().map(|m| m.payload.len()).sum();
                            self.pending_bytes += bytes;
                            self.next_request += 1;
                            let request = self.next_request;
                            self.requests.insert(
                                request,
                                Pending {
                                    conn: id,
                                    records: records.len(),
                                    unpolled: records.len(),
                                    bytes,
                                    keep_alive,
                                },
                            );
                            self.in_flight += records.len();
                            let token = request.to_string();
                            let respond_pipeline = self.respond_pipeline;
                            self.queue.extend(records.into_iter().map(|mut m| {
                                if respond_pipeline {
                                    m.headers.push(Header {
                                        name: REQUEST.into(),
                                        value: token.clone(),
                                    });
                                }
                                (request, m)
                            }));
                            conn.waiting = true;
                        }
                    }
                }
            }
            // Drop the connection when the peer is gone, it is done, or idle too long.
            let gone = flush(&mut conn).is_err();
            let idle = !conn.waiting && conn.last_active.elapsed() > IDLE_TIMEOUT;
            let done = conn.output.is_empty() && (conn.close || (conn.eof && !conn.waiting));
            if gone || done || idle {
                self.reserved -= conn.reserved;
                continue;
            }
            self.conns.insert(id, conn);
        }
        arrived
    }

    /// Answer a request whose records are delivered.
    fn answer(&mut self, request: u64) {
        let Some(pending) = self.requests.get(&request) else {
            return;
        };
        let body = format!(r#"{{"accepted":{}}}"#, pending.records);
        self.respond(request, 200, "application/json", body.as_bytes());
    }

    /// Write the response to `request` and forget it.
    fn respond(&mut self, request: u64, status: u16, content_type: &str, body: &[u8]) {
        let Some(pending) = self.requests.remove(&request) else {
            return;
        };
        self.in_flight = self.in_flight.saturating_sub(pending.records);
        self.pending_bytes = self.pending_bytes.saturating_sub(pending.bytes);
        let Some(conn) = self.conns.get_mut(&pending.conn) else {
            return; // the client hung up; the records are delivered all the same
        };
        request::respond(
            &mut conn.output,
            status,
            content_type,
            body,
            "",
            pending.keep_alive,
        );
        conn.waiting = false;
        conn.close = !pending.keep_alive;
        conn.last_active = Instant::now();
        if flush(conn).is_err() {
            self.conns.remove(&pending.conn);
        }
    }
}

/// Write as much of the connection's pending output as the socket takes now.
fn flush(conn: &mut Conn) -> io::Result<()> {
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Source for HttpSource {
    fn metadata() -> Metadata {
        Metadata::new(
            "http-source",
            env!("CARGO_PKG_VERSION"),
            "Webhook ingress: records POSTed to a granted address, answered 200 after delivery.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let listen = c.text("listen")?.to_owned();
        let (listen, _, _) = net::parse_url(&listen, "http", 8080)
            .map_err(|e| c.invalid("listen", &format!("HOST:PORT ({e})")))?;
        let path = c.text("path")?.trim_end_matches('/');
        let path = if path.is_empty() { "/" } else { path }.to_owned();
        if !path.starts_with('/') {
            return Err(c.invalid("path", "a path starting with `/`"));
        }
        let token = c.text_opt("token")?.map(str::to_owned);
        let usize_of =
            |key: &str, n: u64| usize::try_from(n).map_err(|_| c.invalid(key, "a smaller number"));
        let max_body = usize_of("max_body", c.size("max_body")?)?;
        let split = match c.choice("split")? {
            "lines" => Split::Lines,
            "json-array" => Split::JsonArray,
            _ => Split::None,
        };
        let forward_headers: Vec<String> = c.json("forward_headers")?.unwrap_or_default();
        let mut forward_headers: Vec<String> = forward_headers
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        // W3C trace context always goes on with the record: a trace the caller started
        // continues through the pipeline (`[telemetry]`).
        for trace_header in ["traceparent", "tracestate"] {
            if !forward_headers.iter().any(|h| h == trace_header) {
                forward_headers.push(trace_header.to_owned());
            }
        }
        let key_header = c.text_opt("key_header")?.map(str::to_owned);
        let max_pending = usize_of("max_pending", c.uint("max_pending")?)?;
        let max_pending_bytes = usize_of("max_pending_bytes", c.size("max_pending_bytes")?)?;
        let max_connections = usize_of("max_connections", c.uint("max_connections")?)?;
        let wait = c.duration("wait")?;
        let respond_pipeline = c.choice("respond")? == "pipeline";
        let listener = TcpListener::bind(&listen).map_err(|e| {
            if net::is_sandbox_denial(&e) {
                Error::fatal(format!(
                    "http {listen}: the sandbox refused to listen ({e}); grant it in the \
                     pipeline file: grants = {{ listen = [\"{listen}\"] }}"
                ))
            } else {
                Error::fatal(format!("http {listen}: cannot listen: {e}"))
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::fatal(format!("http {listen}: {e}")))?;
        log::info(&format!("http {listen}: listening for records on {path}"));
        Ok(HttpSource {
            listener,
            listen,
            path,
            token,
            max_body,
            split,
            forward_headers,
            key_header,
            max_pending,
            max_pending_bytes,
            max_connections,
            wait,
            respond_pipeline,
            gathering: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 0,
            queue: VecDeque::new(),
            requests: HashMap::new(),
            next_request: 0,
            sealed: VecDeque::new(),
            in_flight: 0,
            pending_bytes: 0,
            reserved: 0,
            checkpoint: 0,
        })
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        self.pump();
        // Nothing to hand out and nothing waiting for an answer: wait a little for a request.
        if self.queue.is_empty() && self.requests.is_empty() {
            let until = Instant::now() + self.wait;
            while Instant::now() < until && !self.pump() {
                std::thread::sleep(TICK);
            }
        }
        let take = self.queue.len().min(max as usize);
        if take == 0 {
            return Ok(PollResult::batch(Vec::new(), self.checkpoint));
        }
        self.checkpoint += 1;
        let mut batch = Vec::with_capacity(take);
        for (request, message) in self.queue.drain(..take) {
            batch.push(message);
            if let Some(p) = self.requests.get_mut(&request) {
                p.unpolled -= 1;
                if p.unpolled == 0 && !self.respond_pipeline {
                    self.sealed.push_back((self.checkpoint, request));
                }
            }
        }
        Ok(PollResult::batch(batch, self.checkpoint))
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        while let Some(&(cp, request)) = self.sealed.front() {
            if cp > checkpoint {
                break;
            }
            self.sealed.pop_front();
            self.answer(request);
        }
        Ok(())
    }
}

impl Replies for HttpSource {
    fn reply(&mut self, token: String, answer: Answer) -> Result<(), Error> {
        let Some(request) = token.parse::<u64>().ok() else {
            return Ok(());
        };
        let Some(records) = self.requests.get(&request).map(|p| p.records) else {
            return Ok(()); // answered already, or the client is gone
        };
        let gathering = self.gathering.entry(request).or_default();
        gathering.add(answer);
        if gathering.got < records {
            return Ok(());
        }
        if let Some(done) = self.gathering.remove(&request) {
            let response = done.response();
            self.respond(
                request,
                response.status,
                &response.content_type,
                &response.body,
            );
        }
        Ok(())
    }
}

patchbay_sdk::export_source!(HttpSource, replies);
