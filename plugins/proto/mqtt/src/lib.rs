//! `patchbay-proto-mqtt`: the client side of MQTT 3.1.1 over a TCP stream (`std::net`, which
//! is wasi:sockets on wasm32-wasip2), shared by the `mqtt-source` and `mqtt-sink` plugins.
//!
//! What lives here: the packet codec (the remaining-length header; `CONNECT`, `SUBSCRIBE`,
//! `PUBLISH` with QoS 0 and 1, `PUBACK` and `PINGREQ` written; `CONNACK`, `PUBLISH`, `PUBACK`,
//! `SUBACK` and `PINGRESP` read, anything else passed on as [`Packet::Other`]), and [`Conn`],
//! one connection to a broker that logs in and reads packets within a read timeout.
//!
//! What it may not touch: Patchbay's pipeline. It knows nothing of messages, batches,
//! checkpoints, configs or grants, and of the plugin SDK only `tls::Duplex`, the stream it runs
//! over (clear text or TLS; URLs are parsed by the plugins); it speaks
//! the protocol and reports `std::io` errors (a broker refusing the login is
//! `PermissionDenied` without an OS error code, so that it is not taken for a sandbox
//! denial). Packet ids, sessions and what to retry are the plugins' business. It builds
//! natively too, where its unit tests run.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use patchbay_sdk::tls::Duplex;

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
    /// Any other packet: its type (the first byte's high four bits).
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
    stream: Box<dyn Duplex>,
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
        Conn::over(Box::new(stream), addr, options)
    }

    /// [`Conn::connect`] over a stream the caller opened (a TLS one, say), its read timeout
    /// already set.
    pub fn over(stream: Box<dyn Duplex>, addr: &str, options: &Options<'_>) -> io::Result<Conn> {
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
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> (Packet, usize) {
        parse(input).unwrap().unwrap()
    }

    #[test]
    fn publish_round_trip() {
        // A PUBLISH has the same form both ways: what the client writes, it could read.
        let big = vec![b'x'; 200_000];
        let cases: &[(&str, u8, u16, bool, &[u8])] = &[
            ("a", 0, 0, false, b""),
            ("sensors/1/temp", 1, 7, false, b"21.5"),
            ("r", 1, 65535, true, &[0, 0xff, 0x30, 0x0d, 0x0a]),
            ("big", 0, 0, false, &big),
        ];
        let mut wire = Vec::new();
        for &(topic, qos, id, retain, payload) in cases {
            let mut out = Vec::new();
            Conn::publish(&mut out, topic, qos, id, retain, payload);
            assert_eq!(out[0], 0x30 | (qos << 1) | u8::from(retain));
            let (packet, used) = one(&out);
            assert_eq!(used, out.len());
            let Packet::Publish {
                qos: q,
                id: i,
                topic: t,
                payload: p,
            } = packet
            else {
                panic!("{packet:?}")
            };
            assert_eq!((q, i, t.as_str()), (qos, (qos > 0).then_some(id), topic));
            assert_eq!(p, payload);
            wire.extend_from_slice(&out);
        }
        // One after the other in one buffer: each takes exactly its own bytes.
        let mut at = 0;
        for _ in cases {
            at += one(&wire[at..]).1;
        }
        assert_eq!(at, wire.len());
    }

    #[test]
    fn remaining_lengths() {
        // 0, 127, 128 and 16383 bytes: one, one, two and two length bytes.
        for (len, header) in [
            (0usize, &[0x40, 0x00][..]),
            (127, &[0x40, 0x7f]),
            (128, &[0x40, 0x80, 0x01]),
            (16_383, &[0x40, 0xff, 0x7f]),
            (16_384, &[0x40, 0x80, 0x80, 0x01]),
        ] {
            let out = packet(0x40, &vec![0; len]);
            assert_eq!(&out[..header.len()], header, "{len}");
            assert_eq!(out.len(), header.len() + len);
        }
    }

    #[test]
    fn broker_packets() {
        assert!(matches!(
            one(&[0x20, 2, 0, 0]),
            (Packet::ConnAck { code: 0 }, 4)
        ));
        assert!(matches!(
            one(&[0x20, 2, 1, 5]),
            (Packet::ConnAck { code: 5 }, 4)
        ));
        assert!(matches!(
            one(&[0x40, 2, 1, 2]),
            (Packet::PubAck { id: 258 }, 4)
        ));
        let (packet, used) = one(&[0x90, 4, 0, 1, 1, 0x80]);
        assert_eq!(used, 6);
        let Packet::SubAck { id, codes } = packet else {
            panic!("{packet:?}")
        };
        assert_eq!((id, codes), (1, vec![1, 0x80]));
        assert!(matches!(one(&[0xd0, 0]), (Packet::PingResp, 2)));
        assert!(matches!(one(&[0xb0, 2, 0, 1]), (Packet::Other(11), 4)));
    }

    #[test]
    fn split_frames_are_not_yet_frames() {
        let mut wire = Vec::new();
        Conn::publish(&mut wire, "t/1", 1, 9, false, &[5; 300]);
        for cut in 0..wire.len() {
            assert!(parse(&wire[..cut]).unwrap().is_none(), "{cut}");
        }
        assert_eq!(one(&wire).1, wire.len());
    }

    #[test]
    fn malformed_input_says_what_is_wrong() {
        let err = |input: &[u8]| {
            let e = parse(input).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            e.to_string()
        };
        assert_eq!(
            err(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]),
            "a malformed packet length"
        );
        assert_eq!(
            err(&[0x30, 0xff, 0xff, 0xff, 0x7f]),
            "a packet of 268435455 bytes"
        );
        assert_eq!(err(&[0x20, 1, 0]), "a short CONNACK");
        assert_eq!(err(&[0x40, 1, 0]), "a packet too short");
        assert_eq!(
            err(&[0x30, 3, 0, 9, b'a']),
            "a PUBLISH topic past the packet"
        );
        assert_eq!(err(&[0x32, 3, 0, 1, b'a']), "a packet too short");
    }

    use patchbay_proto_testing::serve;

    const OPTIONS: Options<'static> = Options {
        client_id: "pb",
        clean_session: true,
        keep_alive: 30,
        username: Some("u"),
        password: Some("p"),
    };

    #[test]
    fn a_connection_reads_packets_split_across_reads() {
        let mut script = vec![0x20, 2, 0, 0, 0x90, 3, 0, 1, 1];
        Conn::publish(&mut script, "s/1", 1, 5, false, b"hello");
        Conn::publish(&mut script, "s/2", 0, 0, false, &[7; 1000]);
        script.extend_from_slice(&[0xd0, 0]);
        let (addr, server) = serve(script, 3, false);
        let mut conn = Conn::connect(&addr, &OPTIONS, Duration::from_secs(5)).unwrap();
        conn.subscribe(1, &[("s/#".into(), 1)]).unwrap();
        assert!(matches!(
            conn.read().unwrap(),
            Some(Packet::SubAck { id: 1, .. })
        ));
        let Some(Packet::Publish {
            id, topic, payload, ..
        }) = conn.read().unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (id, topic.as_str(), &payload[..]),
            (Some(5), "s/1", &b"hello"[..])
        );
        conn.puback(5).unwrap();
        let Some(Packet::Publish { id, payload, .. }) = conn.read().unwrap() else {
            panic!()
        };
        assert_eq!((id, payload.len()), (None, 1000));
        conn.ping().unwrap();
        assert!(matches!(conn.read().unwrap(), Some(Packet::PingResp)));
        // Nothing more within the read timeout: `None`.
        conn.set_timeout(Duration::from_millis(20)).unwrap();
        assert!(conn.read().unwrap().is_none());
        drop(conn);
        let sent = server.join().unwrap();
        let connect = [
            &[0x10, 20, 0, 4][..],
            b"MQTT",
            &[4, 0xc2, 0, 30, 0, 2],
            b"pb",
            &[0, 1, b'u', 0, 1, b'p'],
        ]
        .concat();
        let subscribe = [&[0x82, 8, 0, 1, 0, 3][..], b"s/#", &[1]].concat();
        let expected = [connect, subscribe, vec![0x40, 2, 0, 5, 0xc0, 0]].concat();
        assert_eq!(sent, expected);
    }

    #[test]
    fn a_connection_reports_a_refusal_and_a_hang_up() {
        let (addr, server) = serve(vec![0x20, 2, 0, 5], 1, true);
        let e = Conn::connect(&addr, &OPTIONS, Duration::from_secs(5))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.raw_os_error().is_none());
        assert_eq!(
            e.to_string(),
            format!("{addr} refused the connection: not authorized")
        );
        server.join().unwrap();
        let (addr, server) = serve(vec![0xd0, 0], 1, true);
        let e = Conn::connect(&addr, &OPTIONS, Duration::from_secs(5))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!("{addr} answered CONNECT with Some(PingResp)")
        );
        server.join().unwrap();
        // The broker goes away in the middle of a packet.
        let (addr, server) = serve(vec![0x20, 2, 0, 0, 0x30, 10, 0, 1], 2, true);
        let mut conn = Conn::connect(&addr, &OPTIONS, Duration::from_secs(5)).unwrap();
        let e = conn.read().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(e.to_string(), format!("{addr} closed the connection"));
        drop(conn);
        server.join().unwrap();
    }
}
