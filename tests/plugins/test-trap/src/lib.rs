//! Test-only transform: passes `after` messages through with `keep`, then traps on the next one.
//! Used to check how the host handles a trap (discard the instance, start a fresh one, route
//! the batch by policy). Each fresh instance counts from zero again.
//!
//! - `mode = "panic"` (default): a Rust panic (its message goes to stderr), then a trap.
//! - `mode = "unreachable"`: the wasm `unreachable` instruction, with no message.

use patchbay_sdk::{Config, ConfigKey, Error, Message, Metadata, Outcome, Transform};

struct TestTrap {
    after: u64,
    seen: u64,
    panic: bool,
}

impl Transform for TestTrap {
    fn metadata() -> Metadata {
        Metadata::new(
            "test-trap",
            env!("CARGO_PKG_VERSION"),
            "Test-only: keeps `after` messages, then traps on the next one.",
        )
        .key(ConfigKey::optional(
            "after",
            "Unsigned integer: how many messages to keep before trapping.",
            "0",
        ))
        .key(ConfigKey::optional(
            "mode",
            "How to trap: `panic` (a Rust panic, with a message on stderr) or `unreachable` (the wasm unreachable instruction, no message).",
            "panic",
        ))
    }

    fn init(config: Config) -> Result<Self, Error> {
        Ok(TestTrap {
            after: config.parse("after")?.unwrap_or(0),
            seen: 0,
            panic: config.choice("mode", &["panic", "unreachable"], "panic")? == "panic",
        })
    }

    fn process(&mut self, _message: &Message) -> Outcome {
        if self.seen < self.after {
            self.seen += 1;
            return Outcome::Keep;
        }
        if self.panic {
            #[allow(clippy::panic)] // trapping is this plugin's purpose
            {
                panic!("test-trap: deliberate panic after {} messages", self.seen);
            }
        }
        unreachable_trap()
    }
}

#[cfg(target_arch = "wasm32")]
fn unreachable_trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn unreachable_trap() -> ! {
    std::process::abort()
}

patchbay_sdk::export_transform!(TestTrap);
