//! [`Key`]: a plugin's config keys declared once, for both its [`Metadata`] and `init`.
//!
//! ```
//! use std::time::Duration;
//! use patchbay_sdk::{Config, Error, Key, Metadata};
//!
//! const KEYS: &[Key] = &[
//!     Key::text("url", "`nats://host:port`; must be granted in `grants.tcp`.")
//!         .default("nats://127.0.0.1:4222"),
//!     Key::choice("mode", &["core", "jetstream"], "How to read.").default("core"),
//!     Key::duration("ack_wait", "How long the server waits for an ack.")
//!         .default("30s")
//!         .range(100, 86_400_000)
//!         .alias_ms("ack_wait_ms"),
//!     Key::uint("max_ack_pending", "Most unacknowledged messages.")
//!         .default("10000")
//!         .range(1, 10_000_000),
//!     Key::text("stream", "The stream to read.").required(),
//! ];
//!
//! // In `metadata()`:
//! let meta = Metadata::new("nats-source", "0.1.0", "Reads NATS.").keys(KEYS);
//! assert_eq!(meta.config_keys.len(), 6); // `ack_wait_ms` is listed too, as deprecated
//!
//! // In `init(config)`:
//! let config = Config::from_pairs([("stream", "ORDERS"), ("ack_wait_ms", "5000")]);
//! let c = config.checked(KEYS)?;
//! assert_eq!(c.text("url")?, "nats://127.0.0.1:4222");
//! assert_eq!(c.duration("ack_wait")?, Duration::from_secs(5));
//! assert_eq!(c.uint("max_ack_pending")?, 10_000);
//! # Ok::<(), Error>(())
//! ```
//!
//! Defaults are written once, in the declaration, as the text a user would write in the
//! pipeline file; the accessors apply them. [`Config::checked`] reads every declared key
//! up front (so a bad value is reported by `init` whether or not the plugin reads it) and
//! refuses a missing required key, a value of the wrong format or out of range, and a key given
//! under both its name and its old `*_ms` name. Reading a key that is not declared, or with an
//! accessor of another type, is a bug of the plugin: the accessor returns a fatal error naming
//! the key (never a panic).

use std::time::Duration;

use crate::{Config, ConfigKey, Error, Metadata};

/// What a key holds, and so which accessor reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Any text: [`Settings::text`].
    Text,
    /// One word of a fixed list: [`Settings::choice`].
    Choice(&'static [&'static str]),
    /// An unsigned integer: [`Settings::uint`].
    Uint,
    /// A signed integer: [`Settings::int`].
    Int,
    /// A number (`f64`): [`Settings::float`].
    Float,
    /// `true` or `false`: [`Settings::bool`].
    Bool,
    /// A duration with a unit, `"250ms"`, `"5s"`, `"1m30s"`: [`Settings::duration`].
    Duration,
    /// A size with a unit, `"512KiB"`, `"64MiB"`, or a number of bytes: [`Settings::size`].
    Size,
    /// A JSON value (a TOML array or table): [`Settings::json`].
    Json,
}

impl Kind {
    fn describe(self) -> String {
        match self {
            Kind::Text => "text".to_owned(),
            Kind::Json => "JSON".to_owned(),
            Kind::Choice(words) => {
                let list: Vec<String> = words.iter().map(|c| format!("`{c}`")).collect();
                format!("one of {}", list.join(", "))
            }
            Kind::Uint => "an unsigned integer".to_owned(),
            Kind::Int => "an integer".to_owned(),
            Kind::Float => "a number".to_owned(),
            Kind::Bool => "true or false".to_owned(),
            Kind::Duration => "a duration such as `250ms`, `5s` or `1m`".to_owned(),
            Kind::Size => "a size such as `512KiB` or `64MiB`, or a number of bytes".to_owned(),
        }
    }
}

/// One config key: its name, documentation, type, default and limits. Build it with the
/// `const fn` constructors so that a plugin's keys can be one `const KEYS: &[Key]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Key {
    name: &'static str,
    doc: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    required: bool,
    alias_ms: Option<&'static str>,
    range: Option<(u64, u64)>,
    note: Option<&'static str>,
}

impl Key {
    const fn new(name: &'static str, kind: Kind, doc: &'static str) -> Key {
        Key {
            name,
            doc,
            kind,
            default: None,
            required: false,
            alias_ms: None,
            range: None,
            note: None,
        }
    }

    /// Any text.
    pub const fn text(name: &'static str, doc: &'static str) -> Key {
        Key::new(name, Kind::Text, doc)
    }

