//! The sandbox layer: a plugin's grants from the text of the pipeline file to their audit.
//!
//! - `grants`: the typed grants — pattern parsing, matching, display for `inspect`, JSON for
//!   the admin API (one place);
//! - `wasi`: grants → a WASI context holding only what was granted;
//! - `net`, `http`, `fs`, `dns`, `sockets`: the checks wasmtime calls for every socket address,
//!   outgoing HTTP request, refused file open, name lookup and new socket;
//! - `tls`: `wasi:tls` in the host (rustls), configured by `grants.tls`; `https`: plugins'
//!   `https://` requests (wasi:http) with the same configuration;
//! - `limits`: memory, deadlines and output per call; `opened`: the caps on sockets and files
//!   an instance holds open;
//! - `audit`: denials, logged and counted; `stdio`: plugin output to the log; `logline`: the
//!   rate limit, length cap and escaping of every line a plugin logs.
//!
//! It may import only `defaults`: it knows nothing of pipeline files, plugins or pipelines.

mod audit;
mod dns;
mod fs;
pub mod grants;
mod http;
mod https;
mod limits;
pub mod logline;
mod net;
mod opened;
mod sockets;
mod stdio;
mod tls;
mod wasi;

pub use audit::Audit;
pub use dns::audit_name_lookup;
pub use fs::{Audited, audit_open_at};
pub use grants::{DirGrant, DirMode, Grants, HttpPattern, NetPattern, capability};
pub use http::HttpGate;
pub use limits::{Limiter, Limits, store_limits};
pub use opened::Opened;
pub use sockets::{SocketGrants, audit_socket_creation};
pub use tls::{Provider as TlsProvider, TlsGrant, TlsProblem};
pub use wasi::wasi_ctx;
