//! Test-only transform for `patchbay test-plugin`: compliant unless the environment variable
//! `BREAK` (granted through a pipeline file) names one rule of `wit/README.md` to break:
//!
//! - `describe-trap`: `describe` panics (rule 1).
//! - `describe-unstable`: `describe` answers differently after `init` (rule 1).
//! - `bad-name`: the metadata's name is not lowercase with dashes (rule 1).
//! - `duplicate-key`: a config key is listed twice (rule 2).
//! - `init-trap`, `init-retryable`, `init-unnamed`: a bad `level` traps, is a `retryable`
//!   error, or is an error that does not name the key (rule 3).
//! - `required-ignored`: `level` is declared required but `init` runs without it (rule 3).
//! - `count`: batches of more than one message get one outcome fewer (rule 6).
//! - `empty-batch`: an empty batch gets one outcome (rule 7).
//! - `large-batch`: a batch over 1,000 messages traps (rule 6).
//! - `repeated`: the 500th call traps (rule 6).
//! - `non-utf8`, `empty-payload`: such a payload traps (rule 10).
//! - `init-late`: `init` answers `retryable` twice (counted in the host state, which outlives
//!   instances), as a plugin whose server is not up yet, then succeeds.

#![allow(clippy::panic)] // trapping on purpose is this plugin's job

use std::sync::atomic::{AtomicBool, Ordering};

use patchbay_sdk::{Config, ConfigKey, Error, Message, Metadata, Outcome, Transform};

static INITIALISED: AtomicBool = AtomicBool::new(false);

fn mode() -> String {
    std::env::var("BREAK").unwrap_or_default()
}

struct Broken {
    mode: String,
    calls: u64,
}

impl Transform for Broken {
    fn metadata() -> Metadata {
        let mode = mode();
        if mode == "describe-trap" {
            panic!("test-broken-transform: describe-trap");
        }
        let name = if mode == "bad-name" {
            "Broken_Transform"
        } else {
            "test-broken-transform"
        };
        let description = if mode == "describe-unstable" && INITIALISED.load(Ordering::Relaxed) {
            "Test-only: a description that changed after init."
        } else {
            "Test-only: breaks the rule named by $BREAK."
        };
        let level = if mode == "required-ignored" {
            ConfigKey::required("level", "Unsigned integer, the level.")
        } else {
            ConfigKey::optional("level", "Unsigned integer, the level.", "1")
        };
        let mut meta = Metadata::new(name, env!("CARGO_PKG_VERSION"), description).key(level);
        if mode == "duplicate-key" {
            meta = meta.key(ConfigKey::optional("level", "The same key again.", "1"));
        }
        meta
    }

    fn init(config: Config) -> Result<Self, Error> {
        let mode = mode();
        INITIALISED.store(true, Ordering::Relaxed);
        if mode == "init-late" {
            let tried = patchbay_sdk::state::get("init-attempts").map_or(0, |v| v.len());
            if tried < 2 {
                let _ = patchbay_sdk::state::set("init-attempts", &vec![b'x'; tried + 1]);
                return Err(Error::retryable(format!(
                    "not ready yet (attempt {})",
                    tried + 1
                )));
            }
        }
        if let Some(level) = config.get("level")
            && level.parse::<u64>().is_err()
        {
            match mode.as_str() {
                "init-trap" => panic!("test-broken-transform: init-trap on level={level:?}"),
                "init-retryable" => return Err(Error::retryable("level: try again later")),
                "init-unnamed" => return Err(Error::fatal("bad value")),
                _ => return Err(config.invalid("level", "an unsigned integer, e.g. 3")),
            }
        }
        Ok(Broken { mode, calls: 0 })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        if self.mode == "non-utf8" && std::str::from_utf8(&message.payload).is_err() {
            panic!("test-broken-transform: non-utf8");
        }
        if self.mode == "empty-payload" && message.payload.is_empty() {
            panic!("test-broken-transform: empty-payload");
        }
        Outcome::Keep
    }

    fn process_batch(&mut self, batch: Vec<Message>) -> Vec<Outcome> {
        self.calls += 1;
        match self.mode.as_str() {
            "count" if batch.len() > 1 => return vec![Outcome::Keep; batch.len() - 1],
            "empty-batch" if batch.is_empty() => return vec![Outcome::Keep],
            "large-batch" if batch.len() > 1000 => panic!("test-broken-transform: large-batch"),
            "repeated" if self.calls >= 500 => panic!("test-broken-transform: repeated"),
            _ => {}
        }
        batch.iter().map(|m| self.process(m)).collect()
    }
}

patchbay_sdk::export_transform!(Broken);
