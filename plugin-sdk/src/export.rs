//! The glue the export macros expand to (the macros themselves are written by `build.rs`).
//! Not public API.
//!
//! Each macro keeps the plugin's instance in a `thread_local!` `RefCell<Option<T>>` (a component
//! instance is single-threaded), implements the world's generated `Guest` traits on a private
//! adapter that forwards to these functions, and invokes wit-bindgen's export macro, which emits
//! the exported functions and the world's type information in the plugin crate.

use std::cell::RefCell;
use std::thread::LocalKey;

use patchbay_frame::{Kind, MessageRef, Reader, Writer};

use crate::bounded::Carry;
use crate::{
    Config, ConfigEntry, Error, ErrorKind, Header, Message, Outcome, PollResult, Sink, Source,
    Transform,
};

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
    CARRY.with(|carry| *carry.borrow_mut() = Carry::default());
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

thread_local! {
    /// What `poll-within` holds back of a source's batches (one source per component).
    static CARRY: RefCell<Carry> = RefCell::new(Carry::default());
}

/// `poll`: `poll-within` without a byte bound.
pub fn poll<T: Source>(slot: &'static Slot<T>, max: u32) -> Result<PollResult, Error> {
    poll_within(slot, max, u64::MAX)
}

/// `poll-within`: the source's batches, in parts within `max_bytes` (see [`crate::bounded`]).
pub fn poll_within<T: Source>(
    slot: &'static Slot<T>,
    max: u32,
    max_bytes: u64,
) -> Result<PollResult, Error> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(s) => CARRY.with(|carry| carry.borrow_mut().poll(s, max, max_bytes)),
        None => Err(not_initialised()),
    })
}

/// `ack`.
pub fn ack<T: Source>(slot: &'static Slot<T>, checkpoint: u64) -> Result<(), Error> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(s) => CARRY.with(|carry| carry.borrow_mut().ack(s, checkpoint)),
        None => Err(not_initialised()),
    })
}

/// `reply`: the answer to one request of a source that answers requests.
pub fn reply<T: crate::Replies>(
    slot: &'static Slot<T>,
    token: String,
    answer: crate::Answer,
) -> Result<(), Error> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(s) => s.reply(token, answer),
        None => Err(not_initialised()),
    })
}

/// `share`: whether this instance can share the source's work with `instances - 1` others.
pub fn share<T: Source>(
    slot: &'static Slot<T>,
    instance: u32,
    instances: u32,
) -> Result<(), String> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(s) => s.share(instance, instances),
        None => Err(NOT_INITIALISED.to_owned()),
    })
}

/// `write`: one result per input, or an error for each input before `init`.
pub fn write<T: Sink>(slot: &'static Slot<T>, batch: Vec<Message>) -> Vec<Result<(), Error>> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(s) => s.write_batch(batch),
        None => batch.iter().map(|_| Err(not_initialised())).collect(),
    })
}

/// The messages of a batch frame (see "Packed frames" in wit/README.md).
fn unpack(frame: &[u8]) -> Result<Vec<Message>, patchbay_frame::FrameError> {
    let mut r = Reader::new(frame);
    let n = r.count()?;
    let mut batch = Vec::with_capacity(n);
    for _ in 0..n {
        let MessageRef {
            payload,
            key,
            headers,
            timestamp,
        } = r.message()?;
        batch.push(Message {
            payload: payload.to_vec(),
            key: key.map(<[u8]>::to_vec),
            headers: headers
                .into_iter()
                .map(|(name, value)| Header {
                    name: name.to_owned(),
                    value: value.to_owned(),
                })
                .collect(),
            timestamp,
        });
    }
    r.end()?;
    Ok(batch)
}

fn kind(kind: ErrorKind) -> Kind {
    match kind {
        ErrorKind::Retryable => Kind::Retryable,
        ErrorKind::InvalidData => Kind::InvalidData,
        ErrorKind::Fatal => Kind::Fatal,
    }
}

fn pack_message(w: &mut Writer, m: &Message) {
    w.message(
        &m.payload,
        m.key.as_deref(),
        m.headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str())),
        m.timestamp,
    );
}

/// A batch frame the host should never send: say so in the log and answer no outcomes, which
/// the host reports as a wrong count.
fn bad_frame(function: &str, e: &patchbay_frame::FrameError) -> Vec<u8> {
    crate::log::error(&format!("{function}: the host sent {e}"));
    let mut w = Writer::with_capacity(4);
    w.count(0);
    w.finish()
}

/// `process-packed`: [`process`] on a batch frame, answered with an outcomes frame.
pub fn process_packed<T: Transform>(slot: &'static Slot<T>, frame: &[u8]) -> Vec<u8> {
    let batch = match unpack(frame) {
        Ok(batch) => batch,
        Err(e) => return bad_frame("process-packed", &e),
    };
    let outcomes = process(slot, batch);
    let bytes: usize = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Replace(ms) => ms.iter().map(|m| m.payload.len() + 16).sum(),
            _ => 1,
        })
        .sum();
    let mut w = Writer::with_capacity(4 + bytes);
    w.count(outcomes.len());
    for outcome in &outcomes {
        match outcome {
            Outcome::Keep => w.keep(),
            Outcome::Drop => w.drop_message(),
            Outcome::Replace(messages) => {
                w.replace(messages.len());
                for m in messages {
                    pack_message(&mut w, m);
                }
            }
            Outcome::Fail(e) => w.fail(kind(e.kind), &e.message),
        }
    }
    w.finish()
}

/// `write-packed`: [`write`] on a batch frame, answered with a results frame.
pub fn write_packed<T: Sink>(slot: &'static Slot<T>, frame: &[u8]) -> Vec<u8> {
    let batch = match unpack(frame) {
        Ok(batch) => batch,
        Err(e) => return bad_frame("write-packed", &e),
    };
    let results = write(slot, batch);
    let mut w = Writer::with_capacity(4 + results.len());
    w.count(results.len());
    for result in &results {
        match result {
            Ok(()) => w.ok(),
            Err(e) => w.err(kind(e.kind), &e.message),
        }
    }
    w.finish()
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

    #[test]
    fn the_packed_call_answers_like_the_typed_one() {
        thread_local! {
            static PACKED: RefCell<Option<Counter>> = const { RefCell::new(None) };
        }
        let mut w = Writer::default();
        w.count(2);
        w.message(b"a", Some(b"k"), [("h", "v")].into_iter(), Some(7));
        w.message(b"\xff", None, std::iter::empty(), None);
        let frame = w.finish();
        assert_eq!(
            unpack(&frame).unwrap(),
            vec![
                Message::new("a")
                    .with_key("k")
                    .with_header("h", "v")
                    .with_timestamp(7),
                Message::new(b"\xff".to_vec()),
            ]
        );
        // Before init: one fatal `fail` per message, as `process` answers.
        let answer = process_packed(&PACKED, &frame);
        let mut r = Reader::new(&answer);
        assert_eq!(r.count().unwrap(), 2);
        for _ in 0..2 {
            assert_eq!(
                r.outcome().unwrap(),
                patchbay_frame::OutcomeRef::Fail(Kind::Fatal, NOT_INITIALISED)
            );
        }
        r.end().unwrap();
        init(&PACKED, vec![], Counter::init).unwrap();
        let answer = process_packed(&PACKED, &frame);
        assert_eq!(answer, [2, 0, 0, 0, 0, 0]);
        PACKED.with(|c| assert_eq!(c.borrow().as_ref().map(|c| c.seen), Some(2)));
    }
}
