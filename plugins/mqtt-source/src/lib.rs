//! `mqtt-source`: subscribes to MQTT 3.1.1 topics over a granted TCP address. With QoS 1 each
//! message is acknowledged to the broker (`PUBACK`) only once the pipeline has delivered it.
//!
//! ```toml
//! [plugins.devices]
//! path = "target/plugins/mqtt-source.wasm"
//! config = { url = "mqtt://127.0.0.1:1883", topics = ["sensors/#"], qos = 1, client_id = "patchbay-devices" }
//! grants = { tcp = ["127.0.0.1:1883"] }
//! ```
//!
//! - The message key is the topic; the payload is the MQTT payload.
//! - With `qos = 1` the session is persistent (`clean_session = false`, so use a stable
//!   `client_id`): messages not yet acknowledged when the connection or Patchbay goes away are
//!   sent again by the broker. Delivery is at least once.
//! - Several instances (`concurrency` on the source) need shared subscriptions: every filter
//!   written `$share/GROUP/filter`; instance N connects as `client_id-N`.
//! - A lost connection is a `retryable` error of `poll` (`ack` only logs it: the broker sends
//!   what was not acknowledged again); `poll` reconnects and subscribes again, with a back-off
//!   that doubles from 100 ms to 5 s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use patchbay_sdk::net::{self, Reconnect};
use patchbay_sdk::tls;
use patchbay_sdk::{Config, Error, Key, Message, Metadata, PollResult, Source};

use patchbay_proto_mqtt::{Conn, Options, Packet};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`mqtt://[user[:password]@]host[:port]`, or `mqtts://…` (port 8883 by default) for TLS, done by the host (the server verified against the system roots or `grants.tls.ca`); the address must be granted in `grants.tcp`.",
    )
    .default("mqtt://127.0.0.1:1883"),
    Key::json(
        "topics",
        "Array of topic filters, wildcards allowed, e.g. [\"sensors/+/temp\", \"alerts/#\"].",
    )
    .required(),
    Key::uint(
        "qos",
        "0 (at most once) or 1 (at least once: acknowledged after delivery, persistent session).",
    )
    .default("1"),
    Key::text(
        "client_id",
        "The MQTT client id; keep it stable with QoS 1 so that the broker keeps the session.",
    )
    .default("patchbay"),
    Key::duration(
        "wait",
        "How long one poll waits for a first message, e.g. \"100ms\" (at most 900ms).",
    )
    .default("100ms")
    .range(1, 900)
    .note("a poll must end within its call deadline")
    .alias_ms("wait_ms"),
    Key::uint("keep_alive", "Keep-alive interval in seconds.")
        .default("30")
        .range(0, 65535),
];

struct MqttSource {
    link: Reconnect,
    /// `mqtts://`: TLS, done by the host (`grants.tls`).
    tls: bool,
    user: Option<String>,
    password: Option<String>,
    client_id: String,
    topics: Vec<(String, u8)>,
    qos: u8,
    wait: Duration,
    keep_alive: u16,
    conn: Option<Conn>,
    last_sent: Instant,
    /// QoS 1 packet ids to acknowledge, by checkpoint.
    inflight: VecDeque<(u64, Vec<u16>)>,
    checkpoint: u64,
}

impl MqttSource {
    fn connect(&mut self) -> Result<(), Error> {
        if self.conn.is_some() {
            return Ok(());
        }
        self.link.ready()?;
        let options = Options {
            client_id: &self.client_id,
            clean_session: self.qos == 0,
            keep_alive: self.keep_alive,
            username: self.user.as_deref(),
            password: self.password.as_deref(),
        };
        let connected = tls::connect(
            self.link.addr(),
            tls::Start::tls_if(self.tls),
            Duration::from_secs(5),
        )
        .and_then(|s| Conn::over(s, self.link.addr(), &options))
        .and_then(|mut conn| {
            conn.subscribe(1, &self.topics)?;
            conn.set_timeout(self.wait)?;
            Ok(conn)
        });
        let conn = connected.map_err(|e| self.link.failed(&e))?;
        self.link.connected();
        self.last_sent = Instant::now();
        // Packet ids of the old connection mean nothing on the new one; the broker sends what
        // was not acknowledged again.
        self.inflight.clear();
        self.conn = Some(conn);
        Ok(())
    }

    fn lost(&mut self, e: &std::io::Error) -> Error {
        self.conn = None;
        self.link.lost(e)
    }
}

