//! What one plugin instance may cost the host: the checked `limits` of the pipeline file
//! (memory, call and init deadlines, output per call), the store's resource limiter that
//! enforces memory, and the output check. Deadlines are armed per call by the plugin layer.

use std::time::Duration;

use wasmtime::{StoreLimits, StoreLimitsBuilder};

use crate::defaults;

/// Checked limits, defaults applied.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory cap in bytes.
    pub memory: u64,
    /// Deadline of each data call.
    pub call_timeout: Duration,
    /// Deadline of `init`.
    pub init_timeout: Duration,
    /// Largest output of one call, in bytes.
    pub max_output: u64,
    /// Most live handles the instance may hold in the host.
    pub handles: usize,
    /// Most sockets it may have open.
    pub sockets: usize,
    /// Most files it may have open.
    pub files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: defaults::MEMORY,
            call_timeout: defaults::CALL_TIMEOUT,
            init_timeout: defaults::INIT_TIMEOUT,
            max_output: defaults::MAX_OUTPUT,
            handles: defaults::HANDLES,
            sockets: defaults::SOCKETS,
            files: defaults::FILES,
        }
    }
}

impl Limits {
    /// Refuse a call's output over `max_output`: the reason, for the trap report.
    pub fn check_output(&self, size: u64) -> Result<(), String> {
        if size <= self.max_output {
            return Ok(());
        }
        Err(format!(
            "output of {} is over the limit of {} (limits.max_output)",
            bytesize::ByteSize(size).display().iec(),
            bytesize::ByteSize(self.max_output).display().iec()
        ))
    }

    /// The limits as the admin API shows them (`/v1/plugins`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "memory": self.memory,
            "call_timeout_ms": self.call_timeout.as_millis() as u64,
            "init_timeout_ms": self.init_timeout.as_millis() as u64,
            "max_output": self.max_output,
            "handles": self.handles,
            "sockets": self.sockets,
            "files": self.files,
        })
    }

    /// One line, as `patchbay inspect` prints it.
    pub fn line(&self) -> String {
        format!(
            "memory {}, call_timeout {}, init_timeout {}, max_output {}, handles {}, sockets {}, \
             files {}",
            bytesize::ByteSize(self.memory).display().iec(),
            humantime::format_duration(self.call_timeout),
            humantime::format_duration(self.init_timeout),
            bytesize::ByteSize(self.max_output).display().iec(),
            self.handles,
            self.sockets,
            self.files
        )
    }

    /// The most host memory the instance's handles may hold: every handle a header map full to
    /// its cap (the largest thing a guest can make the host keep for it), the bound SECURITY.md
    /// states.
    pub fn host_memory(&self) -> u64 {
        (self.handles * defaults::HTTP_FIELDS_SIZE) as u64
    }
}

/// Memory, table and instance caps for one plugin instance.
///
/// A memory grow past `limits.memory` is refused (`memory.grow` answers -1) rather than trapped
/// on the spot: a garbage-collected guest (JavaScript's SpiderMonkey, Python) collects and
/// carries on, and a guest that cannot (Rust's allocator aborts) traps by itself. The refusal is
/// remembered, so that trap is reported as the memory limit it is.
pub fn store_limits(limits: &Limits) -> Limiter {
    Limiter {
        limits: StoreLimitsBuilder::new()
            .memory_size(usize::try_from(limits.memory).unwrap_or(usize::MAX))
            .table_elements(100_000)
            .instances(100)
            .tables(100)
            .memories(100)
            .build(),
        refused: false,
    }
}

/// The store's resource limiter: [`StoreLimits`], remembering a refused memory grow.
pub struct Limiter {
    limits: StoreLimits,
    refused: bool,
}

impl Limiter {
    /// Whether a memory grow was refused since the last [`Limiter::clear`].
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Forget refusals (at the start of each call).
    pub fn clear(&mut self) {
        self.refused = false;
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
