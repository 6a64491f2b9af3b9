//! Route conditions of the common shapes evaluated natively, without the CEL interpreter:
//! comparisons, arithmetic and logic over `json.FIELD`, `key`, `payload`, `headers['h']`,
//! `has(json.FIELD)`, `'h' in headers`, `size()` and `contains`/`startsWith`/`endsWith` with
//! literals. A condition of any other shape (macros, lists, maps, nested `json.a.b`, casts…)
//! stays with CEL.
//!
//! The native path answers only where it is certain to agree with CEL: for scalars of the same
//! type. Anything else for a message (a field that is missing, an object, two operands of
//! different types, an overflow, a NaN) answers "not sure", and that message's condition is then
//! evaluated by CEL itself; so the outcome is always CEL's, and the interpreter runs only for
//! the rare message that needs it (tests compare both over a table of conditions and messages).
//! Measured on the router bench (bench/results.md, Scaling): binding CEL variables and
//! interpreting `json.seq % 2 == 0` was most of the router's cost.

use std::borrow::Cow;
use std::cmp::Ordering;

use cel::IdedExpr;
use cel::Program;
use cel::common::ast::{Expr, LiteralValue, operators as op};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::contract::Message;

/// One condition compiled to a native tree.
#[derive(Debug)]
pub(super) struct Native {
    root: Node,
}

/// The top-level JSON fields native conditions read, by index.
#[derive(Debug, Default)]
pub(super) struct JsonFields(Vec<String>);

#[derive(Debug, Clone, PartialEq)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Cow<'a, str>),
}

