//! `json-schema`: validates each JSON message against a JSON Schema (draft 2020-12 unless the
//! schema's `$schema` names another draft), with the `jsonschema` crate.
//!
//! ```toml
//! [plugins.check]
//! path = "target/plugins/json-schema.wasm"
//! config = { schema = "/schemas/order.json" }
//! grants = { dirs = [{ host = "schemas", guest = "/schemas", mode = "ro" }] }
//! ```
//!
//! A valid message passes on untouched (`keep`). An invalid one fails with `invalid-data`
//! (the dead-letter channel, with `on_error = "dead-letter"`) whose message gives, for each
//! error up to `max_errors`, the JSON pointer into the document, what is wrong, and the rule
//! broken with its place in the schema:
//! `/items/0/qty: 0 is less than the minimum of 1 (rule minimum at /properties/items/items/properties/qty/minimum)`.
//! A payload that is not JSON fails the same way.
//!
//! The schema file is read once, at `init`, through the plugin's grants (`ro` is enough). A
//! file that cannot be read, is not JSON or is not a valid schema stops the start with an
//! error naming it. References (`$ref`) resolve within the schema (`$defs`); remote ones do
//! not (the crate's HTTP and file resolvers are left out: a plugin reaches only its grants).

use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform, files};

const KEYS: &[Key] = &[
    Key::text(
        "schema",
        "Path of the JSON Schema file, inside a granted directory (e.g. /schemas/order.json).",
    )
    .required(),
    Key::uint(
        "max_errors",
        "How many errors one failed message reports, 1 to 100 (the first ones, in document order).",
    )
    .default("10")
    .range(1, 100),
];

pub struct JsonSchema {
    validator: jsonschema::Validator,
    max_errors: usize,
}

impl Transform for JsonSchema {
    fn metadata() -> Metadata {
        Metadata::new(
            "json-schema",
            env!("CARGO_PKG_VERSION"),
            "Validates JSON messages against a JSON Schema (draft 2020-12); invalid ones fail with the pointer and the rule broken.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let path = c.text("schema")?;
        let text = files::read_to_string("schema", path)?;
        let schema: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::fatal(format!("config key `schema`: `{path}` is not JSON: {e}")))?;
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .map_err(|e| {
                Error::fatal(format!(
                    "config key `schema`: `{path}` is not a valid JSON Schema: {e} (at {})",
                    pointer(e.instance_path().as_str())
                ))
            })?;
        Ok(JsonSchema {
            validator,
            max_errors: c.uint("max_errors")? as usize,
        })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let doc: serde_json::Value = match serde_json::from_slice(&message.payload) {
            Ok(doc) => doc,
            Err(e) => {
                return Outcome::Fail(Error::invalid_data(format!("payload is not JSON: {e}")));
            }
        };
        let mut errors = self.validator.iter_errors(&doc).peekable();
        if errors.peek().is_none() {
            return Outcome::Keep;
        }
        let mut lines = Vec::new();
        let mut more = 0usize;
        for e in errors {
            if lines.len() == self.max_errors {
                more += 1;
                continue;
            }
            lines.push(format!(
                "{}: {e} (rule {} at {})",
                pointer(e.instance_path().as_str()),
                e.kind().keyword(),
                pointer(e.schema_path().as_str()),
            ));
        }
        let mut text = format!("payload does not match the schema: {}", lines.join("; "));
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        Outcome::Fail(Error::invalid_data(text))
    }
}

/// A JSON pointer as shown: `/` for the whole document.
fn pointer(p: &str) -> &str {
    if p.is_empty() { "/" } else { p }
}

patchbay_sdk::export_transform!(JsonSchema);
