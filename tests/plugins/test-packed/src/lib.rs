//! `test-packed` (test only): a transform written without the SDK, straight from `wit/0.1.0/`
//! (contract 0.1.0, so that the host keeps loading it: wit/README.md, rule 22)
//! (world `transform-packed`), that keeps every message. Its `process-packed` answers like
//! `process` unless the environment variable `BREAK` (granted through a pipeline file) says:
//!
//! - `differs`: `process-packed` drops every message that `process` keeps (rule 23);
//! - `malformed`: `process-packed` answers three bytes that are not a frame (rule 23).

wit_bindgen::generate!({
    path: "../../../wit/0.1.0",
    world: "patchbay:connector/transform-packed@0.1.0",
    generate_all,
});

use exports::patchbay::connector::{plugin, transform_api, transform_packed_api};
use patchbay::connector::types::{ConfigEntry, Error, Message, Metadata, Outcome};

struct Packed;

impl plugin::Guest for Packed {
    fn describe() -> Metadata {
        Metadata {
            name: "test-packed".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test only: keeps every message, through either call.".into(),
            config_keys: Vec::new(),
        }
    }

    fn init(_config: Vec<ConfigEntry>) -> Result<(), Error> {
        Ok(())
    }
}

impl transform_api::Guest for Packed {
    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        batch.iter().map(|_| Outcome::Keep).collect()
    }
}

impl transform_packed_api::Guest for Packed {
    fn process_packed(batch: Vec<u8>) -> Vec<u8> {
        let mode = std::env::var("BREAK").unwrap_or_default();
        if mode == "malformed" {
            return vec![9, 9, 9];
        }
        let mut r = patchbay_frame::Reader::new(&batch);
        let n = r.count().unwrap_or(0);
        let mut w = patchbay_frame::Writer::default();
        w.count(n);
        for _ in 0..n {
            if mode == "differs" {
                w.drop_message();
            } else {
                w.keep();
            }
        }
        w.finish()
    }
}

export!(Packed);
