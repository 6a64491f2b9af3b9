//! Denied accesses: each one logged with plugin, capability and target, and counted per
//! (plugin, capability) for `patchbay run`'s summary and the admin API.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Denied accesses, counted per plugin and capability, each also logged.
#[derive(Debug, Default)]
pub struct Audit {
    denied: Mutex<BTreeMap<(String, String), u64>>,
}
impl Audit {
    /// Record and log one denied access.
    pub fn deny(&self, plugin: &str, capability: &str, target: &str, why: &str) {
        tracing::warn!(
            plugin,
            capability,
            target,
            "sandbox: denied {capability} access to {target} for plugin `{plugin}` ({why})"
        );
        let mut denied = match self.denied.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        *denied
            .entry((plugin.to_owned(), capability.to_owned()))
            .or_insert(0) += 1;
    }

    /// Denied accesses so far, by (plugin, capability).
    pub fn denied(&self) -> BTreeMap<(String, String), u64> {
        match self.denied.lock() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}
