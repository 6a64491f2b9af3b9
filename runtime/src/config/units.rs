//! Values with their own syntax in the pipeline file: sizes (`"64MiB"`) and durations
//! (`"250ms"`), with their JSON Schema (a string of that shape).

use std::borrow::Cow;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer};

/// A size such as `"64MiB"`, `"512KiB"` or `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_size(&text).map(Size).map_err(de::Error::custom)
    }
}

/// Parse a size with a unit: `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let has_unit = trimmed.chars().any(|c| c.is_ascii_alphabetic());
    if has_unit && let Ok(size) = trimmed.parse::<bytesize::ByteSize>() {
        return Ok(size.as_u64());
    }
    Err(format!(
        "invalid size `{text}`: write a number and a unit, e.g. \"64MiB\", \"512KiB\", \"1GB\""
    ))
}

/// A duration such as `"250ms"`, `"5s"` or `"1m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

/// Parse a duration with a unit: `ms`, `s`, `m`, `h` (and combinations like `1m30s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        format!(
            "invalid duration `{text}`: write a number and a unit, e.g. \"250ms\", \"5s\", \"1m\""
        )
    })
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A size with a unit: B, KB/KiB, MB/MiB, GB/GiB, e.g. \"64MiB\", \"512KiB\".",
            "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[KMGTPkmgtp]?[Ii]?[Bb]\\s*$"
        })
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration with a unit: ms, s, m, h (and combinations like \"1m30s\"), e.g. \"250ms\", \"5s\".",
            "pattern": "^\\s*([0-9]+\\s*(ns|nsec|us|usec|µs|ms|msec|s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days|w|week|weeks)\\s*)+$"
        })
    }
}
