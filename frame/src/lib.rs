//! The packed frame format of Patchbay's fast data path.
//!
//! A transform or sink may export the packed form of its data call next to the typed one
//! (`transform-packed-api`, `sink-packed-api` in `wit/worlds.wit`): the whole batch crosses the
//! component boundary as one `list<u8>`, and the answers come back as one `list<u8>`. The typed
//! `list<message>` costs one allocation inside the guest, called from the host, per payload,
//! key, header name and header value; a frame costs one per batch. The host and the Rust SDK
//! both use this crate, so the two ends cannot disagree; other languages' SDKs implement the
//! format from `wit/README.md` ("Packed frames"), which this module documents too:
//!
//! All integers are little-endian. A length is a `u32` count of bytes.
//!
//! ```text
//! batch    := u32 count, count × message                  (host → plugin)
//! message  := u8 flags                                    bit 0: has key, bit 1: has timestamp,
//!                                                         other bits 0
//!             u32 len, payload
//!             [u32 len, key]                              if bit 0
//!             [u64 timestamp]                             if bit 1 (ms since the Unix epoch)
//!             u32 count, count × (u32 len, name, u32 len, value)   headers, UTF-8
//! outcomes := u32 count, count × outcome                  (transform → host), one per input
//! outcome  := u8 0                                        keep
//!           | u8 1                                        drop
//!           | u8 2, u32 count, count × message            replace
//!           | u8 3, error                                 fail
//! results  := u32 count, count × result                   (sink → host), one per input
//! result   := u8 0                                        ok
//!           | u8 1, error                                 error
//! error    := u8 kind (0 retryable, 1 invalid-data, 2 fatal), u32 len, message (UTF-8)
//! ```
//!
//! A frame ends exactly after its last item; trailing bytes are an error. Readers check every
//! length against what is left, so a malformed frame is an error that says where, never a
//! panic or an oversized allocation.

use std::fmt;

/// Smallest encoded message: flags, payload length, header count.
const MIN_MESSAGE: usize = 1 + 4 + 4;

const HAS_KEY: u8 = 1;
const HAS_TIMESTAMP: u8 = 2;

/// A malformed frame: what was wrong and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Offset into the frame where reading failed.
    pub offset: usize,
    /// What was expected there.
    pub what: String,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed frame at byte {}: {}", self.offset, self.what)
    }
}

impl std::error::Error for FrameError {}

/// An error kind, as in `wit/types.wit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `retryable`
    Retryable,
    /// `invalid-data`
    InvalidData,
    /// `fatal`
    Fatal,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Retryable => 0,
            Kind::InvalidData => 1,
            Kind::Fatal => 2,
        }
    }
}

/// A message read from a frame, borrowing its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef<'a> {
    /// The payload.
    pub payload: &'a [u8],
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// Headers in order: (name, value).
    pub headers: Vec<(&'a str, &'a str)>,
    /// Event time in ms since the Unix epoch, if any.
    pub timestamp: Option<u64>,
}

/// A transform outcome read from a frame. `Replace(n)` is followed by `n` messages: read them
/// with [`Reader::message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeRef<'a> {
    /// keep
    Keep,
    /// drop
    Drop,
    /// replace, with the number of messages that follow
    Replace(u32),
    /// fail
    Fail(Kind, &'a str),
}

