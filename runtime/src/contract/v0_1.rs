//! Contract `patchbay:connector@0.1.0`, still loaded unchanged (wit/README.md, rule 22): the
//! frozen WIT in `wit/0.1.0/` bound once more. 0.2.0 only added to it, so its types are the
//! 0.2.0 Rust types (`with`), its worlds get their own bindings (the export names carry the
//! version), and its host imports answer through the 0.2.0 ones.

use super::HostImports;
use super::source::patchbay::connector::{logging, metrics, state};

/// One 0.1.0 world, its types mapped onto the 0.2.0 ones.
macro_rules! world {
    ($module:ident, $world:literal) => {
        #[allow(missing_docs, clippy::all)]
        pub mod $module {
            wasmtime::component::bindgen!({
                path: "../wit/0.1.0",
                world: $world,
                exports: { default: async },
                with: {
                    "patchbay:connector/types": crate::contract::source::patchbay::connector::types,
                    "patchbay:connector/logging": crate::contract::v0_1::imports::patchbay::connector::logging,
                    "patchbay:connector/metrics": crate::contract::v0_1::imports::patchbay::connector::metrics,
                    "patchbay:connector/state": crate::contract::v0_1::imports::patchbay::connector::state,
                },
            });
        }
    };
}

/// The 0.1.0 host imports (logging, metrics, state), generated once for every 0.1.0 world.
#[allow(missing_docs, clippy::all)]
pub mod imports {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "source",
        exports: { default: async },
        with: {
            "patchbay:connector/types": crate::contract::source::patchbay::connector::types,
        },
    });
}

world!(source, "source");
world!(source_bounded, "source-bounded");
world!(source_shared, "source-shared");
world!(transform, "transform");
world!(transform_packed, "transform-packed");
world!(sink, "sink");
world!(sink_packed, "sink-packed");

use imports::patchbay::connector::{
    logging as logging_v1, metrics as metrics_v1, state as state_v1,
};

impl logging_v1::Host for HostImports {
    fn log(&mut self, level: logging_v1::Level, message: String) {
        let level = match level {
            logging_v1::Level::Trace => logging::Level::Trace,
            logging_v1::Level::Debug => logging::Level::Debug,
            logging_v1::Level::Info => logging::Level::Info,
            logging_v1::Level::Warn => logging::Level::Warn,
            logging_v1::Level::Error => logging::Level::Error,
        };
        logging::Host::log(self, level, message);
    }
}

fn labels(labels: Vec<metrics_v1::Label>) -> Vec<metrics::Label> {
    labels
        .into_iter()
        .map(|l| metrics::Label {
            name: l.name,
            value: l.value,
        })
        .collect()
}

impl metrics_v1::Host for HostImports {
    fn counter_add(&mut self, name: String, value: u64, l: Vec<metrics_v1::Label>) {
        metrics::Host::counter_add(self, name, value, labels(l));
    }

    fn gauge_set(&mut self, name: String, value: f64, l: Vec<metrics_v1::Label>) {
        metrics::Host::gauge_set(self, name, value, labels(l));
    }

    fn histogram_observe(&mut self, name: String, value: f64, l: Vec<metrics_v1::Label>) {
        metrics::Host::histogram_observe(self, name, value, labels(l));
    }
}

impl state_v1::Host for HostImports {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        state::Host::get(self, key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        state::Host::set(self, key, value)
    }

    fn delete(&mut self, key: String) {
        state::Host::delete(self, key)
    }
}

/// Add the 0.1.0 host interfaces to a linker, beside the 0.2.0 ones.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut HostImports,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    logging_v1::add_to_linker::<T, HasSelf<HostImports>>(linker, get)?;
    metrics_v1::add_to_linker::<T, HasSelf<HostImports>>(linker, get)?;
    state_v1::add_to_linker::<T, HasSelf<HostImports>>(linker, get)?;
    Ok(())
}
