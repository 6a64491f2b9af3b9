//! Grants → WASI context: a context that holds only the granted capabilities. Deny by default:
//! no environment, no arguments, no stdin, no preopened directories, no network; stdout and
//! stderr go to the log (see `stdio`) unless the real stdout is granted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::audit::Audit;
use super::grants::{DirMode, Grants};
use super::net::NetCheck;
use super::stdio::{LogStream, LogWriter};

/// Build the WASI context for one plugin instance from its grants.
/// `stderr_tail` receives the plugin's last few stderr lines, for trap reports.
pub fn wasi_ctx(
    label: &Arc<str>,
    grants: &Grants,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    audit: &Arc<Audit>,
) -> anyhow::Result<WasiCtx> {
    let mut builder = WasiCtxBuilder::new();
    for name in &grants.env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    // Sockets may be created only with a grant for their kind (see `sockets`, which refuses
    // and audits the rest); every address they use is checked (and a denial audited) by the
    // address check below, which denies everything not granted.
    builder
        .allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(grants.dns);
    let net = Arc::new(NetCheck {
        tcp: grants.tcp.clone(),
        udp: grants.udp.clone(),
        listen: grants.listen.clone(),
        label: label.clone(),
        audit: audit.clone(),
    });
    builder.socket_addr_check(move |addr, usage| {
        let allowed = net.check(addr, usage);
        Box::pin(async move { allowed })
    });
    if grants.stdin {
        builder.inherit_stdin();
    }
    if grants.stdout {
        builder.inherit_stdout();
    } else {
        builder.stdout(LogStream::new(LogWriter::new(
            label.clone(),
            "stdout",
            None,
        )));
    }
    builder.stderr(LogStream::new(LogWriter::new(
        label.clone(),
        "stderr",
        Some(stderr_tail),
    )));
    for dir in &grants.dirs {
        let perms = match dir.mode {
            DirMode::Ro => FsPerms::ReadOnly,
            DirMode::Rw => FsPerms::ReadWrite,
        };
        builder
            .preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| {
                anyhow::anyhow!(
                    "plugin `{label}`: cannot open granted directory `{}`: {e:#}",
                    dir.host.display()
                )
            })?;
    }
    Ok(builder.build())
}
