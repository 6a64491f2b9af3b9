//! [`Object`]: a JSON object read only as deep as it is used.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{NotAnObject, Value};

/// A JSON object parsed only as deep as it is used: its fields, in their order, with each value
/// left as the input's bytes until a path goes into it.
///
/// Parsing checks the whole document (syntax, UTF-8, string escapes) but builds only the top
/// level: keys, and for each value the slice of the input it spans. A path through a field
/// (`get_mut`, `remove`, `set` on `a.b`) parses that field's object the same way, on first use.
/// Writing the object back ([`Object::to_vec`]) copies every value nothing looked into byte for
/// byte: numbers keep their exact digits (a 30-digit integer is not rounded to an `f64`), strings
/// their escapes, nested values their spacing. That makes reshaping a message several times
/// cheaper than going through a [`Value`] tree, which allocates for every value and re-encodes
/// every string.
///
/// Fields keep their order. A key given twice keeps its first place and its last value, as
/// `serde_json`'s `Value` with `preserve_order` does.
///
/// ```
/// use patchbay_sdk::json::{Field, Object, Value};
///
/// let input = br#"{"id":12345678901234567890123,"user":{"name":"Ada","tags":["x"]}}"#;
/// let mut doc = Object::parse(input).unwrap();
/// doc.rename("id", "key");
/// doc.remove("user.tags");
/// doc.set("user.city", Field::Value(Value::from("London"))).unwrap();
/// assert_eq!(
///     doc.to_vec(),
///     br#"{"key":12345678901234567890123,"user":{"name":"Ada","city":"London"}}"#
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object<'a> {
    fields: Vec<(Cow<'a, str>, Field<'a>)>,
}

/// The value of one field of an [`Object`].
#[derive(Debug, Clone)]
pub enum Field<'a> {
    /// Not looked into: the input's bytes for this value (checked, no leading or trailing
    /// space), written out as they are.
    Raw(&'a RawValue),
    /// An object a path went into, or one `set` created on the way to a field.
    Object(Object<'a>),
    /// A value the plugin gave.
    Value(Value),
}

/// Raw values are equal when their bytes are.
impl PartialEq for Field<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Field::Raw(a), Field::Raw(b)) => a.get() == b.get(),
            (Field::Object(a), Field::Object(b)) => a == b,
            (Field::Value(a), Field::Value(b)) => a == b,
            _ => false,
        }
    }
}

/// Why [`Object::parse`] refused a document.
#[derive(Debug)]
pub enum ParseError {
    /// Valid JSON, but not an object: `"a string"`, `"an array"`, …
    NotAnObject(&'static str),
    /// Not valid JSON; serde_json's reason, with line and column.
    Invalid(serde_json::Error),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotAnObject(kind) => write!(f, "not a JSON object but {kind}"),
            ParseError::Invalid(e) => write!(f, "not a JSON object: {e}"),
        }
    }
}

impl std::error::Error for ParseError {}

