//! Test-only sink for `patchbay test-plugin`: accepts everything (and keeps nothing); compliant
//! unless the environment variable `BREAK` (granted through a pipeline file) names a rule of
//! `wit/README.md` to break:
//!
//! - `count`: batches of more than one message get one result fewer (rule 6).
//! - `empty-batch`: an empty batch gets one result (rule 7).
//! - `non-utf8-retryable`: a payload that is not UTF-8 gets a `retryable` error, which would
//!   retry a record that can never succeed (rule 10).

use patchbay_sdk::{Config, Error, Message, Metadata, Sink};

struct Broken {
    mode: String,
}

impl Sink for Broken {
    fn metadata() -> Metadata {
        Metadata::new(
            "test-broken-sink",
            env!("CARGO_PKG_VERSION"),
            "Test-only: accepts everything, breaking the rule named by $BREAK.",
        )
    }

    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Broken {
            mode: std::env::var("BREAK").unwrap_or_default(),
        })
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        if self.mode == "non-utf8-retryable" && std::str::from_utf8(&message.payload).is_err() {
            return Err(Error::retryable("cannot decode, try again"));
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        match self.mode.as_str() {
            "count" if batch.len() > 1 => batch.iter().skip(1).map(|_| Ok(())).collect(),
            "empty-batch" if batch.is_empty() => vec![Ok(())],
            _ => batch.iter().map(|m| self.write(m)).collect(),
        }
    }
}

patchbay_sdk::export_sink!(Broken);
