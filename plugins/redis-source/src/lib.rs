//! `redis-source`: reads a Redis stream through a consumer group (`XREADGROUP`) and
//! acknowledges each entry (`XACK`) only once the pipeline has delivered it, over a granted TCP
//! address.
//!
//! ```toml
//! [plugins.orders]
//! path = "target/plugins/redis-source.wasm"
//! config = { url = "redis://127.0.0.1:6379", stream = "orders", group = "patchbay" }
//! grants = { tcp = ["127.0.0.1:6379"] }
//! ```
//!
//! - The group is created if missing (`XGROUP CREATE … MKSTREAM`), at `start` (`$`: only new
//!   entries; `0`: the whole stream).
//! - An entry becomes a message: its `payload` field (`field`) is the payload, a `key` field
//!   the key, every other field a header, and the entry id's milliseconds the timestamp. An
//!   entry without the payload field becomes a JSON object of all its fields.
//! - Delivery is at least once. Entries are acknowledged with `XACK` when Patchbay acks their
//!   batch. On start and after every reconnect the consumer first re-reads its own pending
//!   entries (delivered to it before but never acknowledged: a crash, a restart) and only then
//!   new ones, skipping those still in flight in this pipeline.
//! - Several instances (`concurrency` on the source) share the group: instance 1 reads as
//!   `consumer`, instance N as `consumer.N`. Lowering `concurrency` leaves the pending entries
//!   of the names no longer used to be claimed by hand (`XAUTOCLAIM`).
//! - A lost connection is a `retryable` error; `poll` reconnects with a back-off that doubles
//!   from 100 ms to 5 s. If the group is gone (a Redis restarted without persistence), it is
//!   created again at `0`.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use patchbay_sdk::net::Reconnect;
use patchbay_sdk::tls;
use patchbay_sdk::{Config, Error, Key, Message, Metadata, PollResult, Source, log};

use patchbay_proto_resp::{self as resp, Conn, Value};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`redis://[:password@]host:port[/db]`, or `rediss://…` for TLS (done by the host: the server is verified against the system roots or `grants.tls.ca`); the address must be granted in `grants.tcp`.",
    )
    .default("redis://127.0.0.1:6379"),
    Key::text("stream", "The stream to read.").required(),
    Key::text("group", "The consumer group; created if missing.").default("patchbay"),
    Key::text(
        "consumer",
        "This reader's name within the group; give each instance reading the group its own.",
    )
    .default("patchbay-1"),
    Key::choice(
        "start",
        &["$", "0"],
        "Where a new group starts: `$` (entries added from now on) or `0` (the whole stream).",
    )
    .default("$"),
    Key::text("field", "The entry field that holds the payload.").default("payload"),
    Key::duration(
        "block",
        "How long one poll waits for new entries, e.g. \"100ms\" (keep it well under the call deadline; at most 900ms).",
    )
    .default("100ms")
    .range(0, 900)
    .note("a poll must end within its 1 s call deadline")
    .alias_ms("block_ms"),
];

const TIMEOUT: Duration = Duration::from_secs(5);

struct RedisSource {
    link: Reconnect,
    password: Option<String>,
    db: Option<u32>,
    /// `rediss://`: TLS, done by the host (`grants.tls`).
    tls: bool,
    stream: String,
    group: String,
    consumer: String,
    field: String,
    start: String,
    block_ms: u64,
    conn: Option<Conn>,
    /// Re-reading this consumer's pending entries, after this id, before new ones.
    recovering: Option<Vec<u8>>,
    /// Entries delivered and not yet acknowledged, by checkpoint.
    inflight: VecDeque<(u64, Vec<Vec<u8>>)>,
    inflight_ids: HashSet<Vec<u8>>,
    /// Acknowledged by the pipeline, not yet confirmed by `XACK` (the connection failed).
    to_ack: Vec<Vec<u8>>,
    checkpoint: u64,
}

