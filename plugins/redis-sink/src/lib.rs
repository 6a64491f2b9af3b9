//! `redis-sink`: delivers messages to Redis as stream entries (`XADD`), list items (`RPUSH`) or
//! Pub/Sub messages (`PUBLISH`), over a granted TCP address.
//!
//! ```toml
//! [plugins.out]
//! path = "target/plugins/redis-sink.wasm"
//! config = { url = "redis://127.0.0.1:6379", mode = "stream", key = "orders" }
//! grants = { tcp = ["127.0.0.1:6379"] }
//! ```
//!
//! A batch goes out as one pipeline of commands and each message's result is its own reply.
//! In `stream` mode the entry holds the payload under the field `payload` (`field`), the
//! message key under `key` when there is one, and each header as a field of its own name; with
//! `maxlen`, the stream is trimmed (`MAXLEN ~`). `ok` means Redis accepted the write (its own
//! persistence settings decide what survives a Redis restart).
//!
//! A lost connection makes every unanswered message of the batch `retryable` and the next call
//! reconnects, with a back-off that doubles from 100 ms to 5 s between attempts; a reply error
//! is `invalid-data` for that message, except `WRONGTYPE`, `NOAUTH` and `NOPERM`, which are
//! `fatal` (the key or the credentials are wrong, not the record).

use std::time::Duration;

use patchbay_sdk::net::Reconnect;
use patchbay_sdk::tls;
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Sink};

use patchbay_proto_resp::{self as resp, Conn, Value};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`redis://[:password@]host:port[/db]`, or `rediss://…` for TLS (done by the host: the server is verified against the system roots or `grants.tls.ca`); the address must be granted in `grants.tcp`.",
    )
    .default("redis://127.0.0.1:6379"),
    Key::choice(
        "mode",
        &["stream", "list", "pubsub"],
        "`stream` (XADD), `list` (RPUSH) or `pubsub` (PUBLISH).",
    )
    .default("stream"),
    Key::text("key", "The stream, list or channel name.").required(),
    Key::text(
        "field",
        "Stream mode: the entry field that holds the payload.",
    )
    .default("payload"),
    Key::text(
        "maxlen",
        "Stream mode: trim the stream to about this many entries (XADD MAXLEN ~).",
    )
    .default("none"),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stream,
    List,
    PubSub,
}

struct RedisSink {
    link: Reconnect,
    password: Option<String>,
    db: Option<u32>,
    /// `rediss://`: TLS, done by the host (`grants.tls`).
    tls: bool,
    mode: Mode,
    key: String,
    field: String,
    maxlen: Option<u64>,
    conn: Option<Conn>,
}

const TIMEOUT: Duration = Duration::from_secs(5);

impl RedisSink {
    fn connection(&mut self) -> Result<&mut Conn, Error> {
        if self.conn.is_none() {
            self.link.ready()?;
            let conn = tls::connect(self.link.addr(), tls::Start::tls_if(self.tls), TIMEOUT)
                .and_then(|s| Conn::over(s, self.link.addr(), self.password.as_deref(), self.db))
                .map_err(|e| self.link.failed(&e))?;
            self.link.connected();
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::retryable("redis: not connected"))
    }

    fn lost(&mut self, e: &std::io::Error) -> Error {
        self.conn = None;
        self.link.lost(e)
    }

    fn queue(&self, conn: &mut Conn, message: &Message) {
        match self.mode {
            Mode::Stream => {
                let maxlen = self.maxlen.map(|n| n.to_string());
                let mut args: Vec<&[u8]> = vec![b"XADD", self.key.as_bytes()];
                if let Some(n) = &maxlen {
                    args.extend([b"MAXLEN".as_slice(), b"~", n.as_bytes()]);
                }
                args.extend([b"*".as_slice(), self.field.as_bytes(), &message.payload]);
                if let Some(key) = &message.key {
                    args.extend([b"key".as_slice(), key]);
                }
                for h in &message.headers {
                    args.extend([h.name.as_bytes(), h.value.as_bytes()]);
                }
                conn.send(&args);
            }
            Mode::List => conn.send(&[b"RPUSH", self.key.as_bytes(), &message.payload]),
            Mode::PubSub => conn.send(&[b"PUBLISH", self.key.as_bytes(), &message.payload]),
        }
    }
}

fn reply_error(text: &str) -> Error {
    let code = text.split(' ').next().unwrap_or_default();
    if matches!(code, "WRONGTYPE" | "NOAUTH" | "NOPERM") {
        Error::fatal(format!("redis refused the write: {text}"))
    } else {
        Error::invalid_data(format!("redis refused the write: {text}"))
    }
}

impl Sink for RedisSink {
    fn metadata() -> Metadata {
        Metadata::new(
            "redis-sink",
            env!("CARGO_PKG_VERSION"),
            "Writes messages to a Redis stream (XADD), list (RPUSH) or Pub/Sub channel (PUBLISH).",
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
        let mode = match c.choice("mode")? {
            "list" => Mode::List,
            "pubsub" => Mode::PubSub,
            _ => Mode::Stream,
        };
        let key = c.text("key")?.to_owned();
        if key.is_empty() {
            return Err(c.invalid("key", "a non-empty stream, list or channel name"));
        }
        let field = c.text("field")?.to_owned();
        if field.is_empty() {
            return Err(c.invalid("field", "a non-empty field name"));
        }
        let maxlen = match c.text("maxlen")?.trim() {
            "none" => None,
            n => Some(
                n.parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| c.invalid("maxlen", "a positive number of entries"))?,
            ),
        };
        let mut sink = RedisSink {
            link: Reconnect::new("redis", addr),
            password,
            tls,
            db,
            mode,
            key,
            field,
            maxlen,
            conn: None,
        };
        // Connect now, so that a missing grant or a wrong address shows at start; a server
        // that is down is only a warning: writes retry until it is back.
        if let Err(e) = sink.connection()
            && e.kind == patchbay_sdk::ErrorKind::Fatal
        {
            return Err(Error::fatal(format!("config key `url`: {}", e.message)));
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
        if let Err(e) = self.connection() {
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        let Some(mut conn) = self.conn.take() else {
            return batch
                .iter()
                .map(|_| Err(Error::retryable("redis: not connected")))
                .collect();
        };
        for m in &batch {
            self.queue(&mut conn, m);
        }
        if let Err(e) = conn.flush() {
            let error = self.lost(&e);
            return batch.iter().map(|_| Err(error.clone())).collect();
        }
        let mut results = Vec::with_capacity(batch.len());
        for _ in &batch {
            match conn.read() {
                Ok(Value::Error(text)) => results.push(Err(reply_error(&text))),
                Ok(_) => results.push(Ok(())),
                Err(e) => {
                    let error = self.lost(&e);
                    results.resize(batch.len(), Err(error));
                    return results;
                }
            }
        }
        self.conn = Some(conn);
        results
    }
}

patchbay_sdk::export_sink!(RedisSink);
