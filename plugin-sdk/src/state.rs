//! The host-owned key-value store of this plugin in this pipeline. It survives instance
//! restarts after a trap and hot swaps of the plugin's code, so a fresh instance can go on
//! where the old one stopped. Keys are at most 1 KiB, values at most 1 MiB, and one plugin's
//! state at most 16 MiB.
//!
//! ```no_run
//! use patchbay_sdk::state;
//!
//! let last: u64 = state::get("offset")
//!     .and_then(|v| String::from_utf8(v).ok())
//!     .and_then(|s| s.parse().ok())
//!     .unwrap_or(0);
//! state::set("offset", (last + 1).to_string().as_bytes()).ok();
//! ```
//!
//! Built for another target than wasm32 (a plugin's own unit tests, a native benchmark), there
//! is no host: the store is an in-memory map of the calling thread.

#[cfg(target_arch = "wasm32")]
use crate::bindings::state as host;

/// The store without a host: one map per thread.
#[cfg(not(target_arch = "wasm32"))]
mod host {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        static MAP: RefCell<BTreeMap<String, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
    }

    pub fn get(key: &str) -> Option<Vec<u8>> {
        MAP.with(|m| m.borrow().get(key).cloned())
    }

    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        MAP.with(|m| m.borrow_mut().insert(key.to_owned(), value.to_vec()));
        Ok(())
    }

    pub fn delete(key: &str) {
        MAP.with(|m| m.borrow_mut().remove(key));
    }
}

/// Read a key; `None` when it was never set or was deleted.
pub fn get(key: &str) -> Option<Vec<u8>> {
    host::get(key)
}

/// Write a key. Fails (with the host's reason) when the key or value is over the size limits.
pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
    host::set(key, value)
}

/// Remove a key. Removing a missing key is not an error.
pub fn delete(key: &str) {
    host::delete(key)
}
