//! The network half of a plugin's grants, consulted by wasmtime-wasi for every socket address a
//! plugin uses (connect, send, bind, listen): anything not in `grants.tcp`, `grants.udp` or
//! `grants.listen` is denied and audited.

use std::net::SocketAddr;
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;

use super::audit::Audit;
use super::grants::NetPattern;

/// The network half of a plugin's grants, consulted for every socket address it uses.
pub(super) struct NetCheck {
    pub(super) tcp: Vec<NetPattern>,
    pub(super) udp: Vec<NetPattern>,
    pub(super) listen: Vec<NetPattern>,
    pub(super) label: Arc<str>,
    pub(super) audit: Arc<Audit>,
}

impl NetCheck {
    pub(super) fn check(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        let implicit_bind = addr.ip().is_unspecified() && addr.port() == 0;
        let (allowed, capability, list) = match usage {
            SocketAddrUse::TcpConnect => (
                self.tcp.iter().any(|p| p.allows(&addr)),
                "tcp",
                "grants.tcp",
            ),
            SocketAddrUse::UdpSend => (
                self.udp.iter().any(|p| p.allows(&addr)),
                "udp",
                "grants.udp",
            ),
            // The ephemeral bind before a connect or send: harmless; the target is checked next.
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind if implicit_bind => (true, "tcp", ""),
            SocketAddrUse::TcpBind | SocketAddrUse::TcpListen => (
                self.listen.iter().any(|p| p.allows(&addr)),
                "listen",
                "grants.listen",
            ),
            SocketAddrUse::UdpBind => (
                self.listen.iter().any(|p| p.allows(&addr)),
                "listen",
                "grants.listen",
            ),
            SocketAddrUse::TcpAccept => (true, "tcp", "grants.listen"),
            // Only from senders in `grants.udp`: a `listen` grant lets a plugin bind there, not
            // take datagrams from anyone.
            SocketAddrUse::UdpReceive => (
                self.udp.iter().any(|p| p.allows(&addr)),
                "udp",
                "grants.udp",
            ),
        };
        if !allowed {
            self.audit.deny(
                &self.label,
                capability,
                &addr.to_string(),
                &format!("not in {list}"),
            );
        }
        allowed
    }
}
