//! The dead-letter channel: records that failed for good, stored with their context in a JSON
//! Lines file, one entry per line, and read back by `patchbay dlq replay`.
//!
//! ```json
//! {"pipeline":"orders","stage":"sink","stage_index":1,"plugin":"out","plugin_version":"0.1.0",
//!  "error_kind":"fatal","error":"…","attempts":1,"first_failure":"2026-11-24T12:00:00.123Z",
//!  "last_failure":"2026-11-24T12:00:00.123Z",
//!  "message":{"payload":"{\"seq\":7}","key":"7","headers":[["h","v"]],"timestamp":null}}
//! ```
//!
//! Payload and key are binary safe: valid UTF-8 is stored as a string, anything else as
//! `{"base64": "…"}`. An entry is written and flushed to the operating system before the
//! source is acknowledged, so nothing is acked that is not either delivered or stored here.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::contract::{Header, Message};
use crate::plugin::SinkCalls;

/// The stage a dead letter failed at (and re-enters at on replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// A transform.
    Transform,
    /// A sink.
    Sink,
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageKind::Transform => "transform",
            StageKind::Sink => "sink",
        })
    }
}

/// Bytes that survive JSON: text when they are UTF-8, base64 otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredBytes {
    /// Valid UTF-8.
    Text(String),
    /// Anything else.
    Base64 {
        /// Standard base64 with padding.
        base64: String,
    },
}

impl StoredBytes {
    fn from_bytes(bytes: &[u8]) -> StoredBytes {
        match std::str::from_utf8(bytes) {
            Ok(text) => StoredBytes::Text(text.to_owned()),
            Err(_) => StoredBytes::Base64 {
                base64: STANDARD.encode(bytes),
            },
        }
    }

    fn to_bytes(&self) -> Result<Vec<u8>, String> {
        match self {
            StoredBytes::Text(text) => Ok(text.as_bytes().to_vec()),
            StoredBytes::Base64 { base64 } => STANDARD
                .decode(base64)
                .map_err(|e| format!("invalid base64: {e}")),
        }
    }
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Body.
    pub payload: StoredBytes,
    /// Key, when it had one.
    #[serde(default)]
    pub key: Option<StoredBytes>,
    /// Headers as `[name, value]` pairs.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Event time, ms since the epoch.
    #[serde(default)]
    pub timestamp: Option<u64>,
}

impl StoredMessage {
    /// Capture a message.
    pub fn from_message(message: &Message) -> StoredMessage {
        StoredMessage {
            payload: StoredBytes::from_bytes(&message.payload),
            key: message.key.as_deref().map(StoredBytes::from_bytes),
            headers: message
                .headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            timestamp: message.timestamp,
        }
    }

    /// Rebuild the message.
    pub fn to_message(&self) -> Result<Message, String> {
        Ok(Message {
            payload: self.payload.to_bytes()?,
            key: self.key.as_ref().map(StoredBytes::to_bytes).transpose()?,
            headers: self
                .headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            timestamp: self.timestamp,
        })
    }
}

/// One dead letter: the record and why it is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Pipeline name.
    pub pipeline: String,
    /// `transform` or `sink`.
    pub stage: StageKind,
    /// 1-based position among the pipeline's transforms or sinks.
    pub stage_index: usize,
    /// Plugin name (under `[plugins]`).
    pub plugin: String,
    /// The plugin's own version.
    pub plugin_version: String,
    /// `retryable`, `invalid-data`, `fatal`, `trap` or `contract`.
    pub error_kind: String,
    /// What the plugin or the runtime said.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt failed (RFC 3339, UTC).
    pub first_failure: String,
    /// When the last attempt failed.
    pub last_failure: String,
    /// The record as it entered the failing stage.
    pub message: StoredMessage,
}

