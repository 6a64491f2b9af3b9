//! `patchbay-proto-mysql`: a small MySQL/MariaDB client over a TCP stream (`std::net`, which
//! is wasi:sockets on wasm32-wasip2), shared by Patchbay's MariaDB plugins.
//!
//! What lives here: [`Url`] (`mysql://user:password@host:port/database`), [`Conn`], one
//! connection that logs in (any auth plugin `mysql_common` speaks: `mysql_native_password`,
//! `caching_sha2_password`'s fast path, clear text over TLS…) and runs statements with the text
//! protocol ([`Conn::query`]), [`ServerError`], what the server said when it refused (error
//! code, SQLSTATE, message) with [`ServerError::is_data`] and [`ServerError::is_transient`]
//! for the caller to judge, and [`Conn::quote`], a value as an SQL string literal.
//!
//! What it may not touch: Patchbay's pipeline. It knows nothing of messages, batches, configs
//! or grants, and of the plugin SDK only `tls::Duplex`, the stream it runs over (clear text,
//! or TLS after the SSLRequest packet). The packets and their framing are `mysql_common`'s
//! (the `mysql` crate's codec); only the connection is ours, because neither `mysql` nor
//! `mysql_async` builds for wasm32-wasip2. It builds natively too, where its unit tests run.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use mysql_common::auth::plugins::{AuthProc, ChallengeResponsePlugin, Context, Response};
use mysql_common::constants::{CapabilityFlags, ColumnType, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    AuthPlugin, AuthSwitchRequest, Column, CommonOkPacket, ErrPacket, HandshakePacket,
    HandshakeResponse, OkPacketDeserializer, OldEofPacket, ResultSetTerminator, SslRequest,
};
use mysql_common::proto::MySerialize;
use mysql_common::proto::codec::PacketCodec;
use mysql_common::proto::codec::error::PacketCodecError;
use mysql_common::proto::sync_framed::MySyncFramed;
use patchbay_sdk::tls::Duplex;

mod url;

pub use url::Url;

/// utf8mb4_general_ci: every text goes both ways as UTF-8, 4-byte characters included.
const UTF8MB4: u8 = 45;
/// The largest packet this client reads (the protocol's own limit is 1 GiB).
const MAX_READ: usize = 1 << 30;

/// What the server said when it refused a statement or a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The server's error number, e.g. 1366.
    pub code: u16,
    /// SQLSTATE, e.g. `22007` (`HY000` when the server gives no better one).
    pub state: String,
    pub message: String,
}

impl ServerError {
    /// A row's data was refused: a wrong type or value, NULL into NOT NULL, a duplicate key,
    /// a foreign key or CHECK constraint, a value too long. The same statement without that
    /// row would succeed.
    pub fn is_data(&self) -> bool {
        matches!(self.state.get(..2), Some("22" | "23"))
            || matches!(
                self.code,
                // 1048 column cannot be null, 1062 duplicate entry, 1264 out of range,
                // 1265 data truncated, 1292 incorrect value, 1364 field without default,
                // 1366 incorrect value for column, 1406 too long, 1411 incorrect value for
                // function, 1452 foreign key, 3819 / 4025 CHECK constraint failed, 4078
                // invalid JSON.
                1048 | 1062
                    | 1264
                    | 1265
                    | 1292
                    | 1364
                    | 1366
                    | 1406
                    | 1411
                    | 1452
                    | 3819
                    | 4025
                    | 4078
            )
    }

    /// Worth trying again later: a deadlock or lock wait, the server shutting down or out of
    /// connections or resources, the connection killed.
    pub fn is_transient(&self) -> bool {
        matches!(self.state.get(..2), Some("08" | "40"))
            || matches!(
                self.code,
                // 1040 too many connections, 1053 shutdown, 1205 lock wait timeout, 1213
                // deadlock, 1317 query interrupted, 1927 connection killed, 1041 / 1037 / 1038
                // out of memory, 1203 user over max_user_connections.
                1040 | 1053 | 1205 | 1213 | 1317 | 1927 | 1041 | 1037 | 1038 | 1203
            )
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (error {}, SQLSTATE {})",
            self.message, self.code, self.state
        )
    }
}

/// A failed call: the connection broke (or never came up), or the server refused.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    Server(ServerError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => e.fmt(f),
            Error::Server(e) => e.fmt(f),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<PacketCodecError> for Error {
    fn from(e: PacketCodecError) -> Error {
        match e {
            PacketCodecError::Io(e) => Error::Io(e),
            other => Error::Io(protocol(other.to_string())),
        }
    }
}

