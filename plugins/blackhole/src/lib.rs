//! `blackhole`: a sink that accepts every message and keeps nothing, like Vector's `blackhole`
//! sink or Benthos' `drop` output. Use it to measure a pipeline without a real destination, or
//! for a dry run. It counts what it discarded in the `blackhole_messages` and
//! `blackhole_bytes` metrics, and logs a summary every `report_every` messages (0: never).

use patchbay_sdk::{Config, ConfigKey, Error, Message, Metadata, Sink, log, metrics};

struct Blackhole {
    report_every: u64,
    messages: u64,
    bytes: u64,
}

impl Sink for Blackhole {
    fn metadata() -> Metadata {
        Metadata::new(
            "blackhole",
            env!("CARGO_PKG_VERSION"),
            "Accepts and discards every message; counts them.",
        )
        .key(ConfigKey::optional(
            "report_every",
            "Unsigned integer: log a count every this many messages; 0 means never.",
            "0",
        ))
    }

    fn init(config: Config) -> Result<Self, Error> {
        Ok(Blackhole {
            report_every: config.parse("report_every")?.unwrap_or(0),
            messages: 0,
            bytes: 0,
        })
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        self.discard(1, message.payload.len() as u64);
        Ok(())
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        let bytes = batch.iter().map(|m| m.payload.len() as u64).sum();
        self.discard(batch.len() as u64, bytes);
        vec![Ok(()); batch.len()]
    }
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
            log::info(&format!(
                "discarded {} messages ({} bytes)",
                self.messages, self.bytes
            ));
        }
    }
}

patchbay_sdk::export_sink!(Blackhole);
