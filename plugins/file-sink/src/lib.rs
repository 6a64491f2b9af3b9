//! `file-sink`: writes one line per message to a file (inside a directory granted `rw`) or to
//! stdout (with the stdout grant).
//!
//! ```toml
//! [plugins.out]
//! path = "target/plugins/file-sink.wasm"
//! config = { path = "/out/orders.jsonl", format = "jsonl" }
//! grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }
//! ```
//!
//! - `format = "lines"` (default): the payload as is, then `\n`. A payload that itself holds
//!   newlines is written as is, so it spans several lines of the file.
//! - `format = "jsonl"`: the payload must be one valid JSON document, else that record gets an
//!   `invalid-data` error (and the others of the batch are still written). Line breaks between
//!   its tokens (pretty-printed JSON) are removed, so each record stays on one line.
//!
//! Every `write` call ends with a flush and, with `sync = "batch"` (the default), an fsync, so
//! `ok` means the lines are on disk, as the contract says; `sync = "none"` only hands them to
//! the operating system (faster; a power cut may lose what was acknowledged).
//!
//! By default the file is appended to, so a restart never empties what was delivered before.
//! Starting, the first instance of a run looks at the end of the file: a last line without its
//! newline is what a crash (`kill -9`) left mid-write; it is cut off (and logged), and the
//! source delivers that record again. With `append = false` the file is truncated at start
//! instead. Both happen once per run (a marker in the plugin's host state), so an instance
//! restarted after a trap, swapped-in code or a second instance (`concurrency`) never cuts or
//! empties what was already written.
//!
//! The file is opened in append mode and a batch goes out in chunks of whole lines (at most
//! [`CHUNK`] bytes each, one host write per chunk), so several instances writing the same file
//! never tear each other's lines; a single line longer than a chunk is written on its own.

use std::fs::{File, OpenOptions};
use std::io::{Stdout, Write};

use patchbay_sdk::{Config, Error, Key, Message, Metadata, Sink, json, state};

/// Most bytes handed to the host in one write: the host's own write size for files, so each
/// chunk reaches the file in one append.
const CHUNK: usize = 64 * 1024;

/// Host-state key set once the file was opened (truncated or repaired) in this run.
const OPENED: &str = "run:file-sink/opened";

const KEYS: &[Key] = &[
    Key::text(
        "path",
        "String: the file to write as the plugin sees it inside a directory granted rw (e.g. `/out/data.jsonl`), or `-` for stdout (needs the stdout grant).",
    )
    .required(),
    Key::bool(
        "append",
        "Boolean: append to an existing file (a torn last line left by a crash is cut off first); `false` truncates the file at start.",
    )
    .default("true"),
    Key::choice(
        "format",
        &["lines", "jsonl"],
        "`lines` (payload as is, then a newline; payloads holding newlines span several lines) or `jsonl` (payload must be valid JSON, else an invalid-data error for that record; written on one line).",
    )
    .default("lines"),
    Key::choice(
        "sync",
        &["batch", "none"],
        "`batch`: fsync at the end of every write call, so `ok` means on disk; `none`: only hand the lines to the OS (faster; a power cut may lose acknowledged lines). Ignored for stdout.",
    )
    .default("batch"),
];

enum Output {
    File(File),
    Stdout(Stdout),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::File(f) => f.write(buf),
            Output::Stdout(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::File(f) => f.flush(),
            Output::Stdout(s) => s.flush(),
        }
    }
}

struct FileSink {
    path: String,
    out: Output,
    jsonl: bool,
    fsync: bool,
    /// The lines of the batch being written.
    buf: Vec<u8>,
    /// Where in `buf` each line ends (to cut chunks at line ends).
    ends: Vec<usize>,
}

impl Sink for FileSink {
    fn metadata() -> Metadata {
        Metadata::new(
            "file-sink",
            env!("CARGO_PKG_VERSION"),
            "Writes one line per message to a file or to stdout.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let path = c.text("path")?.to_owned();
        let append = c.bool("append")?;
        let jsonl = c.choice("format")? == "jsonl";
        let fsync = c.choice("sync")? == "batch";
        let output = if path == "-" {
            Output::Stdout(std::io::stdout())
        } else {
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| {
                    Error::fatal(format!(
                        "config key `path`: cannot open `{path}` for writing: {e}; grant its \
                         directory with mode = \"rw\" and give the path as the plugin sees it"
                    ))
                })?;
            if state::get(OPENED).is_none() {
                if append {
                    repair(&file, &path)?;
                } else {
                    file.set_len(0).map_err(|e| {
                        Error::fatal(format!(
                            "cannot truncate `{path}`: {e}; or set append = true"
                        ))
                    })?;
                }
                state::set(OPENED, b"1").map_err(Error::fatal)?;
            }
            Output::File(file)
        };
        Ok(FileSink {
            path,
            out: output,
            jsonl,
            fsync,
            buf: Vec::with_capacity(CHUNK),
            ends: Vec::new(),
        })
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        let result = self
            .put(message)
            .and_then(|()| self.commit().map_err(Failure::Io));
        result.map_err(|e| match e {
            Failure::Invalid(e) => e,
            Failure::Io(e) => self.io_error(&e),
        })
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        let mut results = Vec::with_capacity(batch.len());
        for message in &batch {
            match self.put(message) {
                Ok(()) => results.push(Ok(())),
                Err(Failure::Invalid(e)) => results.push(Err(e)),
                Err(Failure::Io(e)) => return self.fail_written(results, batch.len(), &e),
            }
        }
        match self.commit() {
            Ok(()) => results,
            Err(e) => self.fail_written(results, batch.len(), &e),
        }
    }
}

