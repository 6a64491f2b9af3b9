//! `partition_by`: which of a stage's instances a record goes to, so that all records with the
//! same key (or the same value of a CEL expression) meet the same instance, in order.
//!
//! The value is hashed (std's SipHash with fixed keys: the same value always picks the same
//! instance in a run) and taken modulo the number of instances. Records without a key, and
//! records for which the expression cannot be evaluated, all go to the first instance: they
//! keep their order too.

use std::hash::{DefaultHasher, Hash, Hasher};

use cel::{Context, Program, Value};

use super::route::Vars;
use crate::config::PartitionBy;
use crate::contract::Message;

/// A compiled `partition_by`.
pub(super) enum Partitioner {
    /// By the message key.
    Key,
    /// By the value of an expression.
    Expression {
        /// The compiled expression.
        program: Box<Program>,
        /// What it reads of a message.
        vars: Vars,
    },
}

impl Partitioner {
    /// Compile `by` (the config check compiled it once already; an error here says why).
    pub(super) fn new(by: &PartitionBy) -> Result<Partitioner, String> {
        match by {
            PartitionBy::Key => Ok(Partitioner::Key),
            PartitionBy::Expression(text) => {
                let program = Program::compile(text)
                    .map_err(|e| format!("partition_by `{text}` is not valid CEL: {e}"))?;
                let vars = Vars::read_by(std::iter::once(&program));
                Ok(Partitioner::Expression {
                    program: Box::new(program),
                    vars,
                })
            }
        }
    }

    /// Split `records` into one list per instance, each in its input order.
    pub(super) fn split(&self, records: Vec<Message>, lanes: usize) -> Vec<Vec<Message>> {
        let lanes = lanes.max(1);
        let mut parts: Vec<Vec<Message>> = (0..lanes)
            .map(|_| Vec::with_capacity(records.len() / lanes + 1))
            .collect();
        // CEL's context (its function table costs to build) only for an expression.
        let root = matches!(self, Partitioner::Expression { .. }).then(Context::default);
        // One scope for the batch: each message's variables replace the last one's.
        let mut scope = root.as_ref().map(|root| root.new_inner_scope());
        for message in records {
            let lane = self.lane(scope.as_mut(), &message, lanes);
            if let Some(part) = parts.get_mut(lane) {
                part.push(message);
            }
        }
        parts
    }

    fn lane(&self, scope: Option<&mut Context<'_, '_>>, message: &Message, lanes: usize) -> usize {
        let mut hasher = DefaultHasher::new();
        match self {
            Partitioner::Key => match &message.key {
                Some(key) => key.hash(&mut hasher),
                None => return 0,
            },
            Partitioner::Expression { program, vars } => {
                let Some(scope) = scope else { return 0 };
                vars.bind(scope, message);
                match program.execute(scope) {
                    Ok(value) => hash_value(&value, &mut hasher),
                    Err(_) => return 0,
                }
            }
        }
        (hasher.finish() % lanes as u64) as usize
    }
}

/// Hash a CEL value so that equal values (`1` and `1u`, the same string) land together.
fn hash_value(value: &Value, hasher: &mut DefaultHasher) {
    match value {
        Value::String(s) => s.as_str().hash(hasher),
        Value::Bytes(b) => b.as_slice().hash(hasher),
        Value::Int(i) => i.to_string().hash(hasher),
        Value::UInt(u) => u.to_string().hash(hasher),
        Value::Float(f) => f.to_bits().hash(hasher),
        Value::Bool(b) => b.hash(hasher),
        Value::Null => 0u8.hash(hasher),
        other => format!("{other:?}").hash(hasher),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::message;

    fn keyed(key: &str, seq: u32) -> Message {
        let mut m = message(format!("{{\"customer\":\"{key}\",\"seq\":{seq}}}").into_bytes());
        m.key = Some(key.as_bytes().to_vec());
        m
    }

    fn keys_of(part: &[Message]) -> Vec<String> {
        part.iter()
            .map(|m| String::from_utf8_lossy(m.key.as_deref().unwrap_or(b"")).into_owned())
            .collect()
    }

    #[test]
    fn the_same_key_goes_to_the_same_instance_in_order() {
        let records: Vec<Message> = (0..400)
            .map(|i| keyed(&format!("k{}", i % 16), i))
            .collect();
        for by in [
            PartitionBy::Key,
            PartitionBy::Expression("json.customer".into()),
        ] {
            let parts = Partitioner::new(&by).unwrap().split(records.clone(), 4);
            assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 400);
            // Every key lives in exactly one part, and its records keep their order there.
            for k in 0..16 {
                let key = format!("k{k}");
                let holders: Vec<usize> = (0..4)
                    .filter(|&p| keys_of(&parts[p]).contains(&key))
                    .collect();
                assert_eq!(holders.len(), 1, "{by:?}: key {key} in parts {holders:?}");
                let seqs: Vec<u64> = parts[holders[0]]
                    .iter()
                    .filter(|m| m.key.as_deref() == Some(key.as_bytes()))
                    .map(|m| {
                        serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["seq"]
                            .as_u64()
                            .unwrap()
                    })
                    .collect();
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{by:?}: {seqs:?}");
                assert_eq!(seqs.len(), 25);
            }
            // 16 keys over 4 instances: more than one instance gets work.
            assert!(parts.iter().filter(|p| !p.is_empty()).count() > 1);
        }
    }

    #[test]
    fn records_without_a_key_or_value_go_to_the_first_instance() {
        let parts = Partitioner::new(&PartitionBy::Key)
            .unwrap()
            .split(vec![message(b"a".to_vec()), message(b"b".to_vec())], 3);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [2, 0, 0]);
        let parts = Partitioner::new(&PartitionBy::Expression("json.missing.deep".into()))
            .unwrap()
            .split(vec![message(b"not json".to_vec())], 3);
        assert_eq!(parts[0].len(), 1);
    }
}