fn protocol(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One column of a result: its name, and whether its values are numbers (written unquoted
/// in JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub numeric: bool,
}

/// What a statement returned: its columns and rows (text values, `None` for NULL), or for
/// one that returns no rows, the number of rows it changed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub columns: Vec<ColumnInfo>,
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
    pub affected: u64,
}

/// One connection.
pub struct Conn {
    framed: MySyncFramed<Box<dyn Duplex>>,
    caps: CapabilityFlags,
    packet: Vec<u8>,
    /// `HOST:PORT`, for messages.
    pub addr: String,
    /// The server's `max_allowed_packet`: no statement may be longer.
    pub max_packet: usize,
    /// Whether a backslash escapes in string literals (no `NO_BACKSLASH_ESCAPES` in the
    /// session's sql_mode), which [`Conn::quote`] follows.
    backslash_escapes: bool,
}

struct AuthContext<'a> {
    password: &'a [u8],
    nonce: &'a [u8],
    tls: bool,
}

impl Context for &AuthContext<'_> {
    fn pass(&self) -> &[u8] {
        self.password
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        self.tls
    }
    fn scramble(&self) -> &[u8] {
        self.nonce
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        None
    }
}

impl Conn {
    /// Log in over a stream the caller opened, its read timeout set, as `url` says. With
    /// `url.tls` the connection asks for TLS (SSLRequest) and upgrades; a server without TLS
    /// is an error, never a silent fall back to clear text. `session` statements run right
    /// after the login (e.g. `SET SESSION sql_mode = …`).
    pub fn over(stream: Box<dyn Duplex>, url: &Url, timeout: Duration) -> Result<Conn, Error> {
        let mut stream = stream;
        stream.set_read_timeout(Some(timeout))?;
        let mut codec = PacketCodec::default();
        codec.max_allowed_packet = MAX_READ;
        let mut framed = MySyncFramed::construct(BytesMut::new(), BytesMut::new(), codec, stream);
        let mut packet = Vec::new();
        if !framed.next_packet(&mut packet)? {
            return Err(protocol(format!("{}: the server closed the connection", url.addr)).into());
        }
        if packet.first() == Some(&0xff) {
            return Err(Error::Server(server_error(
                &packet,
                CapabilityFlags::empty(),
            )?));
        }
        let handshake: HandshakePacket<'_> = ParseBuf(&packet).parse(())?;
        let nonce = handshake.nonce();
        let offered = handshake.capabilities();
        let version = handshake
            .maria_db_server_version_parsed()
            .or_else(|| handshake.server_version_parsed())
            .unwrap_or((5, 7, 0));
        let plugin = handshake
            .auth_plugin()
            .map(AuthPlugin::into_owned)
            .unwrap_or(AuthPlugin::MysqlNativePassword);
        let wanted = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_LONG_FLAG
            | CapabilityFlags::CLIENT_TRANSACTIONS
            | CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_DEPRECATE_EOF;
        let mut caps = wanted & offered;
        if url.tls {
            if !offered.contains(CapabilityFlags::CLIENT_SSL) {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{}: the server does not accept TLS (ssl-mode=required); enable it \
                         (ssl_cert and ssl_key in the server's config) or use \
                         ssl-mode=disabled",
                        url.addr
                    ),
                )));
            }
            caps |= CapabilityFlags::CLIENT_SSL;
            let mut request = Vec::new();
            SslRequest::new(caps, MAX_READ as u32, UTF8MB4).serialize(&mut request);
            framed.send(&mut &request[..])?;
            let (input, output, codec, stream) = framed.destruct();
            let stream = stream.start_tls(patchbay_sdk::tls::server_name(&url.addr))?;
            framed = MySyncFramed::construct(input, output, codec, stream);
        }
        let password = url.password.as_deref().unwrap_or("").as_bytes();
        let context = AuthContext {
            password,
            nonce: &nonce,
            tls: url.tls,
        };
        let mut auth = AuthProc::init(&plugin).map_err(|e| protocol(e.to_string()))?;
        let first = auth
            .run(&context, &nonce)
            .map_err(|e| protocol(e.to_string()))?;
        let mut response = Vec::new();
        HandshakeResponse::new(
            first.data().map(<[u8]>::to_vec),
            version,
            Some(url.user.as_bytes()),
            Some(url.database.as_bytes()),
            Some(plugin),
            caps,
            None,
            MAX_READ as u32,
        )
        .serialize(&mut response);
        framed.send(&mut &response[..])?;
        let mut conn = Conn {
            framed,
            caps,
            packet,
            addr: url.addr.clone(),
            max_packet: 4 << 20,
            backslash_escapes: true,
        };
        conn.authenticate(auth, url, password)?;
        conn.session()?;
        Ok(conn)
    }

    /// The rest of the login: auth switches and extra rounds until OK or an error.
    fn authenticate(
        &mut self,
        mut auth: AuthProc,
        url: &Url,
        password: &[u8],
    ) -> Result<(), Error> {
        let mut nonce = Vec::new();
        loop {
            self.read()?;
            let reply = match self.packet.first() {
                Some(0x00) => return Ok(()),
                Some(0xff) => {
                    return Err(Error::Server(server_error(&self.packet, self.caps)?));
                }
                Some(0xfe) => {
                    let switch: AuthSwitchRequest<'_> = ParseBuf(&self.packet).parse(())?;
                    auth = AuthProc::init(&switch.auth_plugin())
                        .map_err(|e| protocol(format!("{}: {e}", self.addr)))?;
                    nonce = switch.plugin_data().to_vec();
                    if nonce.len() == 21 && nonce.last() == Some(&0) {
                        nonce.pop();
                    }
                    let context = AuthContext {
                        password,
                        nonce: &nonce,
                        tls: url.tls,
                    };
                    auth.run(&context, &nonce)
                }
                Some(0x01) => {
                    let data = self.packet[1..].to_vec();
                    let context = AuthContext {
                        password,
                        nonce: &nonce,
                        tls: url.tls,
                    };
                    auth.run(&context, &data)
                }
                _ => {
                    return Err(protocol(format!(
                        "{}: an unexpected packet in the login",
                        self.addr
                    ))
                    .into());
                }
            }
            .map_err(|e| {
                Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{}: user `{}`: {e}", self.addr, url.user),
                ))
            })?;
            let data = match &reply {
                Response::Next { packet } | Response::Last { packet } => packet.clone(),
            };
            if let Some(data) = data {
                self.framed.send(&mut &data[..])?;
            }
        }
    }

    /// What the session needs known: the packet limit and whether backslashes escape.
    fn session(&mut self) -> Result<(), Error> {
        let outcome = self.query("SELECT @@max_allowed_packet, @@sql_mode")?;
        if let Some(row) = outcome.rows.first() {
            let text = |i: usize| {
                row.get(i)
                    .and_then(Option::as_deref)
                    .map(String::from_utf8_lossy)
                    .unwrap_or(Cow::Borrowed(""))
            };
            self.max_packet = text(0).parse().unwrap_or(self.max_packet);
            self.backslash_escapes = !text(1).contains("NO_BACKSLASH_ESCAPES");
        }
        Ok(())
    }

    fn read(&mut self) -> Result<(), Error> {
        self.packet.clear();
        if self.framed.next_packet(&mut self.packet)? {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: the server closed the connection", self.addr),
            )
            .into())
        }
    }

    /// Run one statement with the text protocol: its rows, or the rows it changed.
    pub fn query(&mut self, sql: &str) -> Result<Outcome, Error> {
        self.framed.codec_mut().reset_seq_id();
        let mut command = Vec::with_capacity(sql.len() + 1);
        command.push(0x03);
        command.extend_from_slice(sql.as_bytes());
        self.framed.send(&mut &command[..])?;
        let mut outcome = Outcome::default();
        loop {
            self.read()?;
            let more = match self.packet.first() {
                Some(0x00) => {
                    let ok = ParseBuf(&self.packet)
                        .parse::<OkPacketDeserializer<'_, CommonOkPacket>>(self.caps)?
                        .into_inner();
                    outcome.affected += ok.affected_rows();
                    ok.status_flags()
                }
                Some(0xff) => return Err(Error::Server(server_error(&self.packet, self.caps)?)),
                Some(0xfb) => {
                    return Err(
                        protocol(format!("{}: LOCAL INFILE is not supported", self.addr)).into(),
                    );
                }
                _ => self.result_set(&mut outcome)?,
            };
            if !more.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS) {
                return Ok(outcome);
            }
        }
    }

    /// Columns and rows of one result set, its first packet (the column count) read.
    fn result_set(&mut self, outcome: &mut Outcome) -> Result<StatusFlags, Error> {
        let count = ParseBuf(&self.packet).checked_eat_lenenc_int().unwrap_or(0) as usize;
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            self.read()?;
            let column: Column = ParseBuf(&self.packet).parse(())?;
            columns.push(ColumnInfo {
                name: column.name_str().into_owned(),
                numeric: is_numeric(column.column_type()),
            });
        }
        if !self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
            self.read()?;
        }
        let mut rows = Vec::new();
        loop {
            self.read()?;
            match self.packet.first() {
                Some(0xff) => return Err(Error::Server(server_error(&self.packet, self.caps)?)),
                Some(0xfe) if self.packet.len() < 0xff_ffff => {
                    let status = if self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
                        ParseBuf(&self.packet)
                            .parse::<OkPacketDeserializer<'_, ResultSetTerminator>>(self.caps)?
                            .into_inner()
                            .status_flags()
                    } else {
                        ParseBuf(&self.packet)
                            .parse::<OkPacketDeserializer<'_, OldEofPacket>>(self.caps)?
                            .into_inner()
                            .status_flags()
                    };
                    outcome.columns = columns;
                    outcome.rows = rows;
                    return Ok(status);
                }
                _ => {
                    let mut buf = ParseBuf(&self.packet);
                    let mut row = Vec::with_capacity(count);
                    for _ in 0..count {
                        if buf.0.first() == Some(&0xfb) {
                            buf.skip(1);
                            row.push(None);
                        } else {
                            let value = buf
                                .checked_eat_lenenc_str()
                                .ok_or_else(|| protocol("a row shorter than its columns"))?;
                            row.push(Some(value.to_vec()));
                        }
                    }
                    rows.push(row);
                }
            }
        }
    }

    /// `text` as an SQL string literal, quotes included, appended to `out`: escaped as the
    /// session's sql_mode reads it, so no value can end the literal early.
    pub fn quote(&self, text: &[u8], out: &mut Vec<u8>) {
        quote_into(text, self.backslash_escapes, out);
    }
}

