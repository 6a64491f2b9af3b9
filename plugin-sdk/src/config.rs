//! [`Config`]: the configuration `init` receives, with typed accessors.

use std::str::FromStr;

use crate::{ConfigEntry, Error};

/// The configuration `init` receives.
///
/// Values arrive as text: a TOML string as the string itself, any other TOML value (number,
/// boolean, array, table) as its JSON text. Prefer declaring the keys once as
/// `const KEYS: &[Key]` ([`Key`](crate::Key)) and reading them through
/// [`Config::checked`], which applies the declared defaults. The accessors here are the raw
/// ones: each returns `None` for an absent key (`config.parse("count")?.unwrap_or(1000)`). Errors are kind
/// `fatal` and name the key, the expected format and the value found, e.g.
/// ``config key `count`: expected an unsigned integer, got `abc` ``.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl From<Vec<ConfigEntry>> for Config {
    fn from(entries: Vec<ConfigEntry>) -> Config {
        Config {
            entries: entries.into_iter().map(|e| (e.key, e.value)).collect(),
        }
    }
}

impl Config {
    /// A config from key/value pairs, as the host would pass them (useful in unit tests).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Config {
        Config {
            entries: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The raw text of a key, `None` when absent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The raw text of a key that must be present.
    pub fn required(&self, key: &str) -> Result<&str, Error> {
        self.get(key)
            .ok_or_else(|| Error::fatal(format!("config key `{key}` is required but missing")))
    }

    /// Parse a key with [`FromStr`] (integers, floats, booleans, chars…), ignoring surrounding
    /// whitespace. `None` when absent.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(text) => text
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| self.invalid(key, &describe_type::<T>())),
        }
    }

    /// A key whose value is one of a fixed set of words, e.g. `format` = `json` | `raw`.
    /// Returns `default` when the key is absent.
    pub fn choice<'a>(
        &'a self,
        key: &str,
        choices: &[&str],
        default: &'a str,
    ) -> Result<&'a str, Error> {
        match self.get(key) {
            None => Ok(default),
            Some(text) if choices.contains(&text) => Ok(text),
            Some(_) => {
                let list: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
                Err(self.invalid(key, &format!("one of {}", list.join(", "))))
            }
        }
    }

    /// Parse a key as JSON into any deserializable type (arrays, tables, JSON values…). A TOML
    /// string that is not JSON is read as a JSON string, and so is one that is JSON of another
    /// type when `T` wants a string (`name = "123"` into a `String`). `None` when absent.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        use serde_json::Value;
        let Some(text) = self.get(key) else {
            return Ok(None);
        };
        let as_string = || Value::String(text.to_owned());
        let parsed = serde_json::from_str::<Value>(text).unwrap_or_else(|_| as_string());
        let is_string = parsed.is_string();
        serde_json::from_value(parsed)
            .or_else(|first| match is_string {
                true => Err(first),
                false => serde_json::from_value(as_string()).map_err(|_| first),
            })
            .map(Some)
            .map_err(|e| Error::fatal(format!("config key `{key}`: {e}; got `{text}`")))
    }

    /// The fatal error for a key whose value is not in the `expected` format:
    /// ``config key `KEY`: expected EXPECTED, got `VALUE` ``.
    pub fn invalid(&self, key: &str, expected: &str) -> Error {
        let got = self.get(key).unwrap_or("nothing");
        Error::fatal(format!(
            "config key `{key}`: expected {expected}, got `{got}`"
        ))
    }

    /// Every key, in the order given.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
}

fn describe_type<T>() -> String {
    match std::any::type_name::<T>() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "an unsigned integer".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "bool" => "true or false".to_owned(),
        "char" => "a single character".to_owned(),
        other => format!("a value of type {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn config() -> Config {
        Config::from_pairs([
            ("count", "12"),
            ("bad", "abc"),
            ("neg", "-1"),
            ("flag", "true"),
            ("list", "[\"a\",\"b\"]"),
            ("table", "{\"a\":1}"),
            ("digits", "123"),
            ("format", "raw"),
        ])
    }

    #[test]
    fn get_and_required() {
        let c = config();
        assert_eq!(c.get("bad"), Some("abc"));
        assert_eq!(c.get("nope"), None);
        assert_eq!(c.required("count").unwrap(), "12");
        let e = c.required("nope").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Fatal);
        assert!(
            e.message.starts_with("config key `nope` is required"),
            "{}",
            e.message
        );
        assert_eq!(c.keys().count(), 8);
    }

    #[test]
    fn parse_explains() {
        let c = config();
        assert_eq!(c.parse::<u64>("count").unwrap(), Some(12));
        assert_eq!(c.parse::<u64>("missing").unwrap(), None);
        assert_eq!(c.parse::<bool>("flag").unwrap(), Some(true));
        let e = c.parse::<u64>("bad").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Fatal);
        assert_eq!(
            e.message,
            "config key `bad`: expected an unsigned integer, got `abc`"
        );
        let e = c.parse::<u32>("neg").unwrap_err();
        assert_eq!(
            e.message,
            "config key `neg`: expected an unsigned integer, got `-1`"
        );
        let e = c.parse::<bool>("count").unwrap_err();
        assert_eq!(
            e.message,
            "config key `count`: expected true or false, got `12`"
        );
    }

    #[test]
    fn choice_lists_the_words() {
        let c = config();
        assert_eq!(c.choice("format", &["json", "raw"], "json").unwrap(), "raw");
        assert_eq!(
            c.choice("absent", &["json", "raw"], "json").unwrap(),
            "json"
        );
        let e = c.choice("bad", &["json", "raw"], "json").unwrap_err();
        assert_eq!(
            e.message,
            "config key `bad`: expected one of `json`, `raw`, got `abc`"
        );
    }

    #[test]
    fn json_values_and_raw_strings() {
        use std::collections::BTreeMap;
        let c = config();
        assert_eq!(
            c.json::<Vec<String>>("list").unwrap(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            c.json::<BTreeMap<String, u8>>("table").unwrap(),
            Some(BTreeMap::from([("a".to_owned(), 1)]))
        );
        // A TOML string that is not JSON is a JSON string.
        assert_eq!(c.json::<String>("bad").unwrap(), Some("abc".to_owned()));
        // A TOML string that looks like a number still reads into a String.
        assert_eq!(c.json::<String>("digits").unwrap(), Some("123".to_owned()));
        assert_eq!(c.json::<u32>("digits").unwrap(), Some(123));
        assert_eq!(c.json::<String>("missing").unwrap(), None);
        let e = c.json::<Vec<String>>("bad").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Fatal);
        assert!(
            e.message.starts_with("config key `bad`: invalid type"),
            "{}",
            e.message
        );
        assert!(e.message.ends_with("got `abc`"), "{}", e.message);
    }
}
