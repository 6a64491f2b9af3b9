//! A small Redis client over `std::net` (wasi:sockets on wasm32-wasip2): RESP2 commands and
//! replies, pipelining, `AUTH` and `SELECT`. Shared by `redis-source` and `redis-sink`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
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
    stream: TcpStream,
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
pub fn parse_url(url: &str) -> Result<(String, Option<String>, Option<u32>), String> {
    let rest = url.strip_prefix("redis://").unwrap_or(url);
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
    Ok((addr, password.filter(|p| !p.is_empty()), db))
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("redis://127.0.0.1:6379").unwrap(),
            ("127.0.0.1:6379".into(), None, None)
        );
        assert_eq!(
            parse_url("redis://:secret@cache:6380/2").unwrap(),
            ("cache:6380".into(), Some("secret".into()), Some(2))
        );
        assert_eq!(
            parse_url("localhost").unwrap(),
            ("localhost:6379".into(), None, None)
        );
        assert!(parse_url("redis://h:1/x").is_err());
    }
}
