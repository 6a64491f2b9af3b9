//! `avro`: encodes JSON messages as Avro binary datums, or decodes them back to JSON, by one
//! Avro schema read from a granted file (`apache-avro`).
//!
//! ```toml
//! [plugins.to_avro]
//! path = "target/plugins/avro.wasm"
//! config = { mode = "encode", schema = "/schemas/order.avsc" }
//! grants = { dirs = [{ host = "schemas", guest = "/schemas", mode = "ro" }] }
//! ```
//!
//! - `encode`: the payload, a JSON value, is resolved against the schema (an object becomes a
//!   record, field by field, defaults applied to missing fields; a string an enum symbol; a
//!   value the first union branch that takes it) and written as one Avro binary datum, with no
//!   header: the schema travels out of band, as in Kafka's raw Avro.
//! - `decode`: the payload, one datum, is read with the schema and written as JSON: records and
//!   maps as objects (record fields in schema order), enums as their symbol, unions as the
//!   branch's value, bytes and fixed as arrays of numbers, logical dates and times as numbers.
//!
//! So `encode` then `decode` gives back the input's JSON for every value JSON and Avro share.
//! A payload that does not match the schema fails with `invalid-data` saying why; a schema file
//! that cannot be read or parsed stops the start, naming it.

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform, files};

const KEYS: &[Key] = &[
    Key::choice(
        "mode",
        &["encode", "decode"],
        "encode: JSON to an Avro binary datum; decode: an Avro binary datum to JSON.",
    )
    .required(),
    Key::text(
        "schema",
        "Path of the Avro schema (.avsc, JSON), inside a granted directory.",
    )
    .required(),
];

pub struct AvroTransform {
    schema: Schema,
    encode: bool,
}

impl Transform for AvroTransform {
    fn metadata() -> Metadata {
        Metadata::new(
            "avro",
            env!("CARGO_PKG_VERSION"),
            "Encodes JSON as Avro binary datums, or decodes them to JSON, by a schema file.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let path = c.text("schema")?;
        let text = files::read_to_string("schema", path)?;
        let schema = Schema::parse_str(&text).map_err(|e| {
            Error::fatal(format!(
                "config key `schema`: `{path}` is not an Avro schema: {e}"
            ))
        })?;
        Ok(AvroTransform {
            schema,
            encode: c.choice("mode")? == "encode",
        })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let result = if self.encode {
            self.encode(&message.payload)
        } else {
            self.decode(&message.payload)
        };
        match result {
            Ok(bytes) => Outcome::Replace(vec![message.with_payload(bytes)]),
            Err(e) => Outcome::Fail(Error::invalid_data(e)),
        }
    }
}

impl AvroTransform {
    fn encode(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let json: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        let value = Avro::from(json)
            .resolve(&self.schema)
            .map_err(|e| format!("payload does not match the Avro schema: {e}"))?;
        apache_avro::to_avro_datum(&self.schema, value)
            .map_err(|e| format!("cannot encode the payload as Avro: {e}"))
    }

    fn decode(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let mut reader = payload;
        let value = apache_avro::from_avro_datum(&self.schema, &mut reader, None)
            .map_err(|e| format!("payload is not an Avro datum of the schema: {e}"))?;
        if !reader.is_empty() {
            return Err(format!(
                "payload is not one Avro datum of the schema: {} bytes left after it",
                reader.len()
            ));
        }
        let json = serde_json::Value::try_from(value)
            .map_err(|e| format!("the datum has no JSON form: {e}"))?;
        serde_json::to_vec(&json).map_err(|e| format!("cannot write JSON: {e}"))
    }
}

patchbay_sdk::export_transform!(AvroTransform);