impl RedisSource {
    fn connect(&mut self) -> Result<(), Error> {
        if self.conn.is_some() {
            return Ok(());
        }
        self.link.ready()?;
        let mut conn = tls::connect(self.link.addr(), tls::Start::tls_if(self.tls), TIMEOUT)
            .and_then(|s| Conn::over(s, self.link.addr(), self.password.as_deref(), self.db))
            .map_err(|e| self.link.failed(&e))?;
        let start = self.start.clone();
        match self.create_group(&mut conn, &start) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::fatal(e.to_string()));
            }
            Err(e) => return Err(self.lost(&e)),
        }
        self.link.connected();
        self.recovering = Some(b"0".to_vec());
        self.conn = Some(conn);
        Ok(())
    }

    fn create_group(&self, conn: &mut Conn, start: &str) -> std::io::Result<()> {
        let reply = conn.call(&[
            b"XGROUP",
            b"CREATE",
            self.stream.as_bytes(),
            self.group.as_bytes(),
            start.as_bytes(),
            b"MKSTREAM",
        ])?;
        match reply {
            Value::Error(e) if !e.starts_with("BUSYGROUP") => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "redis {}: cannot create group `{}` on stream `{}`: {e}",
                    conn.addr, self.group, self.stream
                ),
            )),
            _ => Ok(()),
        }
    }

    fn lost(&mut self, e: &std::io::Error) -> Error {
        self.conn = None;
        self.link.lost(e)
    }

    /// `XACK` what the pipeline acknowledged; on failure it stays queued for the next try.
    fn flush_acks(&mut self) -> Result<(), Error> {
        if self.to_ack.is_empty() {
            return Ok(());
        }
        self.connect()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::retryable("redis: not connected"));
        };
        for chunk in self.to_ack.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![b"XACK", self.stream.as_bytes(), self.group.as_bytes()];
            args.extend(chunk.iter().map(Vec::as_slice));
            conn.send(&args);
        }
        let replies = self.to_ack.len().div_ceil(1000);
        let sent = conn.flush().and_then(|()| {
            (0..replies).try_for_each(|_| match conn.read()? {
                Value::Error(e) => Err(std::io::Error::other(e)),
                _ => Ok(()),
            })
        });
        match sent {
            Ok(()) => {
                self.to_ack.clear();
                Ok(())
            }
            Err(e) => Err(self.lost(&e)),
        }
    }

    fn read(&mut self, max: u32) -> std::io::Result<Vec<(Vec<u8>, Option<Message>)>> {
        let count = max.to_string();
        let block = self.block_ms.to_string();
        let id = self.recovering.clone();
        let Some(conn) = self.conn.as_mut() else {
            return Err(std::io::Error::other("not connected"));
        };
        let mut args: Vec<&[u8]> = vec![
            b"XREADGROUP",
            b"GROUP",
            self.group.as_bytes(),
            self.consumer.as_bytes(),
            b"COUNT",
            count.as_bytes(),
        ];
        if id.is_none() {
            args.extend([b"BLOCK".as_slice(), block.as_bytes()]);
        }
        args.extend([b"STREAMS".as_slice(), self.stream.as_bytes()]);
        args.push(id.as_deref().unwrap_or(b">"));
        let reply = conn.call(&args)?;
        if let Value::Error(e) = &reply {
            return Err(std::io::Error::new(
                if e.starts_with("NOGROUP") {
                    std::io::ErrorKind::NotFound
                } else {
                    std::io::ErrorKind::InvalidData
                },
                e.clone(),
            ));
        }
        let mut entries = Vec::new();
        for stream in reply.items().unwrap_or_default() {
            // [stream name, [[id, [field, value, …]], …]]
            let Some(list) = stream.items().and_then(|s| s.get(1)) else {
                continue;
            };
            for entry in list.items().unwrap_or_default() {
                let items = entry.items().unwrap_or_default();
                let Some(id) = items.first().and_then(Value::bytes) else {
                    continue;
                };
                // A pending entry that was deleted since comes back without fields.
                let message = items
                    .get(1)
                    .and_then(Value::items)
                    .filter(|f| !f.is_empty())
                    .map(|fields| self.message(id, fields));
                entries.push((id.to_vec(), message));
            }
        }
        Ok(entries)
    }

    fn message(&self, id: &[u8], fields: &[Value]) -> Message {
        let mut payload = None;
        let mut key = None;
        let mut headers = Vec::new();
        let mut all = Vec::new();
        for pair in fields.chunks(2) {
            let (Some(name), Some(value)) = (
                pair.first().and_then(Value::bytes),
                pair.get(1).and_then(Value::bytes),
            ) else {
                continue;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            all.push((name.clone(), String::from_utf8_lossy(value).into_owned()));
            if name == self.field {
                payload = Some(value.to_vec());
            } else if name == "key" {
                key = Some(value.to_vec());
            } else {
                headers.push((name, String::from_utf8_lossy(value).into_owned()));
            }
        }
        let payload = payload.unwrap_or_else(|| {
            let object: patchbay_sdk::json::Map<String, patchbay_sdk::json::Value> = all
                .into_iter()
                .map(|(k, v)| (k, patchbay_sdk::json::Value::String(v)))
                .collect();
            patchbay_sdk::json::Value::Object(object)
                .to_string()
                .into_bytes()
        });
        let mut message =
            Message::new(payload).with_header("redis-id", String::from_utf8_lossy(id));
        if let Some(key) = key {
            message = message.with_key(key);
        }
        for (name, value) in headers {
            message = message.with_header(name, value);
        }
        let millis = std::str::from_utf8(id)
            .ok()
            .and_then(|s| s.split('-').next())
            .and_then(|ms| ms.parse().ok());
        match millis {
            Some(ms) => message.with_timestamp(ms),
            None => message,
        }
    }
}

