//! The packed fast path: messages into a batch frame, answers out of theirs
//! (`patchbay-frame`, "Packed frames" in wit/README.md).
//! Used by `instance` when a plugin exports `process-packed` / `write-packed`.

use patchbay_frame::{FrameError, Kind, MessageRef, OutcomeRef, Reader, Writer};

use crate::contract::{ErrorKind, Header, Message, Outcome, WitError};

/// `batch` as a frame, in `buf`'s allocation.
pub fn batch(buf: Vec<u8>, batch: &[Message]) -> Vec<u8> {
    let mut w = Writer::new(buf);
    w.count(batch.len());
    for m in batch {
        w.message(
            &m.payload,
            m.key.as_deref(),
            m.headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_str())),
            m.timestamp,
        );
    }
    w.finish()
}

fn message(m: MessageRef<'_>) -> Message {
    Message {
        payload: m.payload.to_vec(),
        key: m.key.map(<[u8]>::to_vec),
        headers: m
            .headers
            .into_iter()
            .map(|(name, value)| Header {
                name: name.to_owned(),
                value: value.to_owned(),
            })
            .collect(),
        timestamp: m.timestamp,
    }
}

fn error(kind: Kind, message: &str) -> WitError {
    WitError {
        kind: match kind {
            Kind::Retryable => ErrorKind::Retryable,
            Kind::InvalidData => ErrorKind::InvalidData,
            Kind::Fatal => ErrorKind::Fatal,
        },
        message: message.to_owned(),
    }
}

/// Why an outcomes frame was not taken.
#[derive(Debug)]
pub enum Refusal {
    /// Not a valid frame.
    Frame(FrameError),
    /// It holds this many answers, far more than the inputs (see [`most_answers`]).
    Count(usize),
    /// Its messages' size (as `max_output` counts it) went over the limit; decoding stopped there.
    Output(u64),
}

impl From<FrameError> for Refusal {
    fn from(e: FrameError) -> Refusal {
        Refusal::Frame(e)
    }
}

/// Most answers decoded for a batch of `inputs`: a plugin that miscounts by a little is
/// decoded and reported as breaking the contract (with its count, as the typed call is); a
/// count beyond this is refused before anything is allocated, so a few bytes per answer
/// cannot make the host build a large list.
pub fn most_answers(inputs: usize) -> usize {
    inputs.saturating_mul(2).saturating_add(16)
}

/// An outcomes frame for a batch of `inputs` messages. A count over [`most_answers`] is
/// refused before anything is allocated, and decoding stops as soon as the messages it holds are over `max_output` (see
/// `message_size`), so a small plugin cannot make the host build a large answer.
pub fn outcomes(frame: &[u8], inputs: usize, max_output: u64) -> Result<Vec<Outcome>, Refusal> {
    let mut r = Reader::new(frame);
    let n = r.count()?;
    if n > most_answers(inputs) {
        return Err(Refusal::Count(n));
    }
    let mut out = Vec::with_capacity(n);
    let mut size = 0u64;
    for _ in 0..n {
        out.push(match r.outcome()? {
            OutcomeRef::Keep => Outcome::Keep,
            OutcomeRef::Drop => Outcome::Drop,
            OutcomeRef::Replace(n) => {
                let mut messages = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    let left = max_output.saturating_sub(size) as usize;
                    let Some(m) = r.message_within(left / PER_HEADER)? else {
                        return Err(Refusal::Output(max_output.saturating_add(1)));
                    };
                    size += message_size(&m);
                    if size > max_output {
                        return Err(Refusal::Output(size));
                    }
                    messages.push(message(m));
                }
                Outcome::Replace(messages)
            }
            OutcomeRef::Fail(kind, text) => Outcome::Fail(error(kind, text)),
        });
    }
    r.end()?;
    Ok(out)
}

/// What one message costs against `limits.max_output`: its bytes, plus a fixed cost per message
/// and per header for what holding it costs (in the host, and in the next plugin that gets it),
/// so that empty headers are not free.
pub fn message_size(m: &MessageRef<'_>) -> u64 {
    let headers: usize = m
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + PER_HEADER)
        .sum();
    (m.payload.len() + m.key.map_or(0, <[u8]>::len) + headers + PER_MESSAGE) as u64
}

/// Fixed cost of a message against `limits.max_output`.
pub const PER_MESSAGE: usize = 64;
/// Fixed cost of a header against `limits.max_output`.
pub const PER_HEADER: usize = 64;

/// A results frame for a batch of `inputs` messages; a count over [`most_answers`] is refused
/// before anything is allocated.
pub fn results(frame: &[u8], inputs: usize) -> Result<Vec<Result<(), WitError>>, Refusal> {
    let mut r = Reader::new(frame);
    let n = r.count()?;
    if n > most_answers(inputs) {
        return Err(Refusal::Count(n));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.result()?.map_err(|(kind, text)| error(kind, text)));
    }
    r.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_frame::Writer;

    #[test]
    fn more_outcomes_than_inputs_are_refused_before_any_is_built() {
        // A million `keep`s (one byte each) for a batch of one.
        let mut w = Writer::new(Vec::new());
        w.count(1_000_000);
        let mut frame = w.finish();
        frame.extend(std::iter::repeat_n(0u8, 1_000_000));
        assert!(matches!(
            outcomes(&frame, 1, 1 << 24),
            Err(Refusal::Count(1_000_000))
        ));
    }

    #[test]
    fn headers_count_against_max_output_before_they_are_built() {
        let headers = vec![("", ""); 100_000];
        let mut w = Writer::new(Vec::new());
        w.count(1);
        w.replace(1);
        w.message(b"x", None, headers.iter().copied(), None);
        let frame = w.finish();
        // 100,000 × 64 bytes is over 1 MiB: refused without reading them.
        assert!(matches!(
            outcomes(&frame, 1, 1 << 20),
            Err(Refusal::Output(_))
        ));
        // Under a larger limit the same answer is fine, and costs what it says.
        let Ok(answer) = outcomes(&frame, 1, 1 << 24) else {
            panic!("within the limit");
        };
        let Some(Outcome::Replace(messages)) = answer.first() else {
            panic!("a replace");
        };
        assert_eq!(messages[0].headers.len(), 100_000);
    }
}
