//! No socket without a grant: wasi:sockets `create-tcp-socket` and `create-udp-socket`
//! re-defined around wasmtime-wasi's own, so that a plugin with no `tcp` or `listen` grant
//! cannot create a TCP socket, and one with no `udp` grant no UDP socket; each refusal is
//! logged and counted like any other denial. (wasmtime-wasi's own switch, `allow_tcp`, refuses
//! silently; and without either, a plugin with no grants could hold thousands of unconnected
//! sockets and exhaust the process's file descriptors.) A granted plugin's sockets go to
//! wasmtime-wasi as before (at most `limits.sockets` open at once, see `opened`), and every
//! address they use is still checked by `net`. A TCP connect to an unspecified or IPv4-mapped
//! address, which wasmtime-wasi refuses before `net` sees it, is audited here.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket as _;
use wasmtime_wasi::p2::bindings::sockets::tcp::TcpSocket;
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host as _;
use wasmtime_wasi::p2::bindings::sockets::udp::UdpSocket;
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
            let addr: std::net::SocketAddr = remote.into();
            if let Some(why) = no_destination(addr) {
                let (audit, label) = state.audit();
                audit.deny(label, "tcp", &addr.to_string(), why);
            }
            match state.sockets().start_connect(this, network, remote) {
                Ok(()) => Ok((Ok(()),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
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
