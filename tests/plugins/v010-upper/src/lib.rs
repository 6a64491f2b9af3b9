//! `v010-upper` (test only): a transform built against contract **0.1.0** (`wit/0.1.0/`, the
//! typed world `transform`, plain wit-bindgen), as a third party built it before 0.2.0. The
//! host must keep loading it unchanged (wit/README.md, rule 22). It upper-cases each payload,
//! adds the header `v010: upper`, and logs through the 0.1.0 `logging` import once.

wit_bindgen::generate!({
    path: "../../../wit/0.1.0",
    world: "patchbay:connector/transform@0.1.0",
    generate_all,
});

use exports::patchbay::connector::{plugin, transform_api};
use patchbay::connector::logging::{Level, log};
use patchbay::connector::types::{
    ConfigEntry, Error, ErrorKind, Header, Message, Metadata, Outcome,
};

struct Upper;

impl plugin::Guest for Upper {
    fn describe() -> Metadata {
        Metadata {
            name: "v010-upper".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test only: upper-cases payloads (contract 0.1.0).".into(),
            config_keys: Vec::new(),
        }
    }

    fn init(_config: Vec<ConfigEntry>) -> Result<(), Error> {
        log(Level::Info, "built against contract 0.1.0");
        Ok(())
    }
}

impl transform_api::Guest for Upper {
    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        batch
            .into_iter()
            .map(|mut m| match String::from_utf8(m.payload) {
                Ok(text) => {
                    m.payload = text.to_uppercase().into_bytes();
                    m.headers.push(Header {
                        name: "v010".into(),
                        value: "upper".into(),
                    });
                    Outcome::Replace(vec![m])
                }
                Err(_) => Outcome::Fail(Error {
                    kind: ErrorKind::InvalidData,
                    message: "payload is not UTF-8".into(),
                }),
            })
            .collect()
    }
}

export!(Upper);
