//! `nats-source`: subscribes to NATS subjects (core NATS), or reads a JetStream stream
//! through a durable pull consumer and acknowledges each message only once the pipeline has
//! delivered it, over a granted TCP address.
//!
//! ```toml
//! [plugins.orders]
//! path = "target/plugins/nats-source.wasm"
//! config = { url = "nats://127.0.0.1:4222", mode = "jetstream", stream = "ORDERS", consumer = "patchbay" }
//! grants = { tcp = ["127.0.0.1:4222"] }
//! ```
//!
//! - `url` may list several servers of one cluster (`nats://a:4222,nats://b:4222`): a server
//!   that is down, or whose connection breaks, is left for the next in the list at once; the
//!   back-off (100 ms doubling to 5 s) starts only once every server failed. Grant each one.
//! - A message's key is its subject, its headers (`HMSG`) become message headers, and the
//!   payload is the NATS payload.
//! - `mode = "core"`: `SUB subject [queue]`. Core NATS keeps nothing: what is published while
//!   the connection is down is not seen (at most once).
//! - `mode = "jetstream"`: the durable consumer `consumer` on `stream` is created or updated
//!   (`$JS.API.CONSUMER.DURABLE.CREATE`, explicit acks) on every connect; each poll asks for
//!   at most `max` messages (`$JS.API.CONSUMER.MSG.NEXT`, expiring after `wait`), and
//!   `+ACK` goes to each message's reply subject only when Patchbay acks its batch. What is
//!   not acknowledged within `ack_wait` is delivered again: at least once. The message
//!   timestamp is the time JetStream stored it.
//! - Several instances (`concurrency` on the source) share the work: with JetStream they pull
//!   from the same durable consumer, in core mode they join the `queue` group (required then).
//! - `reply = true` (core mode): request/reply. A message that carries a reply subject (sent
//!   with `nats req`, or any client's request) is a request: what the pipeline sends to its
//!   `reply` destination is published to that subject (each message: payload and headers).
//!   When nothing reaches `reply` the requester gets an empty message; a failure or a timeout
//!   an empty message with the headers `Nats-Service-Error` (the reason) and
//!   `Nats-Service-Error-Code` (422 refused input, 502 the pipeline failed, 504 no answer
//!   within the pipeline's `reply_timeout`), as NATS services answer errors.
//! - A lost connection is a `retryable` error; `poll` reconnects with a back-off that doubles
//!   from 100 ms to 5 s (`patchbay_sdk::net::Reconnect`), and acknowledgements that could not
//!   be sent go out after the reconnect.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use patchbay_sdk::net::{self, Reconnect};
use patchbay_sdk::tls;
use patchbay_sdk::{
    Config, Error, ErrorKind, Key, Message, Metadata, PollResult, REQUEST, Source, log,
};

mod reply;

use patchbay_proto_nats::{self as nats, Auth, Conn, Msg};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`nats://[user:password@|token@]host[:port]` (`tls://…` for TLS, started after the server's INFO and done by the host: the server verified against the system roots or `grants.tls.ca`), or several servers of one cluster separated by commas (a server that is down or goes away is left for the next); each address must be granted in `grants.tcp`.",
    )
    .default("nats://127.0.0.1:4222"),
    Key::choice(
        "mode",
        &["core", "jetstream"],
        "`core` (a subscription: at most once) or `jetstream` (a durable pull consumer on `stream`: at least once, `+ACK` after delivery).",
    )
    .default("core"),
    Key::text(
        "subject",
        "The subject to subscribe to, wildcards allowed (`orders.*`, `sensors.>`); required with mode = \"core\". With JetStream, the consumer's filter unless `filter_subject` is given.",
    ),
    Key::text(
        "queue",
        "Core mode: a queue group name; the server gives each message to one member of the group.",
    ),
    Key::bool(
        "reply",
        "Core mode: treat a message with a reply subject as a request and publish the pipeline's answer (what reaches its `reply` destination) to it.",
    )
    .default("false"),
    Key::text(
        "stream",
        "JetStream: the stream to read (required with mode = \"jetstream\"; it must exist).",
    ),
    Key::text(
        "consumer",
        "JetStream: the durable consumer's name (required with mode = \"jetstream\"); created if missing, its position survives restarts.",
    ),
    Key::text(
        "filter_subject",
        "JetStream: only messages of the stream on this subject (wildcards allowed); default `subject`, else the whole stream.",
    ),
    Key::choice(
        "deliver",
        &["all", "new", "last"],
        "JetStream: where a new consumer starts: `all` (the whole stream), `new` (messages stored from now on) or `last` (the last message).",
    )
    .default("all"),
    Key::duration(
        "ack_wait",
        "JetStream: how long the server waits for a message's ack before delivering it again, e.g. \"30s\".",
    )
    .default("30s")
    .range(100, 86_400_000)
    .alias_ms("ack_wait_ms"),
    Key::uint(
        "max_ack_pending",
        "JetStream: most messages delivered and not yet acknowledged; the server sends no more until acks come.",
    )
    .default("10000")
    .range(1, 10_000_000),
    Key::duration(
        "wait",
        "How long one poll waits for a first message, e.g. \"100ms\" (1ms to 899ms: a poll must end within its call deadline).",
    )
    .default("100ms")
    .range(1, 899)
    .note("a poll must end within its call deadline")
    .alias_ms("wait_ms"),
];

