//! `redis-lookup`: enriches JSON messages with a value looked up in Redis (the content
//! enricher of an integration, and the lookup step of an API gateway), over a granted TCP
//! address.
//!
//! ```toml
//! [plugins.customer]
//! path = "target/plugins/redis-lookup.wasm"
//! config = { key = "customer:{id}", command = "get", into = "customer", missing = "fail" }
//! grants = { tcp = ["127.0.0.1:6379"] }
//! ```
//!
//! - `key` is a template: each `{path}` is replaced by the value at that dotted path of the
//!   message (a string as it is, a number or boolean as its JSON text); a message without it
//!   is `invalid-data`, naming the field.
//! - `command = "get"`: the string at the key, put at `into` as JSON when it parses as JSON and
//!   as a string otherwise; `"hgetall"`: the hash at the key, as an object of strings.
//! - `missing`: what a key that does not exist does to the message: `fail` (`invalid-data`
//!   saying which key; in a request/reply pipeline the caller gets 422), `null` (`into` set to
//!   null) or `drop`.
//!
//! A batch is one round trip (the commands pipelined). A lost connection makes the batch
//! `retryable` (the next call reconnects with a back-off from 100 ms to 5 s); a Redis error
//! reply (`WRONGTYPE`, `NOAUTH`…) is `fatal`: the configuration, not the record, is wrong.

use std::time::Duration;

use patchbay_sdk::json::{self, Value};
use patchbay_sdk::net::Reconnect;
use patchbay_sdk::tls;
use patchbay_sdk::{Config, Error, ErrorKind, Key, Message, Metadata, Outcome, Transform};

use patchbay_proto_resp::{self as resp, Conn};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`redis://[:password@]host:port[/db]`, or `rediss://…` for TLS (done by the host); the address must be granted in `grants.tcp`.",
    )
    .default("redis://127.0.0.1:6379"),
    Key::text(
        "key",
        "The key to look up: a template where `{path}` is the value at that dotted path of the message, e.g. \"customer:{id}\".",
    )
    .required(),
    Key::choice(
        "command",
        &["get", "hgetall"],
        "`get`: a string value (parsed as JSON when it is JSON); `hgetall`: a hash, as an object.",
    )
    .default("get"),
    Key::text(
        "into",
        "The dotted path the value is put at, e.g. \"customer\".",
    )
    .default("lookup"),
    Key::choice(
        "missing",
        &["fail", "null", "drop"],
        "A key that does not exist: `fail` the message (invalid-data), set `into` to `null`, or `drop` it.",
    )
    .default("fail"),
];

const TIMEOUT: Duration = Duration::from_secs(5);

/// A piece of the key template.
#[derive(Debug)]
enum Part {
    Text(String),
    Field(String),
}

/// Parse `customer:{id}` into its parts; `Err` says what is wrong.
fn template(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("`{{` at byte {open} is not closed"))?;
        let field = after[..close].trim();
        if field.is_empty() {
            return Err("`{}` names no field".into());
        }
        parts.push(Part::Field(field.to_owned()));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
        return Err(
            "it names no field: a lookup key depends on the message, e.g. \"customer:{id}\"".into(),
        );
    }
    Ok(parts)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    Fail,
    Null,
    Drop,
}

struct RedisLookup {
    link: Reconnect,
    password: Option<String>,
    db: Option<u32>,
    tls: bool,
    key: Vec<Part>,
    hash: bool,
    into: String,
    missing: Missing,
    conn: Option<Conn>,
}

impl RedisLookup {
    fn connection(&mut self) -> Result<&mut Conn, Error> {
        if self.conn.is_none() {
            self.link.ready()?;
            let conn = tls::connect(self.link.addr(), tls::Start::tls_if(self.tls), TIMEOUT)
                .and_then(|s| Conn::over(s, self.link.addr(), self.password.as_deref(), self.db))
                .map_err(|e| self.link.failed(&e))?;
            self.link.connected();
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::retryable("redis: not connected"))
    }

    /// The message's document and the key it looks up.
    fn prepare(&self, message: &Message) -> Result<(Value, String), Error> {
        let doc: Value = serde_json::from_slice(&message.payload)
            .map_err(|e| Error::invalid_data(format!("payload is not JSON: {e}")))?;
        let mut key = String::new();
        for part in &self.key {
            match part {
                Part::Text(t) => key.push_str(t),
                Part::Field(f) => match json::get(&doc, f) {
                    Some(Value::String(s)) => key.push_str(s),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => key.push_str(&v.to_string()),
                    Some(_) => {
                        return Err(Error::invalid_data(format!(
                            "field `{f}` of the lookup key is not a string, number or boolean"
                        )));
                    }
                    None => {
                        return Err(Error::invalid_data(format!(
                            "field `{f}` of the lookup key is missing"
                        )));
                    }
                },
            }
        }
        Ok((doc, key))
    }

