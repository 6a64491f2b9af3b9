//! `protobuf`: encodes JSON messages as Protocol Buffers, or decodes them back to JSON, by a
//! message type from a `.proto` file (compiled at `init` by protox, imports resolved beside it)
//! or from a descriptor set (`protoc --descriptor_set_out --include_imports`), read through the
//! plugin's grants (`prost-reflect`).
//!
//! ```toml
//! [plugins.to_pb]
//! path = "target/plugins/protobuf.wasm"
//! config = { mode = "encode", proto = "/protos/order.proto", message = "shop.Order" }
//! grants = { dirs = [{ host = "protos", guest = "/protos", mode = "ro" }] }
//! ```
//!
//! JSON follows protobuf's canonical JSON mapping both ways: field names as `json_name`
//! (lowerCamelCase; the proto names are accepted on input too), enums by name, 64-bit integers
//! as strings on output, bytes as base64, fields with their default value left out on output.
//! So encode then decode gives back the input for a document in that canonical form. An unknown
//! field, a wrong type or bytes that are not the message fail with `invalid-data` saying why;
//! a descriptor that cannot be read or compiled, or a message type it lacks, stops the start.

use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform, files};
use prost_reflect::prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

const KEYS: &[Key] = &[
    Key::choice(
        "mode",
        &["encode", "decode"],
        "encode: JSON to protobuf bytes; decode: protobuf bytes to JSON.",
    )
    .required(),
    Key::text(
        "message",
        "Full name of the message type, with its package: \"shop.Order\".",
    )
    .required(),
    Key::text(
        "proto",
        "Path of a .proto file in a granted directory (its imports are looked up in that directory). Give this or descriptor_set.",
    )
    .default(""),
    Key::text(
        "descriptor_set",
        "Path of a binary FileDescriptorSet in a granted directory (protoc --descriptor_set_out --include_imports). Give this or proto.",
    )
    .default(""),
];

pub struct Protobuf {
    message: MessageDescriptor,
    encode: bool,
}

impl Transform for Protobuf {
    fn metadata() -> Metadata {
        Metadata::new(
            "protobuf",
            env!("CARGO_PKG_VERSION"),
            "Encodes JSON as Protocol Buffers, or decodes them to JSON, by a .proto file or a descriptor set.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let pool = match (c.text_opt("proto")?, c.text_opt("descriptor_set")?) {
            (Some(proto), None) => compile(proto)?,
            (None, Some(set)) => {
                let bytes = files::read("descriptor_set", set)?;
                DescriptorPool::decode(bytes.as_slice()).map_err(|e| {
                    Error::fatal(format!(
                        "config key `descriptor_set`: `{set}` is not a FileDescriptorSet: {e}"
                    ))
                })?
            }
            _ => {
                return Err(Error::fatal(
                    "give one of the config keys `proto` (a .proto file) or `descriptor_set` \
                     (a protoc descriptor set), not both and not neither",
                ));
            }
        };
        let name = c.text("message")?;
        let message = pool.get_message_by_name(name).ok_or_else(|| {
            let known: Vec<String> = pool
                .all_messages()
                .map(|m| m.full_name().to_owned())
                .take(20)
                .collect();
            Error::fatal(format!(
                "config key `message`: no message type `{name}` in the descriptors; they have: {}",
                known.join(", ")
            ))
        })?;
        Ok(Protobuf {
            message,
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

impl Protobuf {
    fn encode(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let mut json = serde_json::Deserializer::from_slice(payload);
        let msg = DynamicMessage::deserialize(self.message.clone(), &mut json)
            .map_err(|e| format!("payload is not a {} in JSON: {e}", self.message.full_name()))?;
        json.end()
            .map_err(|e| format!("payload has more after the JSON document: {e}"))?;
        Ok(msg.encode_to_vec())
    }

    fn decode(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let msg = DynamicMessage::decode(self.message.clone(), payload).map_err(|e| {
            format!(
                "payload is not a {} in protobuf: {e}",
                self.message.full_name()
            )
        })?;
        serde_json::to_vec(&msg).map_err(|e| format!("cannot write JSON: {e}"))
    }
}

/// Compile a .proto file with its folder as the include path.
fn compile(path: &str) -> Result<DescriptorPool, Error> {
    let file = std::path::Path::new(path);
    let folder = file.parent().unwrap_or(std::path::Path::new("/"));
    let name = file.file_name().map(std::path::Path::new).unwrap_or(file);
    // Check the file first: protox's own error for a missing one does not name the grant.
    std::fs::metadata(path).map_err(|e| files::unreadable("proto", path, &e))?;
    let set = protox::compile([name], [folder]).map_err(|e| {
        Error::fatal(format!(
            "config key `proto`: `{path}` does not compile: {e}"
        ))
    })?;
    DescriptorPool::from_file_descriptor_set(set).map_err(|e| {
        Error::fatal(format!(
            "config key `proto`: `{path}` gives bad descriptors: {e}"
        ))
    })
}

patchbay_sdk::export_transform!(Protobuf);