/// Cut off a last line without its newline (what a crash mid-write leaves), logging it.
fn repair(file: &File, path: &str) -> Result<(), Error> {
    use std::io::{Read, Seek, SeekFrom};
    let fail = |e: std::io::Error| Error::fatal(format!("cannot read the end of `{path}`: {e}"));
    let len = file.metadata().map_err(fail)?.len();
    let mut reader = file;
    let mut end = len;
    // Look back for the last newline, a block at a time.
    while end > 0 {
        let start = end.saturating_sub(CHUNK as u64);
        let mut block = vec![0u8; (end - start) as usize];
        reader.seek(SeekFrom::Start(start)).map_err(fail)?;
        reader.read_exact(&mut block).map_err(fail)?;
        if end == len && block.last() == Some(&b'\n') {
            return Ok(());
        }
        if let Some(at) = block.iter().rposition(|b| *b == b'\n') {
            end = start + at as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end)
            .map_err(|e| Error::fatal(format!("cannot cut the torn last line of `{path}`: {e}")))?;
        patchbay_sdk::log::warn(&format!(
            "`{path}` ended in a line without its newline ({} bytes, left by a crash \
             mid-write): cut off; the pipeline delivers that record again",
            len - end
        ));
    }
    Ok(())
}

enum Failure {
    /// This record cannot be written in the configured format.
    Invalid(Error),
    /// Writing failed; nothing since the last commit is known to be written.
    Io(std::io::Error),
}

impl FileSink {
    /// Buffer one record.
    fn put(&mut self, message: &Message) -> Result<(), Failure> {
        let payload = message.payload.as_slice();
        if self.jsonl {
            json::validate(payload).map_err(|e| {
                Failure::Invalid(Error::invalid_data(format!(
                    "payload is not valid JSON: {e}; use format = \"lines\" to write it anyway"
                )))
            })?;
            // In valid JSON a raw line break can only be whitespace between tokens.
            if payload.iter().any(|b| matches!(b, b'\n' | b'\r')) {
                self.buf
                    .extend(payload.iter().filter(|b| !matches!(b, b'\n' | b'\r')));
            } else {
                self.buf.extend_from_slice(payload);
            }
        } else {
            self.buf.extend_from_slice(payload);
        }
        self.buf.push(b'\n');
        self.ends.push(self.buf.len());
        Ok(())
    }

    /// Write what was buffered, in chunks of whole lines, then flush (and sync).
    fn commit(&mut self) -> std::io::Result<()> {
        let result = self.write_chunks();
        self.buf.clear();
        self.ends.clear();
        result?;
        self.out.flush()?;
        if self.fsync
            && let Output::File(file) = &self.out
        {
            file.sync_data()?;
        }
        Ok(())
    }

    fn write_chunks(&mut self) -> std::io::Result<()> {
        let mut start = 0;
        let mut last = 0;
        for &end in &self.ends {
            if end - start > CHUNK && last > start {
                self.out.write_all(&self.buf[start..last])?;
                start = last;
            }
            last = end;
        }
        if last > start {
            self.out.write_all(&self.buf[start..last])?;
        }
        Ok(())
    }

    fn io_error(&self, e: &std::io::Error) -> Error {
        Error::retryable(format!("cannot write `{}`: {e}", self.path))
    }

    /// After an I/O error no record of the batch is known to be written: every one that was not
    /// refused as invalid gets a retryable error.
    fn fail_written(
        &self,
        results: Vec<Result<(), Error>>,
        len: usize,
        e: &std::io::Error,
    ) -> Vec<Result<(), Error>> {
        let error = self.io_error(e);
        let mut results: Vec<Result<(), Error>> = results
            .into_iter()
            .map(|r| r.and_then(|()| Err(error.clone())))
            .collect();
        results.resize(len, Err(error));
        results
    }
}

patchbay_sdk::export_sink!(FileSink);
