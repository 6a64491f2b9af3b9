//! Traps: a plugin call that did not return normally. The instance is gone; the pipeline layer
//! discards it, starts a fresh one and counts it for the breaker. A trap is never a plugin's
//! WIT error (that is `contract::WitError`, the plugin's own answer about data).
//!
//! Also the wall-clock guard: a plugin blocked in a host call runs no Wasm code, so the epoch
//! deadline cannot stop it; the guard drops such a call past its deadline.

use std::sync::Arc;
use std::time::Duration;

/// A plugin call that did not return normally: the instance is gone.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin `{plugin}` trapped in `{function}`: {reason}")]
pub struct Trap {
    /// `pipeline/plugin`.
    pub plugin: Arc<str>,
    /// The exported function that was running.
    pub function: &'static str,
    /// What happened, with the plugin's last words on stderr when it left some.
    pub reason: String,
    /// It hit `limits.memory` or `limits.max_output`: a smaller batch may pass where this one
    /// did not (a source is then polled for fewer messages).
    pub over_limit: bool,
}

/// Marks a call stopped by the wall-clock guard: it was waiting on the host (I/O, a timer), where
/// the epoch deadline cannot reach it.
#[derive(Debug, thiserror::Error)]
#[error("blocked past its deadline")]
pub(super) struct Blocked;

/// Extra time the wall-clock guard allows past a deadline, so that a busy call is stopped by the
/// epoch deadline (which can say so) before the guard drops it.
const GUARD_GRACE: Duration = Duration::from_millis(50);

/// Run a plugin call with a wall-clock limit as well as the epoch deadline: a plugin that
/// blocks in a host call (a sleep, a socket read) runs no Wasm code, so only this stops it.
/// The dropped call leaves the instance unusable; the caller discards it like any trap.
pub(super) async fn guard<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let Some(timeout) = timeout else {
        return call.await;
    };
    match tokio::time::timeout(timeout + GUARD_GRACE, call).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Error::new(Blocked)),
    }
}