    /// What Redis answered for `key`, put into `doc`.
    fn enrich(&self, input: &Message, mut doc: Value, key: &str, answer: resp::Value) -> Outcome {
        let value = match answer {
            resp::Value::Error(text) => {
                return Outcome::Fail(Error::fatal(format!("redis refused the lookup: {text}")));
            }
            resp::Value::Bulk(None) | resp::Value::Array(None) => None,
            resp::Value::Array(Some(items)) if items.is_empty() => None,
            resp::Value::Array(Some(items)) => {
                let mut object = json::Map::new();
                for pair in items.chunks(2) {
                    if let [name, value] = pair {
                        let text = |v: &resp::Value| {
                            String::from_utf8_lossy(v.bytes().unwrap_or_default()).into_owned()
                        };
                        object.insert(text(name), Value::String(text(value)));
                    }
                }
                Some(Value::Object(object))
            }
            other => other.bytes().map(|b| {
                serde_json::from_slice(b)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
            }),
        };
        let value = match (value, self.missing) {
            (Some(v), _) => v,
            (None, Missing::Null) => Value::Null,
            (None, Missing::Drop) => return Outcome::Drop,
            (None, Missing::Fail) => {
                return Outcome::Fail(Error::invalid_data(format!(
                    "no value at redis key `{key}`"
                )));
            }
        };
        if json::set(&mut doc, &self.into, value).is_err() {
            return Outcome::Fail(Error::invalid_data(format!(
                "cannot put the value at `{}`: the message is not an object there",
                self.into
            )));
        }
        match serde_json::to_vec(&doc) {
            Ok(payload) => Outcome::Replace(vec![Message {
                payload,
                ..input.clone()
            }]),
            Err(e) => Outcome::Fail(Error::invalid_data(e.to_string())),
        }
    }
}

impl Transform for RedisLookup {
    fn metadata() -> Metadata {
        Metadata::new(
            "redis-lookup",
            env!("CARGO_PKG_VERSION"),
            "Enriches JSON messages with a value looked up in Redis (GET or HGETALL).",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let resp::Url {
            addr,
            password,
            db,
            tls,
        } = resp::parse_url(c.text("url")?)
            .map_err(|e| c.invalid("url", &format!("redis[s]://host:port[/db] ({e})")))?;
        let key = template(c.text("key")?).map_err(|e| {
            c.invalid(
                "key",
                &format!("a key template such as \"customer:{{id}}\" ({e})"),
            )
        })?;
        let into = c.text("into")?.to_owned();
        if into.is_empty() {
            return Err(c.invalid("into", "a dotted path such as \"customer\""));
        }
        let missing = match c.choice("missing")? {
            "null" => Missing::Null,
            "drop" => Missing::Drop,
            _ => Missing::Fail,
        };
        let mut lookup = RedisLookup {
            link: Reconnect::new("redis", addr),
            password,
            db,
            tls,
            key,
            hash: c.choice("command")? == "hgetall",
            into,
            missing,
            conn: None,
        };
        // A missing grant or a wrong address shows at start; a server that is down does not:
        // lookups answer `retryable` until it is back.
        if let Err(e) = lookup.connection()
            && e.kind == ErrorKind::Fatal
        {
            return Err(Error::fatal(format!("config key `url`: {}", e.message)));
        }
        Ok(lookup)
    }

    fn process(&mut self, message: &Message) -> Outcome {
        self.process_batch(vec![message.clone()])
            .pop()
            .unwrap_or(Outcome::Keep)
    }

    fn process_batch(&mut self, batch: Vec<Message>) -> Vec<Outcome> {
        let prepared: Vec<Result<(Value, String), Error>> =
            batch.iter().map(|m| self.prepare(m)).collect();
        let asked = prepared.iter().filter(|p| p.is_ok()).count();
        let mut answers = Vec::with_capacity(asked);
        if asked > 0 {
            let command: &[u8] = if self.hash { b"HGETALL" } else { b"GET" };
            let fetched = self.connection().and_then(|conn| {
                for (_, key) in prepared.iter().flatten() {
                    conn.send(&[command, key.as_bytes()]);
                }
                conn.flush()
                    .and_then(|()| {
                        (0..asked)
                            .map(|_| conn.read())
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(|e| Error::retryable(format!("redis: {e}")))
            });
            match fetched {
                Ok(got) => answers = got,
                Err(e) => {
                    if e.kind == ErrorKind::Retryable {
                        self.conn = None;
                    }
                    return batch.iter().map(|_| Outcome::Fail(e.clone())).collect();
                }
            }
        }
        let mut answers = answers.into_iter();
        prepared
            .into_iter()
            .zip(&batch)
            .map(|(p, input)| match p {
                Err(e) => Outcome::Fail(e),
                Ok((doc, key)) => match answers.next() {
                    Some(answer) => self.enrich(input, doc, &key, answer),
                    None => Outcome::Fail(Error::retryable("redis: an answer is missing")),
                },
            })
            .collect()
    }
}

patchbay_sdk::export_transform!(RedisLookup);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_templates() {
        let parts = template("customer:{id}:{ region }").unwrap();
        assert_eq!(parts.len(), 4);
        assert!(template("customer").unwrap_err().contains("names no field"));
        assert!(template("c:{id").unwrap_err().contains("not closed"));
        assert!(template("c:{}").unwrap_err().contains("names no field"));
    }
}
