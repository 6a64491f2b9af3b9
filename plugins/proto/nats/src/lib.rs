//! `patchbay-proto-nats`: the NATS client protocol over a TCP stream (`std::net`, which is
//! wasi:sockets on wasm32-wasip2), shared by the `nats-source` and `nats-sink` plugins.
//!
//! What lives here: the text protocol's codec ([`parse`] for what the server sends: `INFO`,
//! `MSG` and `HMSG` with their header blocks and status lines such as `NATS/1.0 503`, `PING`,
//! `PONG`, `+OK`, `-ERR`; [`publish`] and [`subscribe`] for what a client sends, `PUB`/`HPUB`
//! and `SUB` with queue groups), the checks of subjects, names, hosts and headers, the
//! `CONNECT` options, the JetStream API's answers ([`api_answer`]), and [`Conn`], one
//! connection that logs in, answers the server's `PING`s and waits for `PONG`s and replies.
//!
//! What it may not touch: Patchbay's pipeline. It knows nothing of messages, batches,
//! checkpoints, configs or grants, and of the plugin SDK only `tls::Duplex`, the stream it
//! runs over (clear text, or TLS started after the server's `INFO` as NATS does it); it speaks
//! the protocol and reports
//! `std::io` errors (a refused login is `PermissionDenied` without an OS error code, so that
//! it is not taken for a sandbox denial). Turning those into a connector's behaviour
//! (retries, acknowledgements, what is fatal) is the plugins' job. It builds natively too,
//! where its unit tests run.

use std::hash::{BuildHasher, Hasher};
use std::io;

/// Longest control line accepted (the server's own limit is 4 KiB by default).
pub const MAX_CONTROL_LINE: usize = 64 * 1024;
/// Largest message accepted from the server (its `max_payload` is at most 64 MiB).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A message from the server (`MSG` or `HMSG`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Msg {
    pub subject: String,
    pub sid: u64,
    pub reply: Option<String>,
    /// The status code of an `HMSG` whose header line carries one (`NATS/1.0 503`).
    pub status: Option<u16>,
    /// The text after the status code (`No Messages`), empty when there is none.
    pub description: String,
    /// Header names and values in the order sent (names may repeat).
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Msg {
    /// The value of the first header with this name (case-insensitive, as NATS treats them).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One protocol operation from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `INFO {json}`: the JSON text.
    Info(String),
    Msg(Msg),
    Ping,
    Pong,
    Ok,
    /// `-ERR 'text'`: the text without quotes.
    Err(String),
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One whole operation from the start of `buf`, and how many bytes it took; `None` until all
/// of it has arrived.
pub fn parse(buf: &[u8]) -> io::Result<Option<(Op, usize)>> {
    let search = &buf[..buf.len().min(MAX_CONTROL_LINE)];
    let Some(nl) = search.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_CONTROL_LINE {
            return Err(bad(format!(
                "a protocol line longer than {MAX_CONTROL_LINE} bytes"
            )));
        }
        return Ok(None);
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = std::str::from_utf8(&buf[..line_end])
        .map_err(|_| bad("a protocol line that is not UTF-8"))?;
    let after = nl + 1;
    let (word, rest) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i..].trim_start()),
        None => (line, ""),
    };
    let op = match word.to_ascii_uppercase().as_str() {
        "PING" => Op::Ping,
        "PONG" => Op::Pong,
        "+OK" => Op::Ok,
        "-ERR" => Op::Err(rest.trim().trim_matches('\'').to_owned()),
        "INFO" => Op::Info(rest.trim_end().to_owned()),
        "MSG" | "HMSG" => {
            let headers = word.eq_ignore_ascii_case("HMSG");
            let args: Vec<&str> = rest.split_ascii_whitespace().collect();
            let (subject, sid, reply, header_len, total) = match (headers, args.as_slice()) {
                (false, [s, sid, n]) => (*s, *sid, None, "0", *n),
                (false, [s, sid, r, n]) => (*s, *sid, Some(*r), "0", *n),
                (true, [s, sid, h, n]) => (*s, *sid, None, *h, *n),
                (true, [s, sid, r, h, n]) => (*s, *sid, Some(*r), *h, *n),
                _ => return Err(bad(format!("a malformed `{line}`"))),
            };
            let number = |text: &str| {
                text.parse::<usize>()
                    .map_err(|_| bad(format!("a malformed size in `{line}`")))
            };
            let sid = sid
                .parse::<u64>()
                .map_err(|_| bad(format!("a malformed sid in `{line}`")))?;
            let (header_len, total) = (number(header_len)?, number(total)?);
            if header_len > total {
                return Err(bad(format!("headers longer than the message in `{line}`")));
            }
            if total > MAX_MESSAGE {
                return Err(bad(format!("a message of {total} bytes")));
            }
            let end = after + total;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(bad(format!("no CRLF after the {total} bytes of `{line}`")));
            }
            let mut msg = Msg {
                subject: subject.to_owned(),
                sid,
                reply: reply.map(str::to_owned),
                payload: buf[after + header_len..end].to_vec(),
                ..Msg::default()
            };
            if headers {
                let (status, description, list) = parse_headers(&buf[after..after + header_len])?;
                msg.status = status;
                msg.description = description;
                msg.headers = list;
            }
            return Ok(Some((Op::Msg(msg), end + 2)));
        }
        _ => return Err(bad(format!("an unknown operation `{line}`"))),
    };
    Ok(Some((op, after)))
}

