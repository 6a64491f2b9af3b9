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
//!
//! Only the objects the paths go through are parsed into fields; every other value is checked
//! and then written out as the input had it, byte for byte (`patchbay_sdk::json::Object`):
//! numbers keep all their digits, strings their escapes, nested values their spacing. The
//! output is otherwise compact.

use patchbay_sdk::json::{Map, Object, Value};
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Settings, Transform};

mod mapping;

use mapping::Mapping;

const KEYS: &[Key] = &[
    Key::json(
        "copy",
        "Table of from = \"to\" field paths: copy a field's value to another path. Runs first.",
    )
    .default("{}"),
    Key::json(
        "rename",
        "Table of old = \"new\" field paths: move a field. Runs after copy; missing fields are skipped.",
    )
    .default("{}"),
    Key::json(
        "drop",
        "Array of field paths to remove. Runs after rename.",
    )
    .default("[]"),
    Key::json(
        "set",
        "Table of field = value (any TOML value, stored as JSON): set a field, creating parent objects. Runs last.",
    )
    .default("{}"),
];

struct JsonMap {
    mapping: Mapping,
}

impl Transform for JsonMap {
    fn metadata() -> Metadata {
        Metadata::new(
            "json-map",
            env!("CARGO_PKG_VERSION"),
            "Copies, renames, drops and sets fields of JSON objects (dotted paths).",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let copy = path_table(&c, "copy")?;
        let rename = path_table(&c, "rename")?;
        let drop = c.json::<Vec<String>>("drop")?.unwrap_or_default();
        let set: Vec<(String, Value)> = c
            .json::<Map<String, Value>>("set")?
            .unwrap_or_default()
            .into_iter()
            .collect();
        let pairs = |v: &[(String, String)]| -> Vec<String> {
            v.iter().flat_map(|(a, b)| [a.clone(), b.clone()]).collect()
        };
        let paths = [
            ("copy", pairs(&copy)),
            ("rename", pairs(&rename)),
            ("drop", drop.clone()),
            ("set", set.iter().map(|(p, _)| p.clone()).collect()),
        ];
        for (key, paths) in paths {
            if let Some(bad) = paths.iter().find(|p| p.split('.').any(str::is_empty)) {
                return Err(Error::fatal(format!(
                    "config key `{key}`: field path `{bad}` has an empty segment; write paths \
                     like `customer.address.city`"
                )));
            }
        }
        Ok(JsonMap {
            mapping: Mapping::new(copy, rename, drop, set),
        })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let mut doc = match Object::parse(&message.payload) {
            Ok(doc) => doc,
            Err(e) => return Outcome::Fail(Error::invalid_data(format!("payload is {e}"))),
        };
        match self.mapping.apply(&mut doc) {
            Ok(false) => Outcome::Keep,
            Ok(true) => Outcome::Replace(vec![message.with_payload(doc.to_vec())]),
            Err(e) => Outcome::Fail(Error::invalid_data(e)),
        }
    }
}

/// A table of field path → field path.
fn path_table(config: &Settings<'_>, key: &str) -> Result<Vec<(String, String)>, Error> {
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

patchbay_sdk::export_transform!(JsonMap);
