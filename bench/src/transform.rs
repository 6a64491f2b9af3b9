//! The benchmark's transform on one payload, outside any plugin interface: parse a JSON object,
//! apply json-map's [`Mapping`] (rename `name` to `title`, drop `tags`, set `source`), serialize.
//!
//! The native row of the benchmark and the Extism and Fluvio guests (bench/guests/) compile this
//! file and json-map's own `mapping.rs`, so every row runs the same code as the Patchbay plugin.

use crate::mapping::Mapping;
use patchbay_sdk::json::Object;
use serde_json::Value;

/// Build the mapping from configuration values looked up by key (`rename`, `drop`, `set`, each
/// JSON text), as json-map's `init` does.
pub fn mapping(get: impl Fn(&str) -> Option<String>) -> Result<Mapping, String> {
    let json = |key: &str| -> Result<Option<Value>, String> {
        get(key)
            .map(|text| serde_json::from_str(&text).map_err(|e| format!("config key `{key}`: {e}")))
            .transpose()
    };
    let pairs = |key: &str| -> Result<Vec<(String, String)>, String> {
        match json(key)? {
            None => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    other => Err(format!(
                        "config key `{key}`: `{k}` maps to {other}, not a path"
                    )),
                })
                .collect(),
            Some(other) => Err(format!("config key `{key}`: {other} is not a table")),
        }
    };
    let drop = match json("drop")? {
        None => Vec::new(),
        Some(value) => {
            serde_json::from_value(value).map_err(|e| format!("config key `drop`: {e}"))?
        }
    };
    let set = match json("set")? {
        None => Vec::new(),
        Some(Value::Object(map)) => map.into_iter().collect(),
        Some(other) => return Err(format!("config key `set`: {other} is not a table")),
    };
    Ok(Mapping::new(pairs("copy")?, pairs("rename")?, drop, set))
}

/// The transform on one payload: a JSON object in, the mapped object out (json-map's
/// `process`, without the plugin interface).
pub fn apply(mapping: &Mapping, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut doc = Object::parse(payload).map_err(|e| format!("payload is {e}"))?;
    mapping.apply(&mut doc)?;
    Ok(doc.to_vec())
}
