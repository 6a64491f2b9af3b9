//! `test-state-source` (test only): a polling source over the rows `{"seq":N}` for N from 0 to
//! `count`, standing in for a polling SQL source. It keeps its position in host state (key
//! `pos`: the first row not yet acknowledged), so a fresh instance, or a new process with
//! `[state] dir`, goes on from there instead of reading acknowledged rows again. It says where
//! it starts in a log line (`starting at row N`).
//!
//! - `trap_every = K`: every Kth poll of an instance traps (a panic), before returning rows;
//! - `poll_pause = "25ms"`: each poll sleeps first (a slow database);
//! - `pad = N`: each row carries a `pad` field of N bytes (large records).

use std::time::Duration;

use patchbay_sdk::{Config, ConfigKey, Error, Message, Metadata, PollResult, Source, log, state};

struct StateSource {
    /// The next row to read.
    next: u64,
    count: u64,
    trap_every: u64,
    polls: u64,
    pause: Duration,
    pad: String,
}

fn position() -> Result<u64, Error> {
    match state::get("pos") {
        None => Ok(0),
        Some(bytes) => String::from_utf8_lossy(&bytes)
            .parse()
            .map_err(|_| Error::fatal("state key `pos` is not a number")),
    }
}

impl Source for StateSource {
    fn metadata() -> Metadata {
        Metadata::new(
            "test-state-source",
            env!("CARGO_PKG_VERSION"),
            "Test only: rows from a position kept in host state; may trap on a schedule.",
        )
        .key(ConfigKey::optional("count", "Rows in the table.", "1000"))
        .key(ConfigKey::optional(
            "trap_every",
            "Trap on every Nth poll (0: never).",
            "0",
        ))
        .key(ConfigKey::optional(
            "poll_pause",
            "Milliseconds each poll sleeps first.",
            "0",
        ))
        .key(ConfigKey::optional(
            "pad",
            "Bytes of padding in each row.",
            "0",
        ))
    }

    fn init(config: Config) -> Result<Self, Error> {
        let next = position()?;
        log::info(&format!("starting at row {next}"));
        let pad: usize = config.parse("pad")?.unwrap_or(0);
        Ok(StateSource {
            next,
            count: config.parse("count")?.unwrap_or(1000),
            trap_every: config.parse("trap_every")?.unwrap_or(0),
            polls: 0,
            pause: Duration::from_millis(config.parse("poll_pause")?.unwrap_or(0)),
            pad: "x".repeat(pad),
        })
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        self.polls += 1;
        if self.trap_every > 0 && self.polls.is_multiple_of(self.trap_every) {
            #[allow(clippy::panic)] // trapping on schedule is what this plugin is for
            {
                panic!("poll {} traps, as configured (trap_every)", self.polls);
            }
        }
        std::thread::sleep(self.pause);
        if self.next >= self.count {
            return Ok(PollResult::EndOfStream);
        }
        let end = self.count.min(self.next + u64::from(max));
        let messages = (self.next..end)
            .map(|n| Message::new(format!("{{\"seq\":{n},\"pad\":\"{}\"}}", self.pad)))
            .collect();
        self.next = end;
        // The checkpoint is the first row after the batch: what `pos` becomes once it is acked.
        Ok(PollResult::batch(messages, end))
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        state::set("pos", checkpoint.to_string().as_bytes()).map_err(Error::fatal)
    }
}

patchbay_sdk::export_source!(StateSource);