impl<'a> Object<'a> {
    /// An empty object.
    pub fn new() -> Object<'a> {
        Object::default()
    }

    /// Parse one JSON object (surrounding whitespace allowed), borrowing from `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Object<'a>, ParseError> {
        serde_json::from_slice(bytes).map_err(|e| {
            // The reason for the caller: where an object breaks; else what the document is, or
            // where its syntax breaks (the object parse stopped at its first byte).
            if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                return ParseError::Invalid(e);
            }
            match serde_json::from_slice::<IgnoredAny>(bytes) {
                Ok(_) => ParseError::NotAnObject(kind(bytes)),
                Err(syntax) => ParseError::Invalid(syntax),
            }
        })
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_ref())
    }

    /// Whether this object has a field `key` (this object's own key, not a path).
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.fields.iter().position(|(k, _)| k == key)
    }

    /// Set this object's own field `key`: in its place when it exists, last otherwise.
    pub fn insert(&mut self, key: impl Into<Cow<'a, str>>, value: Field<'a>) {
        let key = key.into();
        match self.position(&key) {
            Some(i) => self.fields[i].1 = value,
            None => self.fields.push((key, value)),
        }
    }

    /// Remove this object's own field `key`, keeping the order of the others.
    pub fn remove_key(&mut self, key: &str) -> Option<Field<'a>> {
        let i = self.position(key)?;
        Some(self.fields.remove(i).1)
    }

    /// The field at `path` (`a.b.c`), when every segment exists; objects on the way are parsed.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut Field<'a>> {
        let (parent, last) = match path.rsplit_once('.') {
            Some((parent, last)) => (self.object_mut(parent)?, last),
            None => (self, path),
        };
        let i = parent.position(last)?;
        Some(&mut parent.fields[i].1)
    }

    /// The object at `path`, when every segment exists and holds an object.
    pub fn object_mut(&mut self, path: &str) -> Option<&mut Object<'a>> {
        path.split('.').try_fold(self, |object, key| {
            let i = object.position(key)?;
            object.fields[i].1.as_object_mut()
        })
    }

    /// Remove and return the field at `path`, keeping the order of the others; `None` (and no
    /// change) when it does not exist.
    pub fn remove(&mut self, path: &str) -> Option<Field<'a>> {
        match path.rsplit_once('.') {
            Some((parent, last)) => self.object_mut(parent)?.remove_key(last),
            None => self.remove_key(path),
        }
    }

    /// Rename this object's own field `from` to `to` in its place, replacing a field `to` that
    /// was there; `false` when there is no `from`.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        let Some(i) = self.position(from) else {
            return false;
        };
        if from != to
            && let Some(j) = self.position(to)
        {
            self.fields.remove(j);
            let i = if j < i { i - 1 } else { i };
            self.fields[i].0 = Cow::Owned(to.to_owned());
        } else {
            self.fields[i].0 = Cow::Owned(to.to_owned());
        }
        true
    }

    /// Set the field at `path`, replacing what was there and creating missing intermediate
    /// objects. Fails, changing nothing, when a segment on the way holds something other than
    /// an object.
    pub fn set(&mut self, path: &str, value: Field<'a>) -> Result<(), NotAnObject> {
        let segments: Vec<&str> = path.split('.').collect();
        let (last, parents) = match segments.split_last() {
            Some(split) => split,
            None => return Ok(()), // unreachable: `split` yields at least one segment
        };
        // Check first, so that a failure leaves no half-created objects behind.
        let mut object = Some(&mut *self);
        for (i, key) in parents.iter().enumerate() {
            let Some(current) = object else { break }; // missing from here on: created below
            object = match current.position(key) {
                None => None,
                Some(at) => match current.fields[at].1.as_object_mut() {
                    Some(next) => Some(next),
                    None => {
                        return Err(NotAnObject {
                            at: segments[..=i].join("."),
                        });
                    }
                },
            };
        }
        let mut current = self;
        for key in parents {
            let at = match current.position(key) {
                Some(at) => at,
                None => {
                    let field = (Cow::Owned((*key).to_owned()), Field::Object(Object::new()));
                    current.fields.push(field);
                    current.fields.len() - 1
                }
            };
            current = match current.fields[at].1.as_object_mut() {
                Some(next) => next,
                None => return Ok(()), // unreachable: checked above
            };
        }
        current.insert(Cow::Owned((*last).to_owned()), value);
        Ok(())
    }

    /// The object as compact JSON, untouched values copied as they were.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_hint());
        self.write_to(&mut out);
        out
    }

    /// Append the object to `out` as [`Object::to_vec`] writes it.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json(out, key.as_ref());
            out.push(b':');
            value.write_to(out);
        }
        out.push(b'}');
    }

    fn size_hint(&self) -> usize {
        self.fields
            .iter()
            .map(|(key, value)| {
                key.len()
                    + 4
                    + match value {
                        Field::Raw(raw) => raw.get().len(),
                        Field::Object(object) => object.size_hint(),
                        Field::Value(_) => 16,
                    }
            })
            .sum::<usize>()
            + 2
    }

    /// A key given twice keeps its first place and takes its last value (`serde_json`'s
    /// `Value`, with `preserve_order`, does the same).
    fn dedup(&mut self) {
        let n = self.fields.len();
        let unique = if n <= 16 {
            (1..n).all(|i| self.fields[..i].iter().all(|(k, _)| *k != self.fields[i].0))
        } else {
            let mut keys: Vec<&str> = self.keys().collect();
            keys.sort_unstable();
            keys.windows(2).all(|w| w[0] != w[1])
        };
        if unique {
            return;
        }
        let mut kept: Vec<(Cow<'a, str>, Field<'a>)> = Vec::with_capacity(n);
        let mut places = std::collections::HashMap::with_capacity(n);
        for (key, value) in std::mem::take(&mut self.fields) {
            match places.get(&key) {
                Some(&at) => {
                    let slot: &mut (Cow<'a, str>, Field<'a>) = &mut kept[at];
                    slot.1 = value;
                }
                None => {
                    places.insert(key.clone(), kept.len());
                    kept.push((key, value));
                }
            }
        }
        self.fields = kept;
    }
}

