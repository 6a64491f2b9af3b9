//! The `connectors` section: messages per second through two bridges of `examples/`, run by
//! `patchbay run` against the real services on 127.0.0.1, next to a ceiling made by plain
//! clients (written here, blocking, one connection each) against the same servers.
//!
//! - HTTP → Redis: http-source (`split = "lines"`) → json-map (`set via`) → redis-sink stream,
//!   as in `examples/webhook-to-redis`, fed by 16 keep-alive connections POSTing NDJSON bodies
//!   of 100 messages. Ceilings: the same payloads XADDed by one connection, 100 commands per
//!   round trip; and the same HTTP load against http-source → blackhole.
//! - MQTT → NATS JetStream: mqtt-source (QoS 1) → json-map → nats-sink (jetstream), as in
//!   `examples/mqtt-to-nats`, fed by a QoS 1 publisher. Ceilings: the MQTT leg alone (the same
//!   publisher, a QoS 1 subscriber) and the JetStream leg alone (a publisher with up to 512
//!   PubAcks outstanding); the slower one counts.
//!
//! Every run checks its count (XLEN, the stream's message count, what the subscriber got);
//! timings are reported, never checked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use super::{Options, Report};

const REDIS: &str = "127.0.0.1:6379";
const MQTT: &str = "127.0.0.1:1883";
const NATS: &str = "127.0.0.1:4222";

/// The services, with the command that starts each (as CI does).
const SERVICES: [(&str, &str, &str); 3] = [
    (
        "Redis",
        REDIS,
        "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" \
         --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    ),
    (
        "Mosquitto",
        MQTT,
        "mosquitto -d -c /etc/mosquitto/mosquitto.conf",
    ),
    (
        "nats-server (JetStream)",
        NATS,
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a \
         127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log",
    ),
];

/// HTTP load: this many connections, each POSTing bodies of `PER_BODY` messages.
const CONNECTIONS: usize = 16;
const PER_BODY: usize = 100;
/// Redis ceiling: XADDs per round trip.
const PIPELINE: usize = 100;
/// MQTT publisher: at most this many PUBLISHes without a PUBACK, and at most this many ahead
/// of what has arrived at the other end. Mosquitto drops QoS 1 messages queued for a
/// subscriber beyond `max_queued_messages` (1,000 by default, plus 20 in flight), counting
/// those it sent and has no PUBACK for; Patchbay PUBACKs a message only after the stream
/// stored it and the runtime acknowledged its batch, so the broker can hold about twice what
/// the stream count says is ahead. 800 and 500 ahead lost messages at the start of a run;
/// 400 has not.
const UNACKED: usize = 500;
const AHEAD: u64 = 400;
/// NATS ceiling: PubAcks outstanding.
const OUTSTANDING: usize = 512;
/// Give up when nothing moves for this long.
const STALL: Duration = Duration::from_secs(60);

/// A name no other run uses: `{pid}-{nanos}`.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

pub(crate) fn connect(addr: &str) -> anyhow::Result<TcpStream> {
    let parsed: SocketAddr = addr.parse()?;
    let stream = TcpStream::connect_timeout(&parsed, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STALL))?;
    Ok(stream)
}

