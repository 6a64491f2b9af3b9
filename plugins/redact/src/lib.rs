//! `redact`: replaces the values of JSON fields (dotted paths, `user.email`) with a mask, e.g.
//! before messages leave for a system that must not see personal data.
//!
//! ```toml
//! [plugins.redact.config]
//! fields = ["email", "card.number"]
//! mask = "***"
//! ```
//!
//! A payload that is not a JSON object fails with `invalid-data`; a message with none of the
//! fields passes on untouched (`keep`). The same transform is written in Python
//! (`sdk-python/examples/redact`) and JavaScript (`sdk-js/examples/redact`); the benchmark
//! compares the three.

use patchbay_sdk::json::Value;
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform, metrics};

const KEYS: &[Key] = &[
    Key::json(
        "fields",
        "Array of dotted field paths to blank, e.g. [\"email\", \"card.number\"].",
    )
    .required(),
    Key::text("mask", "Text that replaces each value.").default("***"),
];

struct Redact {
    fields: Vec<String>,
    mask: Value,
}

impl Transform for Redact {
    fn metadata() -> Metadata {
        Metadata::new(
            "redact",
            env!("CARGO_PKG_VERSION"),
            "Replaces the values of JSON fields (dotted paths) with a mask.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let fields: Vec<String> = c
            .json("fields")?
            .ok_or_else(|| c.invalid("fields", "an array of dotted field paths"))?;
        if fields.iter().any(|f| f.split('.').any(str::is_empty)) {
            return Err(c.invalid(
                "fields",
                "an array of dotted paths like [\"user.email\"], without empty segments",
            ));
        }
        let mask = Value::String(c.text("mask")?.to_owned());
        Ok(Redact { fields, mask })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let mut doc: Value = match serde_json::from_slice(&message.payload) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Outcome::Fail(Error::invalid_data("payload is not a JSON object")),
            Err(e) => {
                return Outcome::Fail(Error::invalid_data(format!("payload is not JSON: {e}")));
            }
        };
        let mut changed = 0u64;
        for path in &self.fields {
            if let Some(value) = patchbay_sdk::json::get_mut(&mut doc, path) {
                *value = self.mask.clone();
                changed += 1;
            }
        }
        if changed == 0 {
            return Outcome::Keep;
        }
        metrics::counter_add("redacted_fields_total", changed, &[]);
        match serde_json::to_vec(&doc) {
            Ok(payload) => Outcome::Replace(vec![message.with_payload(payload)]),
            Err(e) => Outcome::Fail(Error::invalid_data(format!("cannot encode JSON: {e}"))),
        }
    }
}

patchbay_sdk::export_transform!(Redact);
