//! Audited name lookup: wasi:sockets `resolve-addresses` re-defined around wasmtime-wasi's own,
//! so that a lookup by a plugin without `grants.dns` is logged and counted like any other
//! denial (wasmtime-wasi refuses it silently). A granted lookup goes to wasmtime-wasi as before,
//! at most [`MOST_LOOKUPS`] at once per instance: each waits on a thread of the host's shared
//! blocking pool, which one plugin must not fill for everyone.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{Host as _, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, Network};
use wasmtime_wasi::sockets::WasiSocketsView;

use super::fs::Audited;

/// Most name lookups one instance may have in flight (each holds a blocking thread).
pub const MOST_LOOKUPS: usize = 16;

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
            // Each lookup holds a thread of the host's shared blocking pool until it answers:
            // a plugin gets at most MOST_LOOKUPS at once (streams it has not dropped yet).
            let mut live = std::mem::take(state.lookups());
            {
                let table = &*state.sockets().table;
                live.retain(|rep| {
                    table
                        .get(&Resource::<ResolveAddressStream>::new_borrow(*rep))
                        .is_ok()
                });
            }
            if live.len() >= MOST_LOOKUPS {
                *state.lookups() = live;
                let (audit, label) = state.audit();
                let shown: String = name.chars().take(253).collect();
                audit.deny(
                    label,
                    "dns",
                    &shown,
                    &format!("over {MOST_LOOKUPS} lookups in flight: drop finished ones first"),
                );
                return Ok((Err(ErrorCode::WouldBlock),));
            }
            let answer = match state.sockets().resolve_addresses(network, name) {
                Ok(stream) => {
                    live.push(stream.rep());
                    Ok((Ok(stream),))
                }
                Err(e) => Ok((Err(e.downcast()?),)),
            };
            *state.lookups() = live;
            answer
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
