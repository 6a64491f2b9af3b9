//! `amqp-sink`: publishes messages to a RabbitMQ exchange (AMQP 0.9.1) with publisher
//! confirms, over a granted TCP address.
//!
//! ```toml
//! [plugins.mq]
//! path = "target/plugins/amqp-sink.wasm"
//! config = { url = "amqp://guest:guest@127.0.0.1:5672/%2f", exchange = "orders", routing_key = "new" }
//! grants = { tcp = ["127.0.0.1:5672"] }
//! ```
//!
//! A batch is published in one go (persistent delivery mode unless `persistent = false`;
//! message headers → AMQP headers, the key → routing key when `routing_key` is not set), then
//! each message is `ok` only once the broker confirmed it (publisher confirms): a nack or a
//! lost connection is `retryable`; a `mandatory` message no queue takes (the broker returns it)
//! is `invalid-data` with the broker's reply, to the dead-letter channel. With `queue`, that
//! durable queue is declared at start and bound to `exchange` (declared too with
//! `exchange_type`).
//!
//! Heartbeats: the connection asks for `heartbeat` (60 s). A sink runs only while a batch is
//! written, so between batches nobody answers for it; before each batch a connection idle for
//! longer than the heartbeat interval (which the broker may have closed) is replaced, so an
//! idle pipeline loses nothing and pays one reconnect.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use patchbay_proto_amqp::codec::Method;
use patchbay_proto_amqp::types::{AMQPValue, FieldTable, LongString};
use patchbay_proto_amqp::{Conn, Event, Properties, Url};
use patchbay_sdk::net::Reconnect;
use patchbay_sdk::{Config, Error, ErrorKind, Key, Message, Metadata, Sink, tls};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`amqp://user:password@host:port/vhost` (vhost `/` is `%2f`, the default), or `amqps://…` (port 5671) for TLS, done by the host; the address must be granted in `grants.tcp`.",
    )
    .default("amqp://guest:guest@127.0.0.1:5672/%2f"),
    Key::text("exchange", "The exchange to publish to (\"\": the default exchange, which routes by queue name).").default(""),
    Key::text("routing_key", "The routing key of every message (default: the message's key).").default(""),
    Key::choice("exchange_type", &["", "direct", "fanout", "topic", "headers"], "Declare `exchange` (durable) with this type at start.").default(""),
    Key::text("queue", "Declare this durable queue at start and bind it to `exchange` with `routing_key`.").default(""),
    Key::bool("mandatory", "Ask the broker to return a message no queue takes (it becomes invalid-data).").default("true"),
    Key::bool("persistent", "Delivery mode 2: the broker keeps the message on disk in a durable queue.").default("true"),
    Key::duration("heartbeat", "Heartbeat interval asked of the broker (0s: none).").default("60s"),
    Key::duration("timeout", "How long to wait for the broker's confirms of a batch.").default("30s"),
];

struct AmqpSink {
    url: Url,
    link: Reconnect,
    conn: Option<Conn>,
    exchange: String,
    routing_key: String,
    exchange_type: String,
    queue: String,
    mandatory: bool,
    persistent: bool,
    heartbeat: u16,
    timeout: Duration,
    /// Publish sequence numbers of this connection (confirms count from 1).
    next_seq: u64,
    /// Message ids made unique per connection.
    connection_id: u64,
}

impl AmqpSink {
    fn connection(&mut self) -> Result<&mut Conn, Error> {
        // An idle connection the broker may have closed for missed heartbeats: start over.
        if let Some(conn) = &self.conn
            && !conn.heartbeat.is_zero()
            && conn.last_read.elapsed() > conn.heartbeat
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.link.ready()?;
            let opened = tls::connect(
                &self.url.addr,
                tls::Start::tls_if(self.url.tls),
                self.timeout,
            )
            .and_then(|s| {
                Conn::open(
                    s,
                    &self.url.addr,
                    (&self.url.user, &self.url.password),
                    &self.url.vhost,
                    self.heartbeat,
                    self.timeout,
                )
            });
            let mut conn = opened.map_err(|e| self.link.failed(&e))?;
            self.setup(&mut conn).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    Error::fatal(format!("amqp {}: {e}", self.url.addr))
                }
                _ => self.link.failed(&e),
            })?;
            self.link.connected();
            self.next_seq = 1;
            self.connection_id += 1;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::retryable("amqp: not connected"))
    }

    /// Confirms on, and the declarations asked for.
    fn setup(&self, conn: &mut Conn) -> std::io::Result<()> {
        let t = self.timeout;
        if !self.exchange_type.is_empty() {
            conn.call(
                &Method::ExchangeDeclare {
                    exchange: self.exchange.clone(),
                    kind: self.exchange_type.clone(),
                },
                t,
            )?;
        }
        if !self.queue.is_empty() {
            conn.declare_queue(&self.queue, &self.exchange, &self.routing_key, t)?;
        }
        conn.call(&Method::Select, t)?;
        Ok(())
    }

    fn properties(&self, message: &Message, id: &str) -> Properties {
        let mut headers = FieldTable::default();
        for h in &message.headers {
            headers.insert(
                h.name.as_str().into(),
                AMQPValue::LongString(LongString::from(h.value.as_bytes().to_vec())),
            );
        }
        Properties {
            content_type: message.header("content-type").map(str::to_owned),
            headers: Some(headers),
            delivery_mode: self.persistent.then_some(2),
            message_id: Some(id.to_owned()),
            timestamp: message.timestamp.map(|ms| ms / 1000),
        }
    }
}

