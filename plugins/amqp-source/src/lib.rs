//! `amqp-source`: consumes a RabbitMQ queue (AMQP 0.9.1) with manual acknowledgements, over a
//! granted TCP address.
//!
//! ```toml
//! [plugins.mq]
//! path = "target/plugins/amqp-source.wasm"
//! config = { url = "amqp://guest:guest@127.0.0.1:5672/%2f", queue = "orders" }
//! grants = { tcp = ["127.0.0.1:5672"] }
//! ```
//!
//! Each delivery becomes a message: the body as payload, the routing key as key, the AMQP
//! headers (text values) as headers, with `content-type` and `message-id` when the message has
//! them. The broker sends at most `prefetch` unacknowledged deliveries (basic.qos); they are
//! acknowledged (`basic.ack`, multiple) only in `ack`, after every destination took them, so
//! what a crash or a lost connection leaves unacknowledged is delivered again (marked
//! redelivered by the broker): at least once, nothing lost. With `declare = true` the queue is
//! declared (durable) and, with `exchange`, bound with `binding_key`.
//!
//! Heartbeats: the pipeline polls a source continuously (an idle one every few
//! milliseconds), and each poll sends a heartbeat when one is due, so the broker keeps the
//! connection while the queue is quiet. Several instances (`concurrency`) are competing
//! consumers of the queue, each with its own connection.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use patchbay_proto_amqp::codec::Method;
use patchbay_proto_amqp::{Conn, Delivery, Event, Url, value_text};
use patchbay_sdk::net::Reconnect;
use patchbay_sdk::{Config, Error, ErrorKind, Key, Message, Metadata, PollResult, Source, tls};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`amqp://user:password@host:port/vhost` (vhost `/` is `%2f`, the default), or `amqps://…` (port 5671) for TLS, done by the host; the address must be granted in `grants.tcp`.",
    )
    .default("amqp://guest:guest@127.0.0.1:5672/%2f"),
    Key::text("queue", "The queue to consume.").required(),
    Key::uint("prefetch", "Most unacknowledged deliveries the broker sends (basic.qos).").default("1000").range(1, 65535),
    Key::bool("declare", "Declare the queue (durable) at start, and bind it to `exchange` when given.").default("false"),
    Key::text("exchange", "With `declare`: bind the queue to this exchange.").default(""),
    Key::text("binding_key", "With `declare` and `exchange`: the binding key.").default(""),
    Key::duration("wait", "How long one poll waits for a first delivery, e.g. \"100ms\" (at most 900ms).")
        .default("100ms")
        .range(0, 900),
    Key::duration("heartbeat", "Heartbeat interval asked of the broker (0s: none).").default("60s"),
];

const SETUP: Duration = Duration::from_secs(10);

struct AmqpSource {
    url: Url,
    link: Reconnect,
    conn: Option<Conn>,
    queue: String,
    prefetch: u16,
    declare: bool,
    exchange: String,
    binding_key: String,
    wait: Duration,
    heartbeat: u16,
    consumer: String,
    /// Which connection delivery tags belong to (they start over on each).
    generation: u64,
    /// Batches delivered and not acknowledged: checkpoint, generation, last delivery tag.
    inflight: VecDeque<(u64, u64, u64)>,
    checkpoint: u64,
}

fn message(d: Delivery) -> Message {
    let mut m = Message::new(d.body).with_key(d.routing_key.into_bytes());
    if let Some(headers) = &d.properties.headers {
        for (name, value) in headers.inner() {
            if let Some(text) = value_text(value) {
                m = m.with_header(name.as_str(), text);
            }
        }
    }
    if let Some(ct) = &d.properties.content_type {
        m = m.with_header("content-type", ct.as_str());
    }
    if let Some(id) = &d.properties.message_id {
        m = m.with_header("message-id", id.as_str());
    }
    m
}

