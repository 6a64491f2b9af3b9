//! `patchbay-proto-amqp`: an AMQP 0.9.1 client (RabbitMQ) over a byte stream, shared by the
//! `amqp-source` and `amqp-sink` plugins.
//!
//! What lives here: [`Conn`], one connection with one channel: the handshake (PLAIN login,
//! tune, open), methods and their answers ([`Conn::call`]), publishing a message (method,
//! content header and body frames, [`Conn::publish`]), reading what the broker sends
//! ([`Conn::next`]: deliveries assembled from their frames, publisher confirms, returns),
//! and heartbeats ([`Conn::heartbeat`]). Frames and methods are in `codec` (by hand: see
//! there why), field tables are `amq-protocol-types`'.
//!
//! What it may not touch: Patchbay's pipeline. It knows nothing of messages, batches,
//! checkpoints, configs or grants, and of the plugin SDK only `tls::Duplex`, the stream it runs
//! over (clear text or TLS). A broker that closes the channel or the connection is an
//! `std::io` error with the broker's reply (a refused login is `PermissionDenied` without an OS
//! error code, so that it is not taken for a sandbox denial). It builds natively too.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use amq_protocol_types::{AMQPValue, FieldTable};
use patchbay_sdk::net::percent_decode as decode;
use patchbay_sdk::tls::Duplex;

pub mod codec;

pub use amq_protocol_types as types;
pub use codec::Properties;
use codec::{FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, Frame, Method};

/// The one channel a connection uses.
const CHANNEL: u16 = 1;
/// The largest frame asked for (the broker may ask for less).
const FRAME_MAX: u32 = 128 * 1024;

/// A message the broker delivered to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: String,
    pub routing_key: String,
    pub properties: Properties,
    pub body: Vec<u8>,
}

/// What [`Conn::next`] read.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Delivery(Delivery),
    /// A publisher confirm: `ack` (or nack) for `tag`, and all before it when `multiple`.
    Confirm {
        tag: u64,
        multiple: bool,
        ack: bool,
    },
    /// A `mandatory` message the broker could not route, with its properties (its confirm
    /// follows).
    Return {
        reply: String,
        routing_key: String,
        properties: Properties,
    },
}

/// What one method frame turned out to be.
enum Got {
    Event(Event),
    Answer(Method),
    /// A delivery (or a return) began; its content frames follow.
    Pending,
}

/// Where a delivery being assembled stands.
struct Partial {
    delivery: Delivery,
    size: u64,
    /// A returned message (the broker's reply), not a delivery.
    returned: Option<String>,
}

