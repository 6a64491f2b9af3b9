//! No socket without a grant: wasi:sockets `create-tcp-socket` and `create-udp-socket`
//! re-defined around wasmtime-wasi's own, so that a plugin with no `tcp` or `listen` grant
//! cannot create a TCP socket, and one with no `udp` grant no UDP socket; each refusal is
//! logged and counted like any other denial. (wasmtime-wasi's own switch, `allow_tcp`, refuses
//! silently; and without either, a plugin with no grants could hold thousands of unconnected
//! sockets and exhaust the process's file descriptors.) A granted plugin's sockets go to
//! wasmtime-wasi as before (at most `limits.sockets` open at once, see `opened`), and every
//! address they use is still checked by `net`. A TCP connect, a UDP `stream` or a datagram to
//! an unspecified or IPv4-mapped address, which wasmtime-wasi refuses before `net` sees it, is
//! audited here.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket as _;
use wasmtime_wasi::p2::bindings::sockets::tcp::TcpSocket;
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host as _;
use wasmtime_wasi::p2::bindings::sockets::udp::{
    HostOutgoingDatagramStream as _, HostUdpSocket as _, IncomingDatagramStream, OutgoingDatagram,
    OutgoingDatagramStream, UdpSocket,
};
use wasmtime_wasi::p2::bindings::sockets::udp_create_socket::Host as _;
use wasmtime_wasi::sockets::WasiSocketsView;

use super::fs::Audited;
use super::opened::Kind;

/// Shadow the socket constructors in `linker` (after WASI was added to it).
pub fn audit_socket_creation<T: Audited>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let mut tcp = linker.instance("wasi:sockets/tcp-create-socket@0.2.12")?;
    tcp.func_wrap(
        "create-tcp-socket",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (family,): (IpAddressFamily,)|
         -> wasmtime::Result<(Result<Resource<TcpSocket>, ErrorCode>,)> {
            let state = store.data_mut();
            if !state.sockets_granted().tcp {
                let (audit, label) = state.audit();
                audit.deny(
                    label,
                    "tcp",
                    "a new socket",
                    "not granted: no grants.tcp or grants.listen",
                );
                return Ok((Err(ErrorCode::AccessDenied),));
            }
            if let Err(why) = state.room_for(Kind::Tcp) {
                let (audit, label) = state.audit();
                audit.deny(label, "tcp", "a new socket", &why);
                return Ok((Err(ErrorCode::NewSocketLimit),));
            }
            match state.sockets().create_tcp_socket(family) {
                Ok(socket) => {
                    state.opened().add(socket.rep(), Kind::Tcp);
                    Ok((Ok(socket),))
                }
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    let mut udp = linker.instance("wasi:sockets/udp-create-socket@0.2.12")?;
    udp.func_wrap_async(
        "create-udp-socket",
        |mut store: wasmtime::StoreContextMut<'_, T>, (family,): (IpAddressFamily,)| {
            Box::new(async move {
                let state = store.data_mut();
                if !state.sockets_granted().udp {
                    let (audit, label) = state.audit();
                    audit.deny(label, "udp", "a new socket", "not granted: no grants.udp");
                    let refused: Result<Resource<UdpSocket>, ErrorCode> =
                        Err(ErrorCode::AccessDenied);
                    return Ok((refused,));
                }
                if let Err(why) = state.room_for(Kind::Udp) {
                    let (audit, label) = state.audit();
                    audit.deny(label, "udp", "a new socket", &why);
                    let refused: Result<Resource<UdpSocket>, ErrorCode> =
                        Err(ErrorCode::NewSocketLimit);
                    return Ok((refused,));
                }
                match state.sockets().create_udp_socket(family).await {
                    Ok(socket) => {
                        state.opened().add(socket.rep(), Kind::Udp);
                        Ok((Ok(socket),))
                    }
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    // A connect to an address that is no destination (unspecified, or an IPv4 address dressed
    // as IPv6) is refused by wasmtime-wasi before the grant check sees it: audit it here, then
    // let wasmtime-wasi refuse it as before (`invalid-argument`).
    let mut tcp_api = linker.instance("wasi:sockets/tcp@0.2.12")?;
    tcp_api.func_wrap(
        "[method]tcp-socket.start-connect",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (this, network, remote): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)|
         -> wasmtime::Result<(Result<(), ErrorCode>,)> {
            let state = store.data_mut();
            audit_destination(state, "tcp", remote.into());
            match state.sockets().start_connect(this, network, remote) {
                Ok(()) => Ok((Ok(()),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    // The same for UDP: a socket connected (`stream`) to such an address, or a datagram sent
    // to one.
    let mut udp_api = linker.instance("wasi:sockets/udp@0.2.12")?;
    udp_api.func_wrap_async(
        "[method]udp-socket.stream",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (this, remote): (Resource<UdpSocket>, Option<IpSocketAddress>)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Some(remote) = remote {
                    audit_destination(state, "udp", remote.into());
                }
                match state.sockets().stream(this, remote).await {
                    Ok(streams) => Ok((Ok(streams),)),
                    Err(e) => {
                        let failed: Result<Streams, ErrorCode> = Err(e.downcast()?);
                        Ok((failed,))
                    }
                }
            })
        },
    )?;
    udp_api.func_wrap(
        "[method]outgoing-datagram-stream.send",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (this, datagrams): (Resource<OutgoingDatagramStream>, Vec<OutgoingDatagram>)|
         -> wasmtime::Result<(Result<u64, ErrorCode>,)> {
            let state = store.data_mut();
            for remote in datagrams.iter().filter_map(|d| d.remote_address) {
                audit_destination(state, "udp", remote.into());
            }
            match state.sockets().send(this, datagrams) {
                Ok(sent) => Ok((Ok(sent),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A UDP socket's two streams, as `stream` answers them.
type Streams = (
    Resource<IncomingDatagramStream>,
    Resource<OutgoingDatagramStream>,
);

/// Audit a use of `addr` as a destination (`capability`: tcp or udp) if it is none.
fn audit_destination<T: Audited>(state: &mut T, capability: &str, addr: std::net::SocketAddr) {
    if let Some(why) = no_destination(addr) {
        let (audit, label) = state.audit();
        audit.deny(label, capability, &addr.to_string(), why);
    }
}

/// Why `addr` is no address to connect or send to, if it is not.
fn no_destination(addr: std::net::SocketAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    if addr.ip().to_canonical().is_unspecified() {
        return Some("an unspecified address (0.0.0.0, ::) is no destination");
    }
    if let IpAddr::V6(v6) = addr.ip()
        && v6.to_ipv4_mapped().is_some()
    {
        return Some("an IPv4-mapped IPv6 address is refused: use the IPv4 address itself");
    }
    if addr.port() == 0 {
        return Some("port 0 is no destination");
    }
    None
}

/// Which kinds of socket a plugin may create.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketGrants {
    /// Any `tcp` or `listen` grant.
    pub tcp: bool,
    /// Any `udp` grant.
    pub udp: bool,
}
