//! No socket without a grant: wasi:sockets `create-tcp-socket` and `create-udp-socket`
//! re-defined around wasmtime-wasi's own, so that a plugin with no `tcp` or `listen` grant
//! cannot create a TCP socket, and one with no `udp` grant no UDP socket; each refusal is
//! logged and counted like any other denial. (wasmtime-wasi's own switch, `allow_tcp`, refuses
//! silently; and without either, a plugin with no grants could hold thousands of unconnected
//! sockets and exhaust the process's file descriptors.) A granted plugin's sockets go to
//! wasmtime-wasi as before (at most `limits.sockets` open at once, see `opened`), and every
//! address they use is still checked by `net`.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
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
    linker.allow_shadowing(false);
    Ok(())
}

/// Which kinds of socket a plugin may create.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketGrants {
    /// Any `tcp` or `listen` grant.
    pub tcp: bool,
    /// Any `udp` grant.
    pub udp: bool,
}
