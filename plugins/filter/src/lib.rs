//! `filter`: keeps or drops messages by a condition on one JSON field, the message filter of an
//! integration.
//!
//! ```toml
//! [plugins.big-orders.config]
//! field = "order.amount"  # dotted path into the JSON payload
//! op = "ge"               # eq ne gt ge lt le exists missing contains starts_with
//! value = 100             # any TOML value, compared as JSON
//! action = "keep"         # keep matching messages and drop the rest (default), or "drop" them
//! ```
//!
//! How each operator matches:
//!
//! - `eq` / `ne`: JSON equality (numbers by value, so `1` equals `1.0`) / its negation. A
//!   missing field is not equal to anything, so it matches `ne`.
//! - `gt`, `ge`, `lt`, `le`: numeric order when field and value are both numbers, string order
//!   (by code point) when both are strings; any other pair, or a missing field, does not match.
//! - `contains`: a string field containing the string value, or an array field with an element
//!   equal to the value.
//! - `starts_with`: a string field starting with the string value.
//! - `exists` / `missing`: the field is present (even as `null`) / absent. No `value`.
//!
//! Config values arrive as text, so `value = "100"` and `value = 100` both mean the number 100.
//! To compare with the *string* "100", write the JSON string: `value = '"100"'`.
//!
//! A payload that is not JSON fails with `invalid-data` (`on_invalid = "fail"`) or is dropped
//! (`on_invalid = "drop"`). A JSON payload that is not an object has no fields: only `missing`
//! and `ne` match it. Kept messages pass on untouched (`keep`).

use std::cmp::Ordering;

use patchbay_sdk::json::{self, Value};
use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform};

const KEYS: &[Key] = &[
    Key::text(
        "field",
        "Dotted path of the field to test, e.g. `order.amount`.",
    )
    .required(),
    Key::choice(
        "op",
        &[
            "eq",
            "ne",
            "gt",
            "ge",
            "lt",
            "le",
            "exists",
            "missing",
            "contains",
            "starts_with",
        ],
        "One of eq, ne, gt, ge, lt, le (numbers with numbers, strings with strings), exists, missing, contains, starts_with.",
    )
    .required(),
    Key::json(
        "value",
        "Any TOML value, compared as JSON; required except with exists and missing. A string that is valid JSON is read as JSON: write '\"100\"' for the string 100.",
    ),
    Key::choice(
        "action",
        &["keep", "drop"],
        "`keep`: keep matching messages and drop the rest; `drop`: drop matching messages and keep the rest.",
    )
    .default("keep"),
    Key::choice(
        "on_invalid",
        &["fail", "drop"],
        "What to do with a payload that is not JSON: `fail` (an invalid-data error for that message) or `drop`.",
    )
    .default("fail"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Exists,
    Missing,
    Contains,
    StartsWith,
}

const OPS: [(&str, Op); 10] = [
    ("eq", Op::Eq),
    ("ne", Op::Ne),
    ("gt", Op::Gt),
    ("ge", Op::Ge),
    ("lt", Op::Lt),
    ("le", Op::Le),
    ("exists", Op::Exists),
    ("missing", Op::Missing),
    ("contains", Op::Contains),
    ("starts_with", Op::StartsWith),
];

struct Filter {
    field: String,
    op: Op,
    value: Value,
    keep_matching: bool,
    drop_invalid: bool,
}

impl Transform for Filter {
    fn metadata() -> Metadata {
        Metadata::new(
            "filter",
            env!("CARGO_PKG_VERSION"),
            "Keeps or drops messages by a condition on one JSON field.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let field = c.text("field")?.to_owned();
        if field.split('.').any(str::is_empty) {
            return Err(c.invalid("field", "a dotted path such as `order.amount`"));
        }
        let op_name = c.choice("op")?;
        let Some(&(_, op)) = OPS.iter().find(|(name, _)| *name == op_name) else {
            return Err(c.invalid("op", "an operator"));
        };
        let value: Option<Value> = c.json("value")?;
        let value = match (op, value) {
            (Op::Exists | Op::Missing, Some(_)) => {
                return Err(Error::fatal(format!(
                    "config key `value` is not used with op = \"{op_name}\"; remove it"
                )));
            }
            (Op::Exists | Op::Missing, None) => Value::Null,
            (_, Some(v)) => v,
            (_, None) => {
                return Err(Error::fatal(format!(
                    "config key `value` is required with op = \"{op_name}\"; give the JSON value to compare with, e.g. value = 100 or value = \"paid\""
                )));
            }
        };
        if matches!(op, Op::StartsWith) && !value.is_string() {
            return Err(c.invalid("value", "a string with op = \"starts_with\""));
        }
        Ok(Filter {
            field,
            op,
            value,
            keep_matching: c.choice("action")? == "keep",
            drop_invalid: c.choice("on_invalid")? == "drop",
        })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        let doc: Value = match serde_json::from_slice(&message.payload) {
            Ok(v) => v,
            Err(_) if self.drop_invalid => return Outcome::Drop,
            Err(e) => {
                return Outcome::Fail(Error::invalid_data(format!(
                    "payload is not JSON: {e}; set on_invalid = \"drop\" to drop such messages"
                )));
            }
        };
        if self.matches(json::get(&doc, &self.field)) == self.keep_matching {
            Outcome::Keep
        } else {
            Outcome::Drop
        }
    }
}

impl Filter {
    fn matches(&self, field: Option<&Value>) -> bool {
        let Some(field) = field else {
            return matches!(self.op, Op::Missing | Op::Ne);
        };
        let order = || compare(field, &self.value);
        match self.op {
            Op::Exists => true,
            Op::Missing => false,
            Op::Eq => equal(field, &self.value),
            Op::Ne => !equal(field, &self.value),
            Op::Gt => order().is_some_and(Ordering::is_gt),
            Op::Ge => order().is_some_and(Ordering::is_ge),
            Op::Lt => order().is_some_and(Ordering::is_lt),
            Op::Le => order().is_some_and(Ordering::is_le),
            Op::Contains => match (field, &self.value) {
                (Value::String(a), Value::String(b)) => a.contains(b.as_str()),
                (Value::Array(items), v) => items.iter().any(|i| equal(i, v)),
                _ => false,
            },
            Op::StartsWith => match (field, &self.value) {
                (Value::String(a), Value::String(b)) => a.starts_with(b.as_str()),
                _ => false,
            },
        }
    }
}

/// Order two numbers or two strings; `None` for any other pair.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            // Exact for integers of any sign, floating point otherwise.
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => Some(x.cmp(&y)),
                (_, _, Some(x), Some(y)) => Some(x.cmp(&y)),
                _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
            }
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => compare(a, b) == Some(Ordering::Equal),
        _ => a == b,
    }
}

patchbay_sdk::export_transform!(Filter);
