//! Test-only source for `patchbay test-plugin`: 100 messages, then `end-of-stream`; compliant
//! unless the environment variable `BREAK` (granted through a pipeline file) names a rule of
//! `wit/README.md` to break:
//!
//! - `poll-over-max`: `poll(max)` returns `max + 1` messages (rule 11).
//! - `eos-not-sticky`: after `end-of-stream`, the next poll returns a batch again (rule 12).
//! - `checkpoint-back`: the third batch carries a smaller checkpoint (rule 13).
//! - `ack-trap`: `ack` traps (rule 14).

#![allow(clippy::panic)] // trapping on purpose is this plugin's job

use patchbay_sdk::{Config, Error, Message, Metadata, PollResult, Source};

const TOTAL: u64 = 100;

struct Broken {
    mode: String,
    next: u64,
    batches: u64,
    ended: bool,
}

impl Source for Broken {
    fn metadata() -> Metadata {
        Metadata::new(
            "test-broken-source",
            env!("CARGO_PKG_VERSION"),
            "Test-only: 100 messages, breaking the rule named by $BREAK.",
        )
    }

    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Broken {
            mode: std::env::var("BREAK").unwrap_or_default(),
            next: 0,
            batches: 0,
            ended: false,
        })
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        if self.ended && self.mode == "eos-not-sticky" {
            return Ok(PollResult::batch(vec![Message::new("again")], TOTAL + 1));
        }
        if self.next >= TOTAL {
            self.ended = true;
            return Ok(PollResult::EndOfStream);
        }
        let end = if self.mode == "poll-over-max" {
            self.next + u64::from(max) + 1
        } else {
            (self.next + u64::from(max)).min(TOTAL)
        };
        let messages: Vec<Message> = (self.next..end)
            .map(|n| Message::new(format!(r#"{{"seq":{n}}}"#)))
            .collect();
        self.next = end;
        self.batches += 1;
        let checkpoint = if self.mode == "checkpoint-back" && self.batches == 3 {
            0
        } else {
            end
        };
        Ok(PollResult::batch(messages, checkpoint))
    }

    fn ack(&mut self, _checkpoint: u64) -> Result<(), Error> {
        if self.mode == "ack-trap" {
            panic!("test-broken-source: ack-trap");
        }
        Ok(())
    }
}

patchbay_sdk::export_source!(Broken);
