//! Denied accesses: each one counted per (plugin, capability) for `patchbay run`'s summary and
//! the admin API, and logged with plugin, capability and target — at most [`LINES_PER_SECOND`]
//! lines a second per (plugin, capability), so a plugin that keeps trying cannot flood the
//! log; how many were not shown is said when the next line is.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most denial lines logged per second for one plugin and capability.
pub const LINES_PER_SECOND: u32 = 20;

#[derive(Debug)]
struct Tally {
    count: u64,
    window: Instant,
    shown: u32,
    hidden: u64,
}

/// Denied accesses, counted per plugin and capability, logged within a budget.
#[derive(Debug, Default)]
pub struct Audit {
    denied: Mutex<BTreeMap<(String, String), Tally>>,
}

impl Audit {
    /// Record one denied access, and log it if this second's budget allows.
    pub fn deny(&self, plugin: &str, capability: &str, target: &str, why: &str) {
        let hidden = {
            let mut denied = match self.denied.lock() {
                Ok(d) => d,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = Instant::now();
            let tally = denied
                .entry((plugin.to_owned(), capability.to_owned()))
                .or_insert(Tally {
                    count: 0,
                    window: now,
                    shown: 0,
                    hidden: 0,
                });
            tally.count += 1;
            if now.duration_since(tally.window) >= Duration::from_secs(1) {
                tally.window = now;
                tally.shown = 0;
            }
            if tally.shown >= LINES_PER_SECOND {
                tally.hidden += 1;
                return;
            }
            tally.shown += 1;
            std::mem::take(&mut tally.hidden)
        };
        if hidden > 0 {
            tracing::warn!(
                plugin,
                capability,
                "sandbox: {hidden} more denials of {capability} for plugin `{plugin}` were not \
                 logged (over {LINES_PER_SECOND} a second); all are counted"
            );
        }
        tracing::warn!(
            plugin,
            capability,
            target,
            "sandbox: denied {capability} access to {target} for plugin `{plugin}` ({why})"
        );
    }

    /// Denied accesses so far, by (plugin, capability).
    pub fn denied(&self) -> BTreeMap<(String, String), u64> {
        let denied = match self.denied.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        denied.iter().map(|(k, t)| (k.clone(), t.count)).collect()
    }
}
