//! The glue the export macros expand to (the macros themselves are written by `build.rs`).
//! Not public API.
//!
//! Each macro keeps the plugin's instance in a `thread_local!` `RefCell<Option<T>>` (a component
//! instance is single-threaded), implements the world's generated `Guest` traits on a private
//! adapter that forwards to these functions, and invokes wit-bindgen's export macro, which emits
//! the exported functions and the world's type information in the plugin crate.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::{Config, ConfigEntry, Error, Message, Outcome, PollResult, Sink, Source, Transform};

/// Where the export macros keep the instance `init` built.
pub type Slot<T> = LocalKey<RefCell<Option<T>>>;

/// The message of the fatal error returned by data calls made before a successful `init`.
pub const NOT_INITIALISED: &str = "plugin used before init";

fn not_initialised() -> Error {
    Error::fatal(NOT_INITIALISED)
}

/// `init`: build the instance, or leave the slot empty when it fails.
pub fn init<T>(
    slot: &'static Slot<T>,
    config: Vec<ConfigEntry>,
    make: fn(Config) -> Result<T, Error>,
) -> Result<(), Error> {
    // Drop a previous instance first, so it never sees calls after a failed re-init.
    slot.with(|cell| *cell.borrow_mut() = None);
    let instance = make(Config::from(config))?;
    slot.with(|cell| *cell.borrow_mut() = Some(instance));
    Ok(())
}

/// `process`: one outcome per input, or `fail` for each input before `init`.
pub fn process<T: Transform>(slot: &'static Slot<T>, batch: Vec<Message>) -> Vec<Outcome> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(t) => t.process_batch(batch),
        None => batch
            .iter()
            .map(|_| Outcome::Fail(not_initialised()))
            .collect(),
    })
}

/// `poll`.
pub fn poll<T: Source>(slot: &'static Slot<T>, max: u32) -> Result<PollResult, Error> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(s) => s.poll(max),
        None => Err(not_initialised()),
    })
}

/// `ack`.
pub fn ack<T: Source>(slot: &'static Slot<T>, checkpoint: u64) -> Result<(), Error> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(s) => s.ack(checkpoint),
        None => Err(not_initialised()),
    })
}

/// `write`: one result per input, or an error for each input before `init`.
pub fn write<T: Sink>(slot: &'static Slot<T>, batch: Vec<Message>) -> Vec<Result<(), Error>> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(s) => s.write_batch(batch),
        None => batch.iter().map(|_| Err(not_initialised())).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Metadata};

    struct Counter {
        step: u64,
        seen: u64,
    }

    impl Transform for Counter {
        fn metadata() -> Metadata {
            Metadata::new("counter", "0.1.0", "test")
        }
        fn init(config: Config) -> Result<Self, Error> {
            Ok(Counter {
                step: config.parse("step")?.unwrap_or(1),
                seen: 0,
            })
        }
        fn process(&mut self, _message: &Message) -> Outcome {
            self.seen += self.step;
            Outcome::Keep
        }
    }

    thread_local! {
        static SLOT: RefCell<Option<Counter>> = const { RefCell::new(None) };
    }

    fn entry(key: &str, value: &str) -> ConfigEntry {
        ConfigEntry {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn calls_before_init_fail_per_record() {
        let out = process(&SLOT, vec![Message::new("a"), Message::new("b")]);
        assert_eq!(out.len(), 2);
        for o in out {
            let Outcome::Fail(e) = o else { panic!("{o:?}") };
            assert_eq!(
                (e.kind, e.message.as_str()),
                (ErrorKind::Fatal, NOT_INITIALISED)
            );
        }

        init(&SLOT, vec![entry("step", "2")], Counter::init).unwrap();
        assert_eq!(process(&SLOT, vec![Message::new("a")]), vec![Outcome::Keep]);
        SLOT.with(|c| assert_eq!(c.borrow().as_ref().map(|c| c.seen), Some(2)));

        // A failed re-init leaves no instance behind.
        let e = init(&SLOT, vec![entry("step", "x")], Counter::init).unwrap_err();
        assert_eq!(
            e.message,
            "config key `step`: expected an unsigned integer, got `x`"
        );
        assert!(matches!(
            &process(&SLOT, vec![Message::new("a")])[..],
            [Outcome::Fail(_)]
        ));
        assert!(process(&SLOT, vec![]).is_empty());
    }
}
