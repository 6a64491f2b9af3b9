//! Logical replication with the `pgoutput` plugin (protocol version 1): the stream's CopyData
//! ([`Frame`]: XLogData and keepalives), the changes inside ([`Change`]: begin, relation,
//! insert, update, delete, commit), and the standby status update a client sends to confirm
//! what it has durably taken ([`status_update`]).
//!
//! Column values arrive as text (or NULL, or "unchanged TOAST"); [`Column::json`] turns one into
//! JSON by its type (numbers, booleans and json/jsonb as such, the rest as strings).

use std::collections::HashMap;

/// One CopyData of the replication stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// WAL data: its start position and a pgoutput message.
    XLogData { start: u64, data: Vec<u8> },
    /// The server's keepalive: its WAL end, and whether it wants a status update now.
    Keepalive { wal_end: u64, reply: bool },
}

/// A relation's description, sent before its first change in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub namespace: String,
    pub name: String,
    pub columns: Vec<RelColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the primary key, usually).
    pub key: bool,
}

/// One value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the change did not touch (not sent).
    Unchanged,
    Text(String),
}

/// A decoded pgoutput message.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Begin {
        final_lsn: u64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
    },
    Relation {
        oid: u32,
        relation: Relation,
    },
    Insert {
        oid: u32,
        new: Vec<Value>,
    },
    /// `old`: the old key (or whole row with REPLICA IDENTITY FULL), when sent.
    Update {
        oid: u32,
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        oid: u32,
        old: Vec<Value>,
    },
    /// Truncate, type, origin, logical message: nothing to deliver.
    Other(u8),
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn short(what: &str) -> String {
    format!("a truncated pgoutput message (in {what})")
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| short(what))?;
        let part = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(part)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let rest = &self.bytes[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| short(what))?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, String> {
        let n = self.u16("a tuple")?;
        (0..n)
            .map(|_| match self.u8("a column")? {
                b'n' => Ok(Value::Null),
                b'u' => Ok(Value::Unchanged),
                b't' | b'b' => {
                    let len = self.u32("a value")? as usize;
                    let bytes = self.take(len, "a value")?;
                    Ok(Value::Text(String::from_utf8_lossy(bytes).into_owned()))
                }
                other => Err(format!("an unknown tuple column kind `{}`", other as char)),
            })
            .collect()
    }
}

/// Decode one CopyData of the stream.
pub fn frame(bytes: &[u8]) -> Result<Frame, String> {
    let mut r = Reader { bytes, pos: 0 };
    match r.u8("a frame")? {
        b'w' => {
            let start = r.u64("XLogData")?;
            let _wal_end = r.u64("XLogData")?;
            let _time = r.u64("XLogData")?;
            Ok(Frame::XLogData {
                start,
                data: bytes[r.pos..].to_vec(),
            })
        }
        b'k' => {
            let wal_end = r.u64("a keepalive")?;
            let _time = r.u64("a keepalive")?;
            let reply = r.u8("a keepalive")? == 1;
            Ok(Frame::Keepalive { wal_end, reply })
        }
        other => Err(format!("an unknown replication frame `{}`", other as char)),
    }
}

