//! `json-map`: reshapes JSON objects by configuration, the data-mapping step of an
//! integration. Fields are dotted paths (`customer.address.city`).
//!
//! ```toml
//! [plugins.reshape.config]
//! copy = { id = "meta.original_id" }           # from → to
//! rename = { order_id = "id", amount = "total" } # old → new
//! drop = ["email", "internal.notes"]
//! set = { source = "shop", version = 2 }        # field → JSON value
//! ```
//!
//! The steps run in a fixed order: `copy`, then `rename`, then `drop`, then `set`. Within one
//! table the entries apply together: every source is read before any target is written, so
//! `rename = { a = "b", b = "a" }` swaps two fields. A missing source field is skipped; a target
//! whose parents are missing gets them created as objects. Field order is kept: a field renamed
//! within its object keeps its place, while copied, moved and new fields go last in theirs.
//!
//! A payload that is not a JSON object fails with `invalid-data`, as does a target path that
//! runs through something other than an object. The key, headers and timestamp of the message
//! are kept. A message the mapping does not change passes on untouched (`keep`).

use patchbay_sdk::json::{self, Map, Value};
use patchbay_sdk::{Config, ConfigKey, Error, Message, Metadata, Outcome, Transform};

/// Renames within one object (`None`: the document itself): old key → new key.
type InPlace<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>);

struct JsonMap {
    copy: Vec<(String, String)>,
    rename: Vec<(String, String)>,
    drop: Vec<String>,
    set: Vec<(String, Value)>,
}

impl Transform for JsonMap {
    fn metadata() -> Metadata {
        Metadata::new(
            "json-map",
            env!("CARGO_PKG_VERSION"),
            "Copies, renames, drops and sets fields of JSON objects (dotted paths).",
        )
        .key(ConfigKey::optional(
            "copy",
            "Table of from = \"to\" field paths: copy a field's value to another path. Runs first.",
            "{}",
        ))
        .key(ConfigKey::optional(
            "rename",
            "Table of old = \"new\" field paths: move a field. Runs after copy; missing fields are skipped.",
            "{}",
        ))
        .key(ConfigKey::optional(
            "drop",
            "Array of field paths to remove. Runs after rename.",
            "[]",
        ))
        .key(ConfigKey::optional(
            "set",
            "Table of field = value (any TOML value, stored as JSON): set a field, creating parent objects. Runs last.",
            "{}",
        ))
    }

    fn init(config: Config) -> Result<Self, Error> {
        let map = JsonMap {
            copy: path_table(&config, "copy")?,
            rename: path_table(&config, "rename")?,
            drop: config.json::<Vec<String>>("drop")?.unwrap_or_default(),
            set: config
                .json::<Map<String, Value>>("set")?
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        let paths = [
            (
                "copy",
                map.copy
                    .iter()
                    .flat_map(|(a, b)| [a, b])
                    .collect::<Vec<_>>(),
            ),
            (
                "rename",
                map.rename.iter().flat_map(|(a, b)| [a, b]).collect(),
            ),
            ("drop", map.drop.iter().collect()),
            ("set", map.set.iter().map(|(p, _)| p).collect()),
        ];
        for (key, paths) in paths {
            if let Some(bad) = paths.iter().find(|p| p.split('.').any(str::is_empty)) {
                return Err(Error::fatal(format!(
                    "config key `{key}`: field path `{bad}` has an empty segment; write paths \
                     like `customer.address.city`"
                )));
            }
        }
        Ok(map)
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let mut doc: Value = match serde_json::from_slice(&message.payload) {
            Ok(v @ Value::Object(_)) => v,
            Ok(other) => {
                return Outcome::Fail(Error::invalid_data(format!(
                    "payload is not a JSON object but {}",
                    kind(&other)
                )));
            }
            Err(e) => {
                return Outcome::Fail(Error::invalid_data(format!(
                    "payload is not a JSON object: {e}"
                )));
            }
        };
        match self.apply(&mut doc) {
            Ok(false) => Outcome::Keep,
            Ok(true) => match serde_json::to_vec(&doc) {
                Ok(payload) => Outcome::Replace(vec![message.with_payload(payload)]),
                Err(e) => Outcome::Fail(Error::invalid_data(format!("cannot encode JSON: {e}"))),
            },
            Err(e) => Outcome::Fail(e),
        }
    }
}

impl JsonMap {
    /// Apply the four steps; `Ok(true)` when the document changed.
    fn apply(&self, doc: &mut Value) -> Result<bool, Error> {
        let mut changed = false;

        let copies: Vec<(&str, &str, Value)> = self
            .copy
            .iter()
            .filter_map(|(from, to)| {
                Some((from.as_str(), to.as_str(), json::get(doc, from)?.clone()))
            })
            .collect();
        changed |= !copies.is_empty();
        for (from, to, value) in copies {
            json::set(doc, to, value)
                .map_err(|e| Error::invalid_data(format!("cannot copy `{from}` to `{to}`: {e}")))?;
        }

        changed |= self.rename(doc)?;

        for path in &self.drop {
            changed |= json::remove(doc, path).is_some();
        }

        for (path, value) in &self.set {
            json::set(doc, path, value.clone())
                .map_err(|e| Error::invalid_data(format!("cannot set `{path}`: {e}")))?;
            changed = true;
        }
        Ok(changed)
    }

