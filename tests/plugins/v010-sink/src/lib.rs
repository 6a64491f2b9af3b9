//! `v010-sink` (test only): a sink built against contract **0.1.0** (`wit/0.1.0/`, the typed
//! world `sink`, plain wit-bindgen). It appends each payload as one line to the file named by
//! config key `path` (granted through a pipeline file) and counts what it wrote in the 0.1.0
//! `state` import (key `written`), so a test sees both imports of the old contract answered.

wit_bindgen::generate!({
    path: "../../../wit/0.1.0",
    world: "patchbay:connector/sink@0.1.0",
    generate_all,
});

use std::cell::RefCell;
use std::io::Write;

use exports::patchbay::connector::{plugin, sink_api};
use patchbay::connector::state;
use patchbay::connector::types::{ConfigEntry, ConfigKey, Error, ErrorKind, Message, Metadata};

thread_local! {
    static PATH: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn error(kind: ErrorKind, message: String) -> Error {
    Error { kind, message }
}

struct Lines;

impl plugin::Guest for Lines {
    fn describe() -> Metadata {
        Metadata {
            name: "v010-sink".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test only: appends payloads to a file (contract 0.1.0).".into(),
            config_keys: vec![ConfigKey {
                name: "path".into(),
                description: "File to append to (granted).".into(),
                required: true,
                default_value: None,
            }],
        }
    }

    fn init(config: Vec<ConfigEntry>) -> Result<(), Error> {
        let path = config
            .into_iter()
            .find(|e| e.key == "path")
            .map(|e| e.value)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| error(ErrorKind::Fatal, "`path`: give a file name".into()))?;
        PATH.with(|p| *p.borrow_mut() = Some(path));
        Ok(())
    }
}

impl sink_api::Guest for Lines {
    fn write(batch: Vec<Message>) -> Vec<Result<(), Error>> {
        let Some(path) = PATH.with(|p| p.borrow().clone()) else {
            return batch
                .iter()
                .map(|_| Err(error(ErrorKind::Fatal, "used before init".into())))
                .collect();
        };
        let mut text = Vec::new();
        for m in &batch {
            text.extend_from_slice(&m.payload);
            text.push(b'\n');
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&text));
        if let Err(e) = written {
            let e = error(ErrorKind::Retryable, format!("{path}: {e}"));
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        let before = state::get("written")
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let now = before + batch.len() as u64;
        let _ = state::set("written", now.to_string().as_bytes());
        batch.iter().map(|_| Ok(())).collect()
    }
}

export!(Lines);