/// How long connecting (INFO, CONNECT, PONG) and setting up (SUB, the consumer) may take.
const SETUP: Duration = Duration::from_millis(800);
/// How long `ack` waits for the server to confirm it has the acknowledgements.
const ACK_WAIT: Duration = Duration::from_millis(300);
/// After the first message of a poll, how long to wait for more before returning.
const DRAIN: Duration = Duration::from_millis(2);
const SID_SUB: u64 = 1;
const SID_INBOX: u64 = 2;

struct JetStream {
    stream: String,
    consumer: String,
    filter: Option<String>,
    deliver: String,
    ack_wait: Duration,
    max_ack_pending: u64,
}

/// The open pull request: its reply subject, how many messages it may still bring, and
/// when it is over at the latest.
struct Pull {
    reply: String,
    remaining: u32,
    until: Instant,
}

struct NatsSource {
    link: Reconnect,
    auth: Auth,
    /// `tls://`: TLS after the server's INFO, done by the host (`grants.tls`).
    tls: bool,
    subject: Option<String>,
    queue: Option<String>,
    js: Option<JetStream>,
    /// Core mode: requests (messages with a reply subject) get the pipeline's answer.
    reply: bool,
    wait: Duration,
    conn: Option<Conn>,
    pull: Option<Pull>,
    /// Reply subjects of delivered JetStream messages, by checkpoint.
    inflight: VecDeque<(u64, Vec<String>)>,
    /// Acknowledged by the pipeline, not yet sent (the connection was down).
    to_ack: Vec<String>,
    checkpoint: u64,
}

enum Setup {
    Io(std::io::Error),
    Fatal(Error),
}

impl From<std::io::Error> for Setup {
    fn from(e: std::io::Error) -> Setup {
        Setup::Io(e)
    }
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer to {what}"))
}

