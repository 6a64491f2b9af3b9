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

/// How many instances of a stage run: a count, or `"auto"` (one per core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// This many.
    Count(u64),
    /// As many as the machine has cores.
    Auto,
}

impl Concurrency {
    /// The number of instances (`auto` asks the operating system how many cores there are).
    pub fn count(self) -> u64 {
        match self {
            Concurrency::Count(n) => n,
            Concurrency::Auto => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Concurrency;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of instances, e.g. 4, or \"auto\" (one per core)")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Concurrency, E> {
                u64::try_from(n).map(Concurrency::Count).map_err(|_| {
                    E::custom(format!(
                        "concurrency {n} is not a number of instances: write 1 or more, or \"auto\""
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Concurrency, E> {
                Ok(Concurrency::Count(n))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Concurrency, E> {
                if text.trim() == "auto" {
                    Ok(Concurrency::Auto)
                } else {
                    Err(E::custom(format!(
                        "concurrency `{text}` is not a number: write a count, e.g. 4, or \"auto\" (one instance per core)"
                    )))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
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

impl JsonSchema for Concurrency {
    fn schema_name() -> Cow<'static, str> {
        "Concurrency".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of instances (1 or more), or \"auto\" for one per core.",
            "oneOf": [
                { "type": "integer", "minimum": 1 },
                { "const": "auto" }
            ]
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