/// Decode one pgoutput message.
pub fn change(bytes: &[u8]) -> Result<Change, String> {
    let mut r = Reader { bytes, pos: 0 };
    let kind = r.u8("a message")?;
    Ok(match kind {
        b'B' => {
            let final_lsn = r.u64("Begin")?;
            let _time = r.u64("Begin")?;
            let xid = r.u32("Begin")?;
            Change::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = r.u8("Commit")?;
            let commit_lsn = r.u64("Commit")?;
            let end_lsn = r.u64("Commit")?;
            Change::Commit {
                commit_lsn,
                end_lsn,
            }
        }
        b'R' => {
            let oid = r.u32("Relation")?;
            let namespace = r.string("Relation")?;
            let name = r.string("Relation")?;
            let _identity = r.u8("Relation")?;
            let n = r.u16("Relation")?;
            let columns = (0..n)
                .map(|_| {
                    let flags = r.u8("a relation column")?;
                    let name = r.string("a relation column")?;
                    let type_oid = r.u32("a relation column")?;
                    let _typmod = r.u32("a relation column")?;
                    Ok(RelColumn {
                        name,
                        type_oid,
                        key: flags & 1 == 1,
                    })
                })
                .collect::<Result<_, String>>()?;
            Change::Relation {
                oid,
                relation: Relation {
                    namespace,
                    name,
                    columns,
                },
            }
        }
        b'I' => {
            let oid = r.u32("Insert")?;
            let _n = r.u8("Insert")?;
            Change::Insert {
                oid,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let oid = r.u32("Update")?;
            let mut old = None;
            let mut tag = r.u8("Update")?;
            if tag == b'K' || tag == b'O' {
                old = Some(old_tuple(tag, r.tuple()?));
                tag = r.u8("Update")?;
            }
            if tag != b'N' {
                return Err(format!(
                    "an Update without its new tuple (`{}`)",
                    tag as char
                ));
            }
            Change::Update {
                oid,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let oid = r.u32("Delete")?;
            let tag = r.u8("Delete")?;
            Change::Delete {
                oid,
                old: old_tuple(tag, r.tuple()?),
            }
        }
        other => Change::Other(other),
    })
}

/// Microseconds from 2000-01-01 (PostgreSQL's epoch) to the Unix epoch.
const PG_EPOCH_OFFSET_MICROS: u64 = 946_684_800_000_000;

/// The standby status update that reports `lsn` written, flushed and applied (the slot's
/// confirmed position moves to it).
pub fn status_update(lsn: u64, now_unix_micros: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(34);
    out.push(b'r');
    for _ in 0..3 {
        out.extend_from_slice(&lsn.to_be_bytes());
    }
    out.extend_from_slice(
        &now_unix_micros
            .saturating_sub(PG_EPOCH_OFFSET_MICROS)
            .to_be_bytes(),
    );
    out.push(0);
    out
}

/// An old tuple: with `K` (the replica identity's key only) the other columns come as nulls
/// (a key column is never null), so they are marked as not sent and left out of the JSON.
fn old_tuple(tag: u8, values: Vec<Value>) -> Vec<Value> {
    match tag {
        b'K' => values
            .into_iter()
            .map(|v| match v {
                Value::Null => Value::Unchanged,
                other => other,
            })
            .collect(),
        _ => values,
    }
}

/// `X/Y`, as PostgreSQL writes an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A row as the text of a JSON object of its columns (unchanged TOAST values left out),
/// written directly so that a numeric keeps every digit PostgreSQL gave it (as `row_to_json`
/// does; a `serde_json::Number` would round it to a double).
pub fn row_json(relation: &Relation, values: &[Value]) -> String {
    let mut row = String::from("{");
    for (column, value) in relation.columns.iter().zip(values) {
        let text = match value {
            Value::Unchanged => continue,
            Value::Null => None,
            Value::Text(text) => Some(text),
        };
        if row.len() > 1 {
            row.push(',');
        }
        row.push_str(&serde_json::Value::String(column.name.clone()).to_string());
        row.push(':');
        match text {
            None => row.push_str("null"),
            Some(text) => Column(column.type_oid).write_json(text, &mut row),
        }
    }
    row.push('}');
    row
}

/// A column type, by OID.
pub struct Column(pub u32);

impl Column {
    /// Append the JSON of a value in its text form: numbers and json/jsonb as they are (when
    /// they are valid JSON), booleans as `true`/`false`, everything else a string.
    pub fn write_json(&self, text: &str, out: &mut String) {
        let valid = || serde_json::from_str::<serde_json::Value>(text).is_ok();
        match self.0 {
            // bool
            16 => out.push_str(if text == "t" { "true" } else { "false" }),
            // int2, int4, int8, oid, float4, float8, numeric (NaN and Infinity are not JSON)
            21 | 23 | 20 | 26 | 700 | 701 | 1700
                if serde_json::from_str::<serde_json::Number>(text).is_ok() =>
            {
                out.push_str(text)
            }
            // json, jsonb
            114 | 3802 if valid() => out.push_str(text),
            _ => out.push_str(&serde_json::Value::String(text.to_owned()).to_string()),
        }
    }
}

/// Relations seen in this session, by OID.
pub type Relations = HashMap<u32, Relation>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_decode() {
        let mut insert = vec![b'I', 0, 0, 0, 42, b'N', 0, 2, b't', 0, 0, 0, 2];
        insert.extend_from_slice(b"17");
        insert.push(b'n');
        assert_eq!(
            change(&insert),
            Ok(Change::Insert {
                oid: 42,
                new: vec![Value::Text("17".into()), Value::Null]
            })
        );
        assert!(change(&insert[..9]).is_err());
        assert_eq!(lsn_text(0x1_0000_00FF), "1/FF");
        assert_eq!(status_update(7, PG_EPOCH_OFFSET_MICROS).len(), 34);
        let rel = Relation {
            namespace: "public".into(),
            name: "t".into(),
            columns: vec![
                RelColumn {
                    name: "id".into(),
                    type_oid: 20,
                    key: true,
                },
                RelColumn {
                    name: "ok".into(),
                    type_oid: 16,
                    key: false,
                },
                RelColumn {
                    name: "doc".into(),
                    type_oid: 3802,
                    key: false,
                },
            ],
        };
        let row = row_json(
            &rel,
            &[
                Value::Text("5".into()),
                Value::Text("t".into()),
                Value::Text("{\"a\":1}".into()),
            ],
        );
        assert_eq!(row, r#"{"id":5,"ok":true,"doc":{"a":1}}"#);
        let mut price = String::new();
        Column(1700).write_json("12345678901234567.50", &mut price);
        assert_eq!(price, "12345678901234567.50");
        let mut nan = String::new();
        Column(1700).write_json("NaN", &mut nan);
        assert_eq!(nan, r#""NaN""#);
    }
}
