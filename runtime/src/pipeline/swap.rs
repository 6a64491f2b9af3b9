//! How running stages learn of new code: the reload layer publishes each swap on a `watch`
//! channel the pipeline layer owns; a stage looks at it between two batches and, when it
//! moved, starts a fresh instance (of the new code) before the next batch. The batch in flight
//! always finishes on the instance it started on, so no batch meets two versions.

use tokio::sync::watch;

/// The code a swappable plugin runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// Bumped by every swap.
    pub generation: u64,
    /// The plugin's own version string, from its metadata.
    pub version: String,
}

/// Publishes swaps (held by the reload layer).
pub type CodeSender = watch::Sender<Code>;
/// Follows swaps (held by each stage of a swappable plugin).
pub type CodeWatch = watch::Receiver<Code>;
