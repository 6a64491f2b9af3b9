//! `json-to-csv`: each JSON object becomes one CSV row, its cells the fields `columns` names
//! (dotted paths, in that order), quoted as RFC 4180 says (the `csv` crate): a cell holding the
//! delimiter, a quote or a line break is quoted, quotes doubled.
//!
//! ```toml
//! [plugins.report.config]
//! columns = ["id", "customer.name", "total"]
//! header = true        # the first row an instance writes is preceded by the header
//! ```
//!
//! Cells: a string as is, a number or boolean as its JSON text, `null` or a missing field
//! empty (or, with `missing = "fail"`, a missing field fails the message with `invalid-data`
//! naming it), an object or array as its JSON text. The row has no line ending: a line-based
//! sink (file-sink) adds one per message.
//!
//! With `header = true`, the header row (the column names, or `names` when given) goes before
//! the first row as a message of its own, once: the plugin remembers in the host's state that
//! it wrote it, so a restart (with `[state] dir`) does not write it again into the same file.

use patchbay_sdk::json::{self, Value};
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform, log, state};

const KEYS: &[Key] = &[
    Key::json(
        "columns",
        "Array of dotted field paths, one per column, in order: [\"id\", \"customer.name\"].",
    )
    .required(),
    Key::json(
        "names",
        "Array of header names, one per column. Empty: the paths.",
    )
    .default("[]"),
    Key::bool(
        "header",
        "Write the header row before the first row (once, remembered in state).",
    )
    .default("false"),
    Key::text(
        "delimiter",
        "The one-character cell delimiter, e.g. \",\", \";\" or \"\\t\".",
    )
    .default(","),
    Key::choice(
        "missing",
        &["empty", "fail"],
        "A missing field: an empty cell, or fail the message (invalid-data).",
    )
    .default("empty"),
];

/// The state key that says the header was written.
const HEADER_WRITTEN: &str = "header-written";

pub struct JsonToCsv {
    columns: Vec<String>,
    header: Option<Vec<u8>>,
    delimiter: u8,
    fail_missing: bool,
}

impl Transform for JsonToCsv {
    fn metadata() -> Metadata {
        Metadata::new(
            "json-to-csv",
            env!("CARGO_PKG_VERSION"),
            "Turns JSON objects into CSV rows: columns from config, RFC 4180 quoting, an optional header row.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let columns = c.json::<Vec<String>>("columns")?.unwrap_or_default();
        if columns.is_empty() || columns.iter().any(|p| p.split('.').any(str::is_empty)) {
            return Err(c.invalid(
                "columns",
                "a non-empty array of field paths like [\"id\", \"customer.name\"]",
            ));
        }
        let names = c.json::<Vec<String>>("names")?.unwrap_or_default();
        if !names.is_empty() && names.len() != columns.len() {
            return Err(Error::fatal(format!(
                "config key `names`: {} names for {} columns; give one per column, or none",
                names.len(),
                columns.len()
            )));
        }
        let delimiter = match c.text("delimiter")?.as_bytes() {
            [d] if *d != b'"' && *d != b'\n' && *d != b'\r' => *d,
            _ => {
                return Err(c.invalid(
                    "delimiter",
                    "one ASCII character other than a quote or line break, e.g. \",\"",
                ));
            }
        };
        let mut this = JsonToCsv {
            columns,
            header: None,
            delimiter,
            fail_missing: c.choice("missing")? == "fail",
        };
        if c.bool("header")? && state::get(HEADER_WRITTEN).is_none() {
            let names = if names.is_empty() {
                this.columns.clone()
            } else {
                names
            };
            this.header = Some(this.row(names.iter().map(String::as_str))?);
        }
        Ok(this)
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let doc: Value = match serde_json::from_slice(&message.payload) {
            Ok(doc @ Value::Object(_)) => doc,
            Ok(other) => {
                return Outcome::Fail(Error::invalid_data(format!(
                    "payload is JSON but not an object: {}",
                    kind(&other)
                )));
            }
            Err(e) => {
                return Outcome::Fail(Error::invalid_data(format!("payload is not JSON: {e}")));
            }
        };
        let mut cells = Vec::with_capacity(self.columns.len());
        for path in &self.columns {
            cells.push(match json::get(&doc, path) {
                None if self.fail_missing => {
                    return Outcome::Fail(Error::invalid_data(format!(
                        "the field `{path}` is missing (missing = \"fail\")"
                    )));
                }
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            });
        }
        let row = match self.row(cells.iter().map(String::as_str)) {
            Ok(row) => row,
            Err(e) => return Outcome::Fail(e),
        };
        let mut out = Vec::with_capacity(2);
        if let Some(header) = self.header.take() {
            if let Err(e) = state::set(HEADER_WRITTEN, b"1") {
                log::warn(&format!("cannot remember that the header was written: {e}"));
            }
            out.push(message.with_payload(header));
        }
        out.push(message.with_payload(row));
        Outcome::Replace(out)
    }
}

impl JsonToCsv {
    /// One CSV record, without its line ending.
    fn row<'a>(&self, cells: impl Iterator<Item = &'a str>) -> Result<Vec<u8>, Error> {
        let mut writer = csv::WriterBuilder::new()
            .delimiter(self.delimiter)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        writer
            .write_record(cells)
            .map_err(|e| Error::invalid_data(format!("cannot write the row: {e}")))?;
        let mut bytes = writer
            .into_inner()
            .map_err(|e| Error::invalid_data(format!("cannot write the row: {e}")))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        Ok(bytes)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

patchbay_sdk::export_transform!(JsonToCsv);