fn quote_into(text: &[u8], backslash_escapes: bool, out: &mut Vec<u8>) {
    out.reserve(text.len() + 2);
    out.push(b'\'');
    for &b in text {
        match b {
            b'\'' if backslash_escapes => out.extend_from_slice(b"\\'"),
            b'\'' => out.extend_from_slice(b"''"),
            b'\\' if backslash_escapes => out.extend_from_slice(b"\\\\"),
            0 if backslash_escapes => out.extend_from_slice(b"\\0"),
            0x1a if backslash_escapes => out.extend_from_slice(b"\\Z"),
            _ => out.push(b),
        }
    }
    out.push(b'\'');
}

/// A name (`table`, `schema.table`, a column) as a quoted identifier: `` `schema`.`table` ``.
pub fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("`{}`", part.replace('`', "``")))
        .collect::<Vec<_>>()
        .join(".")
}

fn is_numeric(t: ColumnType) -> bool {
    use ColumnType::*;
    matches!(
        t,
        MYSQL_TYPE_TINY
            | MYSQL_TYPE_SHORT
            | MYSQL_TYPE_LONG
            | MYSQL_TYPE_INT24
            | MYSQL_TYPE_LONGLONG
            | MYSQL_TYPE_FLOAT
            | MYSQL_TYPE_DOUBLE
            | MYSQL_TYPE_DECIMAL
            | MYSQL_TYPE_NEWDECIMAL
            | MYSQL_TYPE_YEAR
    )
}

