//! `patchbay-proto-pg`: a small PostgreSQL client over a TCP stream (`std::net`, which is
//! wasi:sockets on wasm32-wasip2), shared by Patchbay's PostgreSQL plugins.
//!
//! What lives here: [`Url`] (`postgres://user:password@host:port/database`), [`Conn`], one
//! connection that logs in (trust, cleartext, MD5 or SCRAM-SHA-256) and runs statements with
//! the simple protocol ([`Conn::query`]) or the extended one with text parameters
//! ([`Conn::execute`], one round trip: parse, bind, execute, sync), and [`DbError`], what the
//! server said when it refused (SQLSTATE, message, detail), with [`DbError::class`] for the
//! caller to judge.
//!
//! What it may not touch: Patchbay's pipeline. It knows nothing of messages, batches,
//! configs or grants, and of the plugin SDK only `tls::Duplex`, the stream it runs over (clear
//! text, or TLS after PostgreSQL's SSLRequest). The messages themselves are encoded and decoded by
//! `postgres-protocol` (tokio-postgres' codec); only the connection is ours, because the
//! `postgres` crate does not build for wasm32-wasip2 and `tokio-postgres` makes progress only
//! while a plugin call runs. It builds natively too, where its unit tests run.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use patchbay_sdk::tls::Duplex;
use postgres_protocol::IsNull;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;

pub mod pgoutput;
mod url;

pub use url::Url;

/// What the server said when it refused a statement or a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    /// SQLSTATE, e.g. `22P02`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

impl DbError {
    /// The SQLSTATE class: its first two characters (`22` data exception, `23` integrity
    /// constraint violation, `42` syntax error or access rule violation, `08` connection).
    pub fn class(&self) -> &str {
        self.code.get(..2).unwrap_or("")
    }

    /// Worth trying again later: connection exception, transaction rollback (deadlock,
    /// serialization), insufficient resources, object in use, operator intervention
    /// (shutdown, cancel), system error.
    pub fn is_transient(&self) -> bool {
        matches!(self.class(), "08" | "40" | "53" | "55" | "57" | "58" | "XX")
    }

    /// A row's data was refused: data exception (22) or integrity constraint violation (23).
    /// The same statement without that row would succeed.
    pub fn is_data(&self) -> bool {
        matches!(self.class(), "22" | "23")
    }

    fn from_fields(mut fields: ErrorFields<'_>) -> io::Result<DbError> {
        let mut error = DbError {
            code: String::new(),
            message: String::new(),
            detail: None,
        };
        while let Some(field) = fields.next()? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                _ => {}
            }
        }
        Ok(error)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// A failed call: the connection broke (or never came up), or the server refused.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    Db(DbError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => e.fmt(f),
            Error::Db(e) => e.fmt(f),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

/// One row of text values (`None` is SQL NULL).
pub type Row = Vec<Option<String>>;

/// One connection.
pub struct Conn {
    stream: Box<dyn Duplex>,
    input: BytesMut,
    out: BytesMut,
    /// `HOST:PORT`, for messages.
    pub addr: String,
}

