//! `nats-sink`: publishes messages to NATS over a granted TCP address: core NATS (`ok` once
//! the server has taken the batch) or JetStream (`ok` once the stream acknowledged each
//! message).
//!
//! ```toml
//! [plugins.events]
//! path = "target/plugins/nats-sink.wasm"
//! config = { url = "nats://127.0.0.1:4222", subject = "events.in", mode = "jetstream", msg_id = "key" }
//! grants = { tcp = ["127.0.0.1:4222"] }
//! ```
//!
//! - `url` may list several servers of one cluster (`nats://a:4222,nats://b:4222`): a server
//!   that is down, or whose connection breaks, is left for the next in the list at once; the
//!   back-off (100 ms doubling to 5 s) starts only once every server failed. Grant each one.
//! - The subject is `subject`, or with `subject_from_key = true` the message key (as text)
//!   when it has one. Message headers become NATS headers (`HPUB`); `msg_id` adds a
//!   `Nats-Msg-Id` header (from the key or a header) that JetStream uses to drop duplicates
//!   within the stream's duplicate window, e.g. of a batch sent again after a timeout.
//! - `mode = "core"`: the batch goes out in one write followed by `PING`; the `PONG` means the
//!   server has processed every message before it, and only then is each `ok`. Core NATS
//!   delivers to whoever is subscribed at that moment.
//! - `mode = "jetstream"`: each message is published with a reply subject, and is `ok` when
//!   its PubAck (`{"stream":…,"seq":…}`) came back. An `{"error":…}` answer is `invalid-data`
//!   (`retryable` for server-side 5xx), no answer within `timeout` is `retryable`, and a
//!   subject that no stream captures is `fatal` (once JetStream confirms it: a server that is
//!   shutting down or starting answers "no responders" too, which is `retryable`).
//! - A lost connection is `retryable` for what it took with it; the next call reconnects
//!   with a back-off that doubles from 100 ms to 5 s (`patchbay_sdk::net::Reconnect`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use patchbay_sdk::net::{self, Reconnect};
use patchbay_sdk::tls;
use patchbay_sdk::{Config, Error, ErrorKind, Key, Message, Metadata, Sink, log};

use patchbay_proto_nats::{self as nats, Auth, Conn, Msg};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`nats://[user:password@|token@]host[:port]` (`tls://…` for TLS, started after the server's INFO and done by the host: the server verified against the system roots or `grants.tls.ca`), or several servers of one cluster separated by commas (a server that is down or goes away is left for the next); each address must be granted in `grants.tcp`.",
    )
    .default("nats://127.0.0.1:4222"),
    Key::text(
        "subject",
        "The subject to publish to (no wildcards); required unless `subject_from_key = true`, where it is used for messages without a key.",
    ),
    Key::bool(
        "subject_from_key",
        "Boolean: publish each message to its key (as text) when it has one.",
    )
    .default("false"),
    Key::choice(
        "mode",
        &["core", "jetstream"],
        "`core` (ok once the server has the batch: PING/PONG after it) or `jetstream` (ok once a stream acknowledged each message).",
    )
    .default("core"),
    Key::text(
        "msg_id",
        "A `Nats-Msg-Id` header for JetStream's duplicate detection: `key` (the message key), `header:NAME` (the value of header NAME), or empty for none.",
    ),
    Key::text(
        "create_stream",
        "JetStream: the name of a stream to create for `subject` (file storage) when no stream of that name exists; empty: the stream must exist.",
    ),
    Key::duration(
        "timeout",
        "How long to wait for the server's answers to a batch, e.g. \"500ms\" (1ms to 899ms, within the call deadline).",
    )
    .default("500ms")
    .range(1, 899)
    .note("within the call deadline")
    .alias_ms("timeout_ms"),
];

/// How long connecting (INFO, CONNECT, PONG) may take.
const SETUP: Duration = Duration::from_millis(800);
/// A connection silent for this long is checked with a PING before it is used.
const IDLE_CHECK: Duration = Duration::from_secs(30);
const SID_INBOX: u64 = 1;

