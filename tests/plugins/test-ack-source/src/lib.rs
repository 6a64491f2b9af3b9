//! `test-ack-source` (test only): produces `{"seq":N}` messages like the generator, and at
//! every `ack(checkpoint)` reads the destinations' output files (granted read-only) to check
//! that each destination holds every sequence number up to the checkpoint — proof, from
//! outside the host, that no checkpoint is acknowledged before all destinations settled it.
//!
//! `groups` is a JSON array of arrays of file paths: a number must appear in at least one file
//! of every group (e.g. `[["/out/good.jsonl"], ["/out/bad.jsonl", "/out/dead.jsonl"]]`: the
//! healthy sink, and the failing sink's output or the dead-letter file). Each ack appends a line
//! `ack N ok` or `ack N EARLY: …` to `report`.

use std::collections::HashSet;
use std::io::Write;

use patchbay_sdk::json::Value;
use patchbay_sdk::{Config, ConfigKey, Error, Message, Metadata, PollResult, Source};

struct AckSource {
    next: u64,
    count: u64,
    groups: Vec<Vec<String>>,
    report: String,
}

/// Sequence numbers in a file of records or dead-letter entries.
fn seqs_in(path: &str) -> HashSet<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            let record = match v.get("message").and_then(|m| m.get("payload")) {
                Some(Value::String(payload)) => serde_json::from_str(payload).ok()?,
                _ => v,
            };
            record.get("seq")?.as_u64()
        })
        .collect()
}

impl Source for AckSource {
    fn metadata() -> Metadata {
        Metadata::new(
            "test-ack-source",
            env!("CARGO_PKG_VERSION"),
            "Test only: checks at each ack that every destination holds every acked record.",
        )
        .key(ConfigKey::optional("count", "Messages to produce.", "1000"))
        .key(ConfigKey::required(
            "groups",
            "JSON array of arrays of files; every acked number must be in some file of each group.",
        ))
        .key(ConfigKey::required(
            "report",
            "File (in a rw grant) that gets one line per ack.",
        ))
    }

    fn init(config: Config) -> Result<Self, Error> {
        Ok(AckSource {
            next: 0,
            count: config.parse("count")?.unwrap_or(1000),
            groups: config.json("groups")?.unwrap_or_default(),
            report: config.required("report")?.to_owned(),
        })
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        if self.next >= self.count {
            return Ok(PollResult::EndOfStream);
        }
        let end = self.count.min(self.next + u64::from(max));
        let messages = (self.next..end)
            .map(|n| Message::new(format!("{{\"seq\":{n}}}")))
            .collect();
        self.next = end;
        Ok(PollResult::batch(messages, end - 1))
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        let mut missing = Vec::new();
        for group in &self.groups {
            let present: HashSet<u64> = group.iter().flat_map(|f| seqs_in(f)).collect();
            if let Some(n) = (0..=checkpoint).find(|n| !present.contains(n)) {
                missing.push(format!("{n} missing from {}", group.join(" or ")));
            }
        }
        let line = if missing.is_empty() {
            format!("ack {checkpoint} ok\n")
        } else {
            format!("ack {checkpoint} EARLY: {}\n", missing.join("; "))
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.report)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| Error::fatal(format!("cannot write `{}`: {e}", self.report)))
    }
}

patchbay_sdk::export_source!(AckSource);
