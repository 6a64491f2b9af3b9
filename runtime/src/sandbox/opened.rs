//! Caps on what an instance holds open: sockets it created (`limits.sockets`) and files it
//! opened (`limits.files`). Each is a file descriptor of the process, which all plugins share,
//! so one plugin granted a broker's address must not be able to hold thousands of them.
//!
//! wasmtime-wasi frees a socket or file when the guest drops its handle, without telling the
//! embedder; so the instance remembers the handles it was given and, before it is given
//! another, counts those still in its resource table (a handle number reused by another kind
//! of resource no longer counts). Accepted connections are not counted here: `limits.handles`
//! bounds them, with everything else the instance holds.

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::filesystem::types::Descriptor;
use wasmtime_wasi::p2::bindings::sockets::tcp::TcpSocket;
use wasmtime_wasi::p2::bindings::sockets::udp::UdpSocket;

/// A kind of handle with a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP socket made by `create-tcp-socket`.
    Tcp,
    /// A UDP socket made by `create-udp-socket`.
    Udp,
    /// A file or directory opened by `open-at`.
    File,
}

/// The sockets and files an instance opened, and its caps.
#[derive(Debug, Default)]
pub struct Opened {
    handles: Vec<(u32, Kind)>,
    /// `limits.sockets`: TCP and UDP together.
    pub max_sockets: usize,
    /// `limits.files`.
    pub max_files: usize,
}

impl Opened {
    /// Caps from the instance's limits.
    pub fn new(max_sockets: usize, max_files: usize) -> Opened {
        Opened {
            handles: Vec::new(),
            max_sockets,
            max_files,
        }
    }

    /// Forget what the guest dropped since; `Err(why)` when one more of `kind` would pass its
    /// cap.
    pub fn room_for(&mut self, kind: Kind, table: &ResourceTable) -> Result<(), String> {
        self.handles.retain(|&(rep, k)| live(table, rep, k));
        let socket = |k: Kind| matches!(k, Kind::Tcp | Kind::Udp);
        let (held, cap, what, key) = if socket(kind) {
            let held = self.handles.iter().filter(|(_, k)| socket(*k)).count();
            (held, self.max_sockets, "sockets", "limits.sockets")
        } else {
            let held = self.handles.iter().filter(|(_, k)| *k == kind).count();
            (held, self.max_files, "files", "limits.files")
        };
        if held < cap {
            return Ok(());
        }
        Err(format!(
            "over {key}: {held} {what} open already; close some first, or raise {key}"
        ))
    }

    /// Remember a handle the guest was given.
    pub fn add(&mut self, rep: u32, kind: Kind) {
        self.handles.push((rep, kind));
    }
}

/// Whether handle `rep` is still a `kind` in the table.
fn live(table: &ResourceTable, rep: u32, kind: Kind) -> bool {
    match kind {
        Kind::Tcp => table.get(&Resource::<TcpSocket>::new_borrow(rep)).is_ok(),
        Kind::Udp => table.get(&Resource::<UdpSocket>::new_borrow(rep)).is_ok(),
        Kind::File => table.get(&Resource::<Descriptor>::new_borrow(rep)).is_ok(),
    }
}
