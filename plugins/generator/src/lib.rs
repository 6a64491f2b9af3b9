//! `generator`: a source of synthetic, sequence-numbered messages, for demos, tests and
//! benchmarks.
//!
//! ```toml
//! [plugins.numbers]
//! path = "target/plugins/generator.wasm"
//! config = { count = 10000, size = 128, rate = 500 }
//! ```
//!
//! - `format = "json"` (default): each payload is `{"seq":N,"data":"xxxx…"}`, padded with `x`
//!   to `size` bytes (longer when `size` is too small for the sequence number).
//! - `format = "raw"`: the sequence number in decimal, zero-padded to `size` digits.
//!
//! Sequence numbers run from `start`; the key of each message is its sequence number in
//! decimal (unless `key = false`; with `keys = N`, the key is `seq % N` instead, so N keys
//! repeat, as `partition_by = "key"` wants). The checkpoint of a batch is the sequence number of its last
//! message (an empty batch repeats the previous checkpoint). After `count` messages the source
//! ends; `count = 0` never ends. With `rate` set, message `k` is due `k / rate` seconds after
//! `init`, and `poll` returns only what is due by the wall clock. With `time_header` set, each
//! message carries the wall-clock time its batch was produced, in microseconds since the Unix
//! epoch, in that header: the blackhole sink's `latency_header` turns it into latencies.

use std::time::Instant;

use patchbay_sdk::{Config, Error, Key, Message, Metadata, PollResult, Source};

const KEYS: &[Key] = &[
    Key::uint(
        "count",
        "Unsigned integer: how many messages to produce before end-of-stream; 0 means never end.",
    )
    .default("1000"),
    Key::uint(
        "size",
        "Unsigned integer: payload size in bytes (json: padded with `x` to about this size; raw: zero-padded digits).",
    )
    .default("64"),
    Key::choice(
        "format",
        &["json", "raw"],
        "`json` ({\"seq\":N,\"data\":\"xxx…\"}) or `raw` (the zero-padded decimal sequence number).",
    )
    .default("json"),
    Key::uint("start", "Unsigned integer: the first sequence number.").default("0"),
    Key::bool(
        "key",
        "Boolean: set each message's key to its sequence number in decimal.",
    )
    .default("true"),
    Key::uint(
        "keys",
        "Unsigned integer: when over 0, the key is the sequence number modulo this (keys repeat); 0 means the sequence number itself.",
    )
    .default("0"),
    Key::float(
        "rate",
        "Number: messages per second, paced by the wall clock; 0 means as fast as the pipeline takes them.",
    )
    .default("0"),
    Key::text(
        "time_header",
        "String: a header to put the production time in (microseconds since the Unix epoch); empty means none.",
    ),
];

struct Generator {
    /// Sequence number of the next message.
    next: u64,
    /// One past the last sequence number, `None` when unbounded.
    end: Option<u64>,
    size: usize,
    json: bool,
    key: bool,
    /// Keys cycle through `0..keys` when over 0.
    keys: u64,
    rate: f64,
    /// Header for the production time, if any.
    time_header: Option<String>,
    started: Instant,
    produced: u64,
    checkpoint: u64,
}

impl Source for Generator {
    fn metadata() -> Metadata {
        Metadata::new(
            "generator",
            env!("CARGO_PKG_VERSION"),
            "Synthetic sequence-numbered messages (JSON or raw), for demos, tests and benchmarks.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let count = c.uint("count")?;
        let start = c.uint("start")?;
        let rate = c.float("rate")?;
        if !rate.is_finite() || rate < 0.0 {
            return Err(c.invalid("rate", "a number of messages per second, 0 or more"));
        }
        Ok(Generator {
            next: start,
            end: (count > 0).then(|| start.saturating_add(count)),
            size: usize::try_from(c.uint("size")?).map_err(|_| c.invalid("size", "a size"))?,
            json: c.choice("format")? == "json",
            key: c.bool("key")?,
            keys: c.uint("keys")?,
            rate,
            time_header: c.text_opt("time_header")?.map(str::to_owned),
            started: Instant::now(),
            produced: 0,
            checkpoint: start.saturating_sub(1),
        })
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        let mut n = u64::from(max);
        if let Some(end) = self.end {
            if self.next >= end {
                return Ok(PollResult::EndOfStream);
            }
            n = n.min(end - self.next);
        }
        if self.rate > 0.0 {
            // Message k (from 0) is due k / rate seconds after init.
            let due = (self.started.elapsed().as_secs_f64() * self.rate) as u64 + 1;
            n = n.min(due.saturating_sub(self.produced));
        }
        let now = self.time_header.as_ref().map(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros())
                .to_string()
        });
        let messages: Vec<Message> = (self.next..self.next + n)
            .map(|seq| {
                let message = self.message(seq);
                match (&self.time_header, &now) {
                    (Some(header), Some(now)) => message.with_header(header.clone(), now.clone()),
                    _ => message,
                }
            })
            .collect();
        if let Some(last) = n.checked_sub(1) {
            self.checkpoint = self.next + last;
        }
        self.next += n;
        self.produced += n;
        Ok(PollResult::batch(messages, self.checkpoint))
    }
}

impl Generator {
    fn message(&self, seq: u64) -> Message {
        let payload = if self.json {
            let mut text = format!("{{\"seq\":{seq},\"data\":\"");
            let pad = self.size.saturating_sub(text.len() + 2);
            text.extend(std::iter::repeat_n('x', pad));
            text.push_str("\"}");
            text
        } else {
            format!("{seq:0width$}", width = self.size)
        };
        let message = Message::new(payload);
        if self.key {
            let key = if self.keys > 0 { seq % self.keys } else { seq };
            message.with_key(key.to_string())
        } else {
            message
        }
    }
}

patchbay_sdk::export_source!(Generator);
