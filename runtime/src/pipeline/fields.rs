//! What of `json` CEL programs read, so that a route or `partition_by` that reads `json.amount`
//! does not turn the whole document into CEL values for every message.
//!
//! The programs' syntax trees are walked once at start: if `json` only ever appears as
//! `json.FIELD` (or `has(json.FIELD)`), only those top-level fields are taken from each payload
//! (the rest is skipped by the parser, never built); any other use (`json` alone, `json["a"]`,
//! a comprehension over it) needs the whole document, as before.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use cel::common::ast::{EntryExpr, Expr};
use cel::{IdedExpr, Program, Value};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::route::json_to_cel;

/// How much of a payload's JSON the programs need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum JsonUse {
    /// `json` is not read.
    #[default]
    None,
    /// Only these top-level fields.
    Fields(BTreeSet<String>),
    /// The whole document.
    Whole,
}

impl JsonUse {
    /// What `programs` read of `json`.
    pub(super) fn of<'a>(programs: impl Iterator<Item = &'a Program>) -> JsonUse {
        let mut found = JsonUse::None;
        for program in programs {
            walk(program.expression(), &mut found);
        }
        found
    }

    /// The CEL value of `json` for a payload: `null` when it is not JSON (or, reading fields,
    /// not a JSON object).
    pub(super) fn value(&self, payload: &[u8]) -> Value {
        match self {
            JsonUse::None => Value::Null,
            JsonUse::Whole => serde_json::from_slice::<serde_json::Value>(payload)
                .map_or(Value::Null, json_to_cel),
            JsonUse::Fields(fields) => {
                let mut de = serde_json::Deserializer::from_slice(payload);
                match (Picked { fields }).deserialize(&mut de) {
                    Ok(Some(map)) if de.end().is_ok() => Value::from(map),
                    _ => Value::Null,
                }
            }
        }
    }
}

fn whole(found: &mut JsonUse) {
    *found = JsonUse::Whole;
}

fn field(found: &mut JsonUse, name: &str) {
    match found {
        JsonUse::Whole => {}
        JsonUse::None => *found = JsonUse::Fields(BTreeSet::from([name.to_owned()])),
        JsonUse::Fields(fields) => {
            fields.insert(name.to_owned());
        }
    }
}

fn walk(e: &IdedExpr, found: &mut JsonUse) {
    match &e.expr {
        Expr::Ident(name) if name == "json" => whole(found),
        Expr::Select(select) => match &select.operand.expr {
            Expr::Ident(name) if name == "json" => field(found, &select.field),
            _ => walk(&select.operand, found),
        },
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, found);
            }
            call.args.iter().for_each(|a| walk(a, found));
        }
        Expr::Comprehension(c) => {
            // A loop variable named `json` would shadow it: read the whole, to be safe.
            if c.iter_var == "json"
                || c.accu_var == "json"
                || c.iter_var2.as_deref() == Some("json")
            {
                whole(found);
            }
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                walk(part, found);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|x| walk(x, found)),
        Expr::Map(map) => map.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => {
                walk(&m.key, found);
                walk(&m.value, found);
            }
            EntryExpr::StructField(f) => walk(&f.value, found),
        }),
        Expr::Struct(s) => s.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => {
                walk(&m.key, found);
                walk(&m.value, found);
            }
            EntryExpr::StructField(f) => walk(&f.value, found),
        }),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Parses a JSON object keeping only `fields` (as CEL values); `None` for anything else.
struct Picked<'a> {
    fields: &'a BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for Picked<'_> {
    type Value = Option<HashMap<String, Value>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Picked<'_> {
    type Value = Option<HashMap<String, Value>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut picked = HashMap::with_capacity(self.fields.len());
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if self.fields.contains(key.as_ref()) {
                let value: serde_json::Value = map.next_value()?;
                picked.insert(key.into_owned(), json_to_cel(value));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(picked))
    }

    // Anything but an object: no fields to read (a `json.FIELD` on it fails, as on the whole).
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(texts: &[&str]) -> JsonUse {
        let programs: Vec<Program> = texts.iter().map(|t| Program::compile(t).unwrap()).collect();
        JsonUse::of(programs.iter())
    }

    #[test]
    fn only_the_fields_a_program_selects_are_read() {
        assert_eq!(uses(&["key == 'a'"]), JsonUse::None);
        assert_eq!(
            uses(&[
                "has(json.amount) && json.amount > 100",
                "json.customer.tier == 'gold'"
            ]),
            JsonUse::Fields(BTreeSet::from(["amount".into(), "customer".into()]))
        );
        assert_eq!(uses(&["json.a == 1", "size(json) > 2"]), JsonUse::Whole);
        assert_eq!(uses(&["json['a'] == 1"]), JsonUse::Whole);
        assert_eq!(uses(&["[1, 2].exists(json, json > 1)"]), JsonUse::Whole);
    }

    #[test]
    fn picked_fields_evaluate_like_the_whole_document() {
        let text = r#"{"amount": 120, "note": {"deep": [1, 2, {"x": "y"}]}, "customer": {"tier": "gold"}}"#;
        for condition in [
            "has(json.amount) && json.amount > 100",
            "json.customer.tier == 'gold'",
            "has(json.missing)",
            "json.amount % 2 == 0",
        ] {
            let program = Program::compile(condition).unwrap();
            let used = JsonUse::of(std::iter::once(&program));
            assert!(matches!(used, JsonUse::Fields(_)), "{condition}");
            let eval = |json: Value| {
                let mut ctx = cel::Context::default();
                ctx.add_variable_from_value("json", json);
                program.execute(&ctx)
            };
            assert_eq!(
                eval(used.value(text.as_bytes())),
                eval(JsonUse::Whole.value(text.as_bytes())),
                "{condition}"
            );
        }
        let used = uses(&["json.a == 1"]);
        assert_eq!(used.value(b"[1, 2]"), Value::Null);
        assert_eq!(used.value(b"not json"), Value::Null);
        assert_eq!(used.value(br#"{"a": 1} trailing"#), Value::Null);
    }
}