type Headers = (Option<u16>, String, Vec<(String, String)>);

/// `NATS/1.0[ CODE[ DESCRIPTION]]\r\nName: Value\r\n…\r\n\r\n`: status, description, headers.
pub fn parse_headers(block: &[u8]) -> io::Result<Headers> {
    let text = String::from_utf8_lossy(block);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let Some(rest) = first.strip_prefix("NATS/1.0") else {
        return Err(bad(format!("a header block starting with `{first}`")));
    };
    let rest = rest.trim();
    let (status, description) = match rest.split_once(' ') {
        Some((code, text)) => (code.parse().ok(), text.trim().to_owned()),
        None if rest.is_empty() => (None, String::new()),
        None => (rest.parse().ok(), String::new()),
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Ok((status, description, headers))
}

/// Why `subject` cannot be used: empty, with whitespace, an empty token (`a..b`), or (when
/// `wildcards` is false) a `*` or `>` token; `>` only as the last token.
pub fn check_subject(subject: &str, wildcards: bool) -> Result<(), String> {
    if subject.is_empty() {
        return Err("an empty subject".into());
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{subject}` holds whitespace or control characters"
        ));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!("`{subject}` has an empty token"));
        }
        let wild = *token == "*" || *token == ">";
        if wild && !wildcards {
            return Err(format!("`{subject}` has a wildcard"));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(format!("`{subject}` has `>` before its last token"));
        }
    }
    Ok(())
}

/// Why `HOST:PORT` cannot be a server address: the host must be a name or IPv4 address
/// (letters, digits, `.`, `-`, `_`) or `[IPv6]`.
pub fn check_host(addr: &str) -> Result<(), String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            !v6.is_empty()
                && v6
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        }
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{host}` is not a host name or address"))
    }
}

/// A name for a queue group, stream or consumer: no whitespace, control characters, `.`, `*`,
/// `>`, `/` or `\`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty name".into());
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
    {
        return Err(format!(
            "`{name}` holds whitespace, a control character or one of . * > / \\"
        ));
    }
    Ok(())
}

/// Why a header cannot be sent: a name with `:`, whitespace or control characters, or a value
/// with a line break.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "the header name `{name}` is not a valid NATS header name"
        ));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!("the value of header `{name}` holds a line break"));
    }
    Ok(())
}

/// The header block for `headers` (empty when there are none).
pub fn header_block<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        if block.is_empty() {
            block.extend_from_slice(b"NATS/1.0\r\n");
        }
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    if !block.is_empty() {
        block.extend_from_slice(b"\r\n");
    }
    block
}

