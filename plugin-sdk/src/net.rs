//! For connectors that keep a connection to a server over `std::net` (wasi:sockets on
//! wasm32-wasip2): reconnecting with back-off, and errors that tell the operator what to do.
//!
//! A plugin reaches only the addresses its `grants.tcp` lists. A connection the sandbox
//! refuses fails with [`std::io::ErrorKind::PermissionDenied`]; [`Reconnect::failed`] turns that
//! into a `fatal` error naming the grant to add, and any other failure into a `retryable` one
//! with the next attempt pushed back (100 ms, doubling to 5 s).
//!
//! ```no_run
//! use std::net::TcpStream;
//! use patchbay_sdk::{Error, net::Reconnect};
//!
//! struct Client {
//!     link: Reconnect,
//!     conn: Option<TcpStream>,
//! }
//!
//! impl Client {
//!     fn conn(&mut self) -> Result<&mut TcpStream, Error> {
//!         if self.conn.is_none() {
//!             self.link.ready()?; // still backing off: retryable
//!             let stream = TcpStream::connect(self.link.addr()).map_err(|e| self.link.failed(&e))?;
//!             self.link.connected(); // logs "reconnected" after an outage
//!             self.conn = Some(stream);
//!         }
//!         self.conn.as_mut().ok_or_else(|| Error::retryable("not connected"))
//!     }
//! }
//! ```

use std::io;
use std::time::{Duration, Instant};

use crate::{Error, log};

/// The first pause after a failed attempt; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether `e` is the sandbox refusing a connection (an OS-level `access-denied`), as opposed
/// to a server refusing a login, which a client reports with an error of its own.
pub fn is_sandbox_denial(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied && e.raw_os_error().is_some()
}

/// The connection state of one server address: when to try again, and what to log.
#[derive(Debug, Clone)]
pub struct Reconnect {
    protocol: &'static str,
    /// The servers, tried in turn: a failed attempt or a lost connection moves to the next.
    addrs: Vec<String>,
    current: usize,
    backoff: Duration,
    next_attempt: Option<Instant>,
    /// A connection was up and then failed, or attempts are failing: the next success logs
    /// `reconnected`.
    outage: bool,
}

impl Reconnect {
    /// `protocol` names the connector in messages (`"redis"`, `"mqtt"`, `"nats"`); `addr` is
    /// the `HOST:PORT` connected to.
    pub fn new(protocol: &'static str, addr: impl Into<String>) -> Reconnect {
        Reconnect::servers(protocol, vec![addr.into()])
    }

    /// Several servers of one cluster (`HOST:PORT` each, at least one): a failed attempt or a
    /// lost connection moves on to the next, so a server that is down costs one attempt, and
    /// the back-off grows only while every server fails.
    pub fn servers(protocol: &'static str, addrs: Vec<String>) -> Reconnect {
        Reconnect {
            protocol,
            addrs,
            current: 0,
            backoff: FIRST_BACKOFF,
            next_attempt: None,
            outage: false,
        }
    }

    /// The `HOST:PORT` to connect to now.
    pub fn addr(&self) -> &str {
        self.addrs.get(self.current).map_or("", String::as_str)
    }

    /// `Ok` when an attempt may be made now; a `retryable` error while the back-off runs.
    pub fn ready(&self) -> Result<(), Error> {
        match self.next_attempt {
            Some(at) if Instant::now() < at => Err(Error::retryable(format!(
                "{} {}: not connected (next attempt in {:?})",
                self.protocol,
                self.addr(),
                at - Instant::now()
            ))),
            _ => Ok(()),
        }
    }

    /// Record a successful connection: the back-off starts over.
    pub fn connected(&mut self) {
        if self.outage {
            log::info(&format!("{} {}: reconnected", self.protocol, self.addr()));
        }
        self.outage = false;
        self.backoff = FIRST_BACKOFF;
        self.next_attempt = None;
    }

