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
//! Every `write` call ends with a flush, so `ok` means the lines were handed to the operating
//! system; with `fsync = true` they are also on disk. The file is truncated at `init` unless
//! `append = true`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Stdout, Write};

use patchbay_sdk::{Config, Error, Key, Message, Metadata, Sink, json};

const KEYS: &[Key] = &[
    Key::text(
        "path",
        "String: the file to write as the plugin sees it inside a directory granted rw (e.g. `/out/data.jsonl`), or `-` for stdout (needs the stdout grant).",
    )
    .required(),
    Key::bool(
        "append",
        "Boolean: append to an existing file instead of truncating it at start.",
    )
    .default("false"),
    Key::choice(
        "format",
        &["lines", "jsonl"],
        "`lines` (payload as is, then a newline; payloads holding newlines span several lines) or `jsonl` (payload must be valid JSON, else an invalid-data error for that record; written on one line).",
    )
    .default("lines"),
    Key::bool(
        "fsync",
        "Boolean: sync the file to disk at the end of every write call, not just hand it to the OS (slower; ignored for stdout).",
    )
    .default("false"),
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
    out: BufWriter<Output>,
    jsonl: bool,
    fsync: bool,
    /// Scratch space for a JSON payload with its line breaks removed.
    line: Vec<u8>,
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
        let fsync = c.bool("fsync")?;
        let output = if path == "-" {
            Output::Stdout(std::io::stdout())
        } else {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&path)
                .map_err(|e| {
                    Error::fatal(format!(
                        "config key `path`: cannot open `{path}` for writing: {e}; grant its \
                         directory with mode = \"rw\" and give the path as the plugin sees it"
                    ))
                })?;
            Output::File(file)
        };
        Ok(FileSink {
            path,
            out: BufWriter::with_capacity(64 * 1024, output),
            jsonl,
            fsync,
            line: Vec::new(),
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

enum Failure {
    /// This record cannot be written in the configured format.
    Invalid(Error),
    /// Writing failed; nothing since the last commit is known to be written.
    Io(std::io::Error),
}

impl FileSink {
    /// Buffer one record.
    fn put(&mut self, message: &Message) -> Result<(), Failure> {
        let mut payload = message.payload.as_slice();
        if self.jsonl {
            json::validate(payload).map_err(|e| {
                Failure::Invalid(Error::invalid_data(format!(
                    "payload is not valid JSON: {e}; use format = \"lines\" to write it anyway"
                )))
            })?;
            // In valid JSON a raw line break can only be whitespace between tokens.
            if payload.iter().any(|b| matches!(b, b'\n' | b'\r')) {
                self.line.clear();
                self.line
                    .extend(payload.iter().filter(|b| !matches!(b, b'\n' | b'\r')));
                payload = &self.line;
            }
        }
        self.out
            .write_all(payload)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(Failure::Io)
    }

    /// Flush (and sync) what was buffered.
    fn commit(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.fsync
            && let Output::File(file) = self.out.get_ref()
        {
            file.sync_data()?;
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
