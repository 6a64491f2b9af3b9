//! Audited name lookup: wasi:sockets `resolve-addresses` re-defined around wasmtime-wasi's own,
//! so that a lookup by a plugin without `grants.dns` is logged and counted like any other
//! denial (wasmtime-wasi refuses it silently). A granted lookup goes to wasmtime-wasi as before.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{Host as _, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, Network};
use wasmtime_wasi::sockets::WasiSocketsView;

use super::fs::Audited;

/// Shadow `resolve-addresses` in `linker` (after WASI was added to it).
pub fn audit_name_lookup<T: Audited>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let mut lookup = linker.instance("wasi:sockets/ip-name-lookup@0.2.12")?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (network, name): (Resource<Network>, String)|
         -> wasmtime::Result<(Result<Resource<ResolveAddressStream>, ErrorCode>,)> {
            let state = store.data_mut();
            if !state.dns_granted() {
                let (audit, label) = state.audit();
                let shown: String = name.chars().take(253).collect();
                audit.deny(label, "dns", &shown, "not granted: grants.dns is false");
                return Ok((Err(ErrorCode::AccessDenied),));
            }
            match state.sockets().resolve_addresses(network, name) {
                Ok(stream) => Ok((Ok(stream),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
