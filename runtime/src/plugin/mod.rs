//! The plugin layer: turning a component file into live instances and calling them.
//!
//! - `engine`: the shared wasmtime engine, instance pool, linker and epoch ticker;
//! - `cache`: precompiled artifacts by content hash; `component`: load, pin and world check;
//! - `instance`: one live instance (its store, calls, traps, metrics); `packed`: the fast path
//!   (public so that the fuzz tests, runtime/tests/fuzz.rs, reach its decoders);
//! - `calls`: the small traits the pipeline layer calls plugins through.
//!
//! It may import `sandbox`, `contract` and `config` (for `Role`), never `pipeline` or above:
//! it knows nothing of batches in flight, retries or acks.

mod cache;
mod calls;
mod component;
mod engine;
mod instance;
mod metrics;
pub mod packed;
mod trap;

pub use calls::{SinkCalls, SourceCalls, Start, TransformCalls};
pub use component::{LoadError, LoadedPlugin, file_sha256};
pub use engine::{DEFAULT_INSTANCE_POOL, Runtime, TICK};
pub use instance::{HostState, Instance, message_size};
pub use metrics::{CallLabels, CallMetrics};
pub use trap::Trap;