    /// One of `words`; the error lists them.
    pub const fn choice(
        name: &'static str,
        words: &'static [&'static str],
        doc: &'static str,
    ) -> Key {
        Key::new(name, Kind::Choice(words), doc)
    }

    /// An unsigned integer (`u64`).
    pub const fn uint(name: &'static str, doc: &'static str) -> Key {
        Key::new(name, Kind::Uint, doc)
    }

    /// A signed integer (`i64`).
    pub const fn int(name: &'static str, doc: &'static str) -> Key {
        Key::new(name, Kind::Int, doc)
    }

    /// A number (`f64`).
    pub const fn float(name: &'static str, doc: &'static str) -> Key {
        Key::new(name, Kind::Float, doc)
    }

    /// `true` or `false`.
    pub const fn bool(name: &'static str, doc: &'static str) -> Key {
        Key::new(name, Kind::Bool, doc)
    }

    /// A duration written like the pipeline file's: `"250ms"`, `"5s"`, `"1m30s"`.
    pub const fn duration(name: &'static str, doc: &'static str) -> Key {
        Key::new(name, Kind::Duration, doc)
    }

    /// A size written like the pipeline file's: `"512KiB"`, `"64MiB"`, `"1GB"`; a plain
    /// integer is a number of bytes.
    pub const fn size(name: &'static str, doc: &'static str) -> Key {
        Key::new(name, Kind::Size, doc)
    }

    /// A JSON value: a TOML array or table (or a string), read with [`Settings::json`].
    pub const fn json(name: &'static str, doc: &'static str) -> Key {
        Key::new(name, Kind::Json, doc)
    }

    /// The value used when the key is absent, written as in the pipeline file (`"30s"`,
    /// `"10000"`, `"[]"`); shown by `patchbay inspect`.
    pub const fn default(self, value: &'static str) -> Key {
        Key {
            default: Some(value),
            ..self
        }
    }

    /// The key must be given (`patchbay validate` says so before `init` runs).
    pub const fn required(self) -> Key {
        Key {
            required: true,
            ..self
        }
    }

    /// Inclusive limits, in the key's unit: the number for `uint`, milliseconds for
    /// `duration`, bytes for `size`.
    pub const fn range(self, min: u64, max: u64) -> Key {
        Key {
            range: Some((min, max)),
            ..self
        }
    }

    /// Why the range is what it is, added in parentheses to the range error, e.g.
    /// `"a poll must end within its call deadline"`.
    pub const fn note(self, why: &'static str) -> Key {
        Key {
            note: Some(why),
            ..self
        }
    }

    /// For a `duration`: an older key, an integer number of milliseconds, still accepted in
    /// its place. Listed in the metadata as deprecated; giving both is an error.
    pub const fn alias_ms(self, old: &'static str) -> Key {
        Key {
            alias_ms: Some(old),
            ..self
        }
    }

    /// The key's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// What the key holds.
    pub const fn kind(&self) -> Kind {
        self.kind
    }

    /// The metadata entries of this key: itself, then its old `*_ms` name if any.
    pub fn config_keys(&self) -> Vec<ConfigKey> {
        // The note about the old name goes before the doc's final period, if any.
        let description = match self.alias_ms {
            None => self.doc.to_owned(),
            Some(old) => {
                let (doc, end) = match self.doc.strip_suffix('.') {
                    Some(doc) => (doc, "."),
                    None => (self.doc, ""),
                };
                format!("{doc} (`{old}`, in milliseconds, is still accepted){end}")
            }
        };
        let mut out = vec![ConfigKey {
            name: self.name.to_owned(),
            description,
            required: self.required,
            default_value: self.default.map(str::to_owned),
        }];
        if let Some(old) = self.alias_ms {
            out.push(ConfigKey {
                name: old.to_owned(),
                description: format!(
                    "deprecated: use `{}`; the same duration as an integer number of milliseconds.",
                    self.name
                ),
                required: false,
                default_value: None,
            });
        }
        out
    }
}

impl Metadata {
    /// Declare every key of `keys` (and their deprecated `*_ms` names), in order.
    pub fn keys(mut self, keys: &[Key]) -> Metadata {
        for key in keys {
            self.config_keys.extend(key.config_keys());
        }
        self
    }
}

