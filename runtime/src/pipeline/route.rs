//! Content-based routing (the only thing called `route` here): which sinks get a message, decided by CEL conditions
//! (<https://cel.dev>) over the message, compiled once at start.
//!
//! In a condition, `json` is the payload parsed as JSON (absent when it is not JSON), `payload`
//! the payload as text, `key` the key as text (empty when none) and `headers` a map of header
//! names to values. A condition that cannot be evaluated for a message (say `json.amount` on a
//! message without that field) does not match; write `has(json.amount) && json.amount > 100`
//! to be explicit. Conditions of the common shapes are evaluated natively (see `native`), with
//! CEL's own answer wherever the native path is not certain; for the rest, of `json` only the
//! fields the conditions read are built (see `fields`).

use std::collections::HashMap;

use cel::{Context, Program, Value};

use super::fields::JsonUse;
use super::native::{Facts, JsonFields, Native};
use crate::config::{RouteDecl, RoutingMode};
use crate::contract::Message;

struct Route {
    when: Option<Program>,
    native: Option<Native>,
    to: Vec<usize>,
}

/// Compiled routes of one pipeline.
pub struct Router {
    routes: Vec<Route>,
    mode: RoutingMode,
    vars: Vars,
    fields: JsonFields,
}

/// Which of a message's variables some CEL programs read: only those are built per message.
#[derive(Debug, Clone, Default)]
pub(super) struct Vars {
    json: JsonUse,
    payload: bool,
    key: bool,
    headers: bool,
}

impl Vars {
    /// The variables any of `programs` reads.
    pub(super) fn read_by<'a>(programs: impl Iterator<Item = &'a Program> + Clone) -> Vars {
        let uses = |name: &str| programs.clone().any(|p| p.references().has_variable(name));
        Vars {
            json: if uses("json") {
                JsonUse::of(programs.clone())
            } else {
                JsonUse::None
            },
            payload: uses("payload"),
            key: uses("key"),
            headers: uses("headers"),
        }
    }

    /// Bind the variables to `message` in `scope`.
    pub(super) fn bind(&self, scope: &mut Context<'_, '_>, message: &Message) {
        if self.json != JsonUse::None {
            scope.add_variable_from_value("json", self.json.value(&message.payload));
        }
        if self.payload {
            scope.add_variable_from_value(
                "payload",
                String::from_utf8_lossy(&message.payload).into_owned(),
            );
        }
        if self.key {
            let key = message
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            scope.add_variable_from_value("key", key);
        }
        if self.headers {
            let headers: HashMap<String, String> = message
                .headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            scope.add_variable_from_value("headers", headers);
        }
    }
}

impl Router {
    /// Compile the routes (the config check already compiled them once, so this succeeds for a
    /// checked config; an error here says which route).
    pub fn new(routes: &[RouteDecl], mode: RoutingMode) -> Result<Router, String> {
        let mut compiled = Vec::new();
        let mut fields = JsonFields::default();
        for (i, route) in routes.iter().enumerate() {
            let when = match &route.when {
                Some(text) => Some(
                    Program::compile(text)
                        .map_err(|e| format!("route {}: invalid condition: {e}", i + 1))?,
                ),
                None => None,
            };
            compiled.push(Route {
                native: when.as_ref().and_then(|p| Native::compile(p, &mut fields)),
                when,
                to: route.to.clone(),
            });
        }
        Ok(Router {
            vars: Vars::read_by(compiled.iter().filter_map(|r| r.when.as_ref())),
            routes: compiled,
            mode,
            fields,
        })
    }

