//! Dotted paths into JSON objects: `customer.address.city`.
//!
//! Used by JSON-shaped plugins (`json-map`, `filter`). Each segment is an object key; there is
//! no array indexing and no escaping (a key containing `.` cannot be addressed). [`set`]
//! creates missing intermediate objects.
//!
//! The functions here work on a [`Value`] tree. [`Object`] offers the same paths on a message
//! parsed only as deep as they go, with untouched values kept as the input's bytes: the choice
//! for a transform that reshapes messages (json-map uses it).
//!
//! ```
//! use patchbay_sdk::json::{self, Value};
//!
//! let mut v: Value = serde_json::from_str(r#"{"user":{"name":"Ada"}}"#).unwrap();
//! assert_eq!(json::get(&v, "user.name"), Some(&Value::from("Ada")));
//! json::set(&mut v, "user.address.city", Value::from("London")).unwrap();
//! assert_eq!(json::remove(&mut v, "user.name"), Some(Value::from("Ada")));
//! assert_eq!(v.to_string(), r#"{"user":{"address":{"city":"London"}}}"#);
//! ```

pub use serde_json::{Map, Value};

mod object;
pub use object::{Field, Object, ParseError};

/// Why [`set`] could not store a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAnObject {
    /// The prefix of the path that holds something other than an object (`""` for the root).
    pub at: String,
}

impl std::fmt::Display for NotAnObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at.as_str() {
            "" => f.write_str("the document is not an object"),
            at => write!(f, "`{at}` is not an object"),
        }
    }
}

impl std::error::Error for NotAnObject {}

/// The value at `path`, when every segment exists.
pub fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| v.as_object()?.get(key))
}

/// The value at `path`, mutably, when every segment exists.
pub fn get_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.')
        .try_fold(value, |v, key| v.as_object_mut()?.get_mut(key))
}

/// Remove and return the value at `path`; `None` (and no change) when it does not exist.
pub fn remove(value: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (get_mut(value, parent)?, last),
        None => (value, path),
    };
    let object = parent.as_object_mut()?;
    remove_keeping_order(object, last)
}

/// Remove `key` and keep the order of the other fields.
#[cfg(feature = "preserve_order")]
fn remove_keeping_order(object: &mut Map<String, Value>, key: &str) -> Option<Value> {
    object.shift_remove(key)
}

/// Remove `key` and keep the order of the other fields, whether or not another crate turned on
/// serde_json's `preserve_order` (`Map::remove` would then move the last field into the hole).
#[cfg(not(feature = "preserve_order"))]
fn remove_keeping_order(object: &mut Map<String, Value>, key: &str) -> Option<Value> {
    let mut removed = object.contains_key(key).then_some(Value::Null)?;
    object.retain(|k, value| {
        let keep = k != key;
        if !keep {
            removed = std::mem::take(value);
        }
        keep
    });
    Some(removed)
}

/// Set the value at `path`, replacing what was there and creating missing intermediate
/// objects. Fails, changing nothing, when the document or a segment on the way holds
/// something other than an object.
pub fn set(value: &mut Value, path: &str, new: Value) -> Result<(), NotAnObject> {
    if !path.contains('.') {
        return match value {
            Value::Object(object) => {
                object.insert(path.to_owned(), new);
                Ok(())
            }
            _ => Err(NotAnObject { at: String::new() }),
        };
    }
    let segments: Vec<&str> = path.split('.').collect();
    // Check first, so that a failure leaves no half-created objects behind.
    let mut node = Some(&*value);
    for (i, key) in segments.iter().enumerate() {
        let Some(found) = node else { break }; // missing from here on: created below
        let Some(object) = found.as_object() else {
            return Err(NotAnObject {
                at: segments[..i].join("."),
            });
        };
        node = object.get(*key);
    }
    let mut current = value;
    for (i, key) in segments.iter().enumerate() {
        let Value::Object(object) = current else {
            return Err(NotAnObject {
                at: segments[..i].join("."),
            });
        };
        if i + 1 == segments.len() {
            object.insert((*key).to_owned(), new);
            return Ok(());
        }
        current = object
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(()) // unreachable: `split` yields at least one segment
}

/// Check that `bytes` are one valid JSON document, without building it.
pub fn validate(bytes: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_follows_objects_only() {
        let v = json!({"a": {"b": 1, "l": [1]}, "c": 2});
        assert_eq!(get(&v, "a.b"), Some(&json!(1)));
        assert_eq!(get(&v, "a"), Some(&json!({"b": 1, "l": [1]})));
        assert_eq!(get(&v, "a.x"), None);
        assert_eq!(get(&v, "c.d"), None);
        assert_eq!(get(&v, "a.l.0"), None);
        assert_eq!(get(&json!([1]), "0"), None);
    }

    #[test]
    fn set_creates_parents_and_replaces() {
        let mut v = json!({"a": {"b": 1}, "c": 2});
        set(&mut v, "a.e.f", json!("new")).unwrap();
        set(&mut v, "a.b", json!([true])).unwrap();
        set(&mut v, "top", json!(null)).unwrap();
        assert_eq!(
            v,
            json!({"a": {"b": [true], "e": {"f": "new"}}, "c": 2, "top": null})
        );
    }

    #[test]
    fn set_through_a_non_object_changes_nothing() {
        let mut v = json!({"a": {"b": 1}, "c": 2});
        let before = v.clone();
        assert_eq!(
            set(&mut v, "c.d", json!(0)).unwrap_err().to_string(),
            "`c` is not an object"
        );
        assert_eq!(
            set(&mut v, "a.b.x.y", json!(0)).unwrap_err().to_string(),
            "`a.b` is not an object"
        );
        assert_eq!(v, before);
        let mut arr = json!([1]);
        assert_eq!(
            set(&mut arr, "x", json!(0)).unwrap_err().to_string(),
            "the document is not an object"
        );
    }

    #[test]
    fn remove_returns_the_value() {
        let mut v = json!({"a": {"b": 1, "c": {"d": 2}}, "e": 3});
        assert_eq!(remove(&mut v, "a.b"), Some(json!(1)));
        assert_eq!(remove(&mut v, "a.c.d"), Some(json!(2)));
        assert_eq!(remove(&mut v, "e"), Some(json!(3)));
        assert_eq!(remove(&mut v, "nope"), None);
        assert_eq!(remove(&mut v, "a.nope.x"), None);
        assert_eq!(v, json!({"a": {"c": {}}}));
        assert_eq!(remove(&mut json!(5), "a"), None);
    }

    #[test]
    fn remove_keeps_field_order() {
        let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
        let mut v: Value = serde_json::from_str(r#"{"z":1,"a":2,"m":3,"b":4}"#).unwrap();
        assert_eq!(remove(&mut v, "a"), Some(json!(2)));
        // The same order as a map built without the field: sorted by default, insertion order
        // with serde_json's `preserve_order`.
        let expected: Value = serde_json::from_str(r#"{"z":1,"m":3,"b":4}"#).unwrap();
        assert_eq!(keys(&v), keys(&expected));
    }

    #[test]
    fn validate_checks_one_document() {
        assert!(validate(br#"{"a":[1,2,{"b":null}]}"#).is_ok());
        assert!(validate(b" 12 ").is_ok());
        assert!(validate(b"{\"a\":").is_err());
        assert!(validate(b"{} {}").is_err());
        assert!(validate(b"").is_err());
    }
}
