//! `xml-to-json`: each payload, one XML document, becomes one JSON object (quick-xml).
//!
//! The rule (json-to-xml applies it backwards, so XML → JSON → XML keeps the content):
//!
//! - The document is an object with one field, the root element's name.
//! - An element with neither attributes nor child elements is its text, a string (`""` when
//!   empty). Any other element is an object: each attribute as `"-name"` (namespace
//!   declarations too: `"-xmlns:ns"`), each child element under its name as written, prefix
//!   included (`"ns:item"`), and its text, when not only whitespace, as `"#text"`.
//! - A child name that appears more than once becomes an array of the values, in document
//!   order; one listed in `arrays` (dotted element paths from the root, `"order.item"`) is an
//!   array even when it appears once, so that a consumer sees one shape.
//! - Text is unescaped (`&amp;`, `&#233;`); CDATA sections are text. Comments, processing
//!   instructions, the XML declaration and the DOCTYPE are left out. Text between child
//!   elements (mixed content) is joined into the one `"#text"`: its place among the children
//!   is not kept.
//!
//! A payload that is not well-formed XML (or not UTF-8) fails with `invalid-data`, naming the
//! byte offset and quick-xml's reason; the key, headers and timestamp are kept.

use patchbay_sdk::json::{Map, Value};
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform};
use quick_xml::events::Event;

const KEYS: &[Key] = &[Key::json(
    "arrays",
    "Array of dotted element paths from the root (\"orders.order\") that are always arrays, even with one element.",
)
.default("[]")];

pub struct XmlToJson {
    arrays: Vec<String>,
}

/// An element being read: its name, attributes, children so far, and text.
struct Node {
    name: String,
    fields: Map<String, Value>,
    /// Names of the children seen, with how many times (to make arrays).
    repeated: Vec<String>,
    children: usize,
    text: String,
}

impl Transform for XmlToJson {
    fn metadata() -> Metadata {
        Metadata::new(
            "xml-to-json",
            env!("CARGO_PKG_VERSION"),
            "Turns XML documents into JSON objects (attributes as -name, text as #text, repeated elements as arrays).",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let arrays = c.json::<Vec<String>>("arrays")?.unwrap_or_default();
        if let Some(bad) = arrays.iter().find(|p| p.split('.').any(str::is_empty)) {
            return Err(Error::fatal(format!(
                "config key `arrays`: element path `{bad}` has an empty segment; write paths \
                 like `orders.order.line`"
            )));
        }
        Ok(XmlToJson { arrays })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let text = match std::str::from_utf8(&message.payload) {
            Ok(text) => text,
            Err(e) => {
                return Outcome::Fail(Error::invalid_data(format!(
                    "payload is not UTF-8 text, so not XML this plugin reads: {e}"
                )));
            }
        };
        match self.convert(text) {
            Ok(doc) => match serde_json::to_vec(&doc) {
                Ok(bytes) => Outcome::Replace(vec![message.with_payload(bytes)]),
                Err(e) => Outcome::Fail(Error::invalid_data(format!("cannot write JSON: {e}"))),
            },
            Err(e) => Outcome::Fail(Error::invalid_data(e)),
        }
    }
}

impl XmlToJson {
    fn convert(&self, text: &str) -> Result<Value, String> {
        let mut reader = quick_xml::Reader::from_str(text);
        let mut stack: Vec<Node> = Vec::new();
        let mut root: Option<(String, Value)> = None;
        loop {
            let at = reader.buffer_position();
            let event = reader
                .read_event()
                .map_err(|e| format!("payload is not well-formed XML (at byte {at}): {e}"))?;
            match event {
                Event::Start(_) | Event::Empty(_) if root.is_some() => {
                    return Err(format!(
                        "payload is not one XML document: a second root element at byte {at}"
                    ));
                }
                Event::Start(e) => stack.push(node(&e, at)?),
                Event::Empty(e) => {
                    let n = node(&e, at)?;
                    self.close(n, &mut stack, &mut root);
                }
                Event::End(_) => {
                    if let Some(n) = stack.pop() {
                        self.close(n, &mut stack, &mut root);
                    }
                }
                Event::Text(t) => {
                    if let Some(n) = stack.last_mut() {
                        n.text.push_str(&t.xml10_content());
                    } else if !t.trim().is_empty() {
                        return Err(format!(
                            "payload is not XML: text outside the root element at byte {at}"
                        ));
                    }
                }
                Event::CData(t) => {
                    if let Some(n) = stack.last_mut() {
                        n.text.push_str(&t.xml10_content());
                    }
                }
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        Ok(None) => quick_xml::escape::resolve_xml_entity(&r)
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                format!(
                                    "payload uses the undefined entity `&{};` at byte {at}",
                                    &*r
                                )
                            })?,
                        Err(e) => return Err(format!("bad character reference at byte {at}: {e}")),
                    };
                    if let Some(n) = stack.last_mut() {
                        n.text.push_str(&resolved);
                    }
                }
                Event::Eof => break,
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        if let Some(open) = stack.last() {
            return Err(format!(
                "payload is not well-formed XML: element `{}` is not closed",
                open.name
            ));
        }
        let (name, value) = root.ok_or("payload is not XML: it has no root element")?;
        let mut doc = Map::new();
        doc.insert(name, value);
        Ok(Value::Object(doc))
    }

    /// Turn the finished element `n` into its value and add it to its parent (or make it root).
    fn close(&self, n: Node, stack: &mut [Node], root: &mut Option<(String, Value)>) {
        let path: Vec<&str> = stack
            .iter()
            .map(|p| p.name.as_str())
            .chain([n.name.as_str()])
            .collect();
        let force_array = self
            .arrays
            .iter()
            .any(|a| a.split('.').eq(path.iter().copied()));
        let name = n.name.clone();
        let value = n.into_value();
        match stack.last_mut() {
            None => *root = Some((name, value)),
            Some(parent) => parent.add(name, value, force_array),
        }
    }
}

/// A node for the element `e` starts, with its attributes.
fn node(e: &quick_xml::events::BytesStart<'_>, at: u64) -> Result<Node, String> {
    let name = e.name().as_ref().to_owned();
    let mut fields = Map::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|err| format!("bad attribute in `{name}` at byte {at}: {err}"))?;
        let key = attr.key.as_ref();
        let value = attr
            .normalized_value(quick_xml::XmlVersion::default())
            .map_err(|err| format!("bad value of attribute `{key}` in `{name}`: {err}"))?;
        fields.insert(format!("-{key}"), Value::String(value.into_owned()));
    }
    Ok(Node {
        name,
        fields,
        repeated: Vec::new(),
        children: 0,
        text: String::new(),
    })
}

impl Node {
    fn add(&mut self, name: String, value: Value, force_array: bool) {
        self.children += 1;
        match self.fields.get_mut(&name) {
            Some(Value::Array(items)) if force_array || self.repeated.contains(&name) => {
                items.push(value)
            }
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
                self.repeated.push(name);
            }
            None if force_array => {
                self.fields.insert(name.clone(), Value::Array(vec![value]));
                self.repeated.push(name);
            }
            None => {
                self.fields.insert(name, value);
            }
        }
    }

    fn into_value(mut self) -> Value {
        if self.fields.is_empty() {
            return Value::String(self.text);
        }
        if !self.text.trim().is_empty() {
            let text = if self.children > 0 {
                self.text.trim().to_owned()
            } else {
                self.text
            };
            self.fields.insert("#text".into(), Value::String(text));
        }
        Value::Object(self.fields)
    }
}

patchbay_sdk::export_transform!(XmlToJson);