#[derive(Debug, Clone, Copy)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy)]
enum StrTest {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug)]
enum Node {
    Lit(Scalar<'static>),
    Json(usize),
    HasJson(usize),
    Key,
    Payload,
    Header(String),
    HasHeader(String),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Neg(Box<Node>),
    Size(Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    Str(StrTest, Box<Node>, Box<Node>),
}

impl Native {
    /// The native form of `program`, or `None` when it has a shape only CEL evaluates. The
    /// JSON fields it reads are added to `fields`.
    pub(super) fn compile(program: &Program, fields: &mut JsonFields) -> Option<Native> {
        Some(Native {
            root: node(program.expression(), fields)?,
        })
    }

    /// `Some(matched)` when certain, `None` when CEL must decide for this message.
    pub(super) fn matches(&self, facts: &mut Facts<'_>) -> Option<bool> {
        match eval(&self.root, facts)? {
            Scalar::Bool(b) => Some(b),
            _ => None,
        }
    }
}

fn boxed(e: &IdedExpr, fields: &mut JsonFields) -> Option<Box<Node>> {
    node(e, fields).map(Box::new)
}

fn ident(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Ident(name) => Some(name),
        _ => None,
    }
}

fn literal_str(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

fn node(e: &IdedExpr, fields: &mut JsonFields) -> Option<Node> {
    Some(match &e.expr {
        Expr::Literal(lit) => Node::Lit(match lit {
            LiteralValue::Boolean(b) => Scalar::Bool(*b.inner()),
            LiteralValue::Int(i) => Scalar::Int(*i.inner()),
            LiteralValue::UInt(u) => Scalar::UInt(*u.inner()),
            LiteralValue::Double(d) => Scalar::Double(*d.inner()),
            LiteralValue::String(s) => Scalar::Str(Cow::Owned(s.inner().to_owned())),
            LiteralValue::Null => Scalar::Null,
            LiteralValue::Bytes(_) => return None,
        }),
        Expr::Ident(name) => match name.as_str() {
            "key" => Node::Key,
            "payload" => Node::Payload,
            _ => return None,
        },
        Expr::Select(select) => match ident(&select.operand)? {
            "json" if select.test => Node::HasJson(fields.index(&select.field)),
            "json" => Node::Json(fields.index(&select.field)),
            "headers" if select.test => Node::HasHeader(select.field.clone()),
            "headers" => Node::Header(select.field.clone()),
            _ => return None,
        },
        Expr::Call(call) => {
            let args = &call.args;
            match (call.func_name.as_str(), &call.target, args.len()) {
                (op::LOGICAL_NOT, None, 1) => Node::Not(boxed(&args[0], fields)?),
                (op::NEGATE, None, 1) => Node::Neg(boxed(&args[0], fields)?),
                (op::LOGICAL_AND, None, 2) => {
                    Node::And(boxed(&args[0], fields)?, boxed(&args[1], fields)?)
                }
                (op::LOGICAL_OR, None, 2) => {
                    Node::Or(boxed(&args[0], fields)?, boxed(&args[1], fields)?)
                }
                (op::INDEX, None, 2) if ident(&args[0]) == Some("headers") => {
                    Node::Header(literal_str(&args[1])?.to_owned())
                }
                (op::IN, None, 2) if ident(&args[1]) == Some("headers") => {
                    Node::HasHeader(literal_str(&args[0])?.to_owned())
                }
                ("size", None, 1) => Node::Size(boxed(&args[0], fields)?),
                ("size", Some(target), 0) => Node::Size(boxed(target, fields)?),
                (name, Some(target), 1) => {
                    let test = match name {
                        "contains" => StrTest::Contains,
                        "startsWith" => StrTest::StartsWith,
                        "endsWith" => StrTest::EndsWith,
                        _ => return None,
                    };
                    Node::Str(test, boxed(target, fields)?, boxed(&args[0], fields)?)
                }
                (name, None, 2) => {
                    let (l, r) = (boxed(&args[0], fields)?, boxed(&args[1], fields)?);
                    match binary(name)? {
                        Ok(a) => Node::Arith(a, l, r),
                        Err(c) => Node::Cmp(c, l, r),
                    }
                }
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// An arithmetic operator (`Ok`) or a comparison (`Err`).
fn binary(name: &str) -> Option<Result<Arith, Cmp>> {
    Some(match name {
        op::ADD => Ok(Arith::Add),
        op::SUBSTRACT => Ok(Arith::Sub),
        op::MULTIPLY => Ok(Arith::Mul),
        op::DIVIDE => Ok(Arith::Div),
        op::MODULO => Ok(Arith::Rem),
        op::EQUALS => Err(Cmp::Eq),
        op::NOT_EQUALS => Err(Cmp::Ne),
        op::LESS => Err(Cmp::Lt),
        op::LESS_EQUALS => Err(Cmp::Le),
        op::GREATER => Err(Cmp::Gt),
        op::GREATER_EQUALS => Err(Cmp::Ge),
        _ => return None,
    })
}

impl JsonFields {
    fn index(&mut self, name: &str) -> usize {
        match self.0.iter().position(|f| f == name) {
            Some(i) => i,
            None => {
                self.0.push(name.to_owned());
                self.0.len() - 1
            }
        }
    }
}

/// One top-level field of the payload, as native conditions see it.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Absent,
    Scalar(Scalar<'static>),
    /// An object or array: only `has()` answers natively.
    Nested,
}

/// What native conditions read of one message, the JSON parsed at most once, when first read.
pub(super) struct Facts<'m> {
    message: &'m Message,
    fields: &'m JsonFields,
    /// `None`: not parsed yet; `Some(None)`: not a JSON object.
    json: Option<Option<Vec<Field>>>,
}

impl<'m> Facts<'m> {
    pub(super) fn new(message: &'m Message, fields: &'m JsonFields) -> Facts<'m> {
        Facts {
            message,
            fields,
            json: None,
        }
    }

    fn field(&mut self, i: usize) -> Option<&Field> {
        let (message, fields) = (self.message, self.fields);
        self.json
            .get_or_insert_with(|| {
                let mut de = serde_json::Deserializer::from_slice(&message.payload);
                match (Pick { fields }).deserialize(&mut de) {
                    Ok(Some(found)) if de.end().is_ok() => Some(found),
                    _ => None,
                }
            })
            .as_ref()?
            .get(i)
    }
}

fn text(bytes: &[u8]) -> Scalar<'_> {
    Scalar::Str(String::from_utf8_lossy(bytes))
}

fn eval<'o, 'n: 'o, 'm: 'o>(node: &'n Node, facts: &mut Facts<'m>) -> Option<Scalar<'o>> {
    let message: &'m Message = facts.message;
    Some(match node {
        Node::Lit(v) => match v {
            Scalar::Str(s) => Scalar::Str(Cow::Borrowed(s.as_ref())),
            other => other.clone(),
        },
        Node::Json(i) => match facts.field(*i)? {
            Field::Scalar(v) => v.clone(),
            Field::Absent | Field::Nested => return None,
        },
        Node::HasJson(i) => Scalar::Bool(!matches!(facts.field(*i)?, Field::Absent)),
        Node::Key => text(message.key.as_deref().unwrap_or_default()),
        Node::Payload => text(&message.payload),
        // A header named twice: the last one, as the CEL map built from the list keeps.
        Node::Header(name) => {
            let header = message.headers.iter().rev().find(|h| &h.name == name)?;
            Scalar::Str(Cow::Borrowed(header.value.as_str()))
        }
        Node::HasHeader(name) => Scalar::Bool(message.headers.iter().any(|h| &h.name == name)),
        Node::Not(x) => Scalar::Bool(!as_bool(eval(x, facts)?)?),
        Node::And(l, r) => match as_bool(eval(l, facts)?)? {
            false => Scalar::Bool(false),
            true => Scalar::Bool(as_bool(eval(r, facts)?)?),
        },
        Node::Or(l, r) => match as_bool(eval(l, facts)?)? {
            true => Scalar::Bool(true),
            false => Scalar::Bool(as_bool(eval(r, facts)?)?),
        },
        Node::Neg(x) => match eval(x, facts)? {
            Scalar::Int(i) => Scalar::Int(i.checked_neg()?),
            Scalar::Double(d) => Scalar::Double(-d),
            _ => return None,
        },
        Node::Size(x) => match eval(x, facts)? {
            Scalar::Str(s) => Scalar::Int(i64::try_from(s.chars().count()).ok()?),
            _ => return None,
        },
        Node::Arith(a, l, r) => arith(*a, eval(l, facts)?, eval(r, facts)?)?,
        Node::Cmp(c, l, r) => Scalar::Bool(compare(*c, &eval(l, facts)?, &eval(r, facts)?)?),
        Node::Str(t, s, p) => match (eval(s, facts)?, eval(p, facts)?) {
            (Scalar::Str(s), Scalar::Str(p)) => Scalar::Bool(match t {
                StrTest::Contains => s.contains(p.as_ref()),
                StrTest::StartsWith => s.starts_with(p.as_ref()),
                StrTest::EndsWith => s.ends_with(p.as_ref()),
            }),
            _ => return None,
        },
    })
}

fn as_bool(v: Scalar<'_>) -> Option<bool> {
    match v {
        Scalar::Bool(b) => Some(b),
        _ => None,
    }
}

fn arith<'a>(a: Arith, l: Scalar<'a>, r: Scalar<'a>) -> Option<Scalar<'a>> {
    Some(match (l, r) {
        (Scalar::Int(l), Scalar::Int(r)) => Scalar::Int(match a {
            Arith::Add => l.checked_add(r)?,
            Arith::Sub => l.checked_sub(r)?,
            Arith::Mul => l.checked_mul(r)?,
            Arith::Div => l.checked_div(r)?,
            Arith::Rem => l.checked_rem(r)?,
        }),
        (Scalar::UInt(l), Scalar::UInt(r)) => Scalar::UInt(match a {
            Arith::Add => l.checked_add(r)?,
            Arith::Sub => l.checked_sub(r)?,
            Arith::Mul => l.checked_mul(r)?,
            Arith::Div => l.checked_div(r)?,
            Arith::Rem => l.checked_rem(r)?,
        }),
        (Scalar::Double(l), Scalar::Double(r)) => Scalar::Double(match a {
            Arith::Add => l + r,
            Arith::Sub => l - r,
            Arith::Mul => l * r,
            // Division by zero and `%` on doubles: CEL's answer, not a guess.
            Arith::Div if r != 0.0 => l / r,
            _ => return None,
        }),
        (Scalar::Str(l), Scalar::Str(r)) if matches!(a, Arith::Add) => {
            Scalar::Str(Cow::Owned(format!("{l}{r}")))
        }
        _ => return None,
    })
}

/// Same-typed scalars only; `None` (CEL decides) for mixed types and NaN.
fn compare(c: Cmp, l: &Scalar<'_>, r: &Scalar<'_>) -> Option<bool> {
    let order = match (l, r) {
        (Scalar::Int(l), Scalar::Int(r)) => l.cmp(r),
        (Scalar::UInt(l), Scalar::UInt(r)) => l.cmp(r),
        (Scalar::Double(l), Scalar::Double(r)) => l.partial_cmp(r)?,
        (Scalar::Str(l), Scalar::Str(r)) => l.as_ref().cmp(r.as_ref()),
        (Scalar::Bool(l), Scalar::Bool(r)) if matches!(c, Cmp::Eq | Cmp::Ne) => l.cmp(r),
        (Scalar::Null, Scalar::Null) if matches!(c, Cmp::Eq | Cmp::Ne) => Ordering::Equal,
        _ => return None,
    };
    Some(match c {
        Cmp::Eq => order == Ordering::Equal,
        Cmp::Ne => order != Ordering::Equal,
        Cmp::Lt => order == Ordering::Less,
        Cmp::Le => order != Ordering::Greater,
        Cmp::Gt => order == Ordering::Greater,
        Cmp::Ge => order != Ordering::Less,
    })
}

/// Parses a JSON object keeping only the wanted fields (the rest skipped, never built);
/// `None` for anything but an object.
struct Pick<'a> {
    fields: &'a JsonFields,
}

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = Option<Vec<Field>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = Option<Vec<Field>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = vec![Field::Absent; self.fields.0.len()];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.fields.0.iter().position(|f| f == key.as_ref()) {
                // A key given twice: the last, as a parsed map keeps.
                Some(i) => found[i] = field(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(found))
    }

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

/// A parsed JSON value as a field; numbers typed as `route::json_to_cel` types them.
fn field(value: serde_json::Value) -> Field {
    use serde_json::Value as J;
    Field::Scalar(match value {
        J::Null => Scalar::Null,
        J::Bool(b) => Scalar::Bool(b),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Scalar::Int(i),
            (None, Some(u), _) => Scalar::UInt(u),
            (None, None, Some(f)) => Scalar::Double(f),
            _ => return Field::Nested,
        },
        J::String(s) => Scalar::Str(Cow::Owned(s)),
        J::Array(_) | J::Object(_) => return Field::Nested,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Header, message};
    use crate::pipeline::route::Vars;

    fn msg(payload: &str, key: Option<&str>, headers: &[(&str, &str)]) -> Message {
        let mut m = message(payload.as_bytes().to_vec());
        m.key = key.map(|k| k.as_bytes().to_vec());
        m.headers = headers
            .iter()
            .map(|(n, v)| Header {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect();
        m
    }

    /// CEL's own answer, as the router took it before the native path.
    fn cel_says(program: &Program, m: &Message) -> bool {
        let vars = Vars::read_by(std::iter::once(program));
        let mut ctx = cel::Context::default();
        vars.bind(&mut ctx, m);
        matches!(program.execute(&ctx), Ok(cel::Value::Bool(true)))
    }

    #[test]
    fn native_answers_agree_with_cel_and_cover_the_common_shapes() {
        let native = [
            "json.seq % 2 == 0",
            "has(json.amount) && json.amount >= 100",
            "json.amount > 100 || json.kind == 'refund'",
            "!(json.kind == 'refund')",
            "json.price * 2.0 > 10.5",
            "json.n - 1 < 0",
            "json.n / 0 == 1",
            "json.big + 1 > 0",
            "-json.n == -3",
            "json.u == 18446744073709551615u",
            "json.seq == 4u",
            "json.kind != null",
            "json.flag == true",
            "headers['type'] == 'audit'",
            "headers.type == 'audit' && 'tenant' in headers",
            "key.startsWith('eu-') || key.endsWith('-x')",
            "payload.contains('error')",
            "size(payload) > 10 && payload.size() < 1000",
            "json.kind + '-x' == 'refund-x'",
            "json.nested == 1",
            "has(json.nested)",
            "json.kind < 'b'",
        ];
        let cel_only = [
            "json.customer.tier == 'gold'",
            "size(json) > 1",
            "[1].exists(x, x == json.n)",
        ];
        let messages = [
            msg(
                r#"{"seq": 4, "amount": 120, "kind": "sale", "n": 3, "flag": true}"#,
                Some("eu-1"),
                &[("type", "audit"), ("tenant", "a")],
            ),
            msg(
                r#"{"seq": 7, "amount": 5, "kind": "refund", "price": 5.25, "n": -3}"#,
                Some("us-x"),
                &[("type", "other"), ("type", "audit")],
            ),
            msg(
                r#"{"seq": 9223372036854775807, "big": 9223372036854775807, "u": 18446744073709551615, "nested": {"a": 1}, "kind": null}"#,
                None,
                &[],
            ),
            msg(
                r#"{"seq": "4", "amount": "120", "n": 0, "price": 1e308}"#,
                Some(""),
                &[],
            ),
            msg(
                r#"{"seq": 2, "seq": 3, "kind": "a\u00e9"}"#,
                Some("k"),
                &[("tenant", "b")],
            ),
            msg("not json, an error line", Some("eu-"), &[("type", "audit")]),
            msg("[1, 2, 3]", None, &[]),
            msg(r#"{"seq": 1} trailing"#, None, &[]),
            msg("", None, &[]),
        ];
        let mut answered = 0;
        for text in native {
            let program = Program::compile(text).unwrap();
            let mut fields = JsonFields::default();
            let compiled = Native::compile(&program, &mut fields);
            let compiled = compiled.unwrap_or_else(|| panic!("`{text}` should be native"));
            for m in &messages {
                if let Some(native) = compiled.matches(&mut Facts::new(m, &fields)) {
                    answered += 1;
                    assert_eq!(native, cel_says(&program, m), "`{text}` on {:?}", m.payload);
                }
            }
        }
        for text in cel_only {
            let program = Program::compile(text).unwrap();
            assert!(
                Native::compile(&program, &mut JsonFields::default()).is_none(),
                "{text}"
            );
        }
        // The other pairs (a missing field, mixed types, an overflow, a division by zero, an
        // object compared) are CEL's to answer: 68 of 198 here, by how the table was written.
        assert_eq!(answered, 68);
    }
}
