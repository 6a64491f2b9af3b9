//! `mqtt-sink`: publishes messages to an MQTT 3.1.1 broker over a granted TCP address, with
//! QoS 0 or 1 (a message is `ok` once the broker's `PUBACK` for it came back).
//!
//! ```toml
//! [plugins.alerts]
//! path = "target/plugins/mqtt-sink.wasm"
//! config = { url = "mqtt://127.0.0.1:1883", topic = "alerts/out", qos = 1 }
//! grants = { tcp = ["127.0.0.1:1883"] }
//! ```
//!
//! The topic is `topic`, or with `topic_from_key = true` the message key when it has one. A
//! batch goes out in one write; with QoS 1 the sink then waits for every `PUBACK` (at most
//! `timeout`), and a message without one is `retryable`. A lost connection is `retryable`
//! for the whole batch, and the next call reconnects (back-off doubling from 100 ms to 5 s).
//!
//! With QoS 1 a batch takes at least one round trip to the broker; with Mosquitto's default
//! `set_tcp_nodelay false`, the broker's many small `PUBACK`s are held back by Nagle's algorithm
//! for the client's delayed ACK, about 40 ms per batch: large batches (`batch_size`) or
//! `set_tcp_nodelay true` in mosquitto.conf keep the rate up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use patchbay_sdk::net::{self, Reconnect};
use patchbay_sdk::tls;
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Sink};

use patchbay_proto_mqtt::{Conn, Options, Packet};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`mqtt://[user[:password]@]host[:port]`, or `mqtts://…` (port 8883 by default) for TLS, done by the host (the server verified against the system roots or `grants.tls.ca`); the address must be granted in `grants.tcp`.",
    )
    .default("mqtt://127.0.0.1:1883"),
    Key::text("topic", "The topic to publish to.").required(),
    Key::bool(
        "topic_from_key",
        "Boolean: publish each message to its key (as text) when it has one.",
    )
    .default("false"),
    Key::uint(
        "qos",
        "0 (fire and forget) or 1 (ok once the broker acknowledged it).",
    )
    .default("1"),
    Key::bool("retain", "Boolean: set the retain flag.").default("false"),
    Key::text(
        "client_id",
        "The MQTT client id (must differ from every other client of the broker).",
    )
    .default("patchbay-sink"),
    Key::duration(
        "timeout",
        "How long to wait for the broker's acknowledgements of a batch, e.g. \"500ms\" (at most 900ms).",
    )
    .default("500ms")
    .range(1, 900)
    .note("within the call deadline")
    .alias_ms("timeout_ms"),
];

struct MqttSink {
    link: Reconnect,
    /// `mqtts://`: TLS, done by the host (`grants.tls`).
    tls: bool,
    user: Option<String>,
    password: Option<String>,
    client_id: String,
    topic: String,
    topic_from_key: bool,
    qos: u8,
    retain: bool,
    timeout: Duration,
    conn: Option<Conn>,
    next_id: u16,
}

impl MqttSink {
    fn connect(&mut self) -> Result<(), Error> {
        if self.conn.is_some() {
            return Ok(());
        }
        self.link.ready()?;
        let options = Options {
            client_id: &self.client_id,
            clean_session: true,
            keep_alive: 0,
            username: self.user.as_deref(),
            password: self.password.as_deref(),
        };
        let conn = tls::connect(self.link.addr(), tls::Start::tls_if(self.tls), self.timeout)
            .and_then(|s| Conn::over(s, self.link.addr(), &options))
            .map_err(|e| self.link.failed(&e))?;
        self.link.connected();
        self.conn = Some(conn);
        Ok(())
    }

    fn lost(&mut self, e: &std::io::Error) -> Error {
        self.conn = None;
        self.link.lost(e)
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }
}

impl Sink for MqttSink {
    fn metadata() -> Metadata {
        Metadata::new(
            "mqtt-sink",
            env!("CARGO_PKG_VERSION"),
            "Publishes messages to an MQTT 3.1.1 broker with QoS 0 or 1.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = c.text("url")?;
        let (tls, plain) = net::tls_url(url, "mqtt", "mqtts");
        let port = if tls { 8883 } else { 1883 };
        let (addr, user, password) = net::parse_url(&plain, "mqtt", port)
            .map_err(|e| c.invalid("url", &format!("mqtt[s]://host:port ({e})")))?;
        let topic = c.text("topic")?.to_owned();
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(c.invalid("topic", "a topic name without wildcards"));
        }
        let qos = match c.uint("qos")? {
            0 => 0,
            1 => 1,
            _ => return Err(c.invalid("qos", "0 or 1")),
        };
        let timeout = c.duration("timeout")?;
        let client_id = c.text("client_id")?.to_owned();
        if client_id.is_empty() {
            return Err(c.invalid("client_id", "a non-empty client id"));
        }
        let mut sink = MqttSink {
            link: Reconnect::new("mqtt", addr),
            tls,
            user,
            password,
            client_id,
            topic,
            topic_from_key: c.bool("topic_from_key")?,
            qos,
            retain: c.bool("retain")?,
            timeout,
            conn: None,
            next_id: 0,
        };
        match sink.connect() {
            Ok(()) => {}
            Err(e) if e.kind == patchbay_sdk::ErrorKind::Fatal => {
                return Err(Error::fatal(format!("config key `url`: {}", e.message)));
            }
            Err(_) => {} // logged; `write` tries again
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
        let mut bytes = Vec::new();
        let mut waiting: HashMap<u16, usize> = HashMap::new();
        for (i, m) in batch.iter().enumerate() {
            let topic = match (&m.key, self.topic_from_key) {
                (Some(key), true) => String::from_utf8_lossy(key).into_owned(),
                _ => self.topic.clone(),
            };
            let id = if self.qos > 0 { self.id() } else { 0 };
            if self.qos > 0 {
                waiting.insert(id, i);
            }
            Conn::publish(&mut bytes, &topic, self.qos, id, self.retain, &m.payload);
        }
        let mut results: Vec<Result<(), Error>> = vec![Ok(()); batch.len()];
        let Some(conn) = self.conn.as_mut() else {
            return batch
                .iter()
                .map(|_| Err(Error::retryable("mqtt: not connected")))
                .collect();
        };
        let timeout = self.timeout;
        let sent = conn.send(&bytes).and_then(|()| {
            let deadline = Instant::now() + timeout;
            conn.set_timeout(Duration::from_millis(20))?;
            while !waiting.is_empty() && Instant::now() < deadline {
                if let Some(Packet::PubAck { id }) = conn.read()? {
                    waiting.remove(&id);
                }
            }
            Ok(())
        });
        if let Err(e) = sent {
            let error = self.lost(&e);
            return batch.iter().map(|_| Err(error.clone())).collect();
        }
        for i in waiting.into_values() {
            results[i] = Err(Error::retryable(format!(
                "mqtt {}: no PUBACK within {:?}",
                self.link.addr(),
                self.timeout
            )));
        }
        results
    }
}

patchbay_sdk::export_sink!(MqttSink);