impl Source for RedisSource {
    fn metadata() -> Metadata {
        Metadata::new(
            "redis-source",
            env!("CARGO_PKG_VERSION"),
            "Reads a Redis stream through a consumer group; XACK after delivery, pending entries recovered.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = c.text("url")?;
        let resp::Url {
            addr,
            password,
            db,
            tls,
        } = resp::parse_url(url)
            .map_err(|e| c.invalid("url", &format!("redis[s]://host:port[/db] ({e})")))?;
        let stream = c.text("stream")?.to_owned();
        let group = c.text("group")?.to_owned();
        let consumer = c.text("consumer")?.to_owned();
        for (key, value) in [
            ("stream", &stream),
            ("group", &group),
            ("consumer", &consumer),
        ] {
            if value.is_empty() {
                return Err(c.invalid(key, "a non-empty name"));
            }
        }
        let start = c.choice("start")?.to_owned();
        let field = c.text("field")?.to_owned();
        if field.is_empty() {
            return Err(c.invalid("field", "a non-empty field name"));
        }
        // Whole milliseconds for XREADGROUP BLOCK, rounded up: a sub-millisecond wait must not
        // become BLOCK 0 (wait forever). At most 900 (the key's range).
        let block_ms =
            u64::try_from(c.duration("block")?.as_nanos().div_ceil(1_000_000)).unwrap_or(900);
        let mut source = RedisSource {
            link: Reconnect::new("redis", addr),
            password,
            tls,
            db,
            stream,
            group,
            consumer,
            field,
            start,
            block_ms,
            conn: None,
            recovering: None,
            inflight: VecDeque::new(),
            inflight_ids: HashSet::new(),
            to_ack: Vec::new(),
            checkpoint: 0,
        };
        match source.connect() {
            Ok(()) => {}
            Err(e) if e.kind == patchbay_sdk::ErrorKind::Fatal => {
                return Err(Error::fatal(format!("config key `url`: {}", e.message)));
            }
            // A server that is down is not a configuration error (logged): poll retries.
            Err(_) => {}
        }
        Ok(source)
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        self.connect()?;
        self.flush_acks()?;
        if max == 0 {
            return Ok(PollResult::batch(Vec::new(), self.checkpoint));
        }
        let entries = match self.read(max) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The group is gone (a Redis restarted without persistence): start it again
                // from the beginning of whatever the stream now holds.
                log::warn(&format!(
                    "redis {}: group `{}` is gone ({e}); creating it again at 0",
                    self.link.addr(),
                    self.group
                ));
                let Some(mut conn) = self.conn.take() else {
                    return Err(Error::retryable("redis: not connected"));
                };
                let created = self.create_group(&mut conn, "0");
                self.conn = Some(conn);
                created.map_err(|e| Error::retryable(e.to_string()))?;
                return Ok(PollResult::batch(Vec::new(), self.checkpoint));
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::fatal(format!("redis {}: {e}", self.link.addr())));
            }
            Err(e) => return Err(self.lost(&e)),
        };
        if let Some(cursor) = &mut self.recovering {
            match entries.last() {
                Some((id, _)) => *cursor = id.clone(),
                None => {
                    self.recovering = None;
                    return Ok(PollResult::batch(Vec::new(), self.checkpoint));
                }
            }
        }
        let mut ids = Vec::new();
        let mut messages = Vec::new();
        for (id, message) in entries {
            if self.inflight_ids.contains(&id) || self.to_ack.contains(&id) {
                continue;
            }
            match message {
                Some(message) => {
                    self.inflight_ids.insert(id.clone());
                    ids.push(id);
                    messages.push(message);
                }
                // Deleted before it was delivered: nothing to deliver, acknowledge it.
                None => self.to_ack.push(id),
            }
        }
        if !messages.is_empty() {
            self.checkpoint += 1;
            self.inflight.push_back((self.checkpoint, ids));
        }
        Ok(PollResult::batch(messages, self.checkpoint))
    }

    /// The group hands each entry to one consumer: instance 1 reads as `consumer`, instance
    /// N as `consumer.N`, the same names after a restart, so each re-reads its own pending
    /// entries.
    fn share(&mut self, instance: u32, _instances: u32) -> Result<(), String> {
        if instance > 1 {
            self.consumer = format!("{}.{instance}", self.consumer);
            log::info(&format!(
                "instance {instance} reads stream `{}` as consumer `{}` of group `{}`",
                self.stream, self.consumer, self.group
            ));
        }
        Ok(())
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        while let Some((cp, _)) = self.inflight.front() {
            if *cp > checkpoint {
                break;
            }
            if let Some((_, ids)) = self.inflight.pop_front() {
                for id in &ids {
                    self.inflight_ids.remove(id);
                }
                self.to_ack.extend(ids);
            }
        }
        self.flush_acks()
    }
}

patchbay_sdk::export_source!(RedisSource);
