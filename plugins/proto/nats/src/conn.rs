//! [`Conn`]: one connection to a server that logs in (TLS after INFO when asked), answers the
//! server's `PING`s and waits for `PONG`s and replies.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use patchbay_sdk::tls::Duplex;

use super::*;

/// One connection to a server.
pub struct Conn {
    stream: Box<dyn Duplex>,
    buf: Vec<u8>,
    pos: usize,
    chunk: Vec<u8>,
    timeout: Option<Duration>,
    pongs_due: usize,
    /// Messages read while waiting for something else (a `PONG`, a reply), oldest first.
    backlog: VecDeque<Msg>,
    next_reply: u64,
    pub info: Info,
    /// `HOST:PORT`, for messages.
    pub addr: String,
    /// This connection's reply subjects start with `inbox.` (subscribed by [`Conn::inbox_sub`]).
    pub inbox: String,
    /// When the server was last heard from.
    pub last_read: Instant,
}

impl Conn {
    /// Connect, read `INFO`, send `CONNECT` and wait for the `PONG` that says the server took
    /// it (a refused login is a `PermissionDenied` error); at most `timeout`.
    pub fn connect(addr: &str, auth: &Auth, name: &str, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        Conn::over(Box::new(stream), addr, false, auth, name, timeout)
    }