impl Config {
    /// Check the configuration against the plugin's declared keys: required keys are there,
    /// every declared key given has a value of its type within its range, and no key is given
    /// under both its name and its old name. The [`Settings`] read the values, defaults
    /// applied.
    pub fn checked<'a>(&'a self, keys: &'a [Key]) -> Result<Settings<'a>, Error> {
        let settings = Settings { config: self, keys };
        for key in keys {
            let found = settings.found(key)?;
            if found.is_none() && key.required {
                return Err(Error::fatal(format!(
                    "config key `{}` is required but missing",
                    key.name
                )));
            }
            settings.value(key, found)?;
        }
        Ok(settings)
    }
}

/// Where a key's value comes from.
#[derive(Clone, Copy)]
struct Found<'a> {
    /// The name the user wrote (the key's, or its old `*_ms` name).
    used: &'a str,
    text: &'a str,
    alias: bool,
}

/// A parsed value.
enum Value {
    Text,
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Duration(Duration),
}

/// The configuration checked against the declared [`Key`]s, from [`Config::checked`]. The
/// accessors return the value given, else the declared default.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    config: &'a Config,
    keys: &'a [Key],
}

impl<'a> Settings<'a> {
    /// The configuration as given.
    pub fn config(&self) -> &'a Config {
        self.config
    }

    fn key(&self, name: &str) -> Result<&'a Key, Error> {
        self.keys.iter().find(|k| k.name == name).ok_or_else(|| {
            Error::fatal(format!(
                "plugin bug: config key `{name}` is read but not declared in the plugin's keys"
            ))
        })
    }

    fn key_of(&self, name: &str, kind: Kind, what: &str) -> Result<&'a Key, Error> {
        let key = self.key(name)?;
        let same = match (key.kind, kind) {
            (Kind::Choice(_), Kind::Choice(_)) => true,
            (a, b) => a == b,
        };
        if !same {
            return Err(Error::fatal(format!(
                "plugin bug: config key `{name}` is declared as {} but read as {what}",
                key.kind.describe()
            )));
        }
        Ok(key)
    }

    fn found(&self, key: &Key) -> Result<Option<Found<'a>>, Error> {
        let given = self.config.get(key.name);
        let old = key
            .alias_ms
            .and_then(|old| self.config.get(old).map(|text| (old, text)));
        match (given, old) {
            (Some(_), Some((old, _))) => Err(Error::fatal(format!(
                "config keys `{}` and `{old}` (its old name, in milliseconds) are both given; keep only `{}`",
                key.name, key.name
            ))),
            (Some(text), None) => Ok(Some(Found {
                used: key.name,
                text,
                alias: false,
            })),
            (None, Some((old, text))) => Ok(Some(Found {
                used: old,
                text,
                alias: true,
            })),
            (None, None) => Ok(key.default.map(|text| Found {
                used: key.name,
                text,
                alias: false,
            })),
        }
    }

    fn value(&self, key: &Key, found: Option<Found<'_>>) -> Result<Option<Value>, Error> {
        let Some(found) = found else {
            return Ok(None);
        };
        let text = found.text.trim();
        let bad = |expected: &str| invalid(found.used, expected, found.text);
        let value = match key.kind {
            Kind::Text | Kind::Json => Value::Text,
            Kind::Choice(words) => match words.contains(&found.text) {
                true => Value::Text,
                false => return Err(bad(&key.kind.describe())),
            },
            Kind::Uint => Value::Uint(text.parse().map_err(|_| bad(&key.kind.describe()))?),
            Kind::Int => Value::Int(text.parse().map_err(|_| bad(&key.kind.describe()))?),
            Kind::Float => Value::Float(text.parse().map_err(|_| bad(&key.kind.describe()))?),
            Kind::Bool => Value::Bool(text.parse().map_err(|_| bad(&key.kind.describe()))?),
            Kind::Duration if found.alias => Value::Duration(Duration::from_millis(
                text.parse().map_err(|_| bad("an unsigned integer"))?,
            )),
            Kind::Duration => {
                Value::Duration(parse_duration(text).ok_or_else(|| bad(&key.kind.describe()))?)
            }
            Kind::Size => Value::Uint(parse_size(text).ok_or_else(|| bad(&key.kind.describe()))?),
        };
        if let Some((min, max)) = key.range {
            let (n, expected) = match (&value, key.kind) {
                (Value::Uint(n), Kind::Size) => {
                    (u128::from(*n), range_text(min, max, format_size, ""))
                }
                (Value::Uint(n), _) => {
                    (u128::from(*n), range_text(min, max, |n| n.to_string(), ""))
                }
                (Value::Duration(d), _) if found.alias => (
                    d.as_millis(),
                    range_text(min, max, |n| n.to_string(), " milliseconds"),
                ),
                (Value::Duration(d), _) => (
                    d.as_nanos(),
                    range_text(
                        min,
                        max,
                        |ms| format_duration(Duration::from_millis(ms)),
                        "",
                    ),
                ),
                _ => return Ok(Some(value)),
            };
            let (lo, hi) = match (&value, found.alias) {
                (Value::Duration(_), false) => {
                    (u128::from(min) * 1_000_000, u128::from(max) * 1_000_000)
                }
                _ => (u128::from(min), u128::from(max)),
            };
            if n < lo || n > hi {
                let expected = match key.note {
                    Some(note) => format!("{expected} ({note})"),
                    None => expected,
                };
                return Err(bad(&expected));
            }
        }
        Ok(Some(value))
    }

    fn read(&self, name: &str, kind: Kind, what: &str) -> Result<Option<Value>, Error> {
        let key = self.key_of(name, kind, what)?;
        let found = self.found(key)?;
        self.value(key, found)
    }

    fn no_default(name: &str) -> Error {
        Error::fatal(format!(
            "plugin bug: config key `{name}` has no value and no default; give it a default, \
             make it required, or read it with the `_opt` accessor"
        ))
    }

    /// The text of a key as given, else its default; `None` when neither.
    pub fn get(&self, name: &str) -> Result<Option<&'a str>, Error> {
        let key = self.key(name)?;
        Ok(self.found(key)?.map(|f| f.text))
    }

    /// The text of a key, its default when absent, `""` when it has neither.
    pub fn text(&self, name: &str) -> Result<&'a str, Error> {
        Ok(self.get(name)?.unwrap_or_default())
    }

    /// The text of a key, `None` when absent (and no default) or empty.
    pub fn text_opt(&self, name: &str) -> Result<Option<&'a str>, Error> {
        Ok(self.get(name)?.filter(|t| !t.is_empty()))
    }

    /// The word of a `choice` key.
    pub fn choice(&self, name: &str) -> Result<&'a str, Error> {
        let key = self.key_of(name, Kind::Choice(&[]), "a choice")?;
        self.found(key)?
            .map(|f| f.text)
            .ok_or_else(|| Self::no_default(name))
    }

    /// An unsigned integer, or a size in bytes.
    pub fn uint(&self, name: &str) -> Result<u64, Error> {
        self.uint_opt(name)?.ok_or_else(|| Self::no_default(name))
    }

    /// An unsigned integer, `None` when absent with no default.
    pub fn uint_opt(&self, name: &str) -> Result<Option<u64>, Error> {
        match self.read(name, Kind::Uint, "an unsigned integer")? {
            Some(Value::Uint(n)) => Ok(Some(n)),
            _ => Ok(None),
        }
    }

    /// A signed integer.
    pub fn int(&self, name: &str) -> Result<i64, Error> {
        match self.read(name, Kind::Int, "an integer")? {
            Some(Value::Int(n)) => Ok(n),
            _ => Err(Self::no_default(name)),
        }
    }

    /// A number.
    pub fn float(&self, name: &str) -> Result<f64, Error> {
        match self.read(name, Kind::Float, "a number")? {
            Some(Value::Float(n)) => Ok(n),
            _ => Err(Self::no_default(name)),
        }
    }

    /// `true` or `false`.
    pub fn bool(&self, name: &str) -> Result<bool, Error> {
        match self.read(name, Kind::Bool, "true or false")? {
            Some(Value::Bool(b)) => Ok(b),
            _ => Err(Self::no_default(name)),
        }
    }

    /// A duration (from its old `*_ms` name too).
    pub fn duration(&self, name: &str) -> Result<Duration, Error> {
        self.duration_opt(name)?
            .ok_or_else(|| Self::no_default(name))
    }

    /// A duration, `None` when absent with no default.
    pub fn duration_opt(&self, name: &str) -> Result<Option<Duration>, Error> {
        match self.read(name, Kind::Duration, "a duration")? {
            Some(Value::Duration(d)) => Ok(Some(d)),
            _ => Ok(None),
        }
    }

    /// A size in bytes.
    pub fn size(&self, name: &str) -> Result<u64, Error> {
        match self.read(name, Kind::Size, "a size")? {
            Some(Value::Uint(n)) => Ok(n),
            _ => Err(Self::no_default(name)),
        }
    }

    /// A JSON key read into `T` as [`Config::json`] does, the default applied; `None` when
    /// absent with no default.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        let key = self.key_of(name, Kind::Json, "JSON")?;
        let Some(found) = self.found(key)? else {
            return Ok(None);
        };
        Config::from_pairs([(found.used, found.text)]).json(found.used)
    }

    /// Whether the user gave the key (or its old name), rather than its default applying.
    pub fn is_given(&self, name: &str) -> Result<bool, Error> {
        let key = self.key(name)?;
        Ok(self.config.get(key.name).is_some()
            || key
                .alias_ms
                .is_some_and(|old| self.config.get(old).is_some()))
    }

    /// The fatal error for a key whose value is not in the `expected` format:
    /// ``config key `KEY`: expected EXPECTED, got `VALUE` ``, naming the key as the user wrote
    /// it and the value in effect (the default when absent).
    pub fn invalid(&self, name: &str, expected: &str) -> Error {
        let found = self
            .keys
            .iter()
            .find(|k| k.name == name)
            .and_then(|key| self.found(key).ok().flatten());
        match found {
            Some(f) => invalid(f.used, expected, f.text),
            None => self.config.invalid(name, expected),
        }
    }
}