fn protocol(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn bad_message(addr: &str, what: &str, message: &Message) -> io::Error {
    let kind = match message {
        Message::ErrorResponse(_) => "an error",
        Message::CopyInResponse(_) | Message::CopyOutResponse(_) => "a COPY",
        _ => "another message",
    };
    protocol(format!("{addr}: expected {what}, got {kind}"))
}

impl Conn {
    /// Connect and log in as `url` says; `params` adds startup parameters (e.g.
    /// `("replication", "database")`). `timeout` bounds every read.
    pub fn connect(url: &Url, params: &[(&str, &str)], timeout: Duration) -> Result<Conn, Error> {
        let stream = TcpStream::connect(&url.addr)?;
        // Not every platform has socket timeouts; without one, the host's call deadline is
        // the bound.
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_nodelay(true);
        Conn::over(Box::new(stream), url, params)
    }

    /// [`Conn::connect`] over a stream the caller opened, its read timeout set. With
    /// `url.tls` the connection asks for TLS first (SSLRequest) and upgrades when the server
    /// agrees; a server that refuses is an error, never a silent fall back to clear text.
    pub fn over(
        mut stream: Box<dyn Duplex>,
        url: &Url,
        params: &[(&str, &str)],
    ) -> Result<Conn, Error> {
        if url.tls {
            // SSLRequest: length 8, code 80877103.
            stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])?;
            stream.flush()?;
            let mut answer = [0u8; 1];
            stream.read_exact(&mut answer)?;
            if answer[0] != b'S' {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{}: the server does not accept TLS (sslmode=require); enable `ssl` \
                         on it or use sslmode=disable",
                        url.addr
                    ),
                )));
            }
            stream = stream.start_tls(patchbay_sdk::tls::server_name(&url.addr))?;
        }
        let mut conn = Conn {
            stream,
            input: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::with_capacity(64 * 1024),
            addr: url.addr.clone(),
        };
        let mut startup = vec![
            ("user", url.user.as_str()),
            ("database", url.database.as_str()),
            ("client_encoding", "UTF8"),
            ("application_name", "patchbay"),
        ];
        startup.extend_from_slice(params);
        frontend::startup_message(startup, &mut conn.out)?;
        conn.flush()?;
        conn.login(url)?;
        // Parameter statuses and the key data, up to the first ReadyForQuery.
        conn.ready()?;
        Ok(conn)
    }

    fn login(&mut self, url: &Url) -> Result<(), Error> {
        let password = || {
            url.password.as_deref().ok_or_else(|| {
                Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{}: the server asks user `{}` for a password; give it in the URL \
                         (postgres://user:password@host/db, e.g. from ${{env:NAME}})",
                        url.addr, url.user
                    ),
                ))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.read()? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.out)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(url.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram_offered = false;
                    while let Some(m) = mechanisms.next()? {
                        scram_offered |= m == sasl::SCRAM_SHA_256;
                    }
                    if !scram_offered {
                        return Err(protocol(format!(
                            "{}: the server offers no SASL mechanism this client speaks \
                             (SCRAM-SHA-256)",
                            self.addr
                        ))
                        .into());
                    }
                    let s = sasl::ScramSha256::new(
                        password()?.as_bytes(),
                        sasl::ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.out,
                    )?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL continue before SASL start"))?;
                    s.update(body.data())?;
                    frontend::sasl_response(s.message(), &mut self.out)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL final before SASL start"))?;
                    s.finish(body.data())?;
                    continue;
                }
                Message::ErrorResponse(body) => {
                    return Err(Error::Db(DbError::from_fields(body.fields())?));
                }
                other => return Err(bad_message(&self.addr, "authentication", &other).into()),
            }
            self.flush()?;
        }
    }

    /// Run `sql` (one or more statements) with the simple protocol: the rows of its last
    /// statement that returns any, as text.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Row>, Error> {
        frontend::query(sql, &mut self.out)?;
        self.flush()?;
        self.results().map(|(rows, _)| rows)
    }

    /// Run one statement with text parameters (`None` is NULL) in one round trip (the unnamed
    /// statement: parse, bind, execute, sync): its rows as text, and the number of rows it
    /// affected (from its command tag; 0 when the tag gives none).
    pub fn execute(
        &mut self,
        sql: &str,
        params: &[Option<&[u8]>],
    ) -> Result<(Vec<Row>, u64), Error> {
        frontend::parse("", sql, std::iter::empty(), &mut self.out)?;
        frontend::bind(
            "",
            "",
            std::iter::empty::<i16>(),
            params.iter(),
            |value, buf| match value {
                Some(bytes) => {
                    buf.extend_from_slice(bytes);
                    Ok(IsNull::No)
                }
                None => Ok(IsNull::Yes),
            },
            std::iter::empty::<i16>(),
            &mut self.out,
        )
        .map_err(|_| protocol("a parameter could not be encoded"))?;
        frontend::execute("", 0, &mut self.out)?;
        frontend::sync(&mut self.out);
        self.flush()?;
        self.results()
    }

    /// `COPY … FROM STDIN` (`sql`) with `data` in the statement's format, in one round trip
    /// (the data follows the statement without waiting for the server's go-ahead: if the
    /// statement fails, the server skips the data up to the sync). Returns the rows copied.
    pub fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<u64, Error> {
        frontend::parse("", sql, std::iter::empty(), &mut self.out)?;
        frontend::bind(
            "",
            "",
            std::iter::empty::<i16>(),
            std::iter::empty::<Option<&[u8]>>(),
            |_, _| Ok(IsNull::Yes),
            std::iter::empty::<i16>(),
            &mut self.out,
        )
        .map_err(|_| protocol("COPY could not be encoded"))?;
        frontend::execute("", 0, &mut self.out)?;
        // CopyData messages of at most 1 MiB each.
        for chunk in data.chunks(1 << 20) {
            let message = frontend::CopyData::new(chunk)?;
            message.write(&mut self.out);
        }
        frontend::copy_done(&mut self.out);
        frontend::sync(&mut self.out);
        self.flush()?;
        self.results().map(|(_, copied)| copied)
    }

    /// Read the results of what was sent, up to ReadyForQuery: rows, the last command's row
    /// count, or the first error (the rest is read past, so the connection stays in step).
    fn results(&mut self) -> Result<(Vec<Row>, u64), Error> {
        let mut rows = Vec::new();
        let mut affected = 0;
        let mut error = None;
        loop {
            match self.read()? {
                Message::ReadyForQuery(_) => break,
                Message::DataRow(body) => {
                    let buffer = body.buffer();
                    let mut ranges = body.ranges();
                    let mut row = Vec::new();
                    while let Some(range) = ranges.next()? {
                        row.push(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Message::CommandComplete(body) => {
                    affected = body
                        .tag()?
                        .rsplit(' ')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                }
                Message::ErrorResponse(body) if error.is_none() => {
                    error = Some(DbError::from_fields(body.fields())?);
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(Error::Db(e)),
            None => Ok((rows, affected)),
        }
    }

    /// Read up to ReadyForQuery, failing on an error.
    fn ready(&mut self) -> Result<(), Error> {
        self.results().map(|_| ())
    }

    /// Start streaming changes (`START_REPLICATION … LOGICAL …`, on a connection made with
    /// `("replication", "database")`): the server answers CopyBothResponse, then sends
    /// CopyData until the connection ends.
    pub fn start_replication(&mut self, command: &str) -> Result<(), Error> {
        frontend::query(command, &mut self.out)?;
        self.flush()?;
        loop {
            // CopyBothResponse (`W`) is not among postgres-protocol's messages: read it here.
            self.fill_to(5)?;
            if self.input[0] == b'W' {
                let len = u32::from_be_bytes([
                    self.input[1],
                    self.input[2],
                    self.input[3],
                    self.input[4],
                ]);
                let whole = 1 + len as usize;
                self.fill_to(whole)?;
                let _ = self.input.split_to(whole);
                return Ok(());
            }
            match self.read()? {
                Message::ErrorResponse(body) => {
                    let e = DbError::from_fields(body.fields())?;
                    // The ReadyForQuery that follows.
                    let _ = self.results();
                    return Err(Error::Db(e));
                }
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                other => return Err(bad_message(&self.addr, "CopyBothResponse", &other).into()),
            }
        }
    }

    /// The next CopyData of a replication stream, waiting at most `wait` (`None` when none
    /// came; a message partly read stays buffered for the next call).
    pub fn copy_data(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, Error> {
        self.stream.set_read_timeout(Some(wait))?;
        let message = match self.read() {
            Ok(message) => message,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        match message {
            Message::CopyData(body) => Ok(Some(body.data().to_vec())),
            Message::ErrorResponse(body) => Err(Error::Db(DbError::from_fields(body.fields())?)),
            Message::CopyDone => Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: the server ended the replication stream", self.addr),
            ))),
            _ => Ok(None),
        }
    }

    /// Send one CopyData (a standby status update) on a replication stream.
    pub fn send_copy_data(&mut self, data: &[u8]) -> Result<(), Error> {
        frontend::CopyData::new(data)?.write(&mut self.out);
        self.flush()?;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        self.stream.flush()
    }

    /// Read until at least `n` bytes are buffered.
    fn fill_to(&mut self, n: usize) -> io::Result<()> {
        while self.input.len() < n {
            self.fill()?;
        }
        Ok(())
    }

    /// Read once more into the buffer.
    fn fill(&mut self) -> io::Result<()> {
        let start = self.input.len();
        self.input.resize(start + 64 * 1024, 0);
        let n = match self.stream.read(&mut self.input[start..]) {
            Ok(n) => n,
            Err(e) => {
                self.input.truncate(start);
                return Err(e);
            }
        };
        self.input.truncate(start + n);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} closed the connection", self.addr),
            ));
        }
        Ok(())
    }

    /// The next backend message.
    fn read(&mut self) -> io::Result<Message> {
        loop {
            if let Some(message) = Message::parse(&mut self.input)? {
                return Ok(message);
            }
            self.fill()?;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.out.clear();
        frontend::terminate(&mut self.out);
        let _ = self.stream.write_all(&self.out);
    }
}

/// `name` as a quoted SQL identifier (`"name"`, inner quotes doubled); a dotted name
/// (`schema.table`) is quoted part by part.
pub fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// `text` as a SQL string literal (`'…'`, inner quotes doubled).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("sales.Orders"), "\"sales\".\"Orders\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn errors_say_what_the_server_said() {
        let e = DbError {
            code: "22P02".into(),
            message: "invalid input syntax for type integer: \"abc\"".into(),
            detail: None,
        };
        assert_eq!(e.class(), "22");
        assert_eq!(
            e.to_string(),
            "invalid input syntax for type integer: \"abc\" (SQLSTATE 22P02)"
        );
    }
}