/// A sensor reading of `size` bytes, as the mqtt-to-nats example expects:
/// `{"seq":N,"temp":21.5,"debug":true,"note":"xxx…"}`.
fn reading(n: u64, size: usize) -> Vec<u8> {
    let head = format!(r#"{{"seq":{n},"temp":21.5,"debug":true,"note":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut text = head;
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str("\"}");
    text.into_bytes()
}

fn per_s(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn k(rate: f64) -> String {
    format!("{:.1} k/s", rate / 1e3)
}

// ---------------------------------------------------------------------------------------------
// `patchbay run`

/// A `patchbay run` in the background, its log read as it comes; killed if dropped.
pub(crate) struct Running {
    child: Child,
    log: Option<JoinHandle<String>>,
}

impl Running {
    pub(crate) fn start(
        o: &Options,
        dir: &Path,
        name: &str,
        toml: &str,
    ) -> anyhow::Result<Running> {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, toml)?;
        let mut child = Command::new(&o.patchbay)
            .args(["run", "--progress", "0s"])
            .arg(&file)
            .env("PATCHBAY_CACHE_DIR", dir.join("cache"))
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", o.patchbay.display()))?;
        let log = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
        });
        Ok(Running { child, log })
    }

    /// Fails (with the log) if the run has ended.
    fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = self
                .log
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default();
            bail!("`patchbay run` ended early ({status}):\n{log}");
        }
        Ok(())
    }

    /// Wait until `ready` holds, checking that the run is still going.
    pub(crate) fn wait_for(
        &mut self,
        what: &str,
        mut ready: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + STALL;
        while !ready()? {
            self.check()?;
            if Instant::now() > deadline {
                bail!("{what}: not after {STALL:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Ctrl-C, then the log; fails if the run did not end well.
    pub(crate) fn stop(mut self) -> anyhow::Result<String> {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        let status = self.child.wait()?;
        let log = self
            .log
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            bail!("`patchbay run` failed ({status}):\n{log}");
        }
        Ok(log)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP load

/// POST every body in `bodies` over `CONNECTIONS` keep-alive connections; the time from the
/// first request to the last `200` answer.
fn http_load(port: u16, token: &str, bodies: &Arc<Vec<Vec<u8>>>) -> anyhow::Result<Duration> {
    let addr = format!("127.0.0.1:{port}");
    let next = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(CONNECTIONS + 1));
    let mut threads = Vec::new();
    for _ in 0..CONNECTIONS {
        let (addr, token, bodies, next, go) = (
            addr.clone(),
            token.to_owned(),
            bodies.clone(),
            next.clone(),
            go.clone(),
        );
        threads.push(std::thread::spawn(move || -> anyhow::Result<Instant> {
            let first = connect(&addr);
            go.wait();
            let mut conn = Some(BufReader::new(first?));
            let mut last = Instant::now();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return Ok(last);
                };
                let head = format!(
                    "POST /events HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
                     content-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let mut tries = 0;
                loop {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => conn.insert(BufReader::new(connect(&addr)?)),
                    };
                    c.get_mut().write_all(head.as_bytes())?;
                    c.get_mut().write_all(body)?;
                    let (status, close, answer) = http_answer(c)?;
                    if close {
                        conn = None;
                    }
                    match status {
                        200 => {
                            let expected = format!("{{\"accepted\":{PER_BODY}}}");
                            if answer != expected {
                                bail!("http-source answered `{answer}`, not `{expected}`");
                            }
                            last = Instant::now();
                            break;
                        }
                        // Back-pressure: send again a little later.
                        503 if tries < 1000 => {
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        _ => bail!("http-source answered {status}: {answer}"),
                    }
                }
            }
        }));
    }
    go.wait();
    let started = Instant::now();
    let mut last = started;
    for t in threads {
        let end = t
            .join()
            .map_err(|_| anyhow!("an HTTP load thread panicked"))??;
        last = last.max(end);
    }
    Ok(last - started)
}

/// One HTTP answer: status, whether the server closes the connection, body.
pub(crate) fn http_answer(c: &mut BufReader<TcpStream>) -> anyhow::Result<(u16, bool, String)> {
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        bail!("http-source closed the connection without an answer");
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let mut length = 0;
    let mut close = false;
    loop {
        line.clear();
        c.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse()?;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    let mut body = vec![0; length];
    c.read_exact(&mut body)?;
    Ok((status, close, String::from_utf8_lossy(&body).into_owned()))
}

// ---------------------------------------------------------------------------------------------
// Redis (RESP)

enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

struct Redis {
    conn: BufReader<TcpStream>,
}

impl Redis {
    fn connect() -> anyhow::Result<Redis> {
        Ok(Redis {
            conn: BufReader::new(connect(REDIS)?),
        })
    }

    fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }

    fn reply(&mut self) -> anyhow::Result<Reply> {
        let mut line = String::new();
        if self.conn.read_line(&mut line)? == 0 {
            bail!("Redis closed the connection");
        }
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => bail!("Redis: {rest}"),
            ":" => Reply::Int(rest.parse()?),
            "$" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut bytes = vec![0; n as usize + 2];
                    self.conn.read_exact(&mut bytes)?;
                    bytes.truncate(n as usize);
                    Reply::Bulk(Some(bytes))
                }
            }
            _ => bail!("unexpected from Redis: {line:?}"),
        })
    }

    fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        let mut out = Vec::new();
        Self::encode(&mut out, args);
        self.conn.get_mut().write_all(&out)?;
        self.reply()
    }

    fn xlen(&mut self, key: &str) -> anyhow::Result<i64> {
        match self.command(&[b"XLEN", key.as_bytes()])? {
            Reply::Int(n) => Ok(n),
            _ => bail!("XLEN {key}: not an integer"),
        }
    }

    fn del(&mut self, key: &str) -> anyhow::Result<()> {
        self.command(&[b"DEL", key.as_bytes()]).map(drop)
    }

    /// XADD every payload to `key` (field `payload`, as redis-sink writes), `PIPELINE` per
    /// round trip; the time it took.
    fn xadd_all(&mut self, key: &str, payloads: &[Vec<u8>]) -> anyhow::Result<Duration> {
        let mut out = Vec::new();
        let started = Instant::now();
        for chunk in payloads.chunks(PIPELINE) {
            out.clear();
            for p in chunk {
                Self::encode(&mut out, &[b"XADD", key.as_bytes(), b"*", b"payload", p]);
            }
            self.conn.get_mut().write_all(&out)?;
            for _ in chunk {
                match self.reply()? {
                    Reply::Bulk(Some(_)) => {}
                    Reply::Simple(s) => bail!("XADD {key}: `{s}`, not an entry id"),
                    _ => bail!("XADD {key}: not an entry id"),
                }
            }
        }
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1

/// A packet: the first byte (type and flags) and the rest.
type Packet = (u8, Vec<u8>);

struct Mqtt {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Where the unparsed bytes of `buf` start.
    pos: usize,
}

fn mqtt_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn mqtt_packet(out: &mut Vec<u8>, first: u8, body: &[&[u8]]) {
    out.push(first);
    let mut left = body.iter().map(|b| b.len()).sum::<usize>();
    loop {
        let byte = (left % 128) as u8;
        left /= 128;
        out.push(if left > 0 { byte | 0x80 } else { byte });
        if left == 0 {
            break;
        }
    }
    for b in body {
        out.extend_from_slice(b);
    }
}

impl Mqtt {
    fn connect(client_id: &str, clean: bool) -> anyhow::Result<Mqtt> {
        let mut m = Mqtt {
            stream: connect(MQTT)?,
            buf: Vec::new(),
            pos: 0,
        };
        let mut head = Vec::new();
        mqtt_string(&mut head, b"MQTT");
        // Level 4 (3.1.1), flags (clean session or not), keep-alive 600 s.
        head.extend_from_slice(&[4, if clean { 0x02 } else { 0 }, 0x02, 0x58]);
        let mut id = Vec::new();
        mqtt_string(&mut id, client_id.as_bytes());
        let mut out = Vec::new();
        mqtt_packet(&mut out, 0x10, &[&head, &id]);
        m.stream.write_all(&out)?;
        match m.next(STALL)? {
            Some((0x20, body)) if body.get(1) == Some(&0) => Ok(m),
            Some((0x20, body)) => bail!("Mosquitto refused the connection: CONNACK {body:?}"),
            other => bail!("no CONNACK from Mosquitto: {other:?}"),
        }
    }

    /// A complete packet in the buffer, if there is one.
    fn parse(&mut self) -> Option<Packet> {
        let b = &self.buf[self.pos..];
        let (mut len, mut shift, mut i) = (0usize, 0, 1);
        loop {
            let byte = *b.get(i)?;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let body = b.get(i..i + len)?.to_vec();
        let first = b[0];
        self.pos += i + len;
        Some((first, body))
    }

    /// Read what has arrived, waiting at most `wait`; false if nothing came.
    fn fill(&mut self, wait: Duration) -> anyhow::Result<bool> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_micros(100))))?;
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => bail!("Mosquitto closed the connection"),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The next packet, waiting at most `wait` for it.
    fn next(&mut self, wait: Duration) -> anyhow::Result<Option<Packet>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(p) = self.parse() {
                return Ok(Some(p));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(left)? {
                return Ok(None);
            }
        }
    }

    fn subscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        let mut body = vec![0, 1];
        mqtt_string(&mut body, filter.as_bytes());
        body.push(1);
        let mut out = Vec::new();
        mqtt_packet(&mut out, 0x82, &[&body]);
        self.stream.write_all(&out)?;
        match self.next(STALL)? {
            Some((0x90, body)) if body.get(2) == Some(&1) => Ok(()),
            other => bail!("Mosquitto did not grant QoS 1 on `{filter}`: {other:?}"),
        }
    }

    fn disconnect(mut self) {
        let _ = self.stream.write_all(&[0xe0, 0]);
    }

    /// Publish every payload to `topic` with QoS 1, at most `UNACKED` without a PUBACK and at
    /// most `AHEAD` beyond `arrived`; returns when all are acknowledged, with the time of the
    /// first PUBLISH.
    fn publish_all(
        &mut self,
        topic: &str,
        payloads: &[Vec<u8>],
        arrived: &AtomicU64,
    ) -> anyhow::Result<Instant> {
        let mut topic_bytes = Vec::new();
        mqtt_string(&mut topic_bytes, topic.as_bytes());
        let (mut sent, mut acked, mut id) = (0usize, 0usize, 0u16);
        let mut out = Vec::new();
        let started = Instant::now();
        let mut moved = started;
        while acked < payloads.len() {
            let limit = arrived.load(Ordering::Relaxed) + AHEAD;
            while sent < payloads.len() && sent - acked < UNACKED && (sent as u64) < limit {
                id = id % u16::MAX + 1;
                mqtt_packet(
                    &mut out,
                    0x32,
                    &[&topic_bytes, &id.to_be_bytes(), &payloads[sent]],
                );
                sent += 1;
            }
            if !out.is_empty() {
                self.stream.write_all(&out)?;
                out.clear();
                moved = Instant::now();
            }
            self.fill(Duration::from_millis(1))?;
            while let Some((first, _)) = self.parse() {
                match first {
                    0x40 => {
                        acked += 1;
                        moved = Instant::now();
                    }
                    0xd0 => {} // PINGRESP
                    other => bail!("unexpected MQTT packet {other:#x} while publishing"),
                }
            }
            if moved.elapsed() > STALL {
                bail!(
                    "MQTT publisher stuck: {sent} sent, {acked} acknowledged, {} arrived, of {}",
                    arrived.load(Ordering::Relaxed),
                    payloads.len()
                );
            }
        }
        Ok(started)
    }

    /// Take QoS 1 messages (PUBACK each) until `n` came, counting them in `arrived`; the time
    /// the last one came.
    fn receive(&mut self, n: u64, arrived: &AtomicU64) -> anyhow::Result<Instant> {
        let mut got = 0;
        let mut acks = Vec::new();
        loop {
            if !self.fill(STALL)? {
                bail!("MQTT subscriber: {got} of {n} messages, then nothing for {STALL:?}");
            }
            while let Some((first, body)) = self.parse() {
                if first >> 4 != 3 {
                    bail!("unexpected MQTT packet {first:#x} while subscribed");
                }
                let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
                if (first >> 1) & 3 == 1 {
                    acks.extend_from_slice(&[0x40, 2]);
                    acks.extend_from_slice(&body[2 + topic..4 + topic]);
                }
                got += 1;
            }
            if !acks.is_empty() {
                self.stream.write_all(&acks)?;
                acks.clear();
            }
            arrived.store(got, Ordering::Relaxed);
            if got >= n {
                return Ok(Instant::now());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NATS

struct Nats {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Where the unparsed bytes of `buf` start.
    pos: usize,
    inbox: String,
    next_reply: u64,
}

impl Nats {
    fn connect() -> anyhow::Result<Nats> {
        let mut n = Nats {
            stream: connect(NATS)?,
            buf: Vec::new(),
            pos: 0,
            inbox: format!("_INBOX.pbbench{}", unique().replace('-', "x")),
            next_reply: 0,
        };
        let info = n.line()?;
        if !info.starts_with("INFO ") {
            bail!("not a NATS server: {info}");
        }
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"name\":\"patchbay-bench\"}}\r\nSUB {}.* 1\r\n",
            n.inbox
        );
        n.stream.write_all(hello.as_bytes())?;
        Ok(n)
    }

    fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => bail!("nats-server closed the connection"),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(anyhow!("reading from nats-server: {e}")),
        }
    }

    fn line(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(i) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            self.fill()?;
        }
    }

    /// The next message: subject and payload (PINGs answered).
    fn next(&mut self) -> anyhow::Result<(String, Vec<u8>)> {
        loop {
            let line = self.line()?;
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[0] {
                "PING" => self.stream.write_all(b"PONG\r\n")?,
                "PONG" | "+OK" | "INFO" => {}
                "MSG" | "HMSG" => {
                    let size = |i: usize| -> anyhow::Result<usize> {
                        parts
                            .get(i)
                            .and_then(|s| s.parse().ok())
                            .with_context(|| format!("bad NATS line {line:?}"))
                    };
                    let total = size(parts.len() - 1)?;
                    let header = if parts[0] == "HMSG" {
                        size(parts.len() - 2)?
                    } else {
                        0
                    };
                    while self.buf.len() - self.pos < total + 2 {
                        self.fill()?;
                    }
                    let payload = self.buf[self.pos + header..self.pos + total].to_vec();
                    self.pos += total + 2;
                    return Ok((
                        parts.get(1).copied().unwrap_or_default().to_owned(),
                        payload,
                    ));
                }
                _ => bail!("nats-server: {line}"),
            }
        }
    }

    /// `$JS.API.{api}` with `body` (nothing for `Null`): the JSON answer.
    fn api(&mut self, api: &str, body: &Value) -> anyhow::Result<Value> {
        self.next_reply += 1;
        let reply = format!("{}.api{}", self.inbox, self.next_reply);
        let payload = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let out = format!(
            "PUB $JS.API.{api} {reply} {}\r\n{payload}\r\n",
            payload.len()
        );
        self.stream.write_all(out.as_bytes())?;
        loop {
            let (subject, answer) = self.next()?;
            if subject == reply {
                return Ok(serde_json::from_slice(&answer).unwrap_or(Value::Null));
            }
        }
    }

    /// The stream's message count, or `None` while it does not exist.
    fn messages(&mut self, stream: &str) -> anyhow::Result<Option<u64>> {
        let info = self.api(&format!("STREAM.INFO.{stream}"), &Value::Null)?;
        if info.get("error").is_some() {
            return Ok(None);
        }
        info["state"]["messages"]
            .as_u64()
            .map(Some)
            .with_context(|| format!("STREAM.INFO.{stream}: {info}"))
    }

    fn delete_stream(&mut self, stream: &str) -> anyhow::Result<()> {
        self.api(&format!("STREAM.DELETE.{stream}"), &Value::Null)
            .map(drop)
    }

    /// Publish every payload to `subject` with a reply inbox, up to `OUTSTANDING` PubAcks
    /// outstanding, checking each; the time from the first publish to the last PubAck.
    fn publish_all(&mut self, subject: &str, payloads: &[Vec<u8>]) -> anyhow::Result<Duration> {
        let acks = format!("{}.ack", self.inbox);
        let (mut sent, mut acked) = (0, 0);
        let mut out = Vec::new();
        let started = Instant::now();
        while acked < payloads.len() {
            // Refill in chunks, not one write per PubAck.
            if sent - acked <= OUTSTANDING - 64 {
                while sent < payloads.len() && sent - acked < OUTSTANDING {
                    let p = &payloads[sent];
                    out.extend_from_slice(
                        format!("PUB {subject} {acks}{sent} {}\r\n", p.len()).as_bytes(),
                    );
                    out.extend_from_slice(p);
                    out.extend_from_slice(b"\r\n");
                    sent += 1;
                }
                self.stream.write_all(&out)?;
                out.clear();
            }
            let (reply, answer) = self.next()?;
            if reply.starts_with(&acks) {
                let ack: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                if ack.get("seq").is_none() {
                    bail!("JetStream did not store a message on `{subject}`: {ack}");
                }
                acked += 1;
            }
        }
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------------------------------------
// The runs

/// http-source on `port` (split = "lines", 100 records a body), `with_transform` json-map
/// stamping `via`, then `sink` (TOML of a plugin named `out`).
fn http_pipeline(plugins: &Path, port: u16, with_transform: bool, sink: &str) -> String {
    let stamp = format!(
        r#"
[plugins.stamp]
path = "{map}"
config = {{ set = {{ via = "webhook" }} }}
"#,
        map = plugins.join("json-map.wasm").display()
    );
    format!(
        r#"
[plugins.webhook]
path = "{http}"
grants = {{ listen = ["127.0.0.1:{port}"] }}
[plugins.webhook.config]
listen = "127.0.0.1:{port}"
path = "/events"
split = "lines"
token = "bench"
{stamp}
{sink}

[[pipeline]]
name = "bench"
source = "webhook"
transforms = [{transforms}]
sinks = ["out"]
on_error = "dead-letter"
"#,
        http = plugins.join("http-source.wasm").display(),
        stamp = if with_transform { stamp.as_str() } else { "" },
        transforms = if with_transform { "\"stamp\"" } else { "" },
    )
}

/// The plugins' folder as an absolute path (a pipeline file's paths are relative to it).
pub(crate) fn plugins(o: &Options) -> anyhow::Result<std::path::PathBuf> {
    Ok(std::path::absolute(&o.plugins)?)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `patchbay run` of an HTTP pipeline under the HTTP load; messages per second.
fn http_run(
    o: &Options,
    dir: &Path,
    name: &str,
    sink: impl Fn(u16) -> String,
    with_transform: bool,
    bodies: &Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<f64> {
    let port = free_port()?;
    let toml = http_pipeline(&plugins(o)?, port, with_transform, &sink(port));
    let mut run = Running::start(o, dir, name, &toml)?;
    let addr = format!("127.0.0.1:{port}");
    run.wait_for(&format!("http-source listening on {addr}"), || {
        Ok(connect(&addr).is_ok())
    })?;
    let elapsed = http_load(port, "bench", bodies)?;
    run.stop()?;
    Ok(per_s(bodies.len() * PER_BODY, elapsed))
}

struct Row {
    bridge: &'static str,
    patchbay: f64,
    ceiling: f64,
    what: String,
}

fn http_to_redis(o: &Options, dir: &Path, n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let payloads: Vec<Vec<u8>> = (0..n as u64).map(|i| super::payload(i, 100)).collect();
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        payloads
            .chunks(PER_BODY)
            .map(|chunk| chunk.join(&b'\n'))
            .collect(),
    );
    let id = unique();
    let key = format!("patchbay-bench:http:{id}");
    let ceiling_key = format!("patchbay-bench:xadd:{id}");
    let mut redis = Redis::connect()?;
    let plugins = plugins(o)?;
    let redis_sink = |_| {
        format!(
            r#"
[plugins.out]
path = "{sink}"
config = {{ url = "redis://{REDIS}", mode = "stream", key = "{key}", field = "payload" }}
grants = {{ tcp = ["{REDIS}"] }}
"#,
            sink = plugins.join("redis-sink.wasm").display(),
        )
    };
    let result = (|| -> anyhow::Result<()> {
        let patchbay = http_run(o, dir, "http-redis", redis_sink, true, &bodies)?;
        let stored = redis.xlen(&key)?;
        if stored != n as i64 {
            bail!("HTTP → Redis: XLEN {key} is {stored}, not {n}");
        }
        let xadd = redis.xadd_all(&ceiling_key, &payloads)?;
        let stored = redis.xlen(&ceiling_key)?;
        if stored != n as i64 {
            bail!("Redis ceiling: XLEN {ceiling_key} is {stored}, not {n}");
        }
        let blackhole = |_| {
            format!(
                "\n[plugins.out]\npath = \"{}\"\n",
                plugins.join("blackhole.wasm").display()
            )
        };
        let http_alone = http_run(o, dir, "http-blackhole", blackhole, false, &bodies)?;
        rows.push(Row {
            bridge: "HTTP → json-map → Redis stream",
            patchbay,
            ceiling: per_s(n, xadd),
            what: format!(
                "Redis alone: a plain client XADDing the same payloads over one connection, \
                 {PIPELINE} per round trip"
            ),
        });
        rows.push(Row {
            bridge: "HTTP → json-map → Redis stream",
            patchbay,
            ceiling: http_alone,
            what: "HTTP alone: the same load against http-source → blackhole in Patchbay"
                .to_owned(),
        });
        Ok(())
    })();
    let _ = redis.del(&key);
    let _ = redis.del(&ceiling_key);
    result
}

fn mqtt_to_nats(o: &Options, dir: &Path, n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let payloads: Vec<Vec<u8>> = (0..n as u64).map(|i| reading(i, 100)).collect();
    let payloads = Arc::new(payloads);
    let id = unique();
    let stream = format!("PATCHBAY_BENCH_{}", id.replace('-', "_"));
    let subject = format!("patchbay-bench.{id}");
    let root = format!("patchbay-bench/{id}");
    let client_id = format!("patchbay-bench-{id}");
    let mut nats = Nats::connect()?;
    let plugins = plugins(o)?;
    let toml = format!(
        r#"
[plugins.devices]
path = "{mqtt}"
grants = {{ tcp = ["{MQTT}"] }}
[plugins.devices.config]
url = "mqtt://{MQTT}"
topics = ["{root}/sensors/#"]
qos = 1
client_id = "{client_id}"

[plugins.reshape]
path = "{map}"
[plugins.reshape.config]
rename = {{ temp = "temperature_c" }}
drop = ["debug"]
set = {{ bridge = "mqtt-to-nats" }}

[plugins.bus]
path = "{nats}"
grants = {{ tcp = ["{NATS}"] }}
[plugins.bus.config]
url = "nats://{NATS}"
mode = "jetstream"
subject = "{subject}"
create_stream = "{stream}"

[[pipeline]]
name = "bench"
source = "devices"
transforms = ["reshape"]
sinks = ["bus"]
batch_size = 512
on_error = "dead-letter"
"#,
        mqtt = plugins.join("mqtt-source.wasm").display(),
        map = plugins.join("json-map.wasm").display(),
        nats = plugins.join("nats-sink.wasm").display(),
    );
    let result = (|| -> anyhow::Result<()> {
        let patchbay = mqtt_nats_run(o, dir, &toml, &mut nats, &stream, &root, &payloads)?;
        let mqtt = mqtt_alone(&format!("{root}/alone"), &payloads)?;
        let nats_alone =
            jetstream_alone(&mut nats, &format!("{stream}_ALONE"), &subject, &payloads)?;
        let (ceiling, slower) = if mqtt <= nats_alone {
            (mqtt, "MQTT")
        } else {
            (nats_alone, "NATS")
        };
        rows.push(Row {
            bridge: "MQTT QoS 1 → json-map → NATS JetStream",
            patchbay,
            ceiling,
            what: format!(
                "the slower leg ({slower}) of: MQTT alone, a plain QoS 1 publisher → Mosquitto → \
                 a plain QoS 1 subscriber, {}; NATS alone, a plain JetStream publisher with up \
                 to {OUTSTANDING} PubAcks outstanding, {}",
                k(mqtt),
                k(nats_alone)
            ),
        });
        Ok(())
    })();
    let _ = nats.delete_stream(&stream);
    // The source's session is persistent: end it.
    if let Ok(m) = Mqtt::connect(&client_id, true) {
        m.disconnect();
    }
    result
}

/// The Patchbay run of MQTT → NATS: messages per second from the first PUBLISH to the
/// stream holding all of them.
fn mqtt_nats_run(
    o: &Options,
    dir: &Path,
    toml: &str,
    nats: &mut Nats,
    stream: &str,
    root: &str,
    payloads: &Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<f64> {
    let n = payloads.len() as u64;
    let topic = format!("{root}/sensors/dev-1");
    let mut run = Running::start(o, dir, "mqtt-nats", toml)?;
    run.wait_for(&format!("nats-sink creating stream {stream}"), || {
        Ok(nats.messages(stream)?.is_some())
    })?;
    // The source subscribes at start: send a probe now and then until one comes through.
    let mut probe = Mqtt::connect(&format!("patchbay-bench-probe-{}", unique()), true)?;
    let none = AtomicU64::new(u64::MAX / 2);
    let mut last_probe: Option<Instant> = None;
    run.wait_for("a probe message through the bridge", || {
        if last_probe.is_none_or(|t| t.elapsed() > Duration::from_millis(250)) {
            probe.publish_all(&topic, &[reading(u64::MAX, 100)], &none)?;
            last_probe = Some(Instant::now());
        }
        Ok(nats.messages(stream)?.unwrap_or(0) > 0)
    })?;
    probe.disconnect();
    std::thread::sleep(Duration::from_millis(500));
    let base = nats.messages(stream)?.unwrap_or(0);
    let arrived = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (payloads, arrived, topic) = (payloads.clone(), arrived.clone(), topic.clone());
        std::thread::spawn(move || -> anyhow::Result<Instant> {
            let mut m = Mqtt::connect(&format!("patchbay-bench-pub-{}", unique()), true)?;
            let started = m.publish_all(&topic, &payloads, &arrived)?;
            m.disconnect();
            Ok(started)
        })
    };
    let mut moved = Instant::now();
    let end = loop {
        let now = nats.messages(stream)?.unwrap_or(0).saturating_sub(base);
        if now >= n {
            break Instant::now();
        }
        if now != arrived.swap(now, Ordering::Relaxed) {
            moved = Instant::now();
        }
        if publisher.is_finished() && moved.elapsed() > Duration::from_secs(10) {
            break Instant::now();
        }
        run.check()?;
        if moved.elapsed() > STALL {
            bail!("MQTT → NATS: {now} of {n} messages in {stream}, then nothing for {STALL:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let started = publisher
        .join()
        .map_err(|_| anyhow!("the MQTT publisher panicked"))??;
    std::thread::sleep(Duration::from_millis(200));
    let stored = nats.messages(stream)?.unwrap_or(0).saturating_sub(base);
    let log = run.stop()?;
    if stored != n {
        bail!("MQTT → NATS: {stored} messages in {stream}, not {n}:\n{log}");
    }
    Ok(per_s(n as usize, end - started))
}

/// The MQTT leg alone: a QoS 1 subscriber takes what the publisher sends; messages per second
/// from the first PUBLISH to the last message received.
fn mqtt_alone(topic: &str, payloads: &Arc<Vec<Vec<u8>>>) -> anyhow::Result<f64> {
    let n = payloads.len() as u64;
    let mut sub = Mqtt::connect(&format!("patchbay-bench-sub-{}", unique()), true)?;
    sub.subscribe(topic)?;
    let arrived = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (payloads, arrived, topic) = (payloads.clone(), arrived.clone(), topic.to_owned());
        std::thread::spawn(move || -> anyhow::Result<Instant> {
            let mut m = Mqtt::connect(&format!("patchbay-bench-pub-{}", unique()), true)?;
            let started = m.publish_all(&topic, &payloads, &arrived)?;
            m.disconnect();
            Ok(started)
        })
    };
    let received = sub.receive(n, &arrived);
    sub.disconnect();
    let started = publisher
        .join()
        .map_err(|_| anyhow!("the MQTT publisher panicked"))??;
    let end = received?;
    Ok(per_s(n as usize, end - started))
}

/// The JetStream leg alone; messages per second.
fn jetstream_alone(
    nats: &mut Nats,
    stream: &str,
    subject: &str,
    payloads: &[Vec<u8>],
) -> anyhow::Result<f64> {
    let subject = format!("{subject}.alone");
    let created = nats.api(
        &format!("STREAM.CREATE.{stream}"),
        &serde_json::json!({ "name": stream, "subjects": [subject], "storage": "file" }),
    )?;
    if created.get("error").is_some() {
        bail!("cannot create stream {stream}: {created}");
    }
    let result = (|| -> anyhow::Result<f64> {
        let elapsed = nats.publish_all(&subject, payloads)?;
        let stored = nats.messages(stream)?.unwrap_or(0);
        if stored != payloads.len() as u64 {
            bail!(
                "NATS ceiling: {stored} messages in {stream}, not {}",
                payloads.len()
            );
        }
        Ok(per_s(payloads.len(), elapsed))
    })();
    let _ = nats.delete_stream(stream);
    result
}

pub(crate) fn table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    for (name, addr, start) in SERVICES {
        if connect(addr).is_err() {
            bail!("connectors: {name} is not listening on {addr}; start it with `{start}`");
        }
    }
    for plugin in ["http-source", "redis-sink", "mqtt-source", "nats-sink"] {
        let wasm = o.plugins.join(format!("{plugin}.wasm"));
        if !wasm.exists() {
            bail!(
                "{} is missing; run `cargo xtask build` first",
                wasm.display()
            );
        }
    }
    let dir = tempfile::tempdir()?;
    let (http_n, mqtt_n) = if o.quick {
        (20_000, 10_000)
    } else {
        (200_000, 100_000)
    };
    let mut rows = Vec::new();
    http_to_redis(o, dir.path(), http_n, &mut rows)?;
    mqtt_to_nats(o, dir.path(), mqtt_n, &mut rows)?;
    r.line("## Connectors: two bridges through `patchbay run` against the real servers\n");
    r.line(format!(
        "Redis, Mosquitto and nats-server (JetStream, file storage) on 127.0.0.1; 100-byte JSON \
         messages; both pipelines as in `examples/`, json-map included. HTTP → Redis: \
         {http_n} messages POSTed as NDJSON bodies of {PER_BODY} over {CONNECTIONS} keep-alive \
         connections, from the first request to the last `200` (each `200` means Redis holds \
         the body's messages; XLEN checked). MQTT → NATS: {mqtt_n} messages published with \
         QoS 1 (at most {UNACKED} unacknowledged, at most {AHEAD} ahead of what arrived, since \
         Mosquitto drops what a subscriber's queue cannot hold), from the first PUBLISH until \
         the stream holds all of them (batches of 512). Ceilings are plain clients written in \
         the bench, one connection each, against the same servers, except the second HTTP \
         row, which is Patchbay with the Redis side taken away.\n"
    ));
    r.line("| bridge | Patchbay msg/s | ceiling msg/s | ceiling | Patchbay / ceiling |");
    r.line("| --- | --- | --- | --- | --- |");
    for row in rows {
        r.line(format!(
            "| {} | {} | {} | {} | {:.2} |",
            row.bridge,
            k(row.patchbay),
            k(row.ceiling),
            row.what,
            row.patchbay / row.ceiling
        ));
    }
    r.line("");
    Ok(())
}