    /// [`Conn::connect`] over a stream the caller opened; with `tls`, TLS starts right after
    /// the server's `INFO` (how NATS does it), with the host part of `addr` as the name the
    /// server's certificate is verified against.
    pub fn over(
        stream: Box<dyn Duplex>,
        addr: &str,
        tls: bool,
        auth: &Auth,
        name: &str,
        timeout: Duration,
    ) -> io::Result<Conn> {
        let mut conn = Conn::new(stream, addr);
        let deadline = Instant::now() + timeout;
        match conn.read_op(deadline)? {
            Some(Op::Info(json)) => conn.info = Info::parse(&json)?,
            Some(other) => return Err(bad(format!("{addr} began with {other:?}, not INFO"))),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no INFO from {addr} within {timeout:?}"),
                ));
            }
        }
        if conn.info.tls_required && !tls {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{addr} requires TLS: write its URL as tls://{addr}"),
            ));
        }
        if tls {
            if conn.pos != conn.buf.len() {
                return Err(bad(format!("{addr} sent more than INFO before TLS")));
            }
            let Conn { stream, info, .. } = conn;
            let stream = stream.start_tls(patchbay_sdk::tls::server_name(addr))?;
            conn = Conn::new(stream, addr);
            conn.info = info;
        }
        conn.send(connect_line(auth, name).as_bytes())?;
        if !conn.flush(deadline)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer to CONNECT from {addr} within {timeout:?}"),
            ));
        }
        Ok(conn)
    }

    fn new(stream: Box<dyn Duplex>, addr: &str) -> Conn {
        Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
            chunk: vec![0; 64 * 1024],
            timeout: None,
            pongs_due: 0,
            backlog: VecDeque::new(),
            next_reply: 0,
            info: Info::default(),
            addr: addr.to_owned(),
            inbox: format!("_INBOX.pb{:016x}", random()),
            last_read: Instant::now(),
        }
    }

    /// Subscribe to this connection's inbox (`inbox.*`) with `sid`.
    pub fn inbox_sub(&mut self, sid: u64) -> io::Result<()> {
        let mut out = Vec::new();
        subscribe(&mut out, &format!("{}.*", self.inbox), None, sid);
        self.send(&out)
    }

    /// A reply subject under this connection's inbox, new each time.
    pub fn reply_subject(&mut self) -> String {
        self.next_reply += 1;
        format!("{}.{}", self.inbox, self.next_reply)
    }

    /// Write bytes (one or many operations).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Send `PING` and wait (until `deadline`) for every `PONG` due, which means the server
    /// has processed everything sent before. Messages meanwhile are kept for [`Conn::next`].
    /// `Ok(false)` when the deadline passed first.
    pub fn flush(&mut self, deadline: Instant) -> io::Result<bool> {
        self.send_and_flush(Vec::new(), deadline)
    }

    /// [`Conn::flush`] after sending `bytes`, in one write: a separate small `PING` would wait
    /// for the server's delayed ACK of the batch (Nagle's algorithm), some 40 ms.
    pub fn send_and_flush(&mut self, mut bytes: Vec<u8>, deadline: Instant) -> io::Result<bool> {
        bytes.extend_from_slice(b"PING\r\n");
        self.send(&bytes)?;
        self.pongs_due += 1;
        while self.pongs_due > 0 {
            match self.step(deadline)? {
                Some(msg) => self.backlog.push_back(msg),
                None if self.pongs_due > 0 && Instant::now() >= deadline => return Ok(false),
                None => {}
            }
        }
        Ok(true)
    }

    /// Publish `payload` to `subject` with a new reply subject and wait (until `deadline`) for
    /// the reply; other messages are kept for [`Conn::next`]. Needs [`Conn::inbox_sub`].
    pub fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        deadline: Instant,
    ) -> io::Result<Option<Msg>> {
        let reply = self.reply_subject();
        let mut out = Vec::new();
        publish(&mut out, subject, Some(&reply), &[], payload);
        self.send(&out)?;
        loop {
            match self.step(deadline)? {
                Some(msg) if msg.subject == reply => return Ok(Some(msg)),
                Some(msg) => self.backlog.push_back(msg),
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
    }

    /// The next message, or `None` when none came by `deadline`. Answers the server's `PING`s;
    /// a `-ERR` is an error (see [`server_error`]).
    pub fn next(&mut self, deadline: Instant) -> io::Result<Option<Msg>> {
        if let Some(msg) = self.backlog.pop_front() {
            return Ok(Some(msg));
        }
        loop {
            match self.step(deadline)? {
                Some(msg) => return Ok(Some(msg)),
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
    }

    /// Handle one operation: a message is returned, the rest handled here. `None` when
    /// nothing (or nothing but control traffic) came by `deadline`.
    fn step(&mut self, deadline: Instant) -> io::Result<Option<Msg>> {
        match self.read_op(deadline)? {
            Some(Op::Msg(msg)) => Ok(Some(msg)),
            Some(Op::Ping) => {
                self.send(b"PONG\r\n")?;
                Ok(None)
            }
            Some(Op::Pong) => {
                self.pongs_due = self.pongs_due.saturating_sub(1);
                Ok(None)
            }
            Some(Op::Ok) => Ok(None),
            Some(Op::Info(json)) => {
                if let Ok(info) = Info::parse(&json) {
                    self.info = info;
                }
                Ok(None)
            }
            Some(Op::Err(text)) => Err(server_error(&text)),
            None => Ok(None),
        }
    }

    /// The next operation, reading until `deadline` at most.
    fn read_op(&mut self, deadline: Instant) -> io::Result<Option<Op>> {
        loop {
            if let Some((op, used)) = parse(&self.buf[self.pos..])? {
                self.pos += used;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                return Ok(Some(op));
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Round up to whole milliseconds, so that the timeout is rarely changed.
            let wait = Duration::from_millis(
                (deadline - now).as_millis().clamp(1, u128::from(u32::MAX)) as u64,
            );
            if self.timeout != Some(wait) {
                self.stream.set_read_timeout(Some(wait))?;
                self.timeout = Some(wait);
            }
            match self.stream.read(&mut self.chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} closed the connection", self.addr),
                    ));
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&self.chunk[..n]);
                    self.last_read = Instant::now();
                    // A large message: read the rest in bigger steps.
                    if n == self.chunk.len() && self.chunk.len() < 1024 * 1024 {
                        self.chunk.resize(self.chunk.len() * 2, 0);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