fn invalid(key: &str, expected: &str, got: &str) -> Error {
    Error::fatal(format!(
        "config key `{key}`: expected {expected}, got `{got}`"
    ))
}

fn range_text(min: u64, max: u64, show: impl Fn(u64) -> String, unit: &str) -> String {
    if max == u64::MAX {
        format!("at least {}{unit}", show(min))
    } else if min == 0 {
        format!("at most {}{unit}", show(max))
    } else {
        format!("{} to {}{unit}", show(min), show(max))
    }
}

/// Split `text` into a number (digits, optionally `.digits`) and the rest.
fn number(text: &str) -> Option<(u128, &str, &str)> {
    let int_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let int: u128 = text.get(..int_end)?.parse().ok()?;
    let rest = text.get(int_end..)?;
    match rest.strip_prefix('.') {
        Some(after) => {
            let frac_end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            Some((int, after.get(..frac_end)?, after.get(frac_end..)?))
        }
        None => Some((int, "", rest)),
    }
}

/// `int.frac × factor`, exactly for up to 18 fraction digits (truncated below one unit).
fn scale(int: u128, frac: &str, factor: u128) -> Option<u128> {
    let mut value = int.checked_mul(factor)?;
    let frac = frac.get(..frac.len().min(18))?;
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        let den = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        value = value.checked_add(digits.checked_mul(factor)? / den)?;
    }
    Some(value)
}