/// RFC 3339 text of a time, in UTC with milliseconds.
pub fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The dead-letter channel of one pipeline: a JSON Lines file, or a sink plugin that gets each
/// entry as a JSON message (key and headers of the original message, plus
/// `patchbay-dead-letter-pipeline` and `patchbay-dead-letter-plugin` headers).
pub struct DeadLetters {
    path: PathBuf,
    file: Mutex<Option<File>>,
    sink: Option<(String, tokio::sync::Mutex<Box<dyn SinkCalls>>)>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sink {
            Some((name, _)) => write!(f, "DeadLetters(sink `{name}`)"),
            None => write!(f, "DeadLetters({})", self.path.display()),
        }
    }
}

impl DeadLetters {
    /// A channel writing to `path`; the file and its directory are created on first use.
    pub fn new(path: PathBuf) -> DeadLetters {
        DeadLetters {
            path,
            file: Mutex::new(None),
            sink: None,
        }
    }

    /// A channel handing entries to the sink plugin `name`.
    pub fn to_sink(name: String, instance: Box<dyn SinkCalls>) -> DeadLetters {
        DeadLetters {
            path: PathBuf::new(),
            file: Mutex::new(None),
            sink: Some((name, tokio::sync::Mutex::new(instance))),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store entries durably (file: appended and flushed; sink: accepted by the plugin).
    pub async fn store(&self, entries: &[Entry]) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        if let Some((name, sink)) = &self.sink {
            return store_in_sink(name, sink, entries).await;
        }
        self.append(entries)
    }

    /// Every entry of the file, read under the lock appends take (none half-written). Empty
    /// when the file does not exist yet or the dead letters go to a sink plugin.
    pub fn entries(&self) -> Result<Vec<Entry>, String> {
        let _guard = self.lock();
        if self.sink.is_some() || !self.path.exists() {
            return Ok(Vec::new());
        }
        read(&self.path)
    }

    /// Remove the entries at 1-based positions `numbers` from the file and return them, in file
    /// order. The rest are written to a new file that replaces the old one in one rename, under
    /// the lock appends take: an entry stored meanwhile is neither lost nor taken. Positions
    /// past the end are an error and nothing is removed.
    pub fn take(&self, numbers: &std::collections::BTreeSet<usize>) -> Result<Vec<Entry>, String> {
        let mut guard = self.lock();
        if numbers.is_empty() {
            return Ok(Vec::new());
        }
        let all = if self.path.exists() {
            read(&self.path)?
        } else {
            Vec::new()
        };
        if let Some(past) = numbers.iter().find(|&&n| n == 0 || n > all.len()) {
            return Err(format!(
                "no dead letter {past} in `{}`: it holds {} entries",
                self.path.display(),
                all.len()
            ));
        }
        let mut taken = Vec::with_capacity(numbers.len());
        let mut kept = Vec::with_capacity(all.len());
        for (i, entry) in all.into_iter().enumerate() {
            if numbers.contains(&(i + 1)) {
                taken.push(entry);
            } else {
                kept.push(entry);
            }
        }
        let mut text = Vec::new();
        for entry in &kept {
            serde_json::to_writer(&mut text, entry).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        let fresh = self.path.with_extension("jsonl.rewrite");
        std::fs::write(&fresh, &text)
            .and_then(|()| File::open(&fresh).and_then(|f| f.sync_all()))
            .and_then(|()| std::fs::rename(&fresh, &self.path))
            .map_err(|e| {
                format!(
                    "cannot rewrite the dead-letter file `{}`: {e}",
                    self.path.display()
                )
            })?;
        // The handle still points at the replaced file: the next append reopens.
        *guard = None;
        Ok(taken)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        match self.file.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Append entries to the file and flush (the file channel's half of [`DeadLetters::store`]).
    pub fn append(&self, entries: &[Entry]) -> Result<(), String> {
        let mut text = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut text, entry).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        let mut guard = self.lock();
        if guard.is_none() {
            if let Some(dir) = self.path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    format!(
                        "cannot create the dead-letter directory `{}`: {e}",
                        dir.display()
                    )
                })?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| {
                    format!(
                        "cannot open the dead-letter file `{}`: {e}",
                        self.path.display()
                    )
                })?;
            *guard = Some(file);
        }
        let Some(file) = guard.as_mut() else {
            return Err("dead-letter file not open".to_owned());
        };
        file.write_all(&text)
            .and_then(|()| file.flush())
            .map_err(|e| {
                format!(
                    "cannot write the dead-letter file `{}`: {e}",
                    self.path.display()
                )
            })
    }
}