/// Append a `PUB` (no headers) or `HPUB` to `out`; `headers` is a block from [`header_block`].
pub fn publish(
    out: &mut Vec<u8>,
    subject: &str,
    reply: Option<&str>,
    headers: &[u8],
    payload: &[u8],
) {
    let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
    if headers.is_empty() {
        out.extend_from_slice(format!("PUB {subject}{reply} {}\r\n", payload.len()).as_bytes());
    } else {
        out.extend_from_slice(
            format!(
                "HPUB {subject}{reply} {} {}\r\n",
                headers.len(),
                headers.len() + payload.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(headers);
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Append `SUB subject [queue] sid`.
pub fn subscribe(out: &mut Vec<u8>, subject: &str, queue: Option<&str>, sid: u64) {
    let queue = queue.map(|q| format!(" {q}")).unwrap_or_default();
    out.extend_from_slice(format!("SUB {subject}{queue} {sid}\r\n").as_bytes());
}

/// Credentials from the URL: `user:pass@` or a token (`token@`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub user: Option<String>,
    pub pass: Option<String>,
    pub token: Option<String>,
}

impl Auth {
    /// From a URL's user and password: a user without a password is a token.
    pub fn new(user: Option<String>, pass: Option<String>) -> Auth {
        match (user, pass) {
            (Some(token), None) => Auth {
                token: Some(token),
                ..Auth::default()
            },
            (user, pass) => Auth {
                user,
                pass,
                token: None,
            },
        }
    }
}

/// The `CONNECT {…}` line (with its CRLF).
pub fn connect_line(auth: &Auth, name: &str) -> String {
    let mut options = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": false,
        "name": name,
        "lang": "rust-patchbay",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "headers": true,
        "no_responders": true,
    });
    if let Some(map) = options.as_object_mut() {
        if let Some(user) = &auth.user {
            map.insert("user".into(), user.clone().into());
        }
        if let Some(pass) = &auth.pass {
            map.insert("pass".into(), pass.clone().into());
        }
        if let Some(token) = &auth.token {
            map.insert("auth_token".into(), token.clone().into());
        }
    }
    format!("CONNECT {options}\r\n")
}

/// What the server said about itself in `INFO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    pub server_name: String,
    pub version: String,
    pub max_payload: usize,
    pub headers: bool,
    pub jetstream: bool,
    pub tls_required: bool,
}

impl Info {
    pub fn parse(json: &str) -> io::Result<Info> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(format!("an unreadable INFO ({e})")))?;
        let text = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let flag = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        Ok(Info {
            server_name: text("server_name"),
            version: text("version"),
            max_payload: v
                .get("max_payload")
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(1024 * 1024),
            headers: flag("headers"),
            jetstream: flag("jetstream"),
            tls_required: flag("tls_required"),
        })
    }
}

/// The error for a server's `-ERR`: `PermissionDenied` (with no OS error code, so that it is
/// not taken for a sandbox denial) for a refused login or a permission violation.
pub fn server_error(text: &str) -> io::Error {
    let lower = text.to_ascii_lowercase();
    let kind = if lower.contains("authorization")
        || lower.contains("authentication")
        || lower.contains("permissions violation")
        || lower.contains("user authentication")
    {
        io::ErrorKind::PermissionDenied
    } else {
        io::ErrorKind::ConnectionAborted
    };
    io::Error::new(kind, format!("the server said: {text}"))
}

/// A random 64-bit number (from the randomly keyed hasher std seeds from the platform).
pub fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    h.finish()
}

/// A JetStream API answer: the JSON, or its `error` as (`code`, `err_code`, `description`).
pub fn api_answer(msg: &Msg) -> Result<serde_json::Value, (u64, u64, String)> {
    if let Some(status) = msg.status {
        let text = if status == 503 {
            "no responders: JetStream is not enabled for this account or server".to_owned()
        } else {
            format!("status {status} {}", msg.description)
        };
        return Err((u64::from(status), 0, text));
    }
    let v: serde_json::Value = match serde_json::from_slice(&msg.payload) {
        Ok(v) => v,
        Err(e) => return Err((0, 0, format!("an unreadable answer ({e})"))),
    };
    match v.get("error") {
        Some(error) => Err((
            error
                .get("code")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            error
                .get("err_code")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            error
                .get("description")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown error")
                .to_owned(),
        )),
        None => Ok(v),
    }
}

mod conn;

pub use conn::Conn;

#[cfg(test)]
mod tests;