/// The fields, in order.
impl<'a> IntoIterator for Object<'a> {
    type Item = (Cow<'a, str>, Field<'a>);
    type IntoIter = std::vec::IntoIter<(Cow<'a, str>, Field<'a>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.fields.into_iter()
    }
}

/// An object of these fields, in this order; a key given twice keeps its first place and its
/// last value.
impl<'a> FromIterator<(Cow<'a, str>, Field<'a>)> for Object<'a> {
    fn from_iter<I: IntoIterator<Item = (Cow<'a, str>, Field<'a>)>>(fields: I) -> Object<'a> {
        let mut object = Object {
            fields: fields.into_iter().collect(),
        };
        object.dedup();
        object
    }
}

impl<'a> Field<'a> {
    /// This field as an object, parsing it on first use; `None` when it holds something else.
    pub fn as_object_mut(&mut self) -> Option<&mut Object<'a>> {
        match self {
            Field::Raw(raw) => {
                let text: &'a str = raw.get();
                if !text.starts_with('{') {
                    return None;
                }
                // The document parse checked these bytes already, so this cannot fail.
                let object = serde_json::from_str::<Object<'a>>(text).ok()?;
                *self = Field::Object(object);
            }
            Field::Value(Value::Object(map)) => {
                let fields = std::mem::take(map)
                    .into_iter()
                    .map(|(key, value)| (Cow::Owned(key), Field::Value(value)))
                    .collect();
                *self = Field::Object(Object { fields });
            }
            Field::Object(_) | Field::Value(_) => {}
        }
        match self {
            Field::Object(object) => Some(object),
            _ => None,
        }
    }

    /// Append the value to `out`: raw bytes as they were, the rest as compact JSON.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Field::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
            Field::Object(object) => object.write_to(out),
            Field::Value(value) => write_json(out, value),
        }
    }
}

/// Compact JSON of something that always serializes (a string, a `Value`) into a `Vec`.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail, nor can serializing a string or a Value (its map keys
    // are strings).
    let _ = serde_json::to_writer(out, value);
}

/// What a valid JSON document that is not an object is, from its first byte.
fn kind(bytes: &[u8]) -> &'static str {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

