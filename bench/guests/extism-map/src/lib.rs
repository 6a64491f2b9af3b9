//! The benchmark's transform as an Extism plugin: one call per message, as Extism plugins are
//! called. The mapping is built from the plugin's Extism config on the first call and kept.

use std::sync::OnceLock;

use extism_pdk::{FnResult, WithReturnCode, config, plugin_fn};

#[path = "../../../../plugins/json-map/src/mapping.rs"]
mod mapping;
#[path = "../../../src/transform.rs"]
mod transform;

static MAPPING: OnceLock<mapping::Mapping> = OnceLock::new();

/// `map`: a JSON object in, the mapped object out.
#[plugin_fn]
pub fn map(input: Vec<u8>) -> FnResult<Vec<u8>> {
    let mapping = match MAPPING.get() {
        Some(m) => m,
        None => {
            let built = transform::mapping(|key| config::get(key).ok().flatten())
                .map_err(|e| WithReturnCode::new(extism_pdk::Error::msg(e), 1))?;
            MAPPING.get_or_init(|| built)
        }
    };
    transform::apply(mapping, &input).map_err(|e| WithReturnCode::new(extism_pdk::Error::msg(e), 1))
}
