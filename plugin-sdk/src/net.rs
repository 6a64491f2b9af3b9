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
    addr: String,
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
        Reconnect {
            protocol,
            addr: addr.into(),
            backoff: FIRST_BACKOFF,
            next_attempt: None,
            outage: false,
        }
    }

    /// The `HOST:PORT` to connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `Ok` when an attempt may be made now; a `retryable` error while the back-off runs.
    pub fn ready(&self) -> Result<(), Error> {
        match self.next_attempt {
            Some(at) if Instant::now() < at => Err(Error::retryable(format!(
                "{} {}: not connected (next attempt in {:?})",
                self.protocol,
                self.addr,
                at - Instant::now()
            ))),
            _ => Ok(()),
        }
    }

    /// Record a successful connection: the back-off starts over.
    pub fn connected(&mut self) {
        if self.outage {
            log::info(&format!("{} {}: reconnected", self.protocol, self.addr));
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
                "{protocol} {addr}: the sandbox refused the connection ({e}); grant it in the \
                 pipeline file: grants = {{ tcp = [\"{addr}\"] }}",
                protocol = self.protocol,
                addr = self.addr
            ));
        }
        if e.kind() == io::ErrorKind::PermissionDenied {
            return Error::fatal(format!("{} {}: {e}", self.protocol, self.addr));
        }
        if !self.outage {
            log::warn(&format!(
                "{} {}: cannot connect ({e}); retrying with back-off",
                self.protocol, self.addr
            ));
        }
        self.schedule();
        Error::retryable(format!(
            "{} {}: cannot connect: {e}",
            self.protocol, self.addr
        ))
    }

    /// A connection that was up broke: logs it (once per outage) and returns the `retryable`
    /// error for the records at hand. The caller drops the connection; the next attempt waits
    /// for the back-off.
    pub fn lost(&mut self, e: &io::Error) -> Error {
        if !self.outage {
            log::warn(&format!(
                "{} {}: connection lost ({e}); reconnecting",
                self.protocol, self.addr
            ));
        }
        self.schedule();
        Error::retryable(format!(
            "{} {}: connection lost: {e}",
            self.protocol, self.addr
        ))
    }

    fn schedule(&mut self) {
        self.outage = true;
        self.next_attempt = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
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
    }
}
