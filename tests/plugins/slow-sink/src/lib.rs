//! `slow-sink` (test only): writes records like `file-sink`, but takes its time: a delay per
//! write call plus a delay per message, to exercise back-pressure.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::time::Duration;

use patchbay_sdk::{Config, ConfigKey, Error, Message, Metadata, Sink};

struct SlowSink {
    out: Option<BufWriter<File>>,
    delay: Duration,
    per_message: Duration,
}

/// Parse `250us`, `10ms`, `1s`, `1.5s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.trim().parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let seconds = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

fn duration(config: &Config, key: &str, default: &str) -> Result<Duration, Error> {
    let text = config.get(key).unwrap_or(default);
    parse_duration(text).ok_or_else(|| {
        Error::fatal(format!(
            "config key `{key}`: expected a duration like \"250us\", \"10ms\" or \"1s\", got `{text}`"
        ))
    })
}

impl Sink for SlowSink {
    fn metadata() -> Metadata {
        Metadata::new(
            "slow-sink",
            env!("CARGO_PKG_VERSION"),
            "Test only: writes records like file-sink after a delay per call and per message.",
        )
        .key(ConfigKey::optional(
            "path",
            "File to write records to, inside a granted directory; absent: records are accepted and discarded.",
            "(none)",
        ))
        .key(ConfigKey::optional(
            "delay",
            "Sleep per write call, e.g. \"10ms\".",
            "10ms",
        ))
        .key(ConfigKey::optional(
            "per_message",
            "Additional sleep per message of the batch, e.g. \"20us\".",
            "0ms",
        ))
    }

    fn init(config: Config) -> Result<Self, Error> {
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
        Ok(SlowSink {
            out,
            delay: duration(&config, "delay", "10ms")?,
            per_message: duration(&config, "per_message", "0ms")?,
        })
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        let mut results = self.write_batch(vec![message.clone()]);
        results.pop().unwrap_or(Ok(()))
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        let wait = self.delay + self.per_message * u32::try_from(batch.len()).unwrap_or(u32::MAX);
        std::thread::sleep(wait);
        let Some(out) = &mut self.out else {
            return batch.iter().map(|_| Ok(())).collect();
        };
        let written = batch.iter().try_for_each(|m| {
            out.write_all(&m.payload)?;
            out.write_all(b"\n")
        });
        let written = written.and_then(|()| out.flush());
        batch
            .iter()
            .map(|_| {
                written
                    .as_ref()
                    .map_err(|e| Error::retryable(format!("slow-sink: cannot write: {e}")))
                    .copied()
            })
            .collect()
    }
}

patchbay_sdk::export_sink!(SlowSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_duration("10ms"), Some(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5"), None);
    }
}
