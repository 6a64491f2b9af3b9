//! Every default of the pipeline file, in one place: the config layer applies them, the sandbox
//! and pipeline layers build their `Default`s from them, and the README table and the JSON
//! Schema (`patchbay schema`) show them. Nothing here imports anything of Patchbay's.

use std::time::Duration;

/// Largest number of messages a source returns per poll (`batch_size`).
pub const BATCH_SIZE: u32 = 256;
/// Largest accepted `batch_size`.
pub const MAX_BATCH_SIZE: u32 = 65_536;
/// Most bytes a source returns per poll (`batch_bytes`): a quarter of `limits.max_output`.
pub const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Batches buffered between two stages (`buffer`).
pub const BUFFER: u32 = 4;
/// Largest accepted `buffer`.
pub const MAX_BUFFER: u32 = 1024;
/// Instances of each transform and sink (`concurrency`).
pub const CONCURRENCY: u32 = 1;
/// Largest accepted `concurrency`.
pub const MAX_CONCURRENCY: u32 = 256;
/// In-flight payload bytes of a pipeline (`max_in_flight`).
pub const MAX_IN_FLIGHT: u64 = 64 * 1024 * 1024;
/// How long a request waits for its answer in a request/reply pipeline (`reply_timeout`).
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Cap of a plugin's linear memory (`limits.memory`).
pub const MEMORY: u64 = 64 * 1024 * 1024;
/// Deadline of one data call: poll, process, write, ack (`limits.call_timeout`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of `init`; connectors may dial a broker there (`limits.init_timeout`).
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plugin whose `init` answers `retryable` (its server is not up yet) is tried
/// again, on a fresh instance each time, before its pipeline gives up starting it.
pub const INIT_RETRY_FOR: Duration = Duration::from_secs(30);
/// The first wait between two such tries; it doubles up to [`INIT_RETRY_MAX`].
pub const INIT_RETRY_FIRST: Duration = Duration::from_millis(200);
pub const INIT_RETRY_MAX: Duration = Duration::from_secs(5);
/// Largest output of one plugin call (`limits.max_output`).
pub const MAX_OUTPUT: u64 = 16 * 1024 * 1024;
/// Most live handles an instance holds in the host (`limits.handles`): WASI streams, sockets,
/// header maps, pending lookups. wasmtime's own default is 100,000 per table. A connection
/// takes three (socket, input and output stream): http-source's 1,024 connections fit.
pub const HANDLES: usize = 4096;
/// Most sockets an instance has open at once (`limits.sockets`): each is a file descriptor of
/// the process, which every plugin shares.
pub const SOCKETS: usize = 64;
/// Most files an instance has open at once (`limits.files`).
pub const FILES: usize = 64;
/// The range `limits.handles` may take (a Rust guest needs a few dozen to start).
pub const MIN_HANDLES: usize = 64;
pub const MAX_HANDLES: usize = 100_000;
/// Most bytes one `wasi:http` header map may hold in the host (wasmtime's default: 128 KiB).
/// Proxies cap a request's headers at 8–16 KiB on the wire.
pub const HTTP_FIELDS_SIZE: usize = 16 * 1024;

/// Most attempts per record, the first one included (`retry.attempts`).
pub const RETRY_ATTEMPTS: u32 = 10;
/// Wait before the first retry (`retry.backoff`).
pub const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two attempts (`retry.max_backoff`).
pub const RETRY_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Traps within the window that open a stage's breaker (`breaker.traps`).
pub const BREAKER_TRAPS: u32 = 5;
/// The window traps are counted in (`breaker.window`).
pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);
/// How long an open breaker waits before a trial batch (`breaker.cooldown`).
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

/// The dead-letter file of pipeline `name`, relative to the pipeline file.
pub fn dead_letter_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new("dead-letter").join(format!("{name}.jsonl"))
}