/// One connection, with channel 1 open.
pub struct Conn {
    stream: Box<dyn Duplex>,
    input: Vec<u8>,
    out: Vec<u8>,
    frame_max: u32,
    /// Negotiated heartbeat interval (zero: none).
    pub heartbeat: Duration,
    last_sent: Instant,
    pub last_read: Instant,
    partial: Option<Partial>,
    /// Events read while waiting for an answer.
    backlog: VecDeque<Event>,
    /// `HOST:PORT`, for messages.
    pub addr: String,
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The error a broker's Close carries; a refused login or access is `PermissionDenied`.
fn closed(addr: &str, what: &str, code: u16, text: &str) -> io::Error {
    let kind = match code {
        403 | 530 => io::ErrorKind::PermissionDenied,
        404 => io::ErrorKind::NotFound,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, format!("{addr} closed the {what}: {code} {text}"))
}

impl Conn {
    /// The handshake over an open stream: protocol header, PLAIN login, tune (`heartbeat`
    /// seconds asked for; the smaller of that and the broker's wins), open `vhost`, open
    /// channel 1. `timeout` bounds each wait.
    pub fn open(
        stream: Box<dyn Duplex>,
        addr: &str,
        login: (&str, &str),
        vhost: &str,
        heartbeat: u16,
        timeout: Duration,
    ) -> io::Result<Conn> {
        let mut conn = Conn {
            stream,
            input: Vec::with_capacity(64 * 1024),
            out: Vec::with_capacity(64 * 1024),
            frame_max: FRAME_MAX,
            heartbeat: Duration::ZERO,
            last_sent: Instant::now(),
            last_read: Instant::now(),
            partial: None,
            backlog: VecDeque::new(),
            addr: addr.to_owned(),
        };
        conn.stream.write_all(b"AMQP\x00\x00\x09\x01")?;
        let deadline = Instant::now() + timeout;
        match conn.method(deadline)? {
            Method::Start { mechanisms } => {
                if !mechanisms.split(' ').any(|m| m == "PLAIN") {
                    return Err(protocol_error(format!(
                        "{addr} offers no PLAIN login (it offers {mechanisms})"
                    )));
                }
            }
            other => return Err(protocol_error(format!("{addr} began with {other:?}"))),
        }
        let mut properties = FieldTable::default();
        properties.insert("product".into(), AMQPValue::LongString("patchbay".into()));
        let mut capabilities = FieldTable::default();
        for c in ["publisher_confirms", "basic.nack", "consumer_cancel_notify"] {
            capabilities.insert(c.into(), AMQPValue::Boolean(true));
        }
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        let response = format!("\0{}\0{}", login.0, login.1).into_bytes();
        conn.send(
            0,
            &Method::StartOk {
                properties,
                response,
            },
        )?;
        let (channel_max, frame_max, server_beat) = match conn.method(deadline) {
            Ok(Method::Tune {
                channel_max,
                frame_max,
                heartbeat,
            }) => (channel_max, frame_max, heartbeat),
            Ok(other) => {
                return Err(protocol_error(format!(
                    "{addr} answered the login with {other:?}"
                )));
            }
            // RabbitMQ closes the socket on a refused login (or says so first).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{addr} refused the login of user `{}` (ACCESS_REFUSED)",
                        login.0
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        let pick = |ours: u32, theirs: u32| if theirs == 0 { ours } else { ours.min(theirs) };
        conn.frame_max = pick(FRAME_MAX, frame_max);
        let beat = if heartbeat == 0 {
            0
        } else {
            pick(u32::from(heartbeat), u32::from(server_beat)) as u16
        };
        conn.heartbeat = Duration::from_secs(u64::from(beat));
        conn.send(
            0,
            &Method::TuneOk {
                channel_max: channel_max.max(1),
                frame_max: conn.frame_max,
                heartbeat: beat,
            },
        )?;
        conn.send(
            0,
            &Method::Open {
                vhost: vhost.to_owned(),
            },
        )?;
        match conn.method(deadline)? {
            Method::OpenOk => {}
            other => {
                return Err(protocol_error(format!(
                    "{addr} answered Open with {other:?}"
                )));
            }
        }
        conn.call(&Method::ChannelOpen, timeout)?;
        Ok(conn)
    }

    fn frame(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        codec::encode_frame(kind, channel, payload, &mut self.out);
    }

    fn send(&mut self, channel: u16, method: &Method) -> io::Result<()> {
        let payload = codec::encode_method(method);
        self.frame(FRAME_METHOD, channel, &payload);
        self.flush()
    }

    /// Declare the durable `queue` and, when `exchange` is not empty, bind it there with
    /// `routing_key`.
    pub fn declare_queue(
        &mut self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        timeout: Duration,
    ) -> io::Result<()> {
        self.call(
            &Method::QueueDeclare {
                queue: queue.to_owned(),
            },
            timeout,
        )?;
        if !exchange.is_empty() {
            self.call(
                &Method::QueueBind {
                    queue: queue.to_owned(),
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                },
                timeout,
            )?;
        }
        Ok(())
    }

    /// Send a method on the channel without waiting.
    pub fn cast(&mut self, method: &Method) -> io::Result<()> {
        self.send(CHANNEL, method)
    }

    /// Send a method on the channel and wait for its answer (the next method that is not a
    /// delivery, confirm or return, which are kept for [`Conn::next`]).
    pub fn call(&mut self, method: &Method, timeout: Duration) -> io::Result<Method> {
        self.cast(method)?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_frame(deadline)? {
                Some(Frame::Method(_, answer)) => match self.event(answer)? {
                    Got::Event(event) => self.backlog.push_back(event),
                    Got::Answer(answer) => return Ok(answer),
                    Got::Pending => {}
                },
                Some(frame) => {
                    if let Some(event) = self.content(frame)? {
                        self.backlog.push_back(event);
                    }
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{}: no answer within {timeout:?}", self.addr),
                    ));
                }
            }
        }
    }

    /// Queue one message for publishing (method, content header, body frames); sent by
    /// [`Conn::flush`].
    pub fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &Properties,
        body: &[u8],
    ) {
        let method = codec::encode_method(&Method::Publish {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            mandatory,
        });
        self.frame(FRAME_METHOD, CHANNEL, &method);
        let header = codec::encode_header(body.len() as u64, properties);
        self.frame(FRAME_HEADER, CHANNEL, &header);
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        for part in body.chunks(chunk) {
            codec::encode_frame(FRAME_BODY, CHANNEL, part, &mut self.out);
        }
    }

    /// Send what is queued.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
            self.last_sent = Instant::now();
        }
        self.stream.flush()
    }

    /// Send a heartbeat if nothing was sent for half the interval.
    pub fn heartbeat(&mut self) -> io::Result<()> {
        if !self.heartbeat.is_zero() && self.last_sent.elapsed() >= self.heartbeat / 2 {
            self.frame(FRAME_HEARTBEAT, 0, &[]);
            self.flush()?;
        }
        Ok(())
    }

    /// The next event, waiting until `deadline` (`None`: nothing came).
    pub fn next(&mut self, deadline: Instant) -> io::Result<Option<Event>> {
        if let Some(event) = self.backlog.pop_front() {
            return Ok(Some(event));
        }
        loop {
            self.heartbeat()?;
            let Some(frame) = self.read_frame(deadline)? else {
                return Ok(None);
            };
            let event = match frame {
                Frame::Method(_, method) => match self.event(method)? {
                    Got::Event(event) => Some(event),
                    // An answer no call waits for (a late ConsumeOk): nothing to report.
                    Got::Answer(_) | Got::Pending => None,
                },
                other => self.content(other)?,
            };
            if let Some(event) = event {
                return Ok(Some(event));
            }
        }
    }

    fn start(
        &mut self,
        exchange: String,
        routing_key: String,
        delivery_tag: u64,
        redelivered: bool,
        returned: Option<String>,
    ) {
        self.partial = Some(Partial {
            delivery: Delivery {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                properties: Properties::default(),
                body: Vec::new(),
            },
            size: 0,
            returned,
        });
    }

    /// What a method read is: an event, the answer to a call, or the start of a delivery
    /// (whose content frames follow); a Close is an error.
    fn event(&mut self, method: Method) -> io::Result<Got> {
        Ok(Got::Event(match method {
            Method::Deliver {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            } => {
                self.start(exchange, routing_key, delivery_tag, redelivered, None);
                return Ok(Got::Pending);
            }
            Method::Return {
                code,
                text,
                exchange,
                routing_key,
            } => {
                self.start(
                    exchange,
                    routing_key,
                    0,
                    false,
                    Some(format!("{code} {text}")),
                );
                return Ok(Got::Pending);
            }
            Method::Ack {
                delivery_tag,
                multiple,
            } => Event::Confirm {
                tag: delivery_tag,
                multiple,
                ack: true,
            },
            Method::Nack {
                delivery_tag,
                multiple,
            } => Event::Confirm {
                tag: delivery_tag,
                multiple,
                ack: false,
            },
            Method::ChannelClose { code, text } => {
                let _ = self.cast(&Method::ChannelCloseOk);
                return Err(closed(&self.addr, "channel", code, &text));
            }
            Method::Close { code, text } => {
                let _ = self.send(0, &Method::CloseOk);
                return Err(closed(&self.addr, "connection", code, &text));
            }
            other => return Ok(Got::Answer(other)),
        }))
    }

    /// A content header or body frame of the delivery being assembled: the delivery once whole.
    fn content(&mut self, frame: Frame) -> io::Result<Option<Event>> {
        match frame {
            Frame::Header(_, size, properties) => {
                let partial = self
                    .partial
                    .as_mut()
                    .ok_or_else(|| protocol_error("a content header without a delivery"))?;
                partial.size = size;
                partial.delivery.properties = properties;
                partial.delivery.body.reserve(size.min(1 << 26) as usize);
            }
            Frame::Body(_, bytes) => {
                let partial = self
                    .partial
                    .as_mut()
                    .ok_or_else(|| protocol_error("a body frame without a delivery"))?;
                partial.delivery.body.extend_from_slice(&bytes);
            }
            _ => return Ok(None),
        }
        let done = self
            .partial
            .as_ref()
            .is_some_and(|p| p.delivery.body.len() as u64 >= p.size);
        if done {
            return Ok(self.partial.take().map(|p| match p.returned {
                None => Event::Delivery(p.delivery),
                Some(reply) => Event::Return {
                    reply,
                    routing_key: p.delivery.routing_key,
                    properties: p.delivery.properties,
                },
            }));
        }
        Ok(None)
    }

    fn method(&mut self, deadline: Instant) -> io::Result<Method> {
        loop {
            match self.read_frame(deadline)? {
                Some(Frame::Method(_, Method::Close { code, text })) => {
                    return Err(closed(&self.addr, "connection", code, &text));
                }
                Some(Frame::Method(_, method)) => return Ok(method),
                Some(_) => {}
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{}: no answer in time", self.addr),
                    ));
                }
            }
        }
    }

    /// The next frame (heartbeats skipped), or `None` once `deadline` passed.
    fn read_frame(&mut self, deadline: Instant) -> io::Result<Option<Frame>> {
        loop {
            let parsed = codec::parse_frame(&self.input, self.frame_max)
                .map_err(|e| protocol_error(format!("{}: {e}", self.addr)))?;
            if let Some((frame, used)) = parsed {
                self.input.drain(..used);
                if frame == Frame::Heartbeat {
                    continue;
                }
                return Ok(Some(frame));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let start = self.input.len();
            self.input.resize(start + 64 * 1024, 0);
            match self.stream.read(&mut self.input[start..]) {
                Ok(0) => {
                    self.input.truncate(start);
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} closed the connection", self.addr),
                    ));
                }
                Ok(n) => {
                    self.input.truncate(start + n);
                    self.last_read = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    self.input.truncate(start);
                    return Ok(None);
                }
                Err(e) => {
                    self.input.truncate(start);
                    return Err(e);
                }
            }
        }
    }
}

