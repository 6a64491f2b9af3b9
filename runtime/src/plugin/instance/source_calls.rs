//! A source's calls on an [`Instance`]: `poll` (through `poll-within` when the plugin has it),
//! `ack`, and `share` for a source run as several instances. Children of `instance.rs` see
//! its private parts (the call guard, trap reports, output checks); this file adds no state.

use super::*;
use crate::contract::Answer;

impl Instance {
    /// Whether this source is polled with a byte bound (`poll-within`).
    pub fn bounded(&self) -> bool {
        matches!(
            self.bindings,
            Some(
                Bindings::SourceBounded(_)
                    | Bindings::SourceShared(_)
                    | Bindings::SourceReply(_)
                    | Bindings::SourceBoundedV1(_)
                    | Bindings::SourceSharedV1(_)
            )
        )
    }

    /// `poll(max)` of a source; a source that exports `poll-within` also gets `max_bytes`.
    pub async fn poll(
        &mut self,
        max: u32,
        max_bytes: u64,
    ) -> Result<Result<PollResult, WitError>, Trap> {
        let started = Instant::now();
        let result = self.poll_inner(max, max_bytes).await;
        let records = match &result {
            Ok(Ok(PollResult::Batch(batch))) => batch.messages.len(),
            _ => 0,
        };
        self.observe("poll", started, records, &result);
        if let Ok(Err(e)) = &result {
            self.errors(std::iter::once(e));
        }
        result
    }

    /// `ack(checkpoint)` of a source.
    pub async fn ack(&mut self, checkpoint: u64) -> Result<Result<(), WitError>, Trap> {
        let started = Instant::now();
        let result = self.ack_inner(checkpoint).await;
        self.observe("ack", started, 0, &result);
        if let Ok(Err(e)) = &result {
            self.errors(std::iter::once(e));
        }
        result
    }

    /// `share(instance, instances)` of a source: `Ok(Err(why))` when the instances would not
    /// share its work, or when the plugin does not export `share` at all.
    pub async fn share(
        &mut self,
        instance: u32,
        instances: u32,
    ) -> Result<Result<(), String>, Trap> {
        let timeout = self.limits.call_timeout;
        self.arm(timeout);
        macro_rules! share {
            ($b:ident) => {
                guard(
                    self.guard_for(timeout),
                    $b.patchbay_connector_source_shared_api().call_share(
                        &mut self.store,
                        instance,
                        instances,
                    ),
                )
                .await
            };
        }
        let result = match &self.bindings {
            Some(Bindings::SourceShared(b)) => share!(b),
            Some(Bindings::SourceReply(b)) => share!(b),
            Some(Bindings::SourceSharedV1(b)) => share!(b),
            Some(
                Bindings::Source(_)
                | Bindings::SourceBounded(_)
                | Bindings::SourceV1(_)
                | Bindings::SourceBoundedV1(_),
            ) => {
                return Ok(Err(NOT_SHARED.to_owned()));
            }
            _ => return Err(self.wrong_role("share")),
        };
        result.map_err(|e| self.trap("share", timeout, e))
    }

    /// `poll(max)` of a source, through `poll-within(max, max_bytes)` when it has it.
    async fn poll_inner(
        &mut self,
        max: u32,
        max_bytes: u64,
    ) -> Result<Result<PollResult, WitError>, Trap> {
        let timeout = self.limits.call_timeout;
        self.arm(timeout);
        // `poll-within` is the same call in both worlds that have it (distinct binding types).
        macro_rules! within {
            ($b:ident) => {
                guard(
                    self.guard_for(timeout),
                    $b.patchbay_connector_source_bounded_api().call_poll_within(
                        &mut self.store,
                        max,
                        max_bytes,
                    ),
                )
                .await
            };
        }
        let result = match &self.bindings {
            Some(Bindings::Source(b)) => {
                guard(
                    self.guard_for(timeout),
                    b.patchbay_connector_source_api()
                        .call_poll(&mut self.store, max),
                )
                .await
            }
            Some(Bindings::SourceV1(b)) => {
                guard(
                    self.guard_for(timeout),
                    b.patchbay_connector_source_api()
                        .call_poll(&mut self.store, max),
                )
                .await
            }
            Some(Bindings::SourceBounded(b)) => within!(b),
            Some(Bindings::SourceShared(b)) => within!(b),
            Some(Bindings::SourceReply(b)) => within!(b),
            Some(Bindings::SourceBoundedV1(b)) => within!(b),
            Some(Bindings::SourceSharedV1(b)) => within!(b),
            _ => return Err(self.wrong_role("poll")),
        };
        let result = result.map_err(|e| self.trap("poll", timeout, e))?;
        if let Ok(PollResult::Batch(batch)) = &result {
            self.check_output("poll", &batch.messages)?;
        }
        Ok(result)
    }

    /// `ack(checkpoint)` of a source.
    async fn ack_inner(&mut self, checkpoint: u64) -> Result<Result<(), WitError>, Trap> {
        let timeout = self.limits.call_timeout;
        self.arm(timeout);
        // The same call in every source world (distinct binding types).
        macro_rules! ack {
            ($b:ident) => {
                guard(
                    self.guard_for(timeout),
                    $b.patchbay_connector_source_api()
                        .call_ack(&mut self.store, checkpoint),
                )
                .await
            };
        }
        let result = match &self.bindings {
            Some(Bindings::Source(b)) => ack!(b),
            Some(Bindings::SourceBounded(b)) => ack!(b),
            Some(Bindings::SourceShared(b)) => ack!(b),
            Some(Bindings::SourceReply(b)) => ack!(b),
            Some(Bindings::SourceV1(b)) => ack!(b),
            Some(Bindings::SourceBoundedV1(b)) => ack!(b),
            Some(Bindings::SourceSharedV1(b)) => ack!(b),
            _ => return Err(self.wrong_role("ack")),
        };
        result.map_err(|e| self.trap("ack", timeout, e))
    }

    /// Whether this source answers requests (`reply`).
    pub fn replies(&self) -> bool {
        matches!(self.bindings, Some(Bindings::SourceReply(_)))
    }

    /// `reply(token, answer)` of a source that answers requests.
    pub async fn reply(
        &mut self,
        token: &str,
        answer: &Answer,
    ) -> Result<Result<(), WitError>, Trap> {
        let timeout = self.limits.call_timeout;
        self.arm(timeout);
        let started = Instant::now();
        let result = match &self.bindings {
            Some(Bindings::SourceReply(b)) => {
                guard(
                    self.guard_for(timeout),
                    b.patchbay_connector_source_reply_api().call_reply(
                        &mut self.store,
                        token,
                        answer,
                    ),
                )
                .await
            }
            _ => return Err(self.wrong_role("reply")),
        };
        let result = result.map_err(|e| self.trap("reply", timeout, e));
        self.observe("reply", started, 0, &result);
        result
    }
}