fn server_error(packet: &[u8], caps: CapabilityFlags) -> io::Result<ServerError> {
    match ParseBuf(packet).parse::<ErrPacket<'_>>(caps)? {
        ErrPacket::Error(e) => Ok(ServerError {
            code: e.error_code(),
            state: e
                .sql_state_ref()
                .map(|s| s.as_str().into_owned())
                .unwrap_or_else(|| "HY000".into()),
            message: e.message_str().into_owned(),
        }),
        ErrPacket::Progress(_) => Err(protocol("a progress report where an error was expected")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(text: &str, backslash: bool) -> String {
        let mut out = Vec::new();
        quote_into(text.as_bytes(), backslash, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn literals_cannot_be_ended_early() {
        assert_eq!(quoted("it's", true), r"'it\'s'");
        assert_eq!(
            quoted(r"a\'; DROP TABLE t; --", true),
            r"'a\\\'; DROP TABLE t; --'"
        );
        assert_eq!(quoted("it's", false), "'it''s'");
        assert_eq!(quoted(r"a\'", false), r"'a\'''");
        assert_eq!(quoted("nul\0", true), r"'nul\0'");
    }

    #[test]
    fn identifiers() {
        assert_eq!(quote_ident("shop.orders"), "`shop`.`orders`");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }

    #[test]
    fn error_classes() {
        let e = |code, state: &str| ServerError {
            code,
            state: state.into(),
            message: String::new(),
        };
        assert!(e(1366, "22007").is_data());
        assert!(e(1366, "HY000").is_data());
        assert!(e(1062, "23000").is_data());
        assert!(!e(1146, "42S02").is_data());
        assert!(e(1213, "40001").is_transient());
        assert!(e(1053, "08S01").is_transient());
        assert!(!e(1045, "28000").is_transient());
    }
}
