//! `blackhole`: a sink that accepts every message and keeps nothing, like Vector's `blackhole`
//! sink or Benthos' `drop` output. Use it to measure a pipeline without a real destination, or
//! for a dry run. It counts what it discarded in the `blackhole_messages` and
//! `blackhole_bytes` metrics, and logs a summary every `report_every` messages (0: never).
//!
//! With `latency_header` naming a header that holds the time a message was made, in
//! microseconds since the Unix epoch (the generator's `time_header` writes one), each summary
//! also gives the latency up to this sink over the messages since the previous summary:
//! `discarded 100000 messages (10000000 bytes); latency over the last 100000: p50 1.21 ms,
//! p99 2.87 ms, max 4.02 ms`.

use hdrhistogram::Histogram;
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Sink, log, metrics};

const KEYS: &[Key] = &[
    Key::uint(
        "report_every",
        "Unsigned integer: log a count every this many messages; 0 means never.",
    )
    .default("0"),
    Key::text(
        "latency_header",
        "String: a header holding when each message was made (microseconds since the Unix epoch); each summary then gives latency p50, p99 and max. Needs report_every.",
    ),
];

struct Blackhole {
    report_every: u64,
    messages: u64,
    bytes: u64,
    latency_header: Option<String>,
    /// Latencies in microseconds since the last summary, to 3 significant digits: a fixed
    /// footprint, where keeping every sample once took a sink past its memory limit at 2
    /// million messages a summary.
    latencies: Histogram<u64>,
    /// Messages whose header was missing or not a number, since the last summary.
    unstamped: u64,
}

impl Sink for Blackhole {
    fn metadata() -> Metadata {
        Metadata::new(
            "blackhole",
            env!("CARGO_PKG_VERSION"),
            "Accepts and discards every message; counts them.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let report_every = c.uint("report_every")?;
        let latency_header = c.text_opt("latency_header")?.map(str::to_owned);
        if latency_header.is_some() && report_every == 0 {
            return Err(Error::fatal(
                "config key `latency_header` needs `report_every` > 0: latencies are summarised \
                 at each report; set report_every, e.g. report_every = 100000",
            ));
        }
        Ok(Blackhole {
            report_every,
            messages: 0,
            bytes: 0,
            latency_header,
            latencies: Histogram::new(3)
                .map_err(|e| Error::fatal(format!("cannot make the latency histogram: {e}")))?,
            unstamped: 0,
        })
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        self.write_batch(vec![message.clone()])
            .pop()
            .unwrap_or(Ok(()))
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        if let Some(header) = &self.latency_header {
            let now = now_us();
            for m in &batch {
                match m.header(header).and_then(|v| v.parse::<u64>().ok()) {
                    Some(made) => self.latencies.saturating_record(now.saturating_sub(made)),
                    None => self.unstamped += 1,
                }
            }
        }
        let bytes = batch.iter().map(|m| m.payload.len() as u64).sum();
        self.discard(batch.len() as u64, bytes);
        vec![Ok(()); batch.len()]
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

impl Blackhole {
    fn discard(&mut self, messages: u64, bytes: u64) {
        let before = self.messages;
        self.messages += messages;
        self.bytes += bytes;
        metrics::counter_add("blackhole_messages", messages, &[]);
        metrics::counter_add("blackhole_bytes", bytes, &[]);
        if self.report_every > 0 && before / self.report_every != self.messages / self.report_every
        {
            let mut line = format!(
                "discarded {} messages ({} bytes)",
                self.messages, self.bytes
            );
            if self.latency_header.is_some() {
                line.push_str(&self.latency_summary());
            }
            log::info(&line);
        }
    }

    /// `; latency over the last N: p50 …, p99 …, max …`, and start a new window.
    fn latency_summary(&mut self) -> String {
        let l = &mut self.latencies;
        let unstamped = std::mem::take(&mut self.unstamped);
        let mut text = String::new();
        if !l.is_empty() {
            text = format!(
                "; latency over the last {}: p50 {}, p99 {}, max {}",
                l.len(),
                ms(l.value_at_quantile(0.5)),
                ms(l.value_at_quantile(0.99)),
                ms(l.max())
            );
        }
        l.reset();
        if unstamped > 0 {
            text.push_str(&format!("; {unstamped} without a usable time header"));
        }
        text
    }
}

patchbay_sdk::export_sink!(Blackhole);
