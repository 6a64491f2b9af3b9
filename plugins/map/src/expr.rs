//! CEL for `map`: the environment (the standard library and the strings, math and lists
//! extensions), compiling one expression per config entry, the variables a message binds, and
//! the conversions between JSON and CEL values.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::Key;
use cel::{Context, Env, Program, Value};
use patchbay_sdk::Message;

/// The CEL environment every expression is compiled in and run with.
pub struct Cel {
    env: Arc<Env>,
}

/// Which of the message's variables the compiled expressions read (the others are not bound).
#[derive(Default, Clone, Copy)]
pub struct Uses {
    pub json: bool,
    pub payload: bool,
    pub key: bool,
    pub headers: bool,
}

impl Cel {
    pub fn new() -> Result<Cel, String> {
        let mut env = Env::stdlib();
        cel::extensions::strings(&mut env).map_err(|e| format!("CEL strings extension: {e:?}"))?;
        cel::extensions::math(&mut env).map_err(|e| format!("CEL math extension: {e:?}"))?;
        cel::extensions::lists(&mut env).map_err(|e| format!("CEL lists extension: {e:?}"))?;
        Ok(Cel { env: Arc::new(env) })
    }

    /// Compile `source`, or say why it does not parse.
    /// Compile `source`, or say why it does not parse, on one line: `(at 1:13): Syntax
    /// error: …` (the parser's own text has the source and a caret on further lines).
    pub fn compile(&self, source: &str) -> Result<Program, String> {
        self.env.compile(source).map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim();
            let first = first.strip_prefix("ERROR: <input>:").unwrap_or(first);
            match first.split_once(": ") {
                Some((at, why)) if at.contains(':') => format!("(at {at}): {why}"),
                _ => format!(": {first}"),
            }
        })
    }

    /// What a failed evaluation says, with a hint for CEL's strict number types.
    pub fn explain(error: &cel::ExecutionError) -> String {
        let text = error.to_string();
        let mixed = (text.contains("Int(") || text.contains("UInt("))
            && text.contains("Float(")
            && text.contains("operator");
        if mixed {
            format!(
                "{text}; CEL does not mix int and double: write double(…) around the int, or \
                 2.0 for 2"
            )
        } else {
            text
        }
    }

    /// A context with the variables `uses` names bound for `message`, `json` to `doc`.
    pub fn scope(
        &self,
        uses: Uses,
        message: &Message,
        doc: Option<&serde_json::Value>,
    ) -> Context<'_, '_> {
        let mut scope = Context::with_env(self.env.clone());
        if let (true, Some(doc)) = (uses.json, doc) {
            scope.add_variable_from_value("json", json_to_cel(doc));
        }
        if uses.payload {
            scope.add_variable_from_value(
                "payload",
                String::from_utf8_lossy(&message.payload).into_owned(),
            );
        }
        if uses.key {
            let key = match &message.key {
                Some(k) => Value::from(String::from_utf8_lossy(k).into_owned()),
                None => Value::Null,
            };
            scope.add_variable_from_value("key", key);
        }
        if uses.headers {
            // The first header of each name, as the host's routes see them.
            let mut headers: HashMap<String, String> = HashMap::new();
            for h in message.headers.iter().rev() {
                headers.insert(h.name.clone(), h.value.clone());
            }
            scope.add_variable_from_value("headers", headers);
        }
        scope
    }
}

impl Uses {
    /// The variables any of `programs` reads.
    pub fn of<'a>(programs: impl Iterator<Item = &'a Program> + Clone) -> Uses {
        let uses = |name: &str| programs.clone().any(|p| p.references().has_variable(name));
        Uses {
            json: uses("json"),
            payload: uses("payload"),
            key: uses("key"),
            headers: uses("headers"),
        }
    }
}

/// JSON to CEL, integers as CEL `int` (CEL does not mix `int` and `uint`, and a JSON `3` read
/// as `uint` would refuse `json.qty * 2`).
pub fn json_to_cel(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.clone()),
        J::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        J::Object(fields) => Value::from(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), json_to_cel(v)))
                .collect::<HashMap<String, Value>>(),
        ),
    }
}

/// CEL to JSON. A CEL map has no order, so an object built by an expression gets its fields
/// in name order (the same output for the same input, run after run). Timestamps become RFC
/// 3339 text, durations their seconds as text (`"90s"`); bytes and NaN have no JSON form.
pub fn cel_to_json(value: &Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::UInt(u) => J::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| format!("the number {f} has no JSON form"))?,
        Value::String(s) => J::String(s.to_string()),
        Value::List(items) => J::Array(items.iter().map(cel_to_json).collect::<Result<_, _>>()?),
        Value::Map(map) => {
            let mut fields: Vec<(String, serde_json::Value)> = map
                .map
                .iter()
                .map(|(k, v)| Ok((key_text(k), cel_to_json(v)?)))
                .collect::<Result<_, String>>()?;
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            J::Object(fields.into_iter().collect())
        }
        Value::Timestamp(t) => J::String(t.to_rfc3339()),
        Value::Duration(d) => {
            let millis = d.num_milliseconds();
            J::String(if millis % 1000 == 0 {
                format!("{}s", millis / 1000)
            } else {
                format!("{}ms", millis)
            })
        }
        Value::Bytes(_) => {
            return Err("bytes have no JSON form: convert them with string(…)".into());
        }
        other => return Err(format!("{other:?} has no JSON form")),
    })
}

fn key_text(key: &Key) -> String {
    match key {
        Key::String(s) => s.to_string(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}
