//! Audited file access: wasi:filesystem `open-at` re-defined around wasmtime-wasi's own, so that
//! an open the sandbox refuses (a `..` or symlink escape from a granted directory, a write under
//! a read-only grant) is audited like a network denial. Paths outside every granted directory
//! never reach the host: the guest's libc finds no directory to resolve them against.
//! (cap-std inside wasmtime-wasi does the refusing; this only reports it.)

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
}

/// Shadow `[method]descriptor.open-at` in `linker` (after WASI was added to it).
pub fn audit_open_at<T: Audited>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::filesystem::WasiFilesystemView;
    use wasmtime_wasi::p2::bindings::filesystem::types::{self as fs, HostDescriptor as _};
    type Args = (
        Resource<fs::Descriptor>,
        fs::PathFlags,
        String,
        fs::OpenFlags,
        fs::DescriptorFlags,
    );
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:filesystem/types@0.2.12")?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (fd, path_flags, path, open_flags, flags): Args| {
            Box::new(async move {
                let state = store.data_mut();
                let opened = state
                    .filesystem()
                    .open_at(fd, path_flags, path.clone(), open_flags, flags)
                    .await;
                match opened {
                    Ok(fd) => Ok((Ok(fd),)),
                    Err(e) => {
                        let code = e.downcast()?;
                        if matches!(
                            code,
                            fs::ErrorCode::NotPermitted
                                | fs::ErrorCode::Access
                                | fs::ErrorCode::ReadOnly
                        ) {
                            let (audit, label) = state.audit();
                            audit.deny(
                                label,
                                "filesystem",
                                &path,
                                "outside its granted directories, or a write under a read-only grant",
                            );
                        }
                        Ok((Err(code),))
                    }
                }
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
