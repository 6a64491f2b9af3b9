//! Test-only transform that breaks the contract: for a non-empty batch it returns one outcome
//! fewer than it received messages (all `keep`). The host must fail the batch and say so, and
//! not treat it as a trap.

use patchbay_sdk::{Config, Error, Message, Metadata, Outcome, Transform};

struct TestBadCount;

impl Transform for TestBadCount {
    fn metadata() -> Metadata {
        Metadata::new(
            "test-bad-count",
            env!("CARGO_PKG_VERSION"),
            "Test-only: returns one outcome fewer than it received messages.",
        )
    }

    fn init(_config: Config) -> Result<Self, Error> {
        Ok(TestBadCount)
    }

    fn process(&mut self, _message: &Message) -> Outcome {
        Outcome::Keep
    }

    fn process_batch(&mut self, batch: Vec<Message>) -> Vec<Outcome> {
        batch.iter().skip(1).map(|_| Outcome::Keep).collect()
    }
}

patchbay_sdk::export_transform!(TestBadCount);