impl<'de> serde::Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Object<'de>, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Object<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key.0, Field::Raw(value)));
                }
                let mut object = Object { fields };
                object.dedup();
                Ok(object)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// A key, borrowed from the input unless it had escapes to undo.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Object<'_> {
        Object::parse(text.as_bytes()).unwrap()
    }

    fn text(object: &Object<'_>) -> String {
        String::from_utf8(object.to_vec()).unwrap()
    }

    #[test]
    fn untouched_values_are_copied_byte_for_byte() {
        let input = r#" { "big" : 123456789012345678901234567890, "f": 1.50e3,
            "s": "caf\u00e9 \"q\"", "nested": {"a" : [1, 2]} } "#;
        assert_eq!(
            text(&parse(input)),
            r#"{"big":123456789012345678901234567890,"f":1.50e3,"s":"caf\u00e9 \"q\"","nested":{"a" : [1, 2]}}"#
        );
    }

    #[test]
    fn a_path_parses_the_objects_it_goes_through() {
        let mut doc = parse(r#"{"a":{"b":{"c":1,"d":2}},"e":[{"x":1}]}"#);
        assert_eq!(
            doc.remove("a.b.c").map(|f| f.to_vec_for_test()),
            Some("1".into())
        );
        assert!(doc.get_mut("e.x").is_none(), "arrays are not objects");
        assert!(doc.get_mut("a.b.d").is_some());
        assert_eq!(text(&doc), r#"{"a":{"b":{"d":2}},"e":[{"x":1}]}"#);
    }

    #[test]
    fn set_creates_parents_and_replaces_in_place() {
        let mut doc = parse(r#"{"a":{"b":1},"c":2}"#);
        doc.set("a.e.f", Field::Value(Value::from("new"))).unwrap();
        doc.set("c", Field::Value(Value::from(true))).unwrap();
        doc.set("top", Field::Value(Value::Null)).unwrap();
        assert_eq!(
            text(&doc),
            r#"{"a":{"b":1,"e":{"f":"new"}},"c":true,"top":null}"#
        );
    }

    #[test]
    fn set_goes_into_an_object_value_set_before() {
        let mut doc = parse("{}");
        let given: Value = serde_json::from_str(r#"{"x":1}"#).unwrap();
        doc.set("a", Field::Value(given)).unwrap();
        doc.set("a.y", Field::Value(Value::from(2))).unwrap();
        assert_eq!(text(&doc), r#"{"a":{"x":1,"y":2}}"#);
    }

    #[test]
    fn set_through_a_non_object_changes_nothing() {
        let mut doc = parse(r#"{"a":{"b":1},"c":2}"#);
        let before = doc.clone();
        let err = |doc: &mut Object<'_>, path| {
            doc.set(path, Field::Value(Value::from(0)))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err(&mut doc, "c.d"), "`c` is not an object");
        assert_eq!(err(&mut doc, "a.b.x.y"), "`a.b` is not an object");
        // (Objects a check went into are parsed now, but the document says the same.)
        assert_eq!(text(&doc), text(&before));
    }

    #[test]
    fn rename_keeps_the_place_and_replaces_the_target() {
        let mut doc = parse(r#"{"a":1,"b":2,"c":3}"#);
        assert!(doc.rename("b", "x"));
        assert!(!doc.rename("nope", "y"));
        assert_eq!(text(&doc), r#"{"a":1,"x":2,"c":3}"#);
        assert!(doc.rename("c", "a"));
        assert_eq!(text(&doc), r#"{"x":2,"a":3}"#);
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_last_value() {
        assert_eq!(text(&parse(r#"{"a":1,"b":2,"a":3}"#)), r#"{"a":3,"b":2}"#);
        let many: Vec<String> = (0..40).map(|i| format!("\"k{}\":{i}", i % 20)).collect();
        let input = format!("{{{}}}", many.join(","));
        let doc = parse(&input);
        assert_eq!(doc.len(), 20);
        assert_eq!(doc.keys().next(), Some("k0"));
        assert!(text(&doc).starts_with(r#"{"k0":20,"k1":21,"#));
    }

    #[test]
    fn escaped_keys_are_matched_unescaped_and_written_escaped() {
        let mut doc = parse(r#"{"na\u006de":"Ada","q\"":1}"#);
        assert!(doc.contains_key("name"));
        assert!(doc.rename("name", "full name"));
        assert_eq!(text(&doc), r#"{"full name":"Ada","q\"":1}"#);
    }

    #[test]
    fn what_is_not_an_object_is_refused_with_the_reason() {
        let reason = |input: &str| Object::parse(input.as_bytes()).unwrap_err().to_string();
        assert_eq!(reason(r#"["a"]"#), "not a JSON object but an array");
        assert_eq!(reason(r#" "a" "#), "not a JSON object but a string");
        assert_eq!(reason("-1.5"), "not a JSON object but a number");
        assert_eq!(reason("null"), "not a JSON object but null");
        assert_eq!(reason("true"), "not a JSON object but a boolean");
        assert_eq!(
            reason(r#"{"a":1"#),
            "not a JSON object: EOF while parsing an object at line 1 column 6"
        );
        assert_eq!(
            reason(r#"{"a":[1,}"#),
            "not a JSON object: expected value at line 1 column 9"
        );
        assert_eq!(
            reason("{\"a\":\"\u{1}\"}"),
            "not a JSON object: control character (\\u0000-\\u001F) found while parsing a string at line 1 column 6"
        );
        assert_eq!(
            reason(r#"[1,"#),
            "not a JSON object: EOF while parsing a value at line 1 column 3"
        );
        assert_eq!(
            reason("[1] x"),
            "not a JSON object: trailing characters at line 1 column 5"
        );
        assert_eq!(
            reason(r#"{"a":1} {}"#),
            "not a JSON object: trailing characters at line 1 column 9"
        );
        assert_eq!(
            reason(""),
            "not a JSON object: EOF while parsing a value at line 1 column 0"
        );
        assert_eq!(
            Object::parse(b"{\"a\":\"\xff\"}").unwrap_err().to_string(),
            "not a JSON object: invalid unicode code point at line 1 column 7"
        );
    }

    impl Field<'_> {
        fn to_vec_for_test(&self) -> String {
            let mut out = Vec::new();
            self.write_to(&mut out);
            String::from_utf8(out).unwrap_or_default()
        }
    }
}