/// Parse a duration as the pipeline file writes it: one or more `NUMBER UNIT` parts, units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`/`min`, `h`, `d` (and the long forms `sec`, `secs`, `hr`,
/// `hrs`, `day`, `days`), e.g. `"250ms"`, `"5s"`, `"1m30s"`, `"1.5s"`. A small hand parser, so
/// that guests need no dependency for it.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (int, frac, after) = number(rest)?;
        let after = after.trim_start();
        let unit_end = after
            .find(|c: char| !(c.is_alphabetic()))
            .unwrap_or(after.len());
        let unit = after.get(..unit_end)?;
        let factor: u128 = match unit {
            "ns" | "nsec" => 1,
            "us" | "µs" | "usec" => 1_000,
            "ms" | "msec" => 1_000_000,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000_000,
            "d" | "day" | "days" => 86_400_000_000_000,
            _ => return None,
        };
        total = total.checked_add(scale(int, frac, factor)?)?;
        rest = after.get(unit_end..)?.trim_start();
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    let nanos = u32::try_from(total % 1_000_000_000).ok()?;
    Some(Duration::new(secs, nanos))
}

/// Parse a size as the pipeline file writes it: a number and a unit, `B`, `KB`/`KiB`,
/// `MB`/`MiB`, `GB`/`GiB`, `TB`/`TiB` (case-insensitive; `K` is `KB`, `Ki` is `KiB`), e.g.
/// `"64MiB"`, `"512KiB"`, `"1.5GB"`. A plain integer is a number of bytes. A small hand parser,
/// so that guests need no dependency for it.
pub fn parse_size(text: &str) -> Option<u64> {
    let (int, frac, unit) = number(text.trim())?;
    let unit = unit.trim().to_ascii_lowercase();
    let factor: u128 = match unit.as_str() {
        "" if frac.is_empty() => 1,
        "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        _ => return None,
    };
    u64::try_from(scale(int, frac, factor)?).ok()
}

/// A duration in the largest unit that writes it exactly: `30s`, `1d`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    for (unit, size) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns != 0 && ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{ns}ns")
}

/// A size in the largest binary unit that writes it exactly: `64MiB`, `512KiB`, `100B`.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests;
