//! A small MQTT 3.1.1 client over `std::net` (wasi:sockets on wasm32-wasip2): CONNECT,
//! SUBSCRIBE, PUBLISH with QoS 0 and 1, PUBACK, PINGREQ. Shared by `mqtt-source` and
//! `mqtt-sink`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Largest packet accepted (the protocol allows 256 MiB).
const MAX_PACKET: usize = 64 * 1024 * 1024;

/// A packet from the broker.
#[derive(Debug)]
pub enum Packet {
    ConnAck {
        code: u8,
    },
    Publish {
        qos: u8,
        id: Option<u16>,
        topic: String,
        payload: Vec<u8>,
    },
    PubAck {
        id: u16,
    },
    SubAck {
        id: u16,
        codes: Vec<u8>,
    },
    PingResp,
    Other(u8),
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Connection options.
pub struct Options<'a> {
    pub client_id: &'a str,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// One connection to a broker.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// `HOST:PORT`, for messages.
    pub addr: String,
}

impl Conn {
    /// Connect and wait for CONNACK; `timeout` bounds each read.
    pub fn connect(addr: &str, options: &Options<'_>, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(timeout))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            addr: addr.to_owned(),
        };
        let mut body = Vec::new();
        string(&mut body, b"MQTT");
        body.push(4);
        let mut flags = 0u8;
        if options.clean_session {
            flags |= 0x02;
        }
        if options.username.is_some() {
            flags |= 0x80;
        }
        if options.password.is_some() {
            flags |= 0x40;
        }
        body.push(flags);
        body.extend_from_slice(&options.keep_alive.to_be_bytes());
        string(&mut body, options.client_id.as_bytes());
        if let Some(u) = options.username {
            string(&mut body, u.as_bytes());
        }
        if let Some(p) = options.password {
            string(&mut body, p.as_bytes());
        }
        conn.stream.write_all(&packet(0x10, &body))?;
        match conn.read()? {
            Some(Packet::ConnAck { code: 0 }) => Ok(conn),
            Some(Packet::ConnAck { code }) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{addr} refused the connection: {}",
                    match code {
                        1 => "unacceptable protocol version",
                        2 => "client identifier rejected",
                        3 => "server unavailable",
                        4 => "bad user name or password",
                        5 => "not authorized",
                        _ => "unknown reason",
                    }
                ),
            )),
            other => Err(bad(format!("{addr} answered CONNECT with {other:?}"))),
        }
    }

    /// Change how long a read waits for the broker.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    pub fn subscribe(&mut self, id: u16, filters: &[(String, u8)]) -> io::Result<()> {
        let mut body = id.to_be_bytes().to_vec();
        for (filter, qos) in filters {
            string(&mut body, filter.as_bytes());
            body.push(*qos);
        }
        self.stream.write_all(&packet(0x82, &body))
    }

    /// Queue a PUBLISH into `out` (send many with [`Conn::send`]).
    pub fn publish(out: &mut Vec<u8>, topic: &str, qos: u8, id: u16, retain: bool, payload: &[u8]) {
        let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
        string(&mut body, topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(payload);
        out.extend_from_slice(&packet(0x30 | (qos << 1) | u8::from(retain), &body));
    }

    pub fn puback(&mut self, id: u16) -> io::Result<()> {
        self.stream.write_all(&packet(0x40, &id.to_be_bytes()))
    }

    pub fn ping(&mut self) -> io::Result<()> {
        self.stream.write_all(&[0xC0, 0x00])
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn disconnect(&mut self) {
        let _ = self.stream.write_all(&[0xE0, 0x00]);
    }

    /// The next packet, or `None` when none came within the read timeout.
    pub fn read(&mut self) -> io::Result<Option<Packet>> {
        loop {
            if let Some((packet, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(packet));
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} closed the connection", self.addr),
                    ));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One whole packet from the start of `buf`, and how many bytes it took.
fn parse(buf: &[u8]) -> io::Result<Option<(Packet, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << shift;
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(bad("a malformed packet length"));
        }
    }
    if len > MAX_PACKET {
        return Err(bad(format!("a packet of {len} bytes")));
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    let body = &buf[i..i + len];
    let u16_at = |at: usize| -> io::Result<u16> {
        body.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("a packet too short"))
    };
    let packet = match first >> 4 {
        2 => Packet::ConnAck {
            code: *body.get(1).ok_or_else(|| bad("a short CONNACK"))?,
        },
        3 => {
            let qos = (first >> 1) & 0x03;
            let topic_len = usize::from(u16_at(0)?);
            let topic = body
                .get(2..2 + topic_len)
                .ok_or_else(|| bad("a PUBLISH topic past the packet"))?;
            let mut at = 2 + topic_len;
            let id = if qos > 0 {
                let id = u16_at(at)?;
                at += 2;
                Some(id)
            } else {
                None
            };
            Packet::Publish {
                qos,
                id,
                topic: String::from_utf8_lossy(topic).into_owned(),
                payload: body.get(at..).unwrap_or_default().to_vec(),
            }
        }
        4 => Packet::PubAck { id: u16_at(0)? },
        9 => Packet::SubAck {
            id: u16_at(0)?,
            codes: body.get(2..).unwrap_or_default().to_vec(),
        },
        13 => Packet::PingResp,
        other => Packet::Other(other),
    };
    Ok(Some((packet, i + len)))
}

/// `mqtt://[user[:password]@]host[:port]` or `host:port`: address, user name, password.
pub fn parse_url(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    patchbay_sdk::net::parse_url(url, "mqtt", 1883)
}
