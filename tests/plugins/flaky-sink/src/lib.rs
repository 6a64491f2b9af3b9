//! `flaky-sink` (test only): writes records like `file-sink` and fails a deterministic fraction
//! of them with a chosen error kind, to exercise retries and the dead-letter channel.
//!
//! The decision for a record is a hash of the seed and the payload — and, for `retryable`, of
//! the attempt number of that payload, so a retried record eventually succeeds. For
//! `invalid-data` and `fatal` the same payload always fails.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};

use patchbay_sdk::{Config, ConfigKey, Error, ErrorKind, Message, Metadata, Sink};

struct FlakySink {
    out: Option<BufWriter<File>>,
    fail_rate: f64,
    kind: ErrorKind,
    seed: u64,
    fail_first: u64,
    calls: u64,
    attempts: HashMap<u64, u32>,
}

/// FNV-1a over the seed, the payload and the attempt, finished with a splitmix64 step.
fn decision(seed: u64, payload: &[u8], attempt: u32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in payload.iter().chain(&attempt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn payload_id(payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in payload {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Retryable => "retryable",
        ErrorKind::InvalidData => "invalid-data",
        ErrorKind::Fatal => "fatal",
    }
}

impl Sink for FlakySink {
    fn metadata() -> Metadata {
        Metadata::new(
            "flaky-sink",
            env!("CARGO_PKG_VERSION"),
            "Test only: writes records like file-sink and fails a deterministic fraction of them.",
        )
        .key(ConfigKey::optional(
            "path",
            "File to write accepted records to, inside a granted directory, or `-` for stdout; absent: accepted records are discarded.",
            "(none)",
        ))
        .key(ConfigKey::optional(
            "fail_rate",
            "Fraction of records (0.0 to 1.0) that fail.",
            "0.1",
        ))
        .key(ConfigKey::optional(
            "kind",
            "Error kind of the failures: retryable, invalid-data or fatal.",
            "retryable",
        ))
        .key(ConfigKey::optional(
            "seed",
            "Seed of the deterministic decision.",
            "1",
        ))
        .key(ConfigKey::optional(
            "fail_first",
            "Additionally fail every record of the first N write calls.",
            "0",
        ))
    }

    fn init(config: Config) -> Result<Self, Error> {
        let fail_rate: f64 = config.parse("fail_rate")?.unwrap_or(0.1);
        if !(0.0..=1.0).contains(&fail_rate) {
            return Err(Error::fatal(format!(
                "config key `fail_rate`: expected a number from 0.0 to 1.0, got {fail_rate}"
            )));
        }
        let kind = match config.get("kind").unwrap_or("retryable") {
            "retryable" => ErrorKind::Retryable,
            "invalid-data" => ErrorKind::InvalidData,
            "fatal" => ErrorKind::Fatal,
            other => {
                return Err(Error::fatal(format!(
                    "config key `kind`: expected retryable, invalid-data or fatal, got `{other}`"
                )));
            }
        };
        let out = match config.get("path") {
            None => None,
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|e| Error::fatal(format!("cannot open `{path}` for writing: {e}")))?;
                Some(BufWriter::with_capacity(256 * 1024, file))
            }
        };
        Ok(FlakySink {
            out,
            fail_rate,
            kind,
            seed: config.parse("seed")?.unwrap_or(1),
            fail_first: config.parse("fail_first")?.unwrap_or(0),
            calls: 0,
            attempts: HashMap::new(),
        })
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        let mut results = self.write_batch(vec![message.clone()]);
        results.pop().unwrap_or(Ok(()))
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        self.calls += 1;
        let whole_call_fails = self.calls <= self.fail_first;
        let mut results = Vec::with_capacity(batch.len());
        for message in &batch {
            let attempt = if self.kind == ErrorKind::Retryable {
                let n = self
                    .attempts
                    .entry(payload_id(&message.payload))
                    .or_insert(0);
                *n += 1;
                *n
            } else {
                1
            };
            let fails = whole_call_fails
                || decision(
                    self.seed,
                    &message.payload,
                    if self.kind == ErrorKind::Retryable {
                        attempt
                    } else {
                        0
                    },
                ) < self.fail_rate;
            if fails {
                results.push(Err(Error {
                    kind: self.kind,
                    message: format!(
                        "flaky-sink: deliberate {} failure (attempt {attempt}, seed {})",
                        kind_name(self.kind),
                        self.seed
                    ),
                }));
                continue;
            }
            if let Some(out) = &mut self.out
                && let Err(e) = out
                    .write_all(&message.payload)
                    .and_then(|()| out.write_all(b"\n"))
            {
                results.push(Err(Error::retryable(format!(
                    "flaky-sink: cannot write: {e}"
                ))));
                continue;
            }
            results.push(Ok(()));
        }
        if let Some(out) = &mut self.out
            && let Err(e) = out.flush()
        {
            return batch
                .iter()
                .map(|_| Err(Error::retryable(format!("flaky-sink: cannot flush: {e}"))))
                .collect();
        }
        results
    }
}

patchbay_sdk::export_sink!(FlakySink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_deterministic_and_near_the_rate() {
        let fails = (0..10_000u32)
            .filter(|i| decision(7, format!("{{\"seq\":{i}}}").as_bytes(), 0) < 0.1)
            .count();
        assert!((800..1200).contains(&fails), "{fails}");
        assert_eq!(decision(7, b"x", 1), decision(7, b"x", 1));
        assert_ne!(decision(7, b"x", 1), decision(7, b"x", 2));
    }
}
