//! `map`: computes fields and whole documents from CEL expressions over each message, the
//! mapping step of an integration (Redpanda Connect's Bloblang `root.x = …`, Camel's simple
//! language).
//!
//! ```toml
//! [plugins.price.config]
//! set = { total = "json.price * double(json.qty)", name = "json.first + ' ' + json.last",
//!         "meta.tier" = "json.total > 100.0 ? 'gold' : 'standard'" }
//! delete = ["first", "last"]
//! drop_if = "json.status == 'test'"
//! # root = "{'id': json.id, 'lines': json.items.map(i, i.sku)}"   # a whole new document
//! headers = { "http-status" = "has(json.customer) ? '200' : '404'" }
//! ```
//!
//! The expressions are CEL (<https://cel.dev>), as in the host's routes (`when = "…"`), with
//! the standard library and the strings (`upperAscii`, `trim`, `split`, `replace`, `format`…),
//! math (`math.greatest`, `math.round`…) and lists extensions, and the macros `has`, `map`,
//! `filter`, `all`, `exists`. Each reads the *input* message: `json` (the payload parsed as
//! JSON), `payload` (as text), `key` (text, or null) and `headers` (a map, first value per
//! name). CEL does not mix `int` and `double`: JSON integers are `int`, other numbers `double`,
//! so write `double(json.qty)` or `2.0` when they meet.
//!
//! The steps: `drop_if` (true drops the message), then `root` (its value becomes the output
//! document; without it the output starts as the input), then each `set` entry (the field at
//! that dotted path gets the expression's value, parents created), then `delete`, then each
//! `headers` entry (the output's header of that name gets the value as text: a string as it
//! is, a number or boolean as JSON text; `null` removes it — e.g. `http-status` and
//! `content-type` of a request/reply pipeline's answer). An
//! expression that does not parse is a config error naming the key and the entry; one that
//! fails for a message (a missing field, a wrong type) fails that message with `invalid-data`,
//! naming the entry. A message left unchanged passes on untouched (`keep`).

use patchbay_sdk::json::{self, Map, Value};
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform};

mod expr;

use cel::Program;
use expr::{Cel, Uses};

const KEYS: &[Key] = &[
    Key::json(
        "set",
        "Table of field path = CEL expression, e.g. { total = \"json.price * double(json.qty)\" }: each field gets the value, parents created.",
    )
    .default("{}"),
    Key::text(
        "root",
        "CEL expression whose value becomes the whole output document, e.g. \"{'id': json.id}\". Empty: the output starts as the input.",
    )
    .default(""),
    Key::json("delete", "Array of field paths to remove from the output, after set.")
        .default("[]"),
    Key::json(
        "headers",
        "Table of header name = CEL expression: the output's header of that name gets the value as text (null removes it), e.g. { \"http-status\" = \"json.ok ? '200' : '404'\" }.",
    )
    .default("{}"),
    Key::text(
        "drop_if",
        "CEL expression; when it is true the message is dropped. Empty: none is.",
    )
    .default(""),
];

pub struct MapTransform {
    cel: Cel,
    uses: Uses,
    drop_if: Option<Program>,
    root: Option<Program>,
    set: Vec<(String, Program)>,
    delete: Vec<String>,
    headers: Vec<(String, Program)>,
}

