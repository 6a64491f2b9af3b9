//! The benchmark's transform as a Fluvio SmartModule: `init` builds the mapping from the
//! SmartModule's parameters, `map` runs it on each record of a batch.

use std::sync::OnceLock;

use fluvio_smartmodule::dataplane::smartmodule::SmartModuleExtraParams;
use fluvio_smartmodule::{RecordData, Result, SmartModuleRecord, eyre, smartmodule};

#[path = "../../../../plugins/json-map/src/mapping.rs"]
mod mapping;
#[path = "../../../src/transform.rs"]
mod transform;

static MAPPING: OnceLock<mapping::Mapping> = OnceLock::new();

#[smartmodule(init)]
fn init(params: SmartModuleExtraParams) -> Result<()> {
    let built = transform::mapping(|key| params.get(key).cloned()).map_err(|e| eyre!(e))?;
    MAPPING.set(built).map_err(|_| eyre!("init ran twice"))
}

#[smartmodule(map)]
pub fn map(record: &SmartModuleRecord) -> Result<(Option<RecordData>, RecordData)> {
    let mapping = MAPPING.get().ok_or_else(|| eyre!("map before init"))?;
    let out = transform::apply(mapping, record.value.as_ref()).map_err(|e| eyre!(e))?;
    Ok((record.key.clone(), out.into()))
}
