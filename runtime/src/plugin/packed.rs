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

/// An outcomes frame.
pub fn outcomes(frame: &[u8]) -> Result<Vec<Outcome>, FrameError> {
    let mut r = Reader::new(frame);
    let n = r.count()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(match r.outcome()? {
            OutcomeRef::Keep => Outcome::Keep,
            OutcomeRef::Drop => Outcome::Drop,
            OutcomeRef::Replace(n) => {
                let mut messages = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    messages.push(message(r.message()?));
                }
                Outcome::Replace(messages)
            }
            OutcomeRef::Fail(kind, text) => Outcome::Fail(error(kind, text)),
        });
    }
    r.end()?;
    Ok(out)
}

/// A results frame.
pub fn results(frame: &[u8]) -> Result<Vec<Result<(), WitError>>, FrameError> {
    let mut r = Reader::new(frame);
    let n = r.count()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.result()?.map_err(|(kind, text)| error(kind, text)));
    }
    r.end()?;
    Ok(out)
}
