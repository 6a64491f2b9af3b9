//! Connections for connectors that may speak TLS: [`Stream`], a TCP connection over
//! `wasi:sockets` that can be upgraded to TLS with [`Stream::start_tls`], where the host does
//! the TLS (`wasi:tls`): it verifies the server against the roots `grants.tls` names (the
//! system's by default) and presents the client certificate it grants, so neither the CA
//! files nor the private key ever enter the plugin.
//!
//! ```no_run
//! use std::io::Write;
//! use patchbay_sdk::tls::Stream;
//!
//! // TLS from the first byte (Redis, MQTT, AMQP):
//! let mut s = Stream::connect("127.0.0.1:6380")?.start_tls("127.0.0.1")?;
//! s.write_all(b"PING\r\n")?;
//! // Or after a clear-text preamble (PostgreSQL's SSLRequest, NATS's INFO): read and write it
//! // on the plain stream first, then `start_tls`.
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A refused connection fails like `std::net`'s (`PermissionDenied` with an OS code for the
//! sandbox's denial, which [`crate::net::Reconnect::failed`] turns into the grant to add); a
//! failed handshake fails with the host's words, which name the server and the reason (`TLS
//! with 127.0.0.1 failed: the server's certificate is not signed by a trusted CA …`).
//!
//! Why not `std::net::TcpStream`: its streams cannot be handed to `wasi:tls`, so a stream that
//! may become TLS is opened through `wasi:sockets` directly (the `wasip2` crate).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use wasip2::io::poll;
use wasip2::io::streams::{InputStream, OutputStream, StreamError};
use wasip2::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
};
use wasip2::sockets::tcp::TcpSocket;

#[allow(missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "wit-tls",
        world: "patchbay:sdk-tls/tls",
        features: ["tls"],
        with: {
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:tls/types@0.2.0-draft": generate,
        },
    });
}

use bindings::wasi::tls::types::{ClientConnection, ClientHandshake};

/// A TCP connection, plain or TLS. Reads wait at most the timeout set with
/// [`Stream::set_read_timeout`] (none by default), then fail with `TimedOut`.
pub struct Stream {
    // Field order is drop order: the streams before the TLS connection they belong to, and
    // both before the socket.
    input: InputStream,
    output: OutputStream,
    tls: Option<Tls>,
    _socket: TcpSocket,
    timeout: Option<Duration>,
}

fn socket_error(e: ErrorCode) -> io::Error {
    // The errno std reports for the same condition on wasip2, so that `net::is_sandbox_denial`
    // and error kinds read the same as for `std::net`.
    let errno = match e {
        ErrorCode::AccessDenied => 2,
        ErrorCode::ConnectionRefused => 14,
        ErrorCode::ConnectionReset => 15,
        ErrorCode::Timeout => 73,
        ErrorCode::RemoteUnreachable => 23,
        _ => return io::Error::other(format!("socket error: {e:?}")),
    };
    io::Error::from_raw_os_error(errno)
}

fn stream_error(e: StreamError) -> io::Error {
    match e {
        StreamError::Closed => io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
        StreamError::LastOperationFailed(e) => io::Error::other(e.to_debug_string()),
    }
}