    /// The `rename` step. A field renamed within its object keeps its position there; one moved
    /// to another object is appended to it. `Ok(true)` when a field moved.
    fn rename(&self, doc: &mut Value) -> Result<bool, Error> {
        let mut changed = false;
        // In place: per parent object, old key → new key.
        let mut in_place: Vec<InPlace> = Vec::new();
        let mut moves = Vec::new();
        for (from, to) in &self.rename {
            let (from_parent, from_key) = split_last(from);
            let (to_parent, to_key) = split_last(to);
            if from_parent == to_parent {
                match in_place.iter_mut().find(|(p, _)| *p == from_parent) {
                    Some((_, keys)) => keys.push((from_key, to_key)),
                    None => in_place.push((from_parent, vec![(from_key, to_key)])),
                }
            } else if let Some(value) = json::remove(doc, from) {
                moves.push((from, to, value));
            }
        }
        for (parent, keys) in in_place {
            let object = match parent {
                None => doc.as_object_mut(),
                Some(parent) => json::get_mut(doc, parent).and_then(Value::as_object_mut),
            };
            let Some(object) = object else { continue };
            let sources: Vec<(&str, &str)> = keys
                .iter()
                .filter(|(from, _)| object.contains_key(*from))
                .copied()
                .collect();
            if sources.is_empty() {
                continue;
            }
            changed = true;
            let new_key = |key: &str| {
                sources
                    .iter()
                    .find(|(from, _)| *from == key)
                    .map(|(_, to)| *to)
            };
            // A field a rename writes over (and that is not renamed itself) disappears; the
            // renamed field takes the source's position.
            let overwritten = |key: &str| sources.iter().any(|(_, to)| *to == key);
            let mut renamed = Map::new();
            for (key, value) in std::mem::take(object) {
                match new_key(&key) {
                    Some(to) => {
                        renamed.insert(to.to_owned(), value);
                    }
                    None if overwritten(&key) => {}
                    None => {
                        renamed.insert(key, value);
                    }
                }
            }
            *object = renamed;
        }
        changed |= !moves.is_empty();
        for (from, to, value) in moves {
            json::set(doc, to, value).map_err(|e| {
                Error::invalid_data(format!("cannot rename `{from}` to `{to}`: {e}"))
            })?;
        }
        Ok(changed)
    }
}

/// `a.b.c` → (`Some("a.b")`, `c`); `a` → (`None`, `a`).
fn split_last(path: &str) -> (Option<&str>, &str) {
    match path.rsplit_once('.') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, path),
    }
}

/// A table of field path → field path.
fn path_table(config: &Config, key: &str) -> Result<Vec<(String, String)>, Error> {
    let table = config.json::<Map<String, Value>>(key)?.unwrap_or_default();
    table
        .into_iter()
        .map(|(from, to)| match to {
            Value::String(to) => Ok((from, to)),
            other => Err(Error::fatal(format!(
                "config key `{key}`: expected a table of field = \"other.field\" paths, but `{from}` is {other}"
            ))),
        })
        .collect()
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

patchbay_sdk::export_transform!(JsonMap);