/// Builds a frame. Start with [`Writer::count`], then write that many items.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A writer that reuses `buf`'s allocation (its contents are cleared).
    pub fn new(mut buf: Vec<u8>) -> Writer {
        buf.clear();
        Writer { buf }
    }

    /// A writer with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(bytes),
        }
    }

    fn u32(&mut self, n: usize) {
        // Lengths come from slices of a component's memory (at most 4 GiB) or from batches the
        // host bounds far below that; saturate rather than wrap if that ever stops being true.
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&n.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len());
        self.buf.extend_from_slice(b);
    }

    /// The number of items (messages, outcomes or results) that follow.
    pub fn count(&mut self, n: usize) {
        self.u32(n);
    }

    /// One message.
    pub fn message<'h>(
        &mut self,
        payload: &[u8],
        key: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'h str, &'h str)>,
        timestamp: Option<u64>,
    ) {
        let flags = if key.is_some() { HAS_KEY } else { 0 }
            | if timestamp.is_some() {
                HAS_TIMESTAMP
            } else {
                0
            };
        self.buf.reserve(MIN_MESSAGE + payload.len());
        self.buf.push(flags);
        self.bytes(payload);
        if let Some(key) = key {
            self.bytes(key);
        }
        if let Some(ts) = timestamp {
            self.buf.extend_from_slice(&ts.to_le_bytes());
        }
        self.u32(headers.len());
        for (name, value) in headers {
            self.bytes(name.as_bytes());
            self.bytes(value.as_bytes());
        }
    }

    /// Outcome `keep`.
    pub fn keep(&mut self) {
        self.buf.push(0);
    }

    /// Outcome `drop`.
    pub fn drop_message(&mut self) {
        self.buf.push(1);
    }

    /// Outcome `replace`: write `n` messages after it.
    pub fn replace(&mut self, n: usize) {
        self.buf.push(2);
        self.u32(n);
    }

    /// Outcome `fail`.
    pub fn fail(&mut self, kind: Kind, message: &str) {
        self.buf.push(3);
        self.error(kind, message);
    }

    /// Sink result `ok`.
    pub fn ok(&mut self) {
        self.buf.push(0);
    }

    /// Sink result `error`.
    pub fn err(&mut self, kind: Kind, message: &str) {
        self.buf.push(1);
        self.error(kind, message);
    }

    fn error(&mut self, kind: Kind, message: &str) {
        self.buf.push(kind.code());
        self.bytes(message.as_bytes());
    }

    /// The frame.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads a frame item by item.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn fail<T>(&self, what: impl Into<String>) -> Result<T, FrameError> {
        Err(FrameError {
            offset: self.pos,
            what: what.into(),
        })
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FrameError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return self.fail(format!("{what}: {n} bytes, but only {left} are left"));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], FrameError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn text(&mut self, what: &str) -> Result<&'a str, FrameError> {
        let start = self.pos;
        let b = self.bytes(what)?;
        std::str::from_utf8(b).or_else(|e| {
            self.pos = start;
            self.fail(format!("{what} is not UTF-8 ({e})"))
        })
    }

    /// The item count at the start of a frame (or of a `replace`). Bounded by what is left, so
    /// that `Vec::with_capacity(count)` is safe.
    pub fn count(&mut self) -> Result<usize, FrameError> {
        let n = self.u32("item count")? as usize;
        let most = (self.buf.len() - self.pos).max(1);
        if n > most {
            self.pos -= 4;
            return self.fail(format!(
                "a count of {n} items, more than the {most} bytes that are left"
            ));
        }
        Ok(n)
    }

    /// One message.
    pub fn message(&mut self) -> Result<MessageRef<'a>, FrameError> {
        self.message_within(usize::MAX)?.ok_or_else(|| FrameError {
            offset: self.pos,
            what: "too many headers".to_owned(),
        })
    }

    /// One message, or `None` (and the reader is left mid-message) when it has more than
    /// `max_headers` headers: checked before the list of headers is allocated.
    pub fn message_within(
        &mut self,
        max_headers: usize,
    ) -> Result<Option<MessageRef<'a>>, FrameError> {
        let flags = self.u8("message flags")?;
        if flags & !(HAS_KEY | HAS_TIMESTAMP) != 0 {
            self.pos -= 1;
            return self.fail(format!(
                "message flags {flags:#04x} (only bits 0 and 1 are defined)"
            ));
        }
        let payload = self.bytes("payload")?;
        let key = if flags & HAS_KEY != 0 {
            Some(self.bytes("key")?)
        } else {
            None
        };
        let timestamp = if flags & HAS_TIMESTAMP != 0 {
            Some(self.u64("timestamp")?)
        } else {
            None
        };
        let n = self.u32("header count")? as usize;
        if n > (self.buf.len() - self.pos) / 8 {
            self.pos -= 4;
            return self.fail(format!(
                "a count of {n} headers, more than there is room for"
            ));
        }
        if n > max_headers {
            return Ok(None);
        }
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.text("header name")?;
            let value = self.text("header value")?;
            headers.push((name, value));
        }
        Ok(Some(MessageRef {
            payload,
            key,
            headers,
            timestamp,
        }))
    }

    fn error(&mut self) -> Result<(Kind, &'a str), FrameError> {
        let kind = match self.u8("error kind")? {
            0 => Kind::Retryable,
            1 => Kind::InvalidData,
            2 => Kind::Fatal,
            k => {
                self.pos -= 1;
                return self.fail(format!("error kind {k} (0, 1 or 2)"));
            }
        };
        Ok((kind, self.text("error message")?))
    }

    /// One transform outcome. After `Replace(n)`, read `n` messages.
    pub fn outcome(&mut self) -> Result<OutcomeRef<'a>, FrameError> {
        match self.u8("outcome tag")? {
            0 => Ok(OutcomeRef::Keep),
            1 => Ok(OutcomeRef::Drop),
            2 => {
                let n = self.count()?;
                // Bounded by count(); fits in u32 since it was read from one.
                Ok(OutcomeRef::Replace(u32::try_from(n).unwrap_or(u32::MAX)))
            }
            3 => {
                let (kind, message) = self.error()?;
                Ok(OutcomeRef::Fail(kind, message))
            }
            t => {
                self.pos -= 1;
                self.fail(format!(
                    "outcome tag {t} (0 keep, 1 drop, 2 replace, 3 fail)"
                ))
            }
        }
    }

    /// One sink result.
    pub fn result(&mut self) -> Result<Result<(), (Kind, &'a str)>, FrameError> {
        match self.u8("result tag")? {
            0 => Ok(Ok(())),
            1 => Ok(Err(self.error()?)),
            t => {
                self.pos -= 1;
                self.fail(format!("result tag {t} (0 ok, 1 error)"))
            }
        }
    }

    /// Check that the frame ends here.
    pub fn end(&self) -> Result<(), FrameError> {
        let left = self.buf.len() - self.pos;
        if left == 0 {
            Ok(())
        } else {
            self.fail(format!("{left} bytes after the last item"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch() -> Vec<u8> {
        let mut w = Writer::default();
        w.count(3);
        w.message(b"{\"a\":1}", None, std::iter::empty(), None);
        w.message(
            b"",
            Some(b"k\xff"),
            [("x-trace", "t-1"), ("x-trace", "t-2")].into_iter(),
            Some(1_700_000_000_000),
        );
        w.message(b"\x00\x01", None, [("n", "")].into_iter(), Some(0));
        w.finish()
    }

    #[test]
    fn messages_round_trip() {
        let frame = batch();
        let mut r = Reader::new(&frame);
        assert_eq!(r.count().unwrap(), 3);
        let a = r.message().unwrap();
        assert_eq!(
            (a.payload, a.key, a.timestamp),
            (&b"{\"a\":1}"[..], None, None)
        );
        assert!(a.headers.is_empty());
        let b = r.message().unwrap();
        assert_eq!(b.payload, b"");
        assert_eq!(b.key, Some(&b"k\xff"[..]));
        assert_eq!(b.headers, vec![("x-trace", "t-1"), ("x-trace", "t-2")]);
        assert_eq!(b.timestamp, Some(1_700_000_000_000));
        let c = r.message().unwrap();
        assert_eq!((c.payload, c.timestamp), (&b"\x00\x01"[..], Some(0)));
        assert_eq!(c.headers, vec![("n", "")]);
        r.end().unwrap();
        // The exact bytes of the first message: flags, payload, no headers.
        assert_eq!(&frame[..4], &3u32.to_le_bytes());
        assert_eq!(frame[4], 0);
        assert_eq!(&frame[5..9], &7u32.to_le_bytes());
    }

    #[test]
    fn outcomes_and_results_round_trip() {
        let mut w = Writer::default();
        w.count(4);
        w.keep();
        w.drop_message();
        w.replace(2);
        w.message(b"one", None, std::iter::empty(), None);
        w.message(b"two", Some(b"k"), std::iter::empty(), None);
        w.fail(Kind::InvalidData, "field `a` is not a number");
        let frame = w.finish();
        let mut r = Reader::new(&frame);
        assert_eq!(r.count().unwrap(), 4);
        assert_eq!(r.outcome().unwrap(), OutcomeRef::Keep);
        assert_eq!(r.outcome().unwrap(), OutcomeRef::Drop);
        assert_eq!(r.outcome().unwrap(), OutcomeRef::Replace(2));
        assert_eq!(r.message().unwrap().payload, b"one");
        assert_eq!(r.message().unwrap().key, Some(&b"k"[..]));
        assert_eq!(
            r.outcome().unwrap(),
            OutcomeRef::Fail(Kind::InvalidData, "field `a` is not a number")
        );
        r.end().unwrap();

        let mut w = Writer::new(frame);
        w.count(2);
        w.ok();
        w.err(Kind::Retryable, "broker away");
        let frame = w.finish();
        let mut r = Reader::new(&frame);
        assert_eq!(r.count().unwrap(), 2);
        assert_eq!(r.result().unwrap(), Ok(()));
        assert_eq!(r.result().unwrap(), Err((Kind::Retryable, "broker away")));
        r.end().unwrap();
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let frame = batch();
        for len in 0..frame.len() {
            let mut r = Reader::new(&frame[..len]);
            let read = (|| {
                let n = r.count()?;
                for _ in 0..n {
                    r.message()?;
                }
                r.end()
            })();
            assert!(read.is_err(), "a frame cut at {len} bytes was accepted");
        }
    }

    #[test]
    fn malformed_frames_say_what_and_where() {
        let err = |frame: &[u8]| {
            let mut r = Reader::new(frame);
            let n = r.count()?;
            for _ in 0..n {
                r.outcome()?;
            }
            r.end()
        };
        assert_eq!(
            err(&[1, 0, 0, 0, 9]).unwrap_err().to_string(),
            "malformed frame at byte 4: outcome tag 9 (0 keep, 1 drop, 2 replace, 3 fail)"
        );
        assert_eq!(
            err(&[0xff, 0xff, 0xff, 0xff]).unwrap_err().to_string(),
            "malformed frame at byte 0: a count of 4294967295 items, more than the 1 bytes that are left"
        );
        assert_eq!(
            err(&[1, 0, 0, 0, 0, 7]).unwrap_err().to_string(),
            "malformed frame at byte 5: 1 bytes after the last item"
        );
        assert_eq!(
            err(&[1, 0, 0, 0, 3, 1, 2, 0, 0, 0, 0xc3, 0x28])
                .unwrap_err()
                .to_string(),
            "malformed frame at byte 6: error message is not UTF-8 (invalid utf-8 sequence of 1 bytes from index 0)"
        );
        let mut r = Reader::new(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            r.message().unwrap_err().to_string(),
            "malformed frame at byte 0: message flags 0x80 (only bits 0 and 1 are defined)"
        );
    }
}