impl Stream {
    /// Connect to `addr` (`HOST:PORT`; a host name needs `grants.dns`), trying each address
    /// it resolves to in turn.
    pub fn connect(addr: &str) -> io::Result<Stream> {
        let targets: Vec<SocketAddr> = match addr.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) => addr.to_socket_addrs()?.collect(),
        };
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{addr}` resolves to nothing"),
        );
        for target in targets {
            match Stream::connect_addr(target) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn connect_addr(target: SocketAddr) -> io::Result<Stream> {
        let (family, remote) = match target {
            SocketAddr::V4(a) => {
                let o = a.ip().octets();
                (
                    IpAddressFamily::Ipv4,
                    IpSocketAddress::Ipv4(Ipv4SocketAddress {
                        port: a.port(),
                        address: (o[0], o[1], o[2], o[3]),
                    }),
                )
            }
            SocketAddr::V6(a) => {
                let s = a.ip().segments();
                (
                    IpAddressFamily::Ipv6,
                    IpSocketAddress::Ipv6(Ipv6SocketAddress {
                        port: a.port(),
                        flow_info: a.flowinfo(),
                        address: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                        scope_id: a.scope_id(),
                    }),
                )
            }
        };
        let network = wasip2::sockets::instance_network::instance_network();
        let socket =
            wasip2::sockets::tcp_create_socket::create_tcp_socket(family).map_err(socket_error)?;
        socket
            .start_connect(&network, remote)
            .map_err(socket_error)?;
        let ready = socket.subscribe();
        let (input, output) = loop {
            match socket.finish_connect() {
                Err(ErrorCode::WouldBlock) => ready.block(),
                other => break other.map_err(socket_error)?,
            }
        };
        drop(ready);
        let _ = socket.set_keep_alive_enabled(true);
        Ok(Stream {
            input,
            output,
            tls: None,
            _socket: socket,
            timeout: None,
        })
    }

    /// Bound every read (`None`: wait as long as it takes; the host's call deadline still
    /// applies).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Whether [`Stream::start_tls`] made this a TLS connection.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Upgrade to TLS: the host does the handshake with `server_name` (sent as SNI and
    /// verified against the certificate; an IP address is checked against its IP entries).
    pub fn start_tls(self, server_name: &str) -> io::Result<Stream> {
        let Stream {
            input,
            output,
            tls,
            _socket,
            timeout,
        } = self;
        if tls.is_some() {
            return Err(io::Error::other("the connection is already TLS"));
        }
        let handshake = ClientHandshake::new(server_name, input, output);
        let future = ClientHandshake::finish(handshake);
        let ready = future.subscribe();
        let timer = timeout.map(|t| {
            let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            wasip2::clocks::monotonic_clock::subscribe_duration(nanos)
        });
        let done = loop {
            if let Some(done) = future.get() {
                break done;
            }
            match &timer {
                Some(timer) => {
                    if !poll::poll(&[&ready, timer]).contains(&0) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("TLS with {server_name}: no handshake within {timeout:?}"),
                        ));
                    }
                }
                None => ready.block(),
            }
        };
        drop(ready);
        let (conn, input, output) = done
            .map_err(|()| io::Error::other("TLS handshake result taken twice"))?
            .map_err(|e| {
                let text = e.to_debug_string();
                // A certificate the host refused (or one the server refused) will not pass on
                // the next try: `PermissionDenied` without an OS code, like a refused login,
                // which `net::Reconnect` reports as `fatal` with these words.
                let kind = match text.contains("certificate") || text.contains("alert") {
                    true => io::ErrorKind::PermissionDenied,
                    false => io::ErrorKind::InvalidData,
                };
                io::Error::new(kind, text)
            })?;
        Ok(Stream {
            input,
            output,
            tls: Some(Tls(conn)),
            _socket,
            timeout,
        })
    }
}

/// The byte stream a connector's protocol runs over: `std::net::TcpStream` or [`Stream`]. The
/// protocol libraries of connectors (plugins/proto) take a `Box<dyn Duplex>`, so that the same
/// client code runs over clear text and TLS.
pub trait Duplex: Read + Write {
    /// Bound every read (`None`: no bound).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// Upgrade to TLS after a clear-text preamble (PostgreSQL's SSLRequest, NATS's INFO); see
    /// [`Stream::start_tls`].
    fn start_tls(self: Box<Self>, server_name: &str) -> io::Result<Box<dyn Duplex>>;
}

impl Duplex for std::net::TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, timeout)
    }

    fn start_tls(self: Box<Self>, _: &str) -> io::Result<Box<dyn Duplex>> {
        Err(io::Error::other(
            "TLS needs a connection made with patchbay_sdk::tls::Stream, not std::net",
        ))
    }
}

impl Duplex for Stream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        Stream::set_read_timeout(self, timeout);
        Ok(())
    }

    fn start_tls(self: Box<Self>, server_name: &str) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(Stream::start_tls(*self, server_name)?))
    }
}

/// How a connection made by [`connect`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Clear text, and it stays so (a `std::net` stream).
    Clear,
    /// TLS at once (`rediss://`, `mqtts://`, `amqps://`): the server verified as the host
    /// part of the address.
    Tls,
    /// Clear text that the protocol upgrades with [`Duplex::start_tls`] after a preamble of
    /// its own (PostgreSQL's and MySQL's SSLRequest, NATS's INFO).
    Upgradable,
}

impl Start {
    /// [`Start::Tls`] when `tls`, else [`Start::Clear`].
    pub fn tls_if(tls: bool) -> Start {
        if tls { Start::Tls } else { Start::Clear }
    }

    /// [`Start::Upgradable`] when `tls`, else [`Start::Clear`].
    pub fn upgradable_if(tls: bool) -> Start {
        if tls { Start::Upgradable } else { Start::Clear }
    }
}

/// Connect to `addr` (`HOST:PORT`) with every read (and a handshake) bounded by `timeout`:
/// the one call a connector makes for a connection that may become TLS, started as `start`
/// says.
pub fn connect(addr: &str, start: Start, timeout: Duration) -> io::Result<Box<dyn Duplex>> {
    if start == Start::Clear {
        let stream = std::net::TcpStream::connect(addr)?;
        // Not every platform has socket timeouts; without one, the host's call deadline is
        // the bound.
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_nodelay(true);
        return Ok(Box::new(stream));
    }
    let mut stream = Stream::connect(addr)?;
    stream.set_read_timeout(Some(timeout));
    match start {
        Start::Tls => Ok(Box::new(stream.start_tls(server_name(addr))?)),
        _ => Ok(Box::new(stream)),
    }
}

/// `host` of a `HOST:PORT` (brackets of an IPv6 address removed): the name TLS verifies.
pub fn server_name(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `name` is an IP address rather than a host name.
pub fn is_ip(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(timeout) = self.timeout {
            let readable = self.input.subscribe();
            if !readable.ready() {
                let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
                let timer = wasip2::clocks::monotonic_clock::subscribe_duration(nanos);
                let woke = poll::poll(&[&readable, &timer]);
                if !woke.contains(&0) {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
                }
            }
        }
        let want = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        match self.input.blocking_read(want) {
            Ok(chunk) => {
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(StreamError::Closed) => Ok(0),
            Err(e) => Err(stream_error(e)),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(&mut self.output, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Write::flush(&mut self.output)
    }
}

/// The TLS connection: on drop, `close_notify` is sent, so the server sees a clean end.
struct Tls(ClientConnection);

impl Drop for Tls {
    fn drop(&mut self) {
        self.0.close_output();
    }
}
