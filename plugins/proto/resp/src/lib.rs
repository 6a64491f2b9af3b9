//! `patchbay-proto-resp`: a small Redis client over a TCP stream (`std::net`, which is
//! wasi:sockets on wasm32-wasip2), shared by the `redis-source` and `redis-sink` plugins.
//!
//! What lives here: RESP2, the Redis serialization protocol (commands written as arrays of
//! bulk strings, queued for pipelining; replies read as [`Value`]s, split across reads or
//! not), [`Conn`], one connection that logs in with `AUTH` and picks a database with `SELECT`,
//! and [`parse_url`] for `redis://` URLs (`rediss://` for TLS, which the caller opens: see
//! [`Conn::over`]).
//!
//! What it may not touch: Patchbay's pipeline. It knows nothing of messages, batches,
//! checkpoints, configs or grants, and of the plugin SDK only `tls::Duplex`, the stream it runs
//! over (clear text or TLS); nothing of what a command means: it
//! speaks the protocol and reports `std::io` errors (a refused `AUTH` or `SELECT` is
//! `PermissionDenied` without an OS error code, so that it is not taken for a sandbox
//! denial), while a reply error (`-ERR …`) is a [`Value::Error`] for the caller to judge. It
//! builds natively too, where its unit tests run.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use patchbay_sdk::tls::Duplex;
use std::time::Duration;

/// Largest bulk reply accepted (a Redis string is at most 512 MiB; a message here far less).
const MAX_BULK: usize = 64 * 1024 * 1024;
/// Largest number of elements in one array reply.
const MAX_ARRAY: usize = 16 * 1024 * 1024;

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    /// `-ERR …`: the server refused the command.
    Error(String),
    Int(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array (e.g. XREADGROUP that timed out).
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The bulk or simple string as bytes.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(Some(b)) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The array's elements; an empty slice for a null array.
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(Some(items)) => Some(items),
            Value::Array(None) => Some(&[]),
            _ => None,
        }
    }
}

/// One connection.
pub struct Conn {
    stream: Box<dyn Duplex>,
    buf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    /// `HOST:PORT`, for messages.
    pub addr: String,
}

fn protocol(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Conn {
    /// Connect, then `AUTH` and `SELECT` when asked; `timeout` bounds every read.
    pub fn connect(
        addr: &str,
        password: Option<&str>,
        db: Option<u32>,
        timeout: Duration,
    ) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        // Not every platform has socket timeouts; without one, the host's call deadline is
        // the bound.
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_nodelay(true);
        Conn::over(Box::new(stream), addr, password, db)
    }

    /// [`Conn::connect`] over a stream the caller opened (a TLS one, say), its read timeout
    /// already set.
    pub fn over(
        stream: Box<dyn Duplex>,
        addr: &str,
        password: Option<&str>,
        db: Option<u32>,
    ) -> io::Result<Conn> {
        let mut conn = Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
            out: Vec::with_capacity(64 * 1024),
            addr: addr.to_owned(),
        };
        if let Some(password) = password {
            conn.expect_ok(&[b"AUTH", password.as_bytes()])?;
        }
        if let Some(db) = db {
            conn.expect_ok(&[b"SELECT", db.to_string().as_bytes()])?;
        }
        Ok(conn)
    }

    /// Queue a command; [`Conn::flush`] sends everything queued.
    pub fn send(&mut self, args: &[&[u8]]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            self.out
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        self.stream.flush()
    }

    /// Send one command and read its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Value> {
        self.send(args);
        self.flush()?;
        self.read()
    }

    fn expect_ok(&mut self, args: &[&[u8]]) -> io::Result<()> {
        match self.call(args)? {
            Value::Error(e) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} refused {}: {e}",
                    self.addr,
                    String::from_utf8_lossy(args[0])
                ),
            )),
            _ => Ok(()),
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + 64 * 1024, 0);
        let n = match self.stream.read(&mut self.buf[start..]) {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(start);
                return Err(e);
            }
        };
        self.buf.truncate(start + n);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} closed the connection", self.addr),
            ));
        }
        Ok(())
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[self.pos..self.pos + end].to_vec();
                self.pos += end + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > MAX_BULK {
                return Err(protocol("a reply line longer than 64 MiB"));
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() - self.pos < n + 2 {
            self.fill()?;
        }
        let data = self.buf[self.pos..self.pos + n].to_vec();
        if &self.buf[self.pos + n..self.pos + n + 2] != b"\r\n" {
            return Err(protocol("a bulk string not followed by CRLF"));
        }
        self.pos += n + 2;
        Ok(data)
    }

    /// Read one reply.
    pub fn read(&mut self) -> io::Result<Value> {
        let line = self.line()?;
        let (kind, rest) = line
            .split_first()
            .ok_or_else(|| protocol("an empty reply line"))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        let number = || -> io::Result<i64> {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| protocol(format!("not a number: {}", String::from_utf8_lossy(rest))))
        };
        match kind {
            b'+' => Ok(Value::Simple(text())),
            b'-' => Ok(Value::Error(text())),
            b':' => Ok(Value::Int(number()?)),
            b'$' => match number()? {
                -1 => Ok(Value::Bulk(None)),
                n if n < 0 || n as usize > MAX_BULK => {
                    Err(protocol(format!("a bulk string of {n} bytes")))
                }
                n => Ok(Value::Bulk(Some(self.exact(n as usize)?))),
            },
            b'*' => match number()? {
                -1 => Ok(Value::Array(None)),
                n if n < 0 || n as usize > MAX_ARRAY => {
                    Err(protocol(format!("an array of {n} elements")))
                }
                n => {
                    let mut items = Vec::with_capacity((n as usize).min(1024));
                    for _ in 0..n {
                        items.push(self.read()?);
                    }
                    Ok(Value::Array(Some(items)))
                }
            },
            other => Err(protocol(format!(
                "unknown reply type `{}`",
                char::from(*other).escape_default()
            ))),
        }
    }
}

