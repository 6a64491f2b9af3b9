//! The contract's data types (generated from `wit/types.wit`) and constructors for them.

pub use crate::bindings::types::{
    Answer, ConfigEntry, ConfigKey, Error, ErrorKind, Header, Message, Metadata, Outcome,
    PollResult, SourceBatch,
};

impl Error {
    /// A transient failure (a timeout, a broker that is restarting): the host may retry.
    pub fn retryable(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// This record can never succeed (malformed JSON, a schema mismatch): do not retry.
    pub fn invalid_data(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::InvalidData,
            message: message.into(),
        }
    }

    /// The plugin cannot go on (bad configuration, lost credentials).
    pub fn fatal(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Fatal,
            message: message.into(),
        }
    }
}

impl Message {
    /// A message with this payload, no key, no headers and no timestamp.
    pub fn new(payload: impl Into<Vec<u8>>) -> Message {
        Message {
            payload: payload.into(),
            key: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// A copy of this message's key, headers and timestamp around a new payload: what a
    /// transform returns in [`Outcome::Replace`] when it rewrites the body.
    pub fn with_payload(&self, payload: impl Into<Vec<u8>>) -> Message {
        Message {
            payload: payload.into(),
            key: self.key.clone(),
            headers: self.headers.clone(),
            timestamp: self.timestamp,
        }
    }

    /// Set the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Message {
        self.key = Some(key.into());
        self
    }

    /// Append a header (names may repeat).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Set the event time, in milliseconds since the Unix epoch.
    pub fn with_timestamp(mut self, millis: u64) -> Message {
        self.timestamp = Some(millis);
        self
    }

    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    /// The payload as UTF-8 text, or an `invalid-data` error saying where it is not.
    pub fn payload_str(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| Error::invalid_data(format!("payload is not UTF-8 text: {e}")))
    }
}

impl Metadata {
    /// Metadata with no config keys; declare them with [`Metadata::key`].
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Metadata {
        Metadata {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            config_keys: Vec::new(),
        }
    }

    /// Declare one config key. The host refuses keys a plugin does not declare.
    pub fn key(mut self, key: ConfigKey) -> Metadata {
        self.config_keys.push(key);
        self
    }
}

impl ConfigKey {
    /// A key `init` cannot do without. Say its format in `doc`.
    pub fn required(name: impl Into<String>, doc: impl Into<String>) -> ConfigKey {
        ConfigKey {
            name: name.into(),
            description: doc.into(),
            required: true,
            default_value: None,
        }
    }

    /// A key with a default, rendered as text for `patchbay inspect`. Say its format in `doc`.
    pub fn optional(
        name: impl Into<String>,
        doc: impl Into<String>,
        default: impl Into<String>,
    ) -> ConfigKey {
        ConfigKey {
            name: name.into(),
            description: doc.into(),
            required: false,
            default_value: Some(default.into()),
        }
    }
}

impl PollResult {
    /// A batch of messages with the checkpoint that acknowledges them.
    pub fn batch(messages: Vec<Message>, checkpoint: u64) -> PollResult {
        PollResult::Batch(SourceBatch {
            messages,
            checkpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders() {
        let m = Message::new("body")
            .with_key("k")
            .with_header("a", "1")
            .with_header("a", "2")
            .with_timestamp(7);
        assert_eq!(m.header("a"), Some("1"));
        assert_eq!(m.key.as_deref(), Some(&b"k"[..]));
        let r = m.with_payload("new");
        assert_eq!(r.payload, b"new");
        assert_eq!(
            (r.key, r.headers.len(), r.timestamp),
            (m.key.clone(), 2, Some(7))
        );
        assert_eq!(m.payload_str().unwrap(), "body");
        let bad = Message::new(vec![0xff]).payload_str().unwrap_err();
        assert_eq!(bad.kind, ErrorKind::InvalidData);

        assert_eq!(Error::fatal("x").kind, ErrorKind::Fatal);
        assert_eq!(Error::retryable("x").kind, ErrorKind::Retryable);
        let key = ConfigKey::optional("size", "Bytes.", "64");
        assert_eq!(
            (key.required, key.default_value.as_deref()),
            (false, Some("64"))
        );
        assert!(ConfigKey::required("path", "A path.").required);
    }
}
