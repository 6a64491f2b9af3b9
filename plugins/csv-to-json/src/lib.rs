//! `csv-to-json`: turns CSV rows into JSON objects keyed by the header row, the data
//! translation step of an integration.
//!
//! ```toml
//! [plugins.to-json]
//! path = "target/plugins/csv-to-json.wasm"
//! config = { delimiter = ";", infer_types = true }
//! ```
//!
//! Each message holds one row (as `file-source` produces) or several. Unless `header` is
//! configured, the first row the plugin sees is the header: it is consumed (dropped) and stored
//! in the host state under `header` (a JSON array), so an instance restarted after a trap goes
//! on with the same columns. Later rows identical to a learned header (the same file read
//! again) are dropped too. A UTF-8 byte-order mark before the first header name is removed.
//!
//! Quoted fields (`"Hopper, Grace"`, `"say ""hi"""`) follow RFC 4180 (the `csv` crate). Columns
//! keep the header's order. With `infer_types = true`, a field that is entirely an integer
//! (`-12`), a decimal number (`3.5`, `1e3`) or `true`/`false` becomes a JSON number or boolean;
//! everything else, including empty fields and integers with leading zeros (`007`), stays a
//! string. A row whose field count differs from the header's fails with `invalid-data`.
//! Blank lines are always dropped; rows of empty fields (`,,,`) too unless `skip_empty = false`.
//!
//! A quoted field may hold the delimiter, and line breaks too, but only when the whole record
//! arrives in one message: `file-source` splits its input at every line break.

use patchbay_sdk::json::{Map, Value};
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform, log, state};

const KEYS: &[Key] = &[
    Key::json(
        "header",
        "Array of column names. When absent, the first row of the stream is the header (dropped, and kept in the host state).",
    ),
    Key::text(
        "delimiter",
        "One ASCII character separating fields, e.g. \";\" or \"\\t\" (a tab).",
    )
    .default(","),
    Key::bool(
        "infer_types",
        "Boolean: fields that are entirely an integer, a decimal number or true/false become JSON numbers and booleans; otherwise every value is a string.",
    )
    .default("true"),
    Key::bool(
        "skip_empty",
        "Boolean: drop rows whose fields are all empty (`,,,`); when false they are converted like any row. Blank lines are always dropped.",
    )
    .default("true"),
];

/// State key of the learned header row (JSON array of strings).
const HEADER_KEY: &str = "header";

struct CsvToJson {
    header: Option<Vec<String>>,
    /// The header came from the data (so a repeat of it is a header row, not data).
    learned: bool,
    delimiter: u8,
    infer_types: bool,
    skip_empty: bool,
}

impl Transform for CsvToJson {
    fn metadata() -> Metadata {
        Metadata::new(
            "csv-to-json",
            env!("CARGO_PKG_VERSION"),
            "Turns CSV rows into JSON objects keyed by the header row.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let delimiter = match c.text("delimiter")? {
            "\\t" | "\t" => b'\t',
            d if d.len() == 1 && d.is_ascii() && d != "\"" && d != "\n" && d != "\r" => {
                d.as_bytes()[0]
            }
            _ => {
                return Err(c.invalid(
                    "delimiter",
                    "one ASCII character such as \",\", \";\" or \"\\t\"",
                ));
            }
        };
        let mut header: Option<Vec<String>> = c.json("header")?;
        if header.as_ref().is_some_and(Vec::is_empty) {
            return Err(c.invalid("header", "an array of at least one column name"));
        }
        let learned = header.is_none();
        if learned && let Some(saved) = state::get(HEADER_KEY) {
            header = serde_json::from_slice(&saved).ok();
        }
        Ok(CsvToJson {
            header,
            learned,
            delimiter,
            infer_types: c.bool("infer_types")?,
            skip_empty: c.bool("skip_empty")?,
        })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .from_reader(message.payload.as_slice());
        let mut out = Vec::new();
        let mut record = csv::StringRecord::new();
        loop {
            match reader.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Outcome::Fail(Error::invalid_data(format!("not valid CSV: {e}"))),
            }
            if self.skip_empty && record.iter().all(str::is_empty) {
                continue;
            }
            let Some(header) = &self.header else {
                self.learn_header(&record);
                continue;
            };
            if self.learned && record.iter().eq(header.iter().map(String::as_str)) {
                continue; // the header row again
            }
            if record.len() != header.len() {
                return Outcome::Fail(Error::invalid_data(format!(
                    "row has {} fields, header has {} ({}); quote fields that contain the delimiter",
                    record.len(),
                    header.len(),
                    header.join(", ")
                )));
            }
            let object: Map<String, Value> = header
                .iter()
                .zip(record.iter())
                .map(|(name, field)| (name.clone(), self.value(field)))
                .collect();
            match serde_json::to_vec(&object) {
                Ok(payload) => out.push(message.with_payload(payload)),
                Err(e) => {
                    return Outcome::Fail(Error::invalid_data(format!("cannot encode JSON: {e}")));
                }
            }
        }
        Outcome::Replace(out)
    }
}

impl CsvToJson {
    fn learn_header(&mut self, record: &csv::StringRecord) {
        let names: Vec<String> = record
            .iter()
            .enumerate()
            .map(|(i, name)| match i {
                0 => name.trim_start_matches('\u{feff}').trim().to_owned(),
                _ => name.trim().to_owned(),
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
            log::warn!("the header row names column `{dup}` twice; the last one wins");
        }
        match serde_json::to_vec(&names).map(|v| state::set(HEADER_KEY, &v)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("cannot keep the header row in the host state: {e}"),
            Err(e) => log::warn!("cannot encode the header row: {e}"),
        }
        self.header = Some(names);
    }

    fn value(&self, field: &str) -> Value {
        if self.infer_types {
            infer(field)
        } else {
            Value::String(field.to_owned())
        }
    }
}

/// A JSON number or boolean when the whole field is one, else the field as a string.
fn infer(field: &str) -> Value {
    match field {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    let text = || Value::String(field.to_owned());
    let digits = field.strip_prefix('-').unwrap_or(field);
    if !digits.starts_with(|c: char| c.is_ascii_digit()) {
        return text(); // "", "abc", " 1", "+1", "inf", "NaN"
    }
    if digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.") {
        return text(); // leading zeros: an identifier such as a zip code
    }
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        // An integer; one too large for 64 bits stays text rather than lose digits.
        return match (field.parse::<i64>(), field.parse::<u64>()) {
            (Ok(i), _) => Value::from(i),
            (_, Ok(u)) => Value::from(u),
            _ => text(),
        };
    }
    // `from_f64` refuses infinities, so `1e999` stays text too.
    match field
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
    {
        Some(n) => Value::Number(n),
        None => text(),
    }
}

patchbay_sdk::export_transform!(CsvToJson);