    /// Split a batch by destination, one list per sink; also returns how many messages
    /// matched no route (dropped).
    pub fn split(&self, records: Vec<Message>, sinks: usize) -> (Vec<Vec<Message>>, u64) {
        // Made only if a message needs CEL itself (building its function table costs).
        let mut cel = None;
        let mut per_sink: Vec<Vec<Message>> = (0..sinks).map(|_| Vec::new()).collect();
        let mut flags = vec![false; sinks];
        let mut unrouted = 0;
        for message in records {
            self.mark(&mut cel, &message, &mut flags);
            // Clone for every destination but the last, which takes the message itself.
            let Some(last) = flags.iter().rposition(|&f| f) else {
                unrouted += 1;
                continue;
            };
            for (i, _) in flags[..last].iter().enumerate().filter(|(_, f)| **f) {
                per_sink[i].push(message.clone());
            }
            per_sink[last].push(message);
        }
        (per_sink, unrouted)
    }

    /// Mark in `to` (one flag per sink) the sinks that get `message`.
    pub fn destinations(&self, message: &Message, to: &mut [bool]) {
        self.mark(&mut None, message, to);
    }

    /// `cel`: the context CEL evaluates in, made when first needed; each message's variables
    /// replace the last one's.
    fn mark(&self, cel: &mut Option<Context<'_, '_>>, message: &Message, to: &mut [bool]) {
        to.iter_mut().for_each(|t| *t = false);
        let mut facts = Facts::new(message, &self.fields);
        let mut bound = false;
        for route in &self.routes {
            let matched = match &route.when {
                None => true,
                Some(program) => match route.native.as_ref().and_then(|n| n.matches(&mut facts)) {
                    Some(matched) => matched,
                    None => {
                        let scope = cel.get_or_insert_with(Context::default);
                        if !bound {
                            self.vars.bind(scope, message);
                            bound = true;
                        }
                        matches!(program.execute(scope), Ok(Value::Bool(true)))
                    }
                },
            };
            if matched {
                for &sink in &route.to {
                    if let Some(flag) = to.get_mut(sink) {
                        *flag = true;
                    }
                }
                if self.mode == RoutingMode::First {
                    break;
                }
            }
        }
    }
}

/// JSON to CEL, with integers as CEL `int` so that `json.n % 2 == 0` and `json.n > 10` work
/// as written (CEL does not mix `int` and `uint`).
pub(super) fn json_to_cel(value: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s),
        J::Array(items) => Value::List(std::sync::Arc::new(
            items.into_iter().map(json_to_cel).collect(),
        )),
        J::Object(fields) => Value::from(
            fields
                .into_iter()
                .map(|(k, v)| (k, json_to_cel(v)))
                .collect::<HashMap<String, Value>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Header, message};

    fn router(routes: &[(Option<&str>, &[usize])], mode: RoutingMode) -> Router {
        let decls: Vec<RouteDecl> = routes
            .iter()
            .map(|(when, to)| RouteDecl {
                when: when.map(str::to_owned),
                to: to.to_vec(),
            })
            .collect();
        Router::new(&decls, mode).unwrap()
    }

    #[test]
    fn first_and_all_matches() {
        let routes: &[(Option<&str>, &[usize])] = &[
            (Some("has(json.amount) && json.amount >= 100"), &[0]),
            (Some("headers['type'] == 'audit'"), &[1]),
            (None, &[2]),
        ];
        let mut m = message(br#"{"amount": 120}"#.to_vec());
        m.headers.push(Header {
            name: "type".into(),
            value: "audit".into(),
        });
        let mut to = [false; 3];
        router(routes, RoutingMode::All).destinations(&m, &mut to);
        assert_eq!(to, [true, true, true]);
        router(routes, RoutingMode::First).destinations(&m, &mut to);
        assert_eq!(to, [true, false, false]);
        let small = message(br#"{"amount": 5}"#.to_vec());
        router(routes, RoutingMode::First).destinations(&small, &mut to);
        assert_eq!(to, [false, false, true]);
        let even = router(&[(Some("json.seq % 2 == 0"), &[0])], RoutingMode::First);
        even.destinations(&message(br#"{"seq": 4}"#.to_vec()), &mut to);
        assert_eq!(to, [true, false, false]);
        let not_json = message(b"hello".to_vec());
        router(routes, RoutingMode::All).destinations(&not_json, &mut to);
        assert_eq!(to, [false, false, true]);
    }
}
