//! Audited file access: wasi:filesystem's path operations (`open-at`, `create-directory-at`,
//! `remove-directory-at`, `unlink-file-at`, `rename-at`, `symlink-at`, `link-at`) re-defined
//! around wasmtime-wasi's own, so that one the sandbox refuses (a `..` or symlink escape from a
//! granted directory, a write under a read-only grant) is audited like a network denial. Paths outside every granted directory
//! never reach the host: the guest's libc finds no directory to resolve them against.
//! (cap-std inside wasmtime-wasi does the refusing; this only reports it.) `open-at` also keeps
//! an instance within `limits.files` open files (see `opened`).

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::WasiView;

use super::audit::Audit;

/// A store's data that knows whose denials to record.
pub trait Audited: WasiView + Send + 'static {
    /// The audit log and the plugin's label (`pipeline/plugin`).
    fn audit(&self) -> (&Arc<Audit>, &str);
    /// Whether the plugin may look up names (`grants.dns`).
    fn dns_granted(&self) -> bool;
    /// Which sockets the plugin may create.
    fn sockets_granted(&self) -> super::SocketGrants;
    /// Handles of the name lookups the plugin started (see `dns`).
    fn lookups(&mut self) -> &mut Vec<u32>;
    /// The sockets and files it holds open, and their caps (see `opened`).
    fn opened(&mut self) -> &mut super::Opened;

    /// Room for one more handle of `kind` (see [`super::Opened::room_for`]).
    fn room_for(&mut self, kind: super::opened::Kind) -> Result<(), String> {
        let mut opened = std::mem::take(self.opened());
        let room = opened.room_for(kind, self.ctx().table);
        *self.opened() = opened;
        room
    }
}

/// Whether a filesystem error is the sandbox's refusal (worth an audit entry).
fn refused(code: &wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode) -> bool {
    use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode;
    matches!(
        code,
        ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly
    )
}

const WHY: &str = "outside its granted directories, or a write under a read-only grant";

/// Whether a symlink target could lead out of the directory it is made in.
fn escapes(target: &str) -> bool {
    use std::path::Component;
    std::path::Path::new(target)
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Shadow `[method]descriptor.NAME` (whose arguments are `$args`, with the path(s) to audit
/// named in `$paths`) by a wrapper that calls wasmtime-wasi's own and audits a refusal.
macro_rules! audited {
    ($types:ident, $name:literal, $method:ident, ($($arg:ident: $ty:ty),*), $ok:ty, [$($path:ident),+]) => {
        $types.func_wrap_async(
            $name,
            |mut store: wasmtime::StoreContextMut<'_, T>, ($($arg,)*): ($($ty,)*)| {
                Box::new(async move {
                    let state = store.data_mut();
                    let shown = [$($path.clone()),+].join(" -> ");
                    match state.filesystem().$method($($arg),*).await {
                        Ok(value) => Ok((Ok::<$ok, fs::ErrorCode>(value),)),
                        Err(e) => {
                            let code: fs::ErrorCode = e.downcast()?;
                            if refused(&code) {
                                let (audit, label) = state.audit();
                                audit.deny(label, "filesystem", &shown, WHY);
                            }
                            Ok((Err(code),))
                        }
                    }
                })
            },
        )?;
    };
}

/// Shadow in `linker` (after WASI was added to it) the `descriptor` methods that open, create,
/// remove, rename or link by path: a refusal of any of them is audited.
pub fn audit_open_at<T: Audited>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::filesystem::WasiFilesystemView;
    use wasmtime_wasi::p2::bindings::filesystem::types::{self as fs, HostDescriptor as _};
    type Fd = Resource<fs::Descriptor>;
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:filesystem/types@0.2.12")?;
    // Only regular files and directories are opened: opening a FIFO (or reading a device)
    // blocks one of the host's blocking threads for as long as nobody writes, so a plugin
    // could starve every other pipeline's file I/O and the process's shutdown.
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (fd, path_flags, path, open_flags, flags): (
            Fd,
            fs::PathFlags,
            String,
            fs::OpenFlags,
            fs::DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                let probe = Resource::<fs::Descriptor>::new_borrow(fd.rep());
                if let Ok(stat) = state
                    .filesystem()
                    .stat_at(probe, path_flags, path.clone())
                    .await
                    && !matches!(
                        stat.type_,
                        fs::DescriptorType::RegularFile | fs::DescriptorType::Directory
                    )
                {
                    let (audit, label) = state.audit();
                    audit.deny(
                        label,
                        "filesystem",
                        &path,
                        "not a regular file or directory (a FIFO, device or socket)",
                    );
                    return Ok((Err::<Fd, fs::ErrorCode>(fs::ErrorCode::NotPermitted),));
                }
                if let Err(why) = state.room_for(super::opened::Kind::File) {
                    let (audit, label) = state.audit();
                    audit.deny(label, "filesystem", &path, &why);
                    return Ok((Err::<Fd, fs::ErrorCode>(fs::ErrorCode::Quota),));
                }
                match state
                    .filesystem()
                    .open_at(fd, path_flags, path.clone(), open_flags, flags)
                    .await
                {
                    Ok(opened) => {
                        state.opened().add(opened.rep(), super::opened::Kind::File);
                        Ok((Ok(opened),))
                    }
                    Err(e) => {
                        let code: fs::ErrorCode = e.downcast()?;
                        if refused(&code) {
                            let (audit, label) = state.audit();
                            audit.deny(label, "filesystem", &path, WHY);
                        }
                        Ok((Err(code),))
                    }
                }
            })
        },
    )?;
    audited!(types, "[method]descriptor.create-directory-at", create_directory_at, (fd: Fd, path: String), (), [path]);
    audited!(types, "[method]descriptor.remove-directory-at", remove_directory_at, (fd: Fd, path: String), (), [path]);
    audited!(types, "[method]descriptor.unlink-file-at", unlink_file_at, (fd: Fd, path: String), (), [path]);
    audited!(
        types,
        "[method]descriptor.rename-at",
        rename_at,
        (fd: Fd, old_path: String, new_fd: Fd, new_path: String),
        (),
        [old_path, new_path]
    );
    // A symlink's target is only text to the host, but one pointing outside the grant is a
    // trap left for whoever follows it later: absolute targets and `..` are refused.
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (fd, old_path, new_path): (Fd, String, String)| {
            Box::new(async move {
                let state = store.data_mut();
                if escapes(&old_path) {
                    let (audit, label) = state.audit();
                    audit.deny(
                        label,
                        "filesystem",
                        &format!("{old_path} -> {new_path}"),
                        "a symlink may not point outside its directory (absolute or `..`)",
                    );
                    return Ok((Err::<(), fs::ErrorCode>(fs::ErrorCode::NotPermitted),));
                }
                match state
                    .filesystem()
                    .symlink_at(fd, old_path.clone(), new_path.clone())
                    .await
                {
                    Ok(()) => Ok((Ok(()),)),
                    Err(e) => {
                        let code: fs::ErrorCode = e.downcast()?;
                        if refused(&code) {
                            let (audit, label) = state.audit();
                            audit.deny(
                                label,
                                "filesystem",
                                &format!("{old_path} -> {new_path}"),
                                WHY,
                            );
                        }
                        Ok((Err(code),))
                    }
                }
            })
        },
    )?;
    audited!(
        types,
        "[method]descriptor.link-at",
        link_at,
        (fd: Fd, old_flags: fs::PathFlags, old_path: String, new_fd: Fd, new_path: String),
        (),
        [old_path, new_path]
    );
    linker.allow_shadowing(false);
    Ok(())
}