impl Transform for MapTransform {
    fn metadata() -> Metadata {
        Metadata::new(
            "map",
            env!("CARGO_PKG_VERSION"),
            "Computes fields and whole documents from CEL expressions over each message.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let cel = Cel::new().map_err(Error::fatal)?;
        let compile = |key: &str, entry: Option<&str>, source: &str| {
            cel.compile(source).map_err(|e| {
                let at = entry.map(|f| format!(" entry `{f}`")).unwrap_or_default();
                Error::fatal(format!(
                    "config key `{key}`{at}: the CEL expression `{source}` does not parse {e}"
                ))
            })
        };
        let optional = |key: &str| -> Result<Option<Program>, Error> {
            match c.text(key)?.trim() {
                "" => Ok(None),
                source => compile(key, None, source).map(Some),
            }
        };
        let drop_if = optional("drop_if")?;
        let root = optional("root")?;
        let mut set = Vec::new();
        for (path, source) in c.json::<Map<String, Value>>("set")?.unwrap_or_default() {
            check_path("set", &path)?;
            let Value::String(source) = source else {
                return Err(Error::fatal(format!(
                    "config key `set`: entry `{path}` is {source}, not a CEL expression in a \
                     string; write {path} = \"json.a + json.b\""
                )));
            };
            set.push((path.clone(), compile("set", Some(&path), &source)?));
        }
        let mut headers = Vec::new();
        for (name, source) in c.json::<Map<String, Value>>("headers")?.unwrap_or_default() {
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err(Error::fatal(format!(
                    "config key `headers`: `{name}` is not a header name (no spaces or control \
                     characters)"
                )));
            }
            let Value::String(source) = source else {
                return Err(Error::fatal(format!(
                    "config key `headers`: entry `{name}` is {source}, not a CEL expression in a \
                     string; write \"{name}\" = \"'text'\""
                )));
            };
            headers.push((name.clone(), compile("headers", Some(&name), &source)?));
        }
        let delete = c.json::<Vec<String>>("delete")?.unwrap_or_default();
        for path in &delete {
            check_path("delete", path)?;
        }
        let programs = drop_if
            .iter()
            .chain(root.iter())
            .chain(set.iter().map(|(_, p)| p))
            .chain(headers.iter().map(|(_, p)| p));
        let uses = Uses::of(programs);
        Ok(MapTransform {
            cel,
            uses,
            drop_if,
            root,
            set,
            delete,
            headers,
        })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        match self.try_map(message) {
            Ok(Step::Keep) => Outcome::Keep,
            Ok(Step::Drop) => Outcome::Drop,
            Ok(Step::Write(bytes, headers)) => {
                let mut out = message.with_payload(bytes);
                for (name, value) in headers {
                    out.headers.retain(|h| h.name != name);
                    if let Some(value) = value {
                        out = out.with_header(name, value);
                    }
                }
                Outcome::Replace(vec![out])
            }
            Err(e) => Outcome::Fail(e),
        }
    }
}

/// What one message comes to.
enum Step {
    Keep,
    Drop,
    /// The output payload, and headers to set (`None`: remove).
    Write(Vec<u8>, Vec<(String, Option<String>)>),
}

impl MapTransform {
    fn try_map(&self, message: &Message) -> Result<Step, Error> {
        let doc = if self.uses.json || self.root.is_none() {
            Some(
                serde_json::from_slice::<Value>(&message.payload)
                    .map_err(|e| Error::invalid_data(format!("payload is not JSON: {e}")))?,
            )
        } else {
            None
        };
        let scope = self.cel.scope(self.uses, message, doc.as_ref());
        let run = |what: &str, program: &Program| {
            program
                .execute(&scope)
                .map_err(|e| Error::invalid_data(format!("{what}: {}", Cel::explain(&e))))
        };
        if let Some(program) = &self.drop_if {
            match run("drop_if", program)? {
                cel::Value::Bool(true) => return Ok(Step::Drop),
                cel::Value::Bool(false) => {}
                other => {
                    return Err(Error::invalid_data(format!(
                        "drop_if: the expression gave {other:?}, not true or false"
                    )));
                }
            }
        }
        let mut out = match &self.root {
            Some(program) => {
                let value = run("root", program)?;
                expr::cel_to_json(&value).map_err(|e| Error::invalid_data(format!("root: {e}")))?
            }
            None => doc.clone().unwrap_or(Value::Null),
        };
        for (path, program) in &self.set {
            let what = format!("set.{path}");
            let value = run(&what, program)?;
            let value = expr::cel_to_json(&value)
                .map_err(|e| Error::invalid_data(format!("{what}: {e}")))?;
            json::set(&mut out, path, value)
                .map_err(|e| Error::invalid_data(format!("{what}: cannot set the field: {e}")))?;
        }
        for path in &self.delete {
            json::remove(&mut out, path);
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, program) in &self.headers {
            let what = format!("headers.{name}");
            let value = match expr::cel_to_json(&run(&what, program)?) {
                Ok(Value::Null) => None,
                Ok(Value::String(s)) => Some(s),
                Ok(other) => Some(other.to_string()),
                Err(e) => return Err(Error::invalid_data(format!("{what}: {e}"))),
            };
            if value.as_deref().is_some_and(|v| v.contains(['\r', '\n'])) {
                return Err(Error::invalid_data(format!(
                    "{what}: a header value cannot hold a line break"
                )));
            }
            headers.push((name.clone(), value));
        }
        if self.root.is_none() && headers.is_empty() && doc.as_ref() == Some(&out) {
            return Ok(Step::Keep);
        }
        serde_json::to_vec(&out)
            .map(|bytes| Step::Write(bytes, headers))
            .map_err(|e| Error::invalid_data(format!("cannot write the output: {e}")))
    }
}

/// A dotted field path with no empty segment.
fn check_path(key: &str, path: &str) -> Result<(), Error> {
    if path.split('.').any(str::is_empty) {
        return Err(Error::fatal(format!(
            "config key `{key}`: field path `{path}` has an empty segment; write paths like \
             `customer.address.city`"
        )));
    }
    Ok(())
}

patchbay_sdk::export_transform!(MapTransform);