    /// A connection attempt failed. A sandbox denial is `fatal` and says which grant to add;
    /// any other `PermissionDenied` (the server refused the login) is `fatal` with its own
    /// words; the rest is `retryable`, and the next attempt waits for the back-off.
    pub fn failed(&mut self, e: &io::Error) -> Error {
        if is_sandbox_denial(e) {
            return Error::fatal(format!(
                "{protocol} {addr}: the sandbox refused the connection; grant it in the \
                 pipeline file: grants = {{ tcp = [\"{addr}\"] }}",
                protocol = self.protocol,
                addr = self.addr()
            ));
        }
        if e.kind() == io::ErrorKind::PermissionDenied {
            return Error::fatal(format!("{} {}: {e}", self.protocol, self.addr()));
        }
        if !self.outage {
            log::warn(&format!(
                "{} {}: cannot connect ({e}); {}",
                self.protocol,
                self.addr(),
                self.next_step()
            ));
        }
        let error = Error::retryable(format!(
            "{} {}: cannot connect: {e}",
            self.protocol,
            self.addr()
        ));
        self.schedule();
        error
    }

    /// A connection that was up broke: logs it (once per outage) and returns the `retryable`
    /// error for the records at hand. The caller drops the connection; the next attempt waits
    /// for the back-off.
    pub fn lost(&mut self, e: &io::Error) -> Error {
        if !self.outage {
            log::warn(&format!(
                "{} {}: connection lost ({e}); {}",
                self.protocol,
                self.addr(),
                self.next_step()
            ));
        }
        let error = Error::retryable(format!(
            "{} {}: connection lost: {e}",
            self.protocol,
            self.addr()
        ));
        self.schedule();
        error
    }

    fn next_step(&self) -> String {
        match self.addrs.get(self.current + 1).or(self.addrs.first()) {
            Some(next) if self.addrs.len() > 1 => format!("trying {next} next"),
            _ => "retrying with back-off".into(),
        }
    }

    /// Move to the next server. The next attempt is at once while servers of this round are
    /// left, after the back-off once all of them failed.
    fn schedule(&mut self) {
        self.outage = true;
        self.current = (self.current + 1) % self.addrs.len().max(1);
        if self.current == 0 {
            self.next_attempt = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        } else {
            self.next_attempt = None;
        }
    }
}

/// What [`parse_urls`] reads from a list of servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    /// `HOST:PORT` of each, in the list's order.
    pub addrs: Vec<String>,
    /// The user name of the first URL that gives credentials.
    pub user: Option<String>,
    /// Its password.
    pub password: Option<String>,
}

impl Servers {
    /// The same servers, once `check` accepted each address (a connector's own rules).
    pub fn checked(self, check: impl Fn(&str) -> Result<(), String>) -> Result<Servers, String> {
        self.addrs.iter().try_for_each(|a| check(a))?;
        Ok(self)
    }
}

/// Several servers of one cluster, comma-separated, each as [`parse_url`] takes it: their
/// `HOST:PORT`s in order, and the user name and password of the first URL that gives any.
pub fn parse_urls(urls: &str, scheme: &str, default_port: u16) -> Result<Servers, String> {
    let mut addrs = Vec::new();
    let mut credentials = (None, None);
    for url in urls.split(',').map(str::trim) {
        if url.is_empty() {
            return Err("an empty server in the list".into());
        }
        let (addr, user, password) =
            parse_url(url, scheme, default_port).map_err(|e| format!("`{url}`: {e}"))?;
        if credentials.0.is_none() && credentials.1.is_none() {
            credentials = (user, password);
        }
        addrs.push(addr);
    }
    Ok(Servers {
        addrs,
        user: credentials.0,
        password: credentials.1,
    })
}

/// Percent-decoding of a URL part (`%40` is `@`, `%2f` is `/`); the error says what is wrong.
pub fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("`{text}` has a `%` not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` does not decode to UTF-8"))
}