async fn store_in_sink(
    name: &str,
    sink: &tokio::sync::Mutex<Box<dyn SinkCalls>>,
    entries: &[Entry],
) -> Result<(), String> {
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        let payload = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
        let original = entry.message.to_message().unwrap_or_else(|_| Message {
            payload: Vec::new(),
            key: None,
            headers: Vec::new(),
            timestamp: None,
        });
        let mut headers = original.headers;
        headers.push(Header {
            name: "patchbay-dead-letter-pipeline".into(),
            value: entry.pipeline.clone(),
        });
        headers.push(Header {
            name: "patchbay-dead-letter-plugin".into(),
            value: entry.plugin.clone(),
        });
        messages.push(Message {
            payload,
            key: original.key,
            headers,
            timestamp: original.timestamp,
        });
    }
    let mut instance = sink.lock().await;
    let results = instance
        .write(&messages)
        .await
        .map_err(|trap| format!("dead-letter sink `{name}`: {trap}"))?;
    if results.len() != messages.len() {
        return Err(format!(
            "dead-letter sink `{name}` returned {} results for {} entries",
            results.len(),
            messages.len()
        ));
    }
    match results.into_iter().find_map(Result::err) {
        Some(error) => Err(format!(
            "dead-letter sink `{name}` refused an entry: {}",
            crate::contract::describe(&error)
        )),
        None => Ok(()),
    }
}

/// Read every entry of a dead-letter file. A line that does not parse is an error naming its
/// line number: nothing is skipped silently.
pub fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let file = File::open(path)
        .map_err(|e| format!("cannot read the dead-letter file `{}`: {e}", path.display()))?;
    let mut entries = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: Entry = serde_json::from_str(&line).map_err(|e| {
            format!(
                "{}:{}: not a dead-letter entry: {e}; fix or remove the line",
                path.display(),
                i + 1
            )
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> Entry {
        Entry {
            pipeline: "p".into(),
            stage: StageKind::Sink,
            stage_index: 1,
            plugin: "out".into(),
            plugin_version: "0.1.0".into(),
            error_kind: "fatal".into(),
            error: format!("no {n}"),
            attempts: n,
            first_failure: String::new(),
            last_failure: String::new(),
            message: StoredMessage::from_message(&Message {
                payload: n.to_string().into_bytes(),
                key: None,
                headers: Vec::new(),
                timestamp: None,
            }),
        }
    }

    #[test]
    fn take_removes_the_chosen_entries_and_later_appends_land_in_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let channel = DeadLetters::new(dir.path().join("dl.jsonl"));
        channel
            .append(&[entry(1), entry(2), entry(3), entry(4)])
            .unwrap();
        let taken = channel.take(&[2, 4].into_iter().collect()).unwrap();
        assert_eq!(taken, vec![entry(2), entry(4)]);
        channel.append(&[entry(5)]).unwrap();
        assert_eq!(
            channel.entries().unwrap(),
            vec![entry(1), entry(3), entry(5)]
        );
        let err = channel.take(&[4].into_iter().collect()).unwrap_err();
        assert!(err.ends_with("dl.jsonl`: it holds 3 entries"), "{err}");
        assert_eq!(channel.entries().unwrap().len(), 3);
    }

    #[test]
    fn binary_payloads_round_trip() {
        let message = Message {
            payload: vec![0xff, 0x00, b'a'],
            key: Some(b"k".to_vec()),
            headers: vec![Header {
                name: "h".into(),
                value: "v".into(),
            }],
            timestamp: Some(7),
        };
        let stored = StoredMessage::from_message(&message);
        let json = serde_json::to_string(&stored).unwrap();
        assert_eq!(
            json,
            r#"{"payload":{"base64":"/wBh"},"key":"k","headers":[["h","v"]],"timestamp":7}"#
        );
        let back: StoredMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_message().unwrap(), message);
    }
}