/// Header values of AMQP properties as text (`None` for a table or an array).
pub fn value_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

/// Where to connect and as whom: `amqp://user:password@host:port/vhost` (`amqps://` for TLS,
/// port 5671 by default); user and password default to RabbitMQ's `guest`, the vhost to `/`
/// (written `%2f` in a URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub addr: String,
    pub user: String,
    pub password: String,
    pub vhost: String,
    pub tls: bool,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, String> {
        let (tls, rest) = match text.strip_prefix("amqps://") {
            Some(rest) => (true, rest),
            None => (
                false,
                text.strip_prefix("amqp://")
                    .ok_or("it does not start with amqp:// or amqps://")?,
            ),
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (host, vhost) = match rest.split_once('/') {
            Some((host, "")) => (host, "/".to_owned()),
            Some((host, vhost)) => (host, decode(vhost)?),
            None => (rest, "/".to_owned()),
        };
        if host.is_empty() || host.starts_with(':') {
            return Err("no host".into());
        }
        let port = if tls { 5671 } else { 5672 };
        let addr = match host.rsplit_once(':') {
            Some((_, p)) if !host.ends_with(']') => {
                p.parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a port number"))?;
                host.to_owned()
            }
            _ => format!("{host}:{port}"),
        };
        let (user, password) = match auth {
            None => ("guest".to_owned(), "guest".to_owned()),
            Some(auth) => match auth.split_once(':') {
                Some((u, p)) => (decode(u)?, decode(p)?),
                None => (decode(auth)?, String::new()),
            },
        };
        Ok(Url {
            addr,
            user,
            password,
            vhost,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("amqp://app:s%40cret@mq:5673/orders"),
            Ok(Url {
                addr: "mq:5673".into(),
                user: "app".into(),
                password: "s@cret".into(),
                vhost: "orders".into(),
                tls: false,
            })
        );
        let default = Url::parse("amqps://mq.example").unwrap();
        assert_eq!(
            (default.addr.as_str(), default.vhost.as_str()),
            ("mq.example:5671", "/")
        );
        assert_eq!(default.user, "guest");
        assert_eq!(Url::parse("amqp://h/%2f").unwrap().vhost, "/");
        assert!(Url::parse("http://h").is_err());
    }
}