enum MsgId {
    None,
    Key,
    Header(String),
}

struct NatsSink {
    link: Reconnect,
    auth: Auth,
    /// `tls://`: TLS after the server's INFO, done by the host (`grants.tls`).
    tls: bool,
    subject: Option<String>,
    subject_from_key: bool,
    jetstream: bool,
    msg_id: MsgId,
    timeout: Duration,
    /// JetStream: a stream to create for `subject` when it does not exist.
    create_stream: Option<String>,
    conn: Option<Conn>,
}

impl NatsSink {
    fn connect(&mut self) -> Result<(), Error> {
        if let Some(conn) = self.conn.as_mut()
            && conn.last_read.elapsed() >= IDLE_CHECK
        {
            // The server may have closed a connection idle this long (stale, restarted).
            let alive = conn.flush(Instant::now() + self.timeout / 2);
            if !matches!(alive, Ok(true)) {
                log::info(&format!(
                    "nats {}: the idle connection does not answer; connecting again",
                    self.link.addr()
                ));
                self.conn = None;
            }
        }
        if self.conn.is_some() {
            return Ok(());
        }
        self.link.ready()?;
        let deadline = Instant::now() + SETUP;
        let mut conn = tls::connect(self.link.addr(), tls::Start::upgradable_if(self.tls), SETUP)
            .and_then(|s| {
                Conn::over(
                    s,
                    self.link.addr(),
                    self.tls,
                    &self.auth,
                    "patchbay nats-sink",
                    SETUP,
                )
            })
            .map_err(|e| self.link.failed(&e))?;
        if self.jetstream {
            let subscribed = conn
                .inbox_sub(SID_INBOX)
                .and_then(|()| conn.flush(deadline));
            match subscribed {
                Ok(true) => {}
                Ok(false) => {
                    return Err(self.link.failed(&std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer to SUB",
                    )));
                }
                Err(e) => return Err(self.link.failed(&e)),
            }
            if let Some(stream) = self.create_stream.clone() {
                self.ensure_stream(&mut conn, &stream, deadline)?;
            }
        }
        self.link.connected();
        log::info(&format!(
            "nats {}: connected to {} {} ({}, max_payload {} bytes)",
            self.link.addr(),
            if conn.info.server_name.is_empty() {
                "nats-server"
            } else {
                &conn.info.server_name
            },
            conn.info.version,
            if self.jetstream {
                "JetStream publishing"
            } else {
                "core publishing"
            },
            conn.info.max_payload
        ));
        self.conn = Some(conn);
        Ok(())
    }

    /// Create `stream` capturing the sink's subject, unless it exists.
    fn ensure_stream(
        &mut self,
        conn: &mut Conn,
        stream: &str,
        deadline: Instant,
    ) -> Result<(), Error> {
        let addr = self.link.addr().to_owned();
        let info = conn
            .request(&format!("$JS.API.STREAM.INFO.{stream}"), b"", deadline)
            .map_err(|e| self.link.failed(&e))?
            .ok_or_else(|| {
                Error::retryable(format!(
                    "nats {addr}: no answer to $JS.API.STREAM.INFO.{stream}"
                ))
            })?;
        match nats::api_answer(&info) {
            Ok(_) => return Ok(()),
            Err((404, _, _)) => {}
            Err((code, err_code, text)) => {
                return Err(Error::fatal(format!(
                    "nats {addr}: cannot look up stream `{stream}`: {text} (code {code}, err_code {err_code})"
                )));
            }
        }
        let subjects = self.subject.iter().collect::<Vec<_>>();
        let request =
            serde_json::json!({ "name": stream, "subjects": subjects, "storage": "file" });
        let created = conn
            .request(
                &format!("$JS.API.STREAM.CREATE.{stream}"),
                request.to_string().as_bytes(),
                deadline,
            )
            .map_err(|e| self.link.failed(&e))?
            .ok_or_else(|| {
                Error::retryable(format!(
                    "nats {addr}: no answer to $JS.API.STREAM.CREATE.{stream}"
                ))
            })?;
        match nats::api_answer(&created) {
            Ok(_) => {
                log::info(&format!(
                    "nats {addr}: created stream `{stream}` for subjects {subjects:?}"
                ));
                Ok(())
            }
            Err((code, err_code, text)) => Err(Error::fatal(format!(
                "nats {addr}: cannot create stream `{stream}` (create_stream): {text} (code {code}, err_code {err_code})"
            ))),
        }
    }

    fn lost(&mut self, e: &std::io::Error) -> Error {
        self.conn = None;
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return Error::fatal(format!("nats {}: {e}", self.link.addr()));
        }
        self.link.lost(e)
    }

    /// The subject of `m`, or why it has none.
    fn subject_of(&self, m: &Message) -> Result<String, Error> {
        if self.subject_from_key
            && let Some(key) = m.key.as_deref().filter(|k| !k.is_empty())
        {
            let subject = std::str::from_utf8(key).map_err(|_| {
                Error::invalid_data("the message key (the subject) is not UTF-8 text")
            })?;
            nats::check_subject(subject, false).map_err(|e| {
                Error::invalid_data(format!(
                    "the message key is not a subject to publish to: {e}"
                ))
            })?;
            return Ok(subject.to_owned());
        }
        self.subject.clone().ok_or_else(|| {
            Error::invalid_data("the message has no key and no `subject` is configured")
        })
    }

    /// Append `m` to `out` (with `reply`), or say why it cannot go.
    fn encode(
        &self,
        m: &Message,
        reply: Option<&str>,
        max_payload: usize,
        out: &mut Vec<u8>,
    ) -> Result<String, Error> {
        let subject = self.subject_of(m)?;
        let id = match &self.msg_id {
            MsgId::None => None,
            MsgId::Key => m
                .key
                .as_deref()
                .filter(|k| !k.is_empty())
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            MsgId::Header(name) => m.header(name).map(str::to_owned),
        };
        let mut headers: Vec<(&str, &str)> = m
            .headers
            .iter()
            .filter(|h| id.is_none() || !h.name.eq_ignore_ascii_case("Nats-Msg-Id"))
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        if let Some(id) = &id {
            headers.push(("Nats-Msg-Id", id.as_str()));
        }
        for (name, value) in &headers {
            nats::check_header(name, value).map_err(Error::invalid_data)?;
        }
        let block = nats::header_block(headers);
        let size = block.len() + m.payload.len();
        if size > max_payload {
            return Err(Error::invalid_data(format!(
                "the message is {size} bytes (headers and payload), over the server's \
                 max_payload of {max_payload}"
            )));
        }
        nats::publish(out, &subject, reply, &block, &m.payload);
        Ok(subject)
    }

    /// Whether JetStream answers that no stream captures `subject` (`$JS.API.STREAM.NAMES`);
    /// `false` when it does not answer at all.
    fn no_stream_captures(&self, conn: &mut Conn, subject: &str) -> bool {
        let query = serde_json::json!({ "subject": subject }).to_string();
        let deadline = Instant::now() + self.timeout;
        match conn.request("$JS.API.STREAM.NAMES", query.as_bytes(), deadline) {
            Ok(Some(msg)) => nats::api_answer(&msg).is_ok_and(|v| {
                v.get("streams")
                    .is_none_or(|s| s.as_array().is_none_or(Vec::is_empty))
            }),
            _ => false,
        }
    }

    /// The answer to one JetStream publish.
    fn puback(&self, msg: &Msg, subject: &str, jetstream_enabled: bool) -> Result<(), Error> {
        let addr = self.link.addr();
        if msg.status == Some(503) {
            let hint = if jetstream_enabled {
                ""
            } else {
                " (JetStream is not enabled on this server: start nats-server with `-js`)"
            };
            return Err(Error::fatal(format!(
                "nats {addr}: no JetStream stream captures subject `{subject}`{hint}; create one, \
                 e.g. by publishing {{\"name\":\"NAME\",\"subjects\":[\"{subject}\"]}} to \
                 `$JS.API.STREAM.CREATE.NAME` (nats CLI: `nats stream add NAME --subjects \
                 '{subject}'`), add the subject to an existing stream, or use mode = \"core\""
            )));
        }
        match nats::api_answer(msg) {
            Ok(v) if v.get("stream").is_some() => Ok(()),
            Ok(v) => Err(Error::retryable(format!(
                "nats {addr}: an unexpected answer to a JetStream publish to `{subject}`: {v}"
            ))),
            Err((code, err_code, text)) if code >= 500 || code == 0 => {
                Err(Error::retryable(format!(
                    "nats {addr}: JetStream did not store the message for `{subject}`: {text} (code {code}, err_code {err_code})"
                )))
            }
            Err((code, err_code, text)) => Err(Error::invalid_data(format!(
                "nats {addr}: JetStream refused the message for `{subject}`: {text} (code {code}, err_code {err_code})"
            ))),
        }
    }
}