impl Source for MqttSource {
    fn metadata() -> Metadata {
        Metadata::new(
            "mqtt-source",
            env!("CARGO_PKG_VERSION"),
            "Subscribes to MQTT 3.1.1 topics; with QoS 1, PUBACK only after delivery.",
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
        let qos = match c.uint("qos")? {
            0 => 0,
            1 => 1,
            _ => return Err(c.invalid("qos", "0 or 1")),
        };
        let topics: Vec<String> = c
            .json("topics")?
            .ok_or_else(|| c.invalid("topics", "an array of topic filters"))?;
        if topics.is_empty() || topics.iter().any(String::is_empty) {
            return Err(c.invalid("topics", "a non-empty array of non-empty topic filters"));
        }
        let client_id = c.text("client_id")?.to_owned();
        if client_id.is_empty() || client_id.len() > 65535 {
            return Err(c.invalid("client_id", "a non-empty client id"));
        }
        let wait = c.duration("wait")?;
        let keep_alive = u16::try_from(c.uint("keep_alive")?)
            .map_err(|_| c.invalid("keep_alive", "0 to 65535"))?;
        let mut source = MqttSource {
            link: Reconnect::new("mqtt", addr),
            tls,
            user,
            password,
            client_id,
            topics: topics.into_iter().map(|t| (t, qos)).collect(),
            qos,
            wait,
            keep_alive,
            conn: None,
            last_sent: Instant::now(),
            inflight: VecDeque::new(),
            checkpoint: 0,
        };
        match source.connect() {
            Ok(()) => {}
            Err(e) if e.kind == patchbay_sdk::ErrorKind::Fatal => {
                return Err(Error::fatal(format!("config key `url`: {}", e.message)));
            }
            Err(_) => {} // logged; `poll` tries again
        }
        Ok(source)
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        self.connect()?;
        if max == 0 {
            return Ok(PollResult::batch(Vec::new(), self.checkpoint));
        }
        let keep_alive = Duration::from_secs(u64::from(self.keep_alive) / 2);
        let mut messages = Vec::new();
        let mut ids = Vec::new();
        let result = (|| -> std::io::Result<()> {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(());
            };
            if self.keep_alive > 0 && self.last_sent.elapsed() >= keep_alive {
                conn.ping()?;
                self.last_sent = Instant::now();
            }
            conn.set_timeout(self.wait)?;
            while messages.len() < max as usize {
                match conn.read()? {
                    Some(Packet::Publish {
                        id, topic, payload, ..
                    }) => {
                        if messages.is_empty() {
                            // Take what is already there, without waiting again.
                            conn.set_timeout(Duration::from_millis(1))?;
                        }
                        if let Some(id) = id {
                            ids.push(id);
                        }
                        messages.push(Message::new(payload).with_key(topic.into_bytes()));
                    }
                    Some(Packet::SubAck { codes, .. }) if codes.contains(&0x80) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            "the broker refused the subscription",
                        ));
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::fatal(format!(
                    "mqtt {}: {e} for {:?}",
                    self.link.addr(),
                    self.topics.iter().map(|(t, _)| t).collect::<Vec<_>>()
                )));
            }
            Err(e) => {
                // What was read before the failure still goes: the broker will send the
                // QoS 1 ones again, and the pipeline delivers them twice (at least once).
                let error = self.lost(&e);
                if messages.is_empty() {
                    return Err(error);
                }
                ids.clear();
            }
        }
        if !messages.is_empty() {
            self.checkpoint += 1;
            if !ids.is_empty() {
                self.inflight.push_back((self.checkpoint, ids));
            }
        }
        Ok(PollResult::batch(messages, self.checkpoint))
    }

    /// Only a shared subscription (`$share/GROUP/filter`) splits the messages; each instance
    /// needs its own client id (instance N: `client_id-N`; instance 1 keeps `client_id`).
    fn share(&mut self, instance: u32, instances: u32) -> Result<(), String> {
        if let Some((topic, _)) = self.topics.iter().find(|(t, _)| !t.starts_with("$share/")) {
            return Err(format!(
                "topic filter `{topic}` is not a shared subscription, so each of the \
                 {instances} instances would get every message; write it as \
                 `$share/GROUP/{topic}` (every filter of `topics`)"
            ));
        }
        if instance > 1 {
            self.client_id = format!("{}-{instance}", self.client_id);
            // `init` connected with the configured id; the next poll connects with this one.
            self.conn = None;
        }
        Ok(())
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        let mut done = Vec::new();
        while self
            .inflight
            .front()
            .is_some_and(|(cp, _)| *cp <= checkpoint)
        {
            if let Some((_, ids)) = self.inflight.pop_front() {
                done.extend(ids);
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            // The connection that received them is gone; the broker sends them again.
            return Ok(());
        };
        let sent = done.iter().try_for_each(|id| conn.puback(*id));
        match sent {
            Ok(()) => {
                if !done.is_empty() {
                    self.last_sent = Instant::now();
                }
                Ok(())
            }
            Err(e) => {
                // An error from `ack` would stop the pipeline: drop the connection instead (the
                // next poll reconnects), and the broker sends what was not acknowledged again.
                let _ = self.lost(&e);
                Ok(())
            }
        }
    }
}

patchbay_sdk::export_source!(MqttSource);
