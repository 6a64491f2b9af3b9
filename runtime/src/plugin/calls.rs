//! The calls the pipeline layer makes on plugins, as three small traits. [`super::Instance`]
//! implements them over Wasm; the pipeline engine's own tests implement them with in-memory
//! fakes, so retries, the breaker, acks and dead letters are tested without Wasm.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::trap::Trap;
use crate::contract::{Answer, Message, Outcome, PollResult, WitError};

/// A source: `poll` for batches, `ack` checkpoints once delivered.
#[async_trait::async_trait]
pub trait SourceCalls: Send {
    /// `poll(max)`; a source that can honour it is also asked for at most `max_bytes`.
    async fn poll(
        &mut self,
        max: u32,
        max_bytes: u64,
    ) -> Result<Result<PollResult, WitError>, Trap>;
    /// `ack(checkpoint)`.
    async fn ack(&mut self, checkpoint: u64) -> Result<Result<(), WitError>, Trap>;
    /// Whether `poll` honours `max_bytes` (the plugin exports `poll-within`).
    fn bounded(&self) -> bool {
        false
    }
    /// `share(instance, instances)`: `Ok(Err(why))` when the instances would not share the
    /// work. Called only when a source runs as more than one instance.
    async fn share(&mut self, instance: u32, instances: u32) -> Result<Result<(), String>, Trap> {
        let _ = (instance, instances);
        Ok(Err("it cannot run as several instances".into()))
    }
    /// Whether it answers requests (the plugin exports `reply`).
    fn replies(&self) -> bool {
        false
    }
    /// `reply(token, answer)`: the answer to the request whose messages carried `token`.
    async fn reply(&mut self, token: &str, answer: &Answer) -> Result<Result<(), WitError>, Trap> {
        let _ = (token, answer);
        Ok(Ok(()))
    }
}

/// A transform: one outcome per input, in order.
#[async_trait::async_trait]
pub trait TransformCalls: Send {
    /// `process(batch)`.
    async fn process(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, Trap>;
}

/// A sink: one result per input, in order.
#[async_trait::async_trait]
pub trait SinkCalls: Send {
    /// `write(batch)`.
    async fn write(&mut self, batch: &[Message]) -> Result<Vec<Result<(), WitError>>, Trap>;
}

/// Starts a fresh, initialised instance of a stage's plugin: after a trap, or to move to code
/// that was swapped in. Its host state carries over.
pub type Start<T> =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<Box<T>>> + Send>> + Send + Sync>;

#[async_trait::async_trait]
impl SourceCalls for super::Instance {
    async fn poll(
        &mut self,
        max: u32,
        max_bytes: u64,
    ) -> Result<Result<PollResult, WitError>, Trap> {
        super::Instance::poll(self, max, max_bytes).await
    }

    async fn ack(&mut self, checkpoint: u64) -> Result<Result<(), WitError>, Trap> {
        super::Instance::ack(self, checkpoint).await
    }

    fn bounded(&self) -> bool {
        super::Instance::bounded(self)
    }

    async fn share(&mut self, instance: u32, instances: u32) -> Result<Result<(), String>, Trap> {
        super::Instance::share(self, instance, instances).await
    }

    fn replies(&self) -> bool {
        super::Instance::replies(self)
    }

    async fn reply(&mut self, token: &str, answer: &Answer) -> Result<Result<(), WitError>, Trap> {
        super::Instance::reply(self, token, answer).await
    }
}

#[async_trait::async_trait]
impl TransformCalls for super::Instance {
    async fn process(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, Trap> {
        super::Instance::process(self, batch).await
    }
}

#[async_trait::async_trait]
impl SinkCalls for super::Instance {
    async fn write(&mut self, batch: &[Message]) -> Result<Vec<Result<(), WitError>>, Trap> {
        super::Instance::write(self, batch).await
    }
}