/// A fatal error from connecting at `init`, pointed at the `url` key when it names no key.
fn at_url(mut e: Error, url: &str) -> Error {
    if e.kind == ErrorKind::Fatal && !e.message.contains("config key") {
        e.message
            .push_str(&format!(" (config key `url` is `{url}`)"));
    }
    e
}

impl Sink for NatsSink {
    fn metadata() -> Metadata {
        Metadata::new(
            "nats-sink",
            env!("CARGO_PKG_VERSION"),
            "Publishes messages to NATS: core (ok after a PING/PONG round trip) or JetStream (ok after each PubAck).",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = c.text("url")?;
        let (tls, plain) = net::tls_url(url, "nats", "tls");
        let servers = net::parse_urls(&plain, "nats", 4222)
            .and_then(|s| s.checked(nats::check_host))
            .map_err(|e| c.invalid("url", &format!("nats://host:port[,…] or tls://… ({e})")))?;
        let subject = c.text_opt("subject")?.map(str::to_owned);
        if let Some(s) = &subject {
            nats::check_subject(s, false)
                .map_err(|e| c.invalid("subject", &format!("a subject without wildcards ({e})")))?;
        }
        let subject_from_key = c.bool("subject_from_key")?;
        if subject.is_none() && !subject_from_key {
            return Err(c.invalid(
                "subject",
                "a subject to publish to (or subject_from_key = true)",
            ));
        }
        let jetstream = c.choice("mode")? == "jetstream";
        let msg_id = match c.text("msg_id")? {
            "" => MsgId::None,
            "key" => MsgId::Key,
            other => match other.strip_prefix("header:") {
                Some(name) if nats::check_header(name, "").is_ok() => {
                    MsgId::Header(name.to_owned())
                }
                _ => {
                    return Err(c.invalid("msg_id", "`key`, `header:NAME` or empty"));
                }
            },
        };
        let timeout = c.duration("timeout")?;
        let create_stream = c.text_opt("create_stream")?.map(str::to_owned);
        if let Some(name) = &create_stream {
            nats::check_name(name)
                .map_err(|e| c.invalid("create_stream", &format!("a stream name ({e})")))?;
            if !jetstream || subject.is_none() {
                return Err(c.invalid(
                    "create_stream",
                    "nothing unless mode = \"jetstream\" and `subject` is set",
                ));
            }
        }
        let mut sink = NatsSink {
            link: Reconnect::servers("nats", servers.addrs),
            auth: Auth::new(servers.user, servers.password),
            tls,
            subject,
            subject_from_key,
            jetstream,
            msg_id,
            timeout,
            create_stream,
            conn: None,
        };
        match sink.connect() {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Fatal => return Err(at_url(e, url)),
            // A server that is down is not a configuration error: write retries.
            Err(e) => log::warn(&e.message),
        }
        Ok(sink)
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        self.write_batch(vec![message.clone()])
            .pop()
            .unwrap_or(Ok(()))
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        if batch.is_empty() {
            return Vec::new();
        }
        if let Err(e) = self.connect() {
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        let Some(mut conn) = self.conn.take() else {
            return batch
                .iter()
                .map(|_| Err(Error::retryable("nats: not connected")))
                .collect();
        };
        let max_payload = conn.info.max_payload;
        let jetstream_enabled = conn.info.jetstream;
        let mut results: Vec<Result<(), Error>> = Vec::with_capacity(batch.len());
        let mut bytes = Vec::new();
        // Reply subject → (index, subject) of what is waiting for its PubAck.
        let mut waiting: HashMap<String, (usize, String)> = HashMap::new();
        let mut sent = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let reply = self.jetstream.then(|| conn.reply_subject());
            match self.encode(m, reply.as_deref(), max_payload, &mut bytes) {
                Ok(subject) => {
                    results.push(Ok(()));
                    sent.push(i);
                    if let Some(reply) = reply {
                        waiting.insert(reply, (i, subject));
                    }
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if sent.is_empty() {
            self.conn = Some(conn);
            return results;
        }
        let deadline = Instant::now() + self.timeout;
        // JetStream publishes answered 503 (no responders): (index, subject).
        let mut no_responders: Vec<(usize, String)> = Vec::new();
        let outcome = if self.jetstream {
            // Every message has its own reply subject: wait for each PubAck.
            conn.send(&bytes).and_then(|()| {
                while !waiting.is_empty() {
                    let Some(msg) = conn.next(deadline)? else {
                        break;
                    };
                    if let Some((i, subject)) = waiting.remove(&msg.subject)
                        && let Some(slot) = results.get_mut(i)
                    {
                        *slot = self.puback(&msg, &subject, jetstream_enabled);
                        if msg.status == Some(503) {
                            no_responders.push((i, subject));
                        }
                    }
                    // Anything else: an answer to an earlier batch that timed out.
                }
                Ok(waiting.is_empty())
            })
        } else {
            // The PONG comes after the server has processed every PUB before the PING.
            conn.send_and_flush(bytes, deadline)
        };
        // A 503 means that no stream took the message at that moment, which is also what a
        // server answers while it shuts JetStream down or has not started it yet. Only when
        // JetStream itself says that no stream captures the subject is it fatal.
        let mut captured: HashMap<String, bool> = HashMap::new();
        for (i, subject) in no_responders {
            let missing = *captured
                .entry(subject.clone())
                .or_insert_with(|| self.no_stream_captures(&mut conn, &subject));
            if !missing && let Some(slot) = results.get_mut(i) {
                *slot = Err(Error::retryable(format!(
                    "nats {}: JetStream did not take the message for `{subject}` (no \
                     responders), but did not say that no stream captures it: the server may \
                     be restarting",
                    self.link.addr()
                )));
            }
        }
        self.conn = Some(conn);
        let failure = match outcome {
            Ok(true) => None,
            Ok(false) => Some(Error::retryable(format!(
                "nats {}: no answer from the server within {:?}{}",
                self.link.addr(),
                self.timeout,
                if self.jetstream {
                    " (JetStream PubAck)"
                } else {
                    " (PONG after the batch)"
                }
            ))),
            Err(e) => Some(self.lost(&e)),
        };
        if let Some(error) = failure {
            // Core: every message of the write is in doubt; JetStream: those without a PubAck.
            let open: Vec<usize> = if self.jetstream {
                waiting.values().map(|(i, _)| *i).collect()
            } else {
                sent
            };
            for i in open {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Err(error.clone());
                }
            }
        }
        results
    }
}

patchbay_sdk::export_sink!(NatsSink);