/// A URL whose scheme may ask for TLS (`mqtts://`, `tls://`): whether it does, and the URL
/// with `scheme://` in its place, for [`parse_url`] or [`parse_urls`] (each URL of a
/// comma-separated list; TLS when the first asks for it).
pub fn tls_url(url: &str, scheme: &str, tls_scheme: &str) -> (bool, String) {
    let prefix = format!("{tls_scheme}://");
    let tls = url.trim_start().starts_with(&prefix);
    let plain = url
        .split(',')
        .map(|u| match u.trim().strip_prefix(&prefix) {
            Some(rest) => format!("{scheme}://{rest}"),
            None => u.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",");
    (tls, plain)
}

/// `SCHEME://[user[:password]@]host[:port][/]` or `host[:port]`, as connectors take their
/// server address: the `HOST:PORT` (with `default_port` when none is given), the user name and
/// the password. A path after the address is an error.
pub fn parse_url(
    url: &str,
    scheme: &str,
    default_port: u16,
) -> Result<(String, Option<String>, Option<String>), String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .unwrap_or(url);
    if let Some((other, _)) = rest.split_once("://") {
        return Err(format!("the scheme is `{other}`, not `{scheme}`"));
    }
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    let host = host.trim_end_matches('/');
    if host.is_empty() || host.starts_with(':') {
        return Err("no host".into());
    }
    if host.contains('/') {
        return Err(format!("`{host}` has a path; write {scheme}://host:port"));
    }
    let has_port = match host.rsplit_once(':') {
        // `[::1]` alone: an IPv6 address without a port.
        Some(_) if host.starts_with('[') && host.ends_with(']') => false,
        Some((h, port)) => {
            if port.parse::<u16>().is_err() {
                return Err(format!("`{port}` is not a port number"));
            }
            !h.is_empty()
        }
        None => false,
    };
    let addr = if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    let (user, password) = match auth {
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
            None => (Some(a.to_owned()), None),
        },
        None => (None, None),
    };
    Ok((addr, user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_schemes() {
        assert_eq!(
            tls_url("mqtts://u:p@b:8883", "mqtt", "mqtts"),
            (true, "mqtt://u:p@b:8883".to_owned())
        );
        assert_eq!(
            tls_url("tls://a:4222, tls://b:4222", "nats", "tls"),
            (true, "nats://a:4222,nats://b:4222".to_owned())
        );
        assert_eq!(
            tls_url("nats://a:4222", "nats", "tls"),
            (false, "nats://a:4222".to_owned())
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883", "mqtt", 1883),
            Ok(("127.0.0.1:1883".into(), None, None))
        );
        assert_eq!(
            parse_url("nats://u:p@localhost", "nats", 4222),
            Ok(("localhost:4222".into(), Some("u".into()), Some("p".into())))
        );
        assert_eq!(
            parse_url("localhost:9", "nats", 4222),
            Ok(("localhost:9".into(), None, None))
        );
        assert_eq!(
            parse_url("[::1]", "nats", 4222),
            Ok(("[::1]:4222".into(), None, None))
        );
        assert!(parse_url("http://x", "nats", 4222).is_err());
        assert!(parse_url("nats://x:port", "nats", 4222).is_err());
        assert!(parse_url("nats://x/a", "nats", 4222).is_err());
        assert!(parse_url("nats://", "nats", 4222).is_err());
        assert_eq!(
            parse_urls("nats://a:1, nats://u:p@b,c", "nats", 4222),
            Ok(Servers {
                addrs: vec!["a:1".into(), "b:4222".into(), "c:4222".into()],
                user: Some("u".into()),
                password: Some("p".into())
            })
        );
        assert_eq!(
            parse_urls("nats://a:1,,b", "nats", 4222),
            Err("an empty server in the list".into())
        );
        assert_eq!(
            parse_urls("nats://a:1,nats://b:x", "nats", 4222),
            Err("`nats://b:x`: `x` is not a port number".into())
        );
    }

    #[test]
    fn servers_are_tried_in_turn_and_the_back_off_follows_a_whole_round() {
        let mut link = Reconnect::servers("nats", vec!["a:1".into(), "b:2".into()]);
        link.outage = true; // logging needs the host: only the first failure of an outage logs
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let _ = link.failed(&refused);
        assert_eq!(link.addr(), "b:2");
        assert!(link.ready().is_ok(), "the next server is tried at once");
        let _ = link.lost(&refused);
        assert_eq!(link.addr(), "a:1");
        assert!(link.ready().is_err(), "after a whole round, the back-off");
    }
}
