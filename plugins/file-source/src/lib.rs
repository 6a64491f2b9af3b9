//! `file-source`: reads a file (inside a granted directory) or stdin (with the stdin grant) line
//! by line; each line becomes one message, without its line ending (`\n` or `\r\n`).
//!
//! ```toml
//! [plugins.orders]
//! path = "target/plugins/file-source.wasm"
//! config = { path = "/data/orders.csv", skip_header = false }
//! grants = { dirs = [{ host = "data", guest = "/data", mode = "ro" }] }
//! ```
//!
//! - `format = "lines"` (default): every line as is, empty lines included.
//! - `format = "jsonl"`: empty lines are skipped and every other line must be valid JSON. The
//!   lines before a bad one are delivered; then `poll` fails with a fatal error naming the file
//!   and line, which stops the pipeline.
//!
//! The checkpoint of a batch is the line number (from 1) of its last line. On `ack` the
//! acknowledged line number is stored in the host's state under `acked-line`; with
//! `resume = true`, `init` skips the lines up to it, so a restarted instance goes on after the
//! last delivered line instead of from the top (assuming the file was only appended to).
//!
//! - `format = "whole"`: each file is one message (XML or JSON documents that span lines). With
//!   `path` a directory, every regular file in it whose name ends with `suffix`, in name order,
//!   each with the header `file-name`; the checkpoint is the file's number in that order (from
//!   1), stored as `acked-line` likewise, so `resume` goes on after the last delivered file.
//!
//! With `path = "-"`, `poll` waits for stdin to produce lines (or to close): meant for piping a
//! finite input into a pipeline.

use std::fs::File;
use std::io::{BufRead, BufReader};

use patchbay_sdk::{Config, Error, Key, Message, Metadata, PollResult, Source, json, log, state};

const KEYS: &[Key] = &[
    Key::text(
        "path",
        "String: the file to read as the plugin sees it inside a granted directory (e.g. `/data/in.csv`), or `-` for stdin (needs the stdin grant).",
    )
    .required(),
    Key::choice(
        "format",
        &["lines", "jsonl", "whole"],
        "`lines` (each line as is, empty ones included), `jsonl` (empty lines skipped, every other line must be valid JSON, else a fatal error) or `whole` (each file one message; `path` may be a directory).",
    )
    .default("lines"),
    Key::text(
        "suffix",
        "With format = \"whole\" and a directory: only files whose names end with this, e.g. \".xml\". Empty: every file.",
    )
    .default(""),
    Key::bool(
        "skip_header",
        "Boolean: do not deliver the first line (a CSV header the next step does not need).",
    )
    .default("false"),
    Key::bool(
        "resume",
        "Boolean: skip the lines up to the last acknowledged one (kept in the host state as `acked-line`), to go on after a restart.",
    )
    .default("false"),
];

/// State key of the last acknowledged line number (decimal text).
const ACKED_LINE: &str = "acked-line";

struct FileSource {
    path: String,
    reader: Box<dyn BufRead>,
    jsonl: bool,
    /// Number of the last line read (from 1).
    line: u64,
    /// Lines up to this number are read but not delivered (header, already acknowledged).
    skip_until: u64,
    /// The end of the input was reached.
    done: bool,
    /// An error found after some lines of a batch, reported by the next `poll`.
    pending: Option<Error>,
    buf: Vec<u8>,
    /// `format = "whole"`: the files to read, one message each, in order.
    files: Option<Vec<String>>,
}

