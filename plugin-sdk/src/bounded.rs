//! `poll-within(max, max-bytes)` for every [`Source`]: the SDK keeps a poll's answer within
//! the host's byte bound by holding back what does not fit and returning it on the next polls.
//! Not public API.
//!
//! A source's checkpoint covers its whole batch, so a part of a batch cannot carry it: the
//! host would acknowledge records it has not yet delivered. The SDK therefore hands the host
//! checkpoints of its own (1, 2, 3… one per part) and remembers which of them close a batch of
//! the source's; `ack` of one of ours acknowledges the newest batch of the source that is
//! closed by then, and nothing when none is.

use std::collections::VecDeque;

use crate::{Error, Message, PollResult, Source};

/// What a message costs against the bound, as the host counts it (`limits.max_output`): its
/// bytes, and 64 per message and per header.
pub fn message_size(m: &Message) -> u64 {
    let headers: usize = m
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 64)
        .sum();
    (m.payload.len() + m.key.as_ref().map_or(0, Vec::len) + headers + 64) as u64
}

/// Messages held back and the checkpoint mapping; one per source instance.
#[derive(Debug, Default)]
pub struct Carry {
    /// Messages the source returned that the host has not been given yet.
    held: VecDeque<Message>,
    /// The source's checkpoint of the batch `held` belongs to.
    held_checkpoint: u64,
    /// The newest checkpoint the source returned with messages (they must not decrease).
    last_checkpoint: Option<u64>,
    /// The checkpoint last handed to the host.
    ours: u64,
    /// Ours that close a batch of the source's, with the source's checkpoint, oldest first.
    closes: VecDeque<(u64, u64)>,
}

impl Carry {
    /// `poll-within`: at most `max` messages costing at most `max_bytes` together (a single
    /// larger message alone).
    pub fn poll<T: Source>(
        &mut self,
        source: &mut T,
        max: u32,
        max_bytes: u64,
    ) -> Result<PollResult, Error> {
        if self.held.is_empty() {
            match source.poll(max)? {
                PollResult::EndOfStream => return Ok(PollResult::EndOfStream),
                PollResult::Batch(batch) if batch.messages.is_empty() => {
                    return Ok(PollResult::batch(Vec::new(), self.ours));
                }
                PollResult::Batch(batch) => {
                    if let Some(last) = self.last_checkpoint
                        && batch.checkpoint < last
                    {
                        return Err(Error::fatal(format!(
                            "checkpoint went backwards from {last} to {}; checkpoints must \
                             not decrease",
                            batch.checkpoint
                        )));
                    }
                    self.last_checkpoint = Some(batch.checkpoint);
                    if batch.messages.len() > max as usize {
                        // A contract break the SDK must not hide: the host reports it.
                        self.ours += 1;
                        self.closes.push_back((self.ours, batch.checkpoint));
                        return Ok(PollResult::batch(batch.messages, self.ours));
                    }
                    self.held_checkpoint = batch.checkpoint;
                    self.held = batch.messages.into();
                }
            }
        }
        let mut part = Vec::new();
        let mut bytes = 0u64;
        while let Some(next) = self.held.front() {
            let size = message_size(next);
            let full = part.len() >= max as usize || bytes.saturating_add(size) > max_bytes;
            if !part.is_empty() && full {
                break;
            }
            if max == 0 {
                break;
            }
            bytes = bytes.saturating_add(size);
            if let Some(m) = self.held.pop_front() {
                part.push(m);
            }
        }
        if part.is_empty() {
            return Ok(PollResult::batch(Vec::new(), self.ours));
        }
        self.ours += 1;
        if self.held.is_empty() {
            self.closes.push_back((self.ours, self.held_checkpoint));
        }
        Ok(PollResult::batch(part, self.ours))
    }

    /// `ack` of one of our checkpoints: the source's newest batch closed by it, if any.
    pub fn ack<T: Source>(&mut self, source: &mut T, checkpoint: u64) -> Result<(), Error> {
        let mut theirs = None;
        while let Some(&(ours, cp)) = self.closes.front() {
            if ours > checkpoint {
                break;
            }
            theirs = Some(cp);
            self.closes.pop_front();
        }
        match theirs {
            Some(cp) => source.ack(cp),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Metadata};

    /// Hands out `batches` of (message count, payload size) with checkpoints 10, 20, …; records
    /// its acks.
    struct Scripted {
        batches: VecDeque<(usize, usize)>,
        checkpoint: u64,
        acks: Vec<u64>,
    }

    impl Source for Scripted {
        fn metadata() -> Metadata {
            Metadata::new("scripted", "0.1.0", "test")
        }
        fn init(_: Config) -> Result<Self, Error> {
            Err(Error::fatal("not used"))
        }
        fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
            match self.batches.pop_front() {
                None => Ok(PollResult::EndOfStream),
                Some((n, size)) => {
                    self.checkpoint += 10;
                    let n = n.min(max as usize);
                    Ok(PollResult::batch(
                        (0..n).map(|_| Message::new(vec![b'x'; size])).collect(),
                        self.checkpoint,
                    ))
                }
            }
        }
        fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
            self.acks.push(checkpoint);
            Ok(())
        }
    }

    fn sizes(result: &PollResult) -> (usize, u64) {
        match result {
            PollResult::Batch(b) => (b.messages.len(), b.checkpoint),
            PollResult::EndOfStream => (usize::MAX, 0),
        }
    }

    #[test]
    fn a_batch_over_the_bound_comes_in_parts_acknowledged_once_whole() {
        // 10 messages of 936 + 64 = 1,000 bytes, bound 3,500: parts of 3, 3, 3, 1.
        let mut source = Scripted {
            batches: [(10, 936), (2, 936)].into(),
            checkpoint: 0,
            acks: Vec::new(),
        };
        let mut carry = Carry::default();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(sizes(&carry.poll(&mut source, 100, 3_500).unwrap()));
        }
        assert_eq!(got, [(3, 1), (3, 2), (3, 3), (1, 4), (2, 5)]);
        carry.ack(&mut source, 3).unwrap();
        assert!(
            source.acks.is_empty(),
            "part of the first batch is not delivered yet"
        );
        carry.ack(&mut source, 4).unwrap();
        assert_eq!(source.acks, [10]);
        carry.ack(&mut source, 5).unwrap();
        assert_eq!(source.acks, [10, 20]);
        assert_eq!(
            sizes(&carry.poll(&mut source, 100, 3_500).unwrap()).0,
            usize::MAX
        );
    }

    #[test]
    fn a_single_message_over_the_bound_comes_alone_and_max_still_holds() {
        let mut source = Scripted {
            batches: [(3, 10_000), (5, 10)].into(),
            checkpoint: 0,
            acks: Vec::new(),
        };
        let mut carry = Carry::default();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(sizes(&carry.poll(&mut source, 2, 1_000).unwrap()));
        }
        // The source returned 2 of its 3 big ones (max 2): each alone. Then 2 small ones in one.
        assert_eq!(
            got,
            [(1, 1), (1, 2), (2, 3), (usize::MAX, 0), (usize::MAX, 0)]
        );
        // An ack that covers two of the source's batches reaches it once, with the newest.
        carry.ack(&mut source, 3).unwrap();
        assert_eq!(source.acks, [20]);
    }
}