impl Sink for AmqpSink {
    fn metadata() -> Metadata {
        Metadata::new(
            "amqp-sink",
            env!("CARGO_PKG_VERSION"),
            "Publishes messages to a RabbitMQ exchange (AMQP 0.9.1); ok only after the broker's publisher confirm.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = Url::parse(c.text("url")?)
            .map_err(|e| c.invalid("url", &format!("an amqp:// URL ({e})")))?;
        let heartbeat = u16::try_from(c.duration("heartbeat")?.as_secs())
            .map_err(|_| c.invalid("heartbeat", "at most 65535s"))?;
        let mut sink = AmqpSink {
            link: Reconnect::new("amqp", url.addr.clone()),
            url,
            conn: None,
            exchange: c.text("exchange")?.to_owned(),
            routing_key: c.text("routing_key")?.to_owned(),
            exchange_type: c.choice("exchange_type")?.to_owned(),
            queue: c.text("queue")?.to_owned(),
            mandatory: c.bool("mandatory")?,
            persistent: c.bool("persistent")?,
            heartbeat,
            timeout: c.duration("timeout")?,
            next_seq: 1,
            connection_id: 0,
        };
        if !sink.exchange_type.is_empty() && sink.exchange.is_empty() {
            return Err(c.invalid("exchange_type", "nothing without an `exchange` to declare"));
        }
        match sink.connection() {
            Err(e) if e.kind == ErrorKind::Fatal => Err(e),
            _ => Ok(sink),
        }
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        self.write_batch(vec![message.clone()])
            .pop()
            .unwrap_or(Ok(()))
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        let mut results: Vec<Result<(), Error>> = vec![Ok(()); batch.len()];
        if let Err(e) = self.connection() {
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        let first_seq = self.next_seq;
        let mut pending: HashMap<u64, usize> = HashMap::with_capacity(batch.len());
        let mut by_id: HashMap<String, u64> = HashMap::new();
        for (i, message) in batch.iter().enumerate() {
            let routing_key = match (self.routing_key.as_str(), &message.key) {
                ("", Some(key)) => String::from_utf8_lossy(key).into_owned(),
                ("", None) if self.exchange.is_empty() => {
                    results[i] = Err(Error::invalid_data(
                        "no routing key: the message has no key and `routing_key` is not set",
                    ));
                    continue;
                }
                (rk, _) => rk.to_owned(),
            };
            let seq = self.next_seq;
            let id = message
                .header("message-id")
                .map_or_else(|| format!("pb-{}-{seq}", self.connection_id), str::to_owned);
            let properties = self.properties(message, &id);
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            conn.publish(
                &self.exchange,
                &routing_key,
                self.mandatory,
                &properties,
                &message.payload,
            );
            self.next_seq += 1;
            pending.insert(seq, i);
            by_id.insert(id, seq);
        }
        let flushed = match &mut self.conn {
            Some(conn) => conn.flush(),
            None => Ok(()),
        };
        if let Err(e) = flushed {
            self.conn = None;
            let error = self.link.lost(&e);
            for i in pending.into_values() {
                results[i] = Err(error.clone());
            }
            return results;
        }
        let deadline = Instant::now() + self.timeout;
        while !pending.is_empty() {
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            match conn.next(deadline) {
                Ok(Some(Event::Confirm { tag, multiple, ack })) => {
                    let done: Vec<u64> = pending
                        .keys()
                        .copied()
                        .filter(|s| *s == tag || (multiple && *s <= tag && *s >= first_seq))
                        .collect();
                    for seq in done {
                        if let Some(i) = pending.remove(&seq)
                            && !ack
                            && results[i].is_ok()
                        {
                            results[i] = Err(Error::retryable(
                                "amqp: the broker refused the message (nack)",
                            ));
                        }
                    }
                }
                Ok(Some(Event::Return {
                    reply,
                    routing_key,
                    properties,
                })) => {
                    let id = properties.message_id.unwrap_or_default();
                    if let Some(i) = by_id.get(&id).and_then(|seq| pending.get(seq)) {
                        results[*i] = Err(Error::invalid_data(format!(
                            "amqp: exchange `{}` routed the message to no queue (routing key `{routing_key}`): {reply}",
                            self.exchange
                        )));
                    }
                }
                Ok(Some(Event::Delivery(_))) => {}
                Ok(None) => {
                    let error =
                        Error::retryable(format!("amqp: no confirm within {:?}", self.timeout));
                    self.conn = None;
                    for i in pending.values() {
                        results[*i] = Err(error.clone());
                    }
                    break;
                }
                Err(e) => {
                    self.conn = None;
                    let error = self.link.lost(&e);
                    for i in pending.values() {
                        results[*i] = Err(error.clone());
                    }
                    break;
                }
            }
        }
        results
    }
}

patchbay_sdk::export_sink!(AmqpSink);