impl Source for FileSource {
    fn metadata() -> Metadata {
        Metadata::new(
            "file-source",
            env!("CARGO_PKG_VERSION"),
            "Reads a file or stdin line by line, one message per line.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let path = c.text("path")?.to_owned();
        let jsonl = c.choice("format")? == "jsonl";
        let skip_header = c.bool("skip_header")?;
        let resume = c.bool("resume")?;
        let files = if c.choice("format")? == "whole" {
            Some(whole_files(&path, c.text("suffix")?)?)
        } else {
            None
        };
        let reader: Box<dyn BufRead> = if files.is_some() {
            Box::new(std::io::empty())
        } else if path == "-" {
            Box::new(BufReader::with_capacity(64 * 1024, std::io::stdin()))
        } else {
            let file = File::open(&path).map_err(|e| {
                Error::fatal(format!(
                    "config key `path`: cannot open `{path}`: {e}; grant its directory and give \
                     the path as the plugin sees it (e.g. /data/file.csv)"
                ))
            })?;
            Box::new(BufReader::with_capacity(64 * 1024, file))
        };
        let mut skip_until = u64::from(skip_header);
        if resume && let Some(acked) = acked_line() {
            log::info!("resuming `{path}` after line {acked}, the last one acknowledged");
            skip_until = skip_until.max(acked);
        }
        Ok(FileSource {
            path,
            reader,
            jsonl,
            line: 0,
            skip_until,
            done: false,
            pending: None,
            buf: Vec::new(),
            files,
        })
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        if let Some(e) = self.pending.take() {
            // Keep failing: the bad line is never skipped silently.
            self.pending = Some(e.clone());
            return Err(e);
        }
        if let Some(files) = &self.files {
            return self.poll_files(files.clone(), max);
        }
        let mut messages = Vec::new();
        let mut checkpoint = self.line;
        while messages.len() < max as usize && !self.done {
            self.buf.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::retryable(format!("cannot read `{}`: {e}", self.path)))?;
            if read == 0 {
                self.done = true;
                break;
            }
            self.line += 1;
            if self.line <= self.skip_until {
                continue;
            }
            let line = trim_line_end(&self.buf);
            if self.jsonl {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Err(e) = json::validate(line) {
                    let error = Error::fatal(format!(
                        "{}:{}: not valid JSON: {e}; fix the line or use format = \"lines\"",
                        self.path, self.line
                    ));
                    if messages.is_empty() {
                        self.pending = Some(error.clone());
                        return Err(error);
                    }
                    // Deliver the good lines of this batch first.
                    self.pending = Some(error);
                    break;
                }
            }
            messages.push(Message::new(line));
            checkpoint = self.line;
        }
        if messages.is_empty() && self.done {
            return Ok(PollResult::EndOfStream);
        }
        // Lines skipped at the end of a batch (header, blank) are covered by the next one.
        Ok(PollResult::batch(messages, checkpoint))
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        state::set(ACKED_LINE, checkpoint.to_string().as_bytes()).map_err(|e| {
            Error::retryable(format!(
                "cannot store the acknowledged line in the host state: {e}"
            ))
        })
    }
}

impl FileSource {
    /// `format = "whole"`: the next files, one message each (`line` counts files).
    fn poll_files(&mut self, files: Vec<String>, max: u32) -> Result<PollResult, Error> {
        let mut messages = Vec::new();
        while messages.len() < max as usize {
            let Some(file) = usize::try_from(self.line).ok().and_then(|i| files.get(i)) else {
                break;
            };
            self.line += 1;
            if self.line <= self.skip_until {
                continue;
            }
            let bytes = std::fs::read(file)
                .map_err(|e| Error::retryable(format!("cannot read `{file}`: {e}")))?;
            let name = file.rsplit('/').next().unwrap_or(file);
            messages.push(Message::new(bytes).with_header("file-name", name));
        }
        if messages.is_empty() && self.line >= files.len() as u64 {
            return Ok(PollResult::EndOfStream);
        }
        Ok(PollResult::batch(messages, self.line))
    }
}

/// The files `format = "whole"` reads: `path` itself, or the files of the directory `path`
/// whose names end with `suffix`, in name order.
fn whole_files(path: &str, suffix: &str) -> Result<Vec<String>, Error> {
    let unreadable = |e: std::io::Error| {
        Error::fatal(format!(
            "config key `path`: cannot read `{path}`: {e}; grant its directory and give the \
             path as the plugin sees it (e.g. /data/in)"
        ))
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_file()) && name.ends_with(suffix) {
            files.push(format!("{}/{name}", path.trim_end_matches('/')));
        }
    }
    files.sort();
    Ok(files)
}

/// The last acknowledged line stored by an earlier instance.
fn acked_line() -> Option<u64> {
    let saved = state::get(ACKED_LINE)?;
    std::str::from_utf8(&saved).ok()?.parse().ok()
}

/// A line without its `\n` or `\r\n`.
fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

patchbay_sdk::export_source!(FileSource);