impl AmqpSource {
    fn connect(&mut self) -> Result<(), Error> {
        if self.conn.is_some() {
            return Ok(());
        }
        self.link.ready()?;
        let opened = tls::connect(&self.url.addr, tls::Start::tls_if(self.url.tls), SETUP)
            .and_then(|s| {
                Conn::open(
                    s,
                    &self.url.addr,
                    (&self.url.user, &self.url.password),
                    &self.url.vhost,
                    self.heartbeat,
                    SETUP,
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
        self.generation += 1;
        self.conn = Some(conn);
        Ok(())
    }

    fn setup(&self, conn: &mut Conn) -> std::io::Result<()> {
        if self.declare {
            conn.declare_queue(&self.queue, &self.exchange, &self.binding_key, SETUP)?;
        }
        conn.call(
            &Method::Qos {
                prefetch: self.prefetch,
            },
            SETUP,
        )?;
        conn.call(
            &Method::Consume {
                queue: self.queue.clone(),
                tag: self.consumer.clone(),
            },
            SETUP,
        )?;
        Ok(())
    }

    fn lost(&mut self, e: &std::io::Error) -> Error {
        self.conn = None;
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                Error::fatal(format!("amqp {}: {e}", self.url.addr))
            }
            _ => self.link.lost(e),
        }
    }
}

impl Source for AmqpSource {
    fn metadata() -> Metadata {
        Metadata::new(
            "amqp-source",
            env!("CARGO_PKG_VERSION"),
            "Consumes a RabbitMQ queue (AMQP 0.9.1); basic.ack only after delivery.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = Url::parse(c.text("url")?)
            .map_err(|e| c.invalid("url", &format!("an amqp:// URL ({e})")))?;
        let queue = c.text("queue")?.to_owned();
        if queue.is_empty() {
            return Err(c.invalid("queue", "a queue name"));
        }
        let heartbeat = u16::try_from(c.duration("heartbeat")?.as_secs())
            .map_err(|_| c.invalid("heartbeat", "at most 65535s"))?;
        let mut source = AmqpSource {
            link: Reconnect::new("amqp", url.addr.clone()),
            url,
            conn: None,
            queue,
            prefetch: u16::try_from(c.uint("prefetch")?).unwrap_or(u16::MAX),
            declare: c.bool("declare")?,
            exchange: c.text("exchange")?.to_owned(),
            binding_key: c.text("binding_key")?.to_owned(),
            wait: c.duration("wait")?,
            heartbeat,
            consumer: "patchbay".into(),
            generation: 0,
            inflight: VecDeque::new(),
            checkpoint: 0,
        };
        match source.connect() {
            Err(e) if e.kind == ErrorKind::Fatal => Err(e),
            _ => Ok(source),
        }
    }

    fn share(&mut self, instance: u32, _instances: u32) -> Result<(), String> {
        // Competing consumers of one queue: each instance its own connection and tag.
        self.consumer = format!("patchbay-{instance}");
        Ok(())
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        self.connect()?;
        let mut messages = Vec::new();
        let mut last_tag = None;
        let mut deadline = Instant::now() + self.wait;
        while messages.len() < max as usize {
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            match conn.next(deadline) {
                Ok(Some(Event::Delivery(d))) => {
                    last_tag = Some(d.delivery_tag);
                    messages.push(message(d));
                    // Once something came, take only what is already here.
                    deadline = Instant::now() + Duration::from_millis(1);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    let error = self.lost(&e);
                    if messages.is_empty() {
                        return Err(error);
                    }
                    // What arrived is delivered; its acks go nowhere (the broker sends the
                    // messages again on the next connection).
                    break;
                }
            }
        }
        let Some(tag) = last_tag else {
            return Ok(PollResult::batch(messages, self.checkpoint));
        };
        self.checkpoint += 1;
        self.inflight
            .push_back((self.checkpoint, self.generation, tag));
        Ok(PollResult::batch(messages, self.checkpoint))
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        let mut last = None;
        while self
            .inflight
            .front()
            .is_some_and(|(c, _, _)| *c <= checkpoint)
        {
            last = self.inflight.pop_front();
        }
        let Some((_, generation, tag)) = last else {
            return Ok(());
        };
        if generation != self.generation {
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        // basic.ack has no answer; the basic.qos round trip after it proves the broker has
        // processed it (frames on a channel are handled in order). Without it, an ack written
        // just before the pipeline stops can be lost: closing a socket with unread input
        // resets the connection, and the broker may drop what it had not read yet, so the
        // batch would be delivered again after a clean stop.
        let prefetch = self.prefetch;
        let acked = conn
            .cast(&Method::Ack {
                delivery_tag: tag,
                multiple: true,
            })
            .and_then(|()| conn.call(&Method::Qos { prefetch }, SETUP).map(drop));
        acked.map_err(|e| self.lost(&e))
    }
}

patchbay_sdk::export_source!(AmqpSource);
