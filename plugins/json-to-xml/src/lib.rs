//! `json-to-xml`: each JSON payload becomes one XML document, by xml-to-json's rule read
//! backwards (see plugins/xml-to-json), so XML → JSON → XML keeps the document's content:
//!
//! - The JSON is an object with one field, the root element (`{"order": {…}}`); with
//!   `root = "name"` set, the whole JSON value becomes the content of an element of that name
//!   instead (for documents that are not shaped that way).
//! - In an object, `"-name"` fields are attributes (their value as text), `"#text"` is the
//!   element's text, and every other field a child element of that name; an array makes one
//!   element per item, in order. A string, number or boolean is the element's text; `null` an
//!   empty element (`<a/>`).
//! - Text and attribute values are escaped (`<`, `>`, `&`, quotes); names are checked: one
//!   that is not an XML name (`"1st"`, `"a b"`) fails the message with `invalid-data`, naming
//!   it, as does a payload that is not JSON.
//!
//! The output starts with `<?xml version="1.0" encoding="UTF-8"?>` unless `declaration = false`,
//! and is compact unless `indent` (spaces per level) is set.

use std::fmt::Write as _;

use patchbay_sdk::json::Value;
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform};
use quick_xml::escape::{escape, partial_escape};

const KEYS: &[Key] = &[
    Key::text(
        "root",
        "Name of a root element that wraps the whole JSON value. Empty: the JSON must be an object with one field, the root element.",
    )
    .default(""),
    Key::bool("declaration", "Start each document with <?xml version=\"1.0\" encoding=\"UTF-8\"?>.")
        .default("true"),
    Key::uint("indent", "Spaces per level of indentation, 0 to 8; 0 writes compact XML.")
        .default("0"),
];

pub struct JsonToXml {
    root: Option<String>,
    declaration: bool,
    indent: usize,
}

impl Transform for JsonToXml {
    fn metadata() -> Metadata {
        Metadata::new(
            "json-to-xml",
            env!("CARGO_PKG_VERSION"),
            "Turns JSON objects into XML documents (-name fields as attributes, #text as text, arrays as repeated elements).",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let root = match c.text("root")?.trim() {
            "" => None,
            name if is_name(name) => Some(name.to_owned()),
            name => {
                return Err(Error::fatal(format!(
                    "config key `root`: `{name}` is not an XML element name; start with a \
                     letter or `_`, then letters, digits, `-`, `_`, `.` or `:`"
                )));
            }
        };
        let indent = c.uint("indent")?;
        if indent > 8 {
            return Err(c.invalid("indent", "a number of spaces from 0 to 8"));
        }
        Ok(JsonToXml {
            root,
            declaration: c.bool("declaration")?,
            indent: indent as usize,
        })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let doc: Value = match serde_json::from_slice(&message.payload) {
            Ok(doc) => doc,
            Err(e) => {
                return Outcome::Fail(Error::invalid_data(format!("payload is not JSON: {e}")));
            }
        };
        let mut out = String::with_capacity(message.payload.len() + 64);
        if self.declaration {
            out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
            if self.indent > 0 {
                out.push('\n');
            }
        }
        let written = match (&self.root, &doc) {
            (Some(root), _) => self.element(&mut out, root, &doc, 0),
            (None, Value::Object(fields)) if fields.len() == 1 => match fields.iter().next() {
                Some((name, value)) => self.element(&mut out, name, value, 0),
                None => Ok(()),
            },
            (None, _) => Err(
                "payload is not an object with one field (the root element); set `root` to \
                 wrap other JSON in an element"
                    .to_owned(),
            ),
        };
        match written {
            Ok(()) => Outcome::Replace(vec![message.with_payload(out)]),
            Err(e) => Outcome::Fail(Error::invalid_data(e)),
        }
    }
}

impl JsonToXml {
    /// Write `<name …>…</name>` for `value` (one element per item for an array).
    fn element(
        &self,
        out: &mut String,
        name: &str,
        value: &Value,
        depth: usize,
    ) -> Result<(), String> {
        if !is_name(name) {
            return Err(format!("`{name}` is not an XML element name"));
        }
        if let Value::Array(items) = value {
            for item in items {
                if matches!(item, Value::Array(_)) {
                    return Err(format!(
                        "`{name}` holds an array in an array, which has no XML form"
                    ));
                }
                self.element(out, name, item, depth)?;
            }
            return Ok(());
        }
        self.pad(out, depth);
        out.push('<');
        out.push_str(name);
        let mut text: Option<String> = None;
        let mut children: Vec<(&str, &Value)> = Vec::new();
        match value {
            Value::Null => {}
            Value::Object(fields) => {
                for (key, v) in fields {
                    if let Some(attr) = key.strip_prefix('-') {
                        if !is_name(attr) {
                            return Err(format!(
                                "`{attr}` in `{name}` is not an XML attribute name"
                            ));
                        }
                        let _ = write!(out, " {attr}=\"{}\"", escape(scalar(v, key)?));
                    } else if key == "#text" {
                        text = Some(scalar(v, key)?);
                    } else {
                        children.push((key, v));
                    }
                }
            }
            other => text = Some(scalar(other, name)?),
        }
        if text.is_none() && children.is_empty() {
            out.push_str("/>");
            self.newline(out);
            return Ok(());
        }
        out.push('>');
        if let Some(text) = &text {
            out.push_str(&partial_escape(text.as_str()));
        }
        if !children.is_empty() {
            self.newline(out);
            for (child, v) in children {
                self.element(out, child, v, depth + 1)?;
            }
            self.pad(out, depth);
        }
        let _ = write!(out, "</{name}>");
        self.newline(out);
        Ok(())
    }

    fn pad(&self, out: &mut String, depth: usize) {
        if self.indent > 0 {
            out.extend(std::iter::repeat_n(' ', depth * self.indent));
        }
    }

    fn newline(&self, out: &mut String) {
        if self.indent > 0 {
            out.push('\n');
        }
    }
}

/// A string, number or boolean as text; anything else has no text form.
fn scalar(value: &Value, what: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(format!(
            "`{what}` must be text, a number or a boolean, not {value}"
        )),
    }
}

/// An XML name as far as this plugin writes them: a letter or `_` (or `:`), then letters,
/// digits, `-`, `_`, `.` or `:` (non-ASCII letters included).
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

patchbay_sdk::export_transform!(JsonToXml);