/// `redis://[:password@]host:port[/db]` or `host:port`: address, password, database.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let (tls, rest) = match url.strip_prefix("rediss://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("redis://").unwrap_or(url)),
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let password = auth.map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_owned());
    let (addr, db) = match rest.split_once('/') {
        Some((addr, "")) => (addr, None),
        Some((addr, db)) => (
            addr,
            Some(
                db.parse::<u32>()
                    .map_err(|_| format!("database `{db}` is not a number"))?,
            ),
        ),
        None => (rest, None),
    };
    let addr = if addr.contains(':') {
        addr.to_owned()
    } else {
        format!("{addr}:6379")
    };
    if addr.starts_with(':') {
        return Err("no host".into());
    }
    if !plausible_host(&addr) {
        return Err(format!(
            "`{}` is not a host name or address",
            addr.escape_debug()
        ));
    }
    Ok(Url {
        addr,
        password: password.filter(|p| !p.is_empty()),
        db,
        tls,
    })
}

/// What [`parse_url`] reads from `redis://[:password@]host[:port][/db]` (`rediss://`: TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `HOST:PORT` (6379 when none is given).
    pub addr: String,
    pub password: Option<String>,
    pub db: Option<u32>,
    /// `rediss://`: the connection is TLS from its first byte.
    pub tls: bool,
}