impl NatsSource {
    fn connect(&mut self) -> Result<(), Error> {
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
                    "patchbay nats-source",
                    SETUP,
                )
            })
            .map_err(|e| self.link.failed(&e))?;
        match self.setup(&mut conn, deadline) {
            Ok(what) => {
                self.link.connected();
                log::info(&format!(
                    "nats {}: connected to {} {}; {what}",
                    self.link.addr(),
                    if conn.info.server_name.is_empty() {
                        "nats-server"
                    } else {
                        &conn.info.server_name
                    },
                    conn.info.version
                ));
            }
            Err(Setup::Fatal(e)) => return Err(e),
            Err(Setup::Io(e)) => return Err(self.link.failed(&e)),
        }
        // A pull request of an earlier connection is gone with it.
        self.pull = None;
        self.conn = Some(conn);
        Ok(())
    }

    /// Subscribe, or make sure the stream and the consumer are there. Says what it did.
    fn setup(&self, conn: &mut Conn, deadline: Instant) -> Result<String, Setup> {
        let addr = self.link.addr();
        let Some(js) = &self.js else {
            let subject = self.subject.as_deref().unwrap_or(">");
            let mut out = Vec::new();
            nats::subscribe(&mut out, subject, self.queue.as_deref(), SID_SUB);
            // The PONG comes after any `-ERR` about the subscription.
            if !conn.send_and_flush(out, deadline)? {
                return Err(timed_out("SUB").into());
            }
            return Ok(match &self.queue {
                Some(q) => format!("subscribed to `{subject}` in queue group `{q}`"),
                None => format!("subscribed to `{subject}`"),
            });
        };
        conn.inbox_sub(SID_INBOX)?;
        let info = conn
            .request(&format!("$JS.API.STREAM.INFO.{}", js.stream), b"", deadline)?
            .ok_or_else(|| timed_out("$JS.API.STREAM.INFO"))?;
        if let Err((code, err_code, text)) = nats::api_answer(&info) {
            return Err(match (code, err_code) {
                (404, _) | (_, 10059) => Setup::Fatal(Error::fatal(format!(
                    "nats {addr}: JetStream stream `{stream}` does not exist (config key `stream`); \
                     create it first, e.g. by publishing {{\"name\":\"{stream}\",\"subjects\":[\"{subjects}\"]}} \
                     to `$JS.API.STREAM.CREATE.{stream}` (with the nats CLI: `nats stream add {stream} \
                     --subjects '{subjects}'`), or name an existing stream",
                    stream = js.stream,
                    subjects = self
                        .subject
                        .as_deref()
                        .or(js.filter.as_deref())
                        .unwrap_or(">"),
                ))),
                (503, _) if !conn.info.jetstream => Setup::Fatal(Error::fatal(format!(
                    "nats {addr}: JetStream is not enabled on the server (config key `mode` is \
                     `jetstream`): start nats-server with `-js` (or `jetstream {{}}` in its \
                     configuration), or use mode = \"core\""
                ))),
                _ => Setup::Io(std::io::Error::other(format!(
                    "stream `{}`: {text}",
                    js.stream
                ))),
            });
        }
        let mut config = serde_json::json!({
            "durable_name": js.consumer,
            "ack_policy": "explicit",
            "ack_wait": js.ack_wait.as_nanos() as u64,
            "max_ack_pending": js.max_ack_pending,
            "deliver_policy": js.deliver,
            "replay_policy": "instant",
        });
        if let (Some(filter), Some(map)) = (&js.filter, config.as_object_mut()) {
            map.insert("filter_subject".into(), filter.clone().into());
        }
        let body = serde_json::json!({ "stream_name": js.stream, "config": config }).to_string();
        let created = conn
            .request(
                &format!(
                    "$JS.API.CONSUMER.DURABLE.CREATE.{}.{}",
                    js.stream, js.consumer
                ),
                body.as_bytes(),
                deadline,
            )?
            .ok_or_else(|| timed_out("$JS.API.CONSUMER.DURABLE.CREATE"))?;
        match nats::api_answer(&created) {
            Ok(v) => {
                let pending = v
                    .get("num_pending")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                let ack_pending = v
                    .get("num_ack_pending")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                Ok(format!(
                    "consumer `{}` on stream `{}`: {pending} pending, {ack_pending} awaiting ack",
                    js.consumer, js.stream
                ))
            }
            Err((code, _, text)) if code >= 500 => Err(Setup::Io(std::io::Error::other(format!(
                "consumer `{}`: {text}",
                js.consumer
            )))),
            Err((_, _, text)) => Err(Setup::Fatal(Error::fatal(format!(
                "nats {addr}: cannot create or update the durable consumer `{}` on stream `{}` \
                 (config keys `consumer`, `filter_subject`, `deliver`, `ack_wait`, \
                 `max_ack_pending`): {text}; an existing consumer keeps some settings for good: \
                 delete it (`$JS.API.CONSUMER.DELETE.{}.{}`) or choose another name",
                js.consumer, js.stream, js.stream, js.consumer
            )))),
        }
    }

    fn lost(&mut self, e: &std::io::Error) -> Error {
        self.conn = None;
        self.pull = None;
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return Error::fatal(format!("nats {}: {e}", self.link.addr()));
        }
        self.link.lost(e)
    }

    /// Send the `+ACK`s the pipeline allowed, and make sure the server has them.
    fn send_acks(&mut self) -> Result<(), Error> {
        if self.to_ack.is_empty() {
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::retryable(format!(
                "nats {}: not connected",
                self.link.addr()
            )));
        };
        let mut out = Vec::with_capacity(self.to_ack.len() * 80);
        for reply in &self.to_ack {
            nats::publish(&mut out, reply, None, &[], b"+ACK");
        }
        let sent = conn.send_and_flush(out, Instant::now() + ACK_WAIT);
        match sent {
            // Without the PONG in time they are still on their way; a lost one only means
            // that message comes again.
            Ok(_) => {
                self.to_ack.clear();
                Ok(())
            }
            Err(e) => Err(self.lost(&e)),
        }
    }

    fn message(msg: Msg, js: bool) -> Message {
        let mut message = Message::new(msg.payload).with_key(msg.subject.into_bytes());
        for (name, value) in msg.headers {
            message = message.with_header(name, value);
        }
        if js && let Some(reply) = &msg.reply {
            // $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or with
            // domain and account hash first (and a random token last): 12 tokens.
            let tokens: Vec<&str> = reply.split('.').collect();
            let ns = match tokens.len() {
                9 => tokens.get(7),
                n if n >= 11 => tokens.get(9),
                _ => None,
            };
            if let Some(ns) = ns.and_then(|t| t.parse::<u64>().ok()) {
                message = message.with_timestamp(ns / 1_000_000);
            }
        }
        message
    }

    /// Core NATS: whatever arrives within `wait`.
    fn read_core(&mut self, max: usize, out: &mut Vec<Message>) -> std::io::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let end = Instant::now() + self.wait;
        let mut deadline = end;
        while out.len() < max {
            let Some(msg) = conn.next(deadline)? else {
                break;
            };
            if msg.sid != SID_SUB {
                continue;
            }
            let inbox = msg.reply.clone().filter(|_| self.reply);
            let mut message = Self::message(msg, false);
            if let Some(inbox) = inbox {
                message = message.with_header(REQUEST, inbox);
            }
            out.push(message);
            deadline = (Instant::now() + DRAIN).min(end);
        }
        Ok(())
    }

    /// JetStream: ask for up to `max` messages unless a request is still open, and take what
    /// comes within `wait`.
    fn read_js(&mut self, max: u32, out: &mut Vec<(Message, String)>) -> std::io::Result<()> {
        let (Some(conn), Some(js)) = (self.conn.as_mut(), &self.js) else {
            return Ok(());
        };
        let start = Instant::now();
        if self.pull.as_ref().is_none_or(|p| start >= p.until) {
            let reply = conn.reply_subject();
            let body = serde_json::json!({
                "batch": max,
                "expires": self.wait.as_nanos() as u64,
            })
            .to_string();
            let mut bytes = Vec::new();
            nats::publish(
                &mut bytes,
                &format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", js.stream, js.consumer),
                Some(&reply),
                &[],
                body.as_bytes(),
            );
            conn.send(&bytes)?;
            self.pull = Some(Pull {
                reply,
                remaining: max,
                until: start + self.wait + Duration::from_millis(500),
            });
        }
        let end = start + self.wait;
        let mut deadline = end;
        while out.len() < max as usize {
            let Some(msg) = conn.next(deadline)? else {
                break;
            };
            if let Some(reply) = msg.reply.clone().filter(|r| r.starts_with("$JS.ACK.")) {
                if let Some(pull) = &mut self.pull {
                    pull.remaining = pull.remaining.saturating_sub(1);
                    if pull.remaining == 0 {
                        self.pull = None;
                    }
                }
                out.push((Self::message(msg, true), reply));
                deadline = (Instant::now() + DRAIN).min(end);
                continue;
            }
            let Some(status) = msg.status else {
                continue;
            };
            let current = self.pull.as_ref().is_some_and(|p| p.reply == msg.subject);
            match status {
                // Idle heartbeat.
                100 => {}
                // No (more) messages for this request; it is over.
                404 | 408 => {
                    if current {
                        self.pull = None;
                        break;
                    }
                }
                409 => {
                    if current {
                        self.pull = None;
                    }
                    if msg.description.to_ascii_lowercase().contains("deleted") {
                        return Err(std::io::Error::other(format!(
                            "consumer `{}` was deleted ({}); creating it again",
                            js.consumer, msg.description
                        )));
                    }
                    log::warn(&format!(
                        "nats {}: pull request refused: {} {}",
                        conn.addr, status, msg.description
                    ));
                    break;
                }
                _ => {
                    if current {
                        self.pull = None;
                    }
                    log::warn(&format!(
                        "nats {}: unexpected status {status} {} for a pull request",
                        conn.addr, msg.description
                    ));
                    break;
                }
            }
        }
        Ok(())
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

impl Source for NatsSource {
    fn metadata() -> Metadata {
        Metadata::new(
            "nats-source",
            env!("CARGO_PKG_VERSION"),
            "Subscribes to NATS subjects, or reads a JetStream stream through a durable pull consumer (ack after delivery).",
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
        let mode = c.choice("mode")?;
        let text = |key: &str| -> Result<Option<String>, Error> {
            Ok(c.text_opt(key)?.map(str::to_owned))
        };
        let subject = text("subject")?;
        if let Some(s) = &subject {
            nats::check_subject(s, true).map_err(|e| {
                c.invalid(
                    "subject",
                    &format!("a NATS subject such as `orders.>` ({e})"),
                )
            })?;
        }
        let queue = text("queue")?;
        if let Some(q) = &queue {
            nats::check_name(q)
                .map_err(|e| c.invalid("queue", &format!("a queue group name ({e})")))?;
        }
        let wait = c.duration("wait")?;
        let reply = c.bool("reply")?;
        if reply && mode == "jetstream" {
            return Err(c.invalid(
                "reply",
                "false with mode = \"jetstream\" (a stream's messages are not requests; use mode = \"core\")",
            ));
        }
        let filter = text("filter_subject")?;
        if let Some(f) = &filter {
            nats::check_subject(f, true)
                .map_err(|e| c.invalid("filter_subject", &format!("a NATS subject ({e})")))?;
        }
        let deliver = c.choice("deliver")?.to_owned();
        let ack_wait = c.duration("ack_wait")?;
        let max_ack_pending = c.uint("max_ack_pending")?;
        let name = |key: &str| -> Result<Option<String>, Error> {
            let Some(value) = text(key)? else {
                return Ok(None);
            };
            nats::check_name(&value)
                .map_err(|e| c.invalid(key, &format!("a JetStream name ({e})")))?;
            Ok(Some(value))
        };
        let (stream, consumer) = (name("stream")?, name("consumer")?);
        let js = if mode == "jetstream" {
            let required = |key: &str| {
                c.invalid(
                    key,
                    &format!("a name (`{key}` is required with mode = \"jetstream\")"),
                )
            };
            Some(JetStream {
                stream: stream.ok_or_else(|| required("stream"))?,
                consumer: consumer.ok_or_else(|| required("consumer"))?,
                filter: filter.or_else(|| subject.clone()),
                deliver,
                ack_wait,
                max_ack_pending,
            })
        } else {
            if subject.is_none() {
                return Err(c.invalid(
                    "subject",
                    "a subject to subscribe to (required with mode = \"core\")",
                ));
            }
            None
        };
        let mut source = NatsSource {
            link: Reconnect::servers("nats", servers.addrs),
            auth: Auth::new(servers.user, servers.password),
            tls,
            subject,
            queue,
            js,
            reply,
            wait,
            conn: None,
            pull: None,
            inflight: VecDeque::new(),
            to_ack: Vec::new(),
            checkpoint: 0,
        };
        match source.connect() {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Fatal => return Err(at_url(e, url)),
            // A server that is down is not a configuration error: poll retries.
            Err(e) => log::warn(&e.message),
        }
        Ok(source)
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        self.connect()?;
        self.send_acks()?;
        if max == 0 {
            return Ok(PollResult::batch(Vec::new(), self.checkpoint));
        }
        let (messages, replies, result) = if self.js.is_some() {
            let mut got = Vec::new();
            let result = self.read_js(max, &mut got);
            let (messages, replies) = got.into_iter().unzip();
            (messages, replies, result)
        } else {
            let mut got = Vec::new();
            let result = self.read_core(max as usize, &mut got);
            (got, Vec::new(), result)
        };
        if let Err(e) = result {
            // What was read before the failure still goes (JetStream sends unacknowledged
            // messages again anyway: at least once).
            let error = self.lost(&e);
            if messages.is_empty() || error.kind == ErrorKind::Fatal {
                return Err(error);
            }
        }
        if !messages.is_empty() {
            self.checkpoint += 1;
            if !replies.is_empty() {
                self.inflight.push_back((self.checkpoint, replies));
            }
        }
        Ok(PollResult::batch(messages, self.checkpoint))
    }

    /// JetStream: every instance pulls from the same durable consumer, which hands each
    /// message to one of them (and each acks its own). Core: only a queue group splits the
    /// subject; without one every instance would get every message.
    fn share(&mut self, _instance: u32, instances: u32) -> Result<(), String> {
        if self.js.is_some() || self.queue.is_some() {
            return Ok(());
        }
        Err(format!(
            "with mode = \"core\" and no `queue`, each of the {instances} instances would get \
             every message; set `queue` (a queue group name) so that the server gives each \
             message to one of them, or use mode = \"jetstream\""
        ))
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        while self
            .inflight
            .front()
            .is_some_and(|(cp, _)| *cp <= checkpoint)
        {
            if let Some((_, replies)) = self.inflight.pop_front() {
                self.to_ack.extend(replies);
            }
        }
        if self.to_ack.is_empty() {
            return Ok(());
        }
        // A failed ack would stop the pipeline: what cannot be sent now stays queued for the
        // next poll (after a reconnect), and the server delivers it again if it never comes.
        let sent = self.connect().and_then(|()| self.send_acks());
        match sent {
            Err(e) if e.kind == ErrorKind::Fatal => Err(e),
            _ => Ok(()),
        }
    }
}

patchbay_sdk::export_source!(NatsSource, replies);
