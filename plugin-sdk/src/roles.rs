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

/// The header a source puts on a message to mark it as a request awaiting an answer, with a
/// token of its own (unique among its open requests): see [`Replies`].
pub const REQUEST: &str = "patchbay-request";

/// A source that answers requests (request/reply; world `source-reply`, contract 0.2.0): an
/// HTTP request held open until the pipeline computed its response, a NATS request with a
/// reply inbox. Export it with `export_source!(MyPlugin, replies)`.
///
/// Mark each message that awaits an answer with the header [`REQUEST`] and a token; the host
/// takes the header off before any stage sees the message and calls [`Replies::reply`] with the
/// same token once the pipeline settled it: the messages that reached the pipeline's `reply`
/// destination, the failure of a stage, or `timed-out` after the pipeline's `reply_timeout`.
pub trait Replies: Source {
    /// Answer the request that carried `token`. Called once per request, before the `ack` of
    /// the batch that carried it. A token the source no longer knows (it timed out on its side,
    /// the caller went away) is not an error: ignore it.
    fn reply(&mut self, token: String, answer: crate::Answer) -> Result<(), Error>;
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