/// Whether `HOST:PORT` names a host at all (a name of letters, digits, `-` and `.`, or an
/// address), so that a mistyped `url` is reported as such, not as a refused connection.
fn plausible_host(addr: &str) -> bool {
    if let Some(v6) = addr.strip_prefix('[') {
        return v6
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    !host.is_empty()
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = |addr: &str, password: Option<&str>, db, tls| Url {
            addr: addr.into(),
            password: password.map(str::to_owned),
            db,
            tls,
        };
        assert_eq!(
            parse_url("redis://127.0.0.1:6379").unwrap(),
            url("127.0.0.1:6379", None, None, false)
        );
        assert_eq!(
            parse_url("rediss://:secret@cache:6380/2").unwrap(),
            url("cache:6380", Some("secret"), Some(2), true)
        );
        assert_eq!(
            parse_url("localhost").unwrap(),
            url("localhost:6379", None, None, false)
        );
        assert!(parse_url("redis://h:1/x").is_err());
    }

    /// The wire form of a reply (what a server writes).
    fn encode(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Value::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
            Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Value::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Value::Bulk(Some(b)) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Value::Array(Some(items)) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    encode(item, out);
                }
            }
        }
    }

    fn bulk(b: &[u8]) -> Value {
        Value::Bulk(Some(b.to_vec()))
    }

    use patchbay_proto_testing::serve;

    fn connect(addr: &str) -> Conn {
        Conn::connect(addr, None, None, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn replies_round_trip_split_across_reads() {
        // An XREADGROUP answer, and every other kind of reply.
        let entry = Value::Array(Some(vec![
            bulk(b"1700000000000-0"),
            Value::Array(Some(vec![
                bulk(b"payload"),
                bulk(b"a\r\nb\0\xff"),
                bulk(b""),
            ])),
        ]));
        let stream = Value::Array(Some(vec![bulk(b"orders"), Value::Array(Some(vec![entry]))]));
        let values = vec![
            Value::Array(Some(vec![stream])),
            Value::Simple("OK".into()),
            Value::Error("WRONGTYPE Operation against a key holding the wrong kind".into()),
            Value::Int(-42),
            Value::Int(i64::MAX),
            Value::Bulk(None),
            Value::Array(None),
            Value::Array(Some(Vec::new())),
        ];
        let mut script = Vec::new();
        for v in &values {
            encode(v, &mut script);
        }
        for step in [1, 2, 7, script.len()] {
            let (addr, server) = serve(script.clone(), step, false);
            let mut conn = connect(&addr);
            for v in &values {
                assert_eq!(&conn.read().unwrap(), v, "step {step}");
            }
            drop(conn);
            server.join().unwrap();
        }
        // A bulk string larger than one read, in pieces of 1000 bytes.
        let big = bulk(&vec![9; 200_000]);
        let mut script = Vec::new();
        encode(&big, &mut script);
        let (addr, server) = serve(script, 1000, false);
        assert_eq!(connect(&addr).read().unwrap(), big);
        server.join().unwrap();
        assert_eq!(values[1].bytes(), Some(&b"OK"[..]));
        assert_eq!(values[5].bytes(), None);
        assert_eq!(values[6].items(), Some(&[][..]));
        assert_eq!(values[3].items(), None);
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let (addr, server) = serve(b"+OK\r\n+OK\r\n:1\r\n$-1\r\n".to_vec(), 3, false);
        let mut conn = Conn::connect(&addr, Some("p w"), Some(2), Duration::from_secs(5)).unwrap();
        conn.send(&[b"RPUSH", b"k", b"a\r\nb"]);
        conn.send(&[b"GET", b""]);
        conn.flush().unwrap();
        assert_eq!(conn.read().unwrap(), Value::Int(1));
        assert_eq!(conn.read().unwrap(), Value::Bulk(None));
        drop(conn);
        let sent = server.join().unwrap();
        let expected = [
            &b"*2\r\n$4\r\nAUTH\r\n$3\r\np w\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"[..],
            b"*3\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n",
        ]
        .concat();
        assert_eq!(sent, expected);
        // A command is itself a reply the client can read: the same arguments come back.
        let (addr, server) = serve(sent, 5, false);
        let mut conn = connect(&addr);
        let args: [&[&[u8]]; 4] = [
            &[b"AUTH", b"p w"],
            &[b"SELECT", b"2"],
            &[b"RPUSH", b"k", b"a\r\nb"],
            &[b"GET", b""],
        ];
        for command in args {
            let items = command.iter().map(|a| bulk(a)).collect();
            assert_eq!(conn.read().unwrap(), Value::Array(Some(items)));
        }
        drop(conn);
        server.join().unwrap();
    }

    #[test]
    fn malformed_replies_say_what_is_wrong() {
        let err = |script: &[u8]| {
            let (addr, server) = serve(script.to_vec(), 2, true);
            let e = connect(&addr).read().unwrap_err();
            server.join().unwrap();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            e.to_string()
        };
        assert_eq!(err(b"?x\r\n"), "unknown reply type `?`");
        assert_eq!(err(b"\x01\r\n"), "unknown reply type `\\u{1}`");
        assert_eq!(err(b"\r\n"), "an empty reply line");
        assert_eq!(err(b":12a\r\n"), "not a number: 12a");
        assert_eq!(err(b"$x\r\n"), "not a number: x");
        assert_eq!(
            err(b"$3\r\nabcde\r\n"),
            "a bulk string not followed by CRLF"
        );
        assert_eq!(err(b"$-5\r\n"), "a bulk string of -5 bytes");
        assert_eq!(err(b"$67108865\r\n"), "a bulk string of 67108865 bytes");
        assert_eq!(err(b"*-2\r\n"), "an array of -2 elements");
        assert_eq!(err(b"*2\r\n:1\r\n%3\r\n"), "unknown reply type `%`");
    }

    #[test]
    fn refusals_and_hang_ups() {
        let (addr, server) = serve(b"-WRONGPASS invalid password\r\n".to_vec(), 4, true);
        let e = Conn::connect(&addr, Some("x"), None, Duration::from_secs(5))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.raw_os_error().is_none());
        assert_eq!(
            e.to_string(),
            format!("{addr} refused AUTH: WRONGPASS invalid password")
        );
        server.join().unwrap();
        let (addr, server) = serve(b"*2\r\n$5\r\nhel".to_vec(), 3, true);
        let e = connect(&addr).read().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(e.to_string(), format!("{addr} closed the connection"));
        server.join().unwrap();
    }
}
