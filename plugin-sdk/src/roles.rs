//! The three plugin roles. Implement one on your type and export it with the matching macro.

use crate::{Config, Error, Message, Metadata, Outcome, PollResult};

/// A transform: answers every message with keep, drop, replace (0..n messages) or fail.
///
/// Export it with [`export_transform!`](crate::export_transform).
pub trait Transform: Sized + 'static {
    /// Name, version, description and config keys. Called before `init`, possibly without it;
    /// it must not fail.
    fn metadata() -> Metadata;

    /// Build the instance from its configuration. Bad configuration is an
    /// [`Error::fatal`] that names the key and what a valid value looks like.
    fn init(config: Config) -> Result<Self, Error>;

    /// Process one message. [`Outcome::Keep`] passes it on and copies nothing back to the host.
    fn process(&mut self, message: &Message) -> Outcome;

    /// Process a batch: exactly one outcome per input, in input order. The default calls
    /// [`Transform::process`] for each message; override it for batch-level work.
    fn process_batch(&mut self, batch: Vec<Message>) -> Vec<Outcome> {
        batch.iter().map(|m| self.process(m)).collect()
    }
}

/// A source: produces batches until the end of its stream, and commits upstream on `ack`.
///
/// Export it with [`export_source!`](crate::export_source).
pub trait Source: Sized + 'static {
    /// Name, version, description and config keys. Called before `init`, possibly without it;
    /// it must not fail.
    fn metadata() -> Metadata;

    /// Build the instance from its configuration. Bad configuration is an
    /// [`Error::fatal`] that names the key and what a valid value looks like.
    fn init(config: Config) -> Result<Self, Error>;

    /// Return at most `max` messages with a checkpoint ([`PollResult::batch`]), an empty batch
    /// when nothing is ready (do not block), or [`PollResult::EndOfStream`] once a finite
    /// source is exhausted (and on every poll after that). Checkpoints must not decrease.
    fn poll(&mut self, max: u32) -> Result<PollResult, Error>;

    /// Everything up to and including the batch that carried `checkpoint` was delivered.
    /// Commit the position upstream here. The default does nothing.
    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        let _ = checkpoint;
        Ok(())
    }

    /// The pipeline runs `instances` instances of this source (`concurrency` on the source) and
    /// this is number `instance` (1 to `instances`); called after `init`, before the first
    /// `poll`, only when `instances` is over 1. Return `Ok` when the instances share the work
    /// (each message reaches one of them: a queue group, a consumer group, a shared
    /// subscription), after setting what tells this one apart (its own consumer or client
    /// name, derived from `instance` so that a restarted instance gets the same); `Err` with
    /// why not and which setting would make them share, and the pipeline does not start.
    /// The default: the source keeps one position, so it runs as one instance.
    fn share(&mut self, instance: u32, instances: u32) -> Result<(), String> {
        let _ = (instance, instances);
        Err(
            "it keeps a single position (it does not say that several instances can share \
             its work); remove `concurrency` from the source"
                .into(),
        )
    }
}

/// A sink: delivers messages and answers ok or an error for each.
///
/// Export it with [`export_sink!`](crate::export_sink).
pub trait Sink: Sized + 'static {
    /// Name, version, description and config keys. Called before `init`, possibly without it;
    /// it must not fail.
    fn metadata() -> Metadata;

    /// Build the instance from its configuration. Bad configuration is an
    /// [`Error::fatal`] that names the key and what a valid value looks like.
    fn init(config: Config) -> Result<Self, Error>;

    /// Deliver one message. `Ok` means it is accepted durably: flush before returning it.
    fn write(&mut self, message: &Message) -> Result<(), Error>;

    /// Deliver a batch: exactly one result per input, in input order. The default calls
    /// [`Sink::write`] for each message; override it to flush once per batch.
    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        batch.iter().map(|m| self.write(m)).collect()
    }
}
