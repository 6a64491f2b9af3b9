//! `patchbay-proto-sqlmap`: how Patchbay's SQL sinks (postgres-sink, mariadb-sink) map JSON
//! payloads to table rows, the same way for every database.
//!
//! What lives here: [`Layout`], read from the sink's config keys `mode`, `columns`, `column`
//! and `on_conflict`; [`Layout::written`], the columns a batch writes, checked against the
//! table's (the error names the wrong one and lists what the table has); [`Layout::cells`],
//! one payload's values for those columns, each a [`Cell`] the sink renders in its database's
//! syntax (a COPY line, an SQL literal); [`write_split`], how a batch the server refuses for
//! one row's data is split until that row is found.
//!
//! What it may not touch: connections, SQL text, error classes: those are each database's
//! own, in its proto crate and its sink.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use patchbay_sdk::spec::Settings;
use patchbay_sdk::{Error, json};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// What to do with a row whose conflict keys match an existing row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// No `on_conflict`: the server's unique violation makes the row `invalid-data`.
    Fail,
    Nothing(Vec<String>),
    Update(Vec<String>),
}

/// How payloads become rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Top-level fields (or `paths`) into the columns of their names: `None` takes the
    /// table's columns that the server does not fill itself.
    Columns(Option<Vec<String>>),
    /// The whole payload into this one column.
    Whole(String),
}

/// One column as the database's catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Filled by the server on its own: identity, auto-increment, generated, a serial.
    pub automatic: bool,
    /// A type whose text form is not JSON (PostgreSQL arrays and composites).
    pub structured: bool,
}

/// One value of a row, for the sink to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell<'a> {
    Null,
    /// A JSON string's text (unescaped).
    Text(Cow<'a, str>),
    /// Any other JSON value as its JSON text: a number, `true`/`false`, an object or array.
    Json(Cow<'a, str>),
}

/// The payload → row mapping a sink's config gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub shape: Shape,
    /// `columns = { column = "dotted.path" }`: each column's path in the payload.
    pub paths: Option<Vec<(String, String)>>,
    pub conflict: Conflict,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ColumnsDecl {
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictDecl {
    keys: Vec<String>,
    action: String,
}

impl Layout {
    /// Read `mode` (`columns`, or `whole`: the sink's name for the one-column mode, e.g.
    /// `jsonb`), `columns`, `column` and `on_conflict`.
    pub fn from_config(c: &Settings<'_>, whole: &str) -> Result<Layout, Error> {
        let one = c.choice("mode")? == whole;
        let declared: Option<ColumnsDecl> = c.json("columns")?;
        let (shape, paths) = match (one, declared) {
            (true, Some(_)) => {
                return Err(c.invalid(
                    "columns",
                    &format!("nothing in mode = \"{whole}\" (use `column`)"),
                ));
            }
            (true, None) => (Shape::Whole(c.text("column")?.to_owned()), None),
            (false, None) => (Shape::Columns(None), None),
            (false, Some(ColumnsDecl::List(names))) => (Shape::Columns(Some(names)), None),
            (false, Some(ColumnsDecl::Map(map))) => {
                let names = map.keys().cloned().collect();
                (Shape::Columns(Some(names)), Some(map.into_iter().collect()))
            }
        };
        if let Shape::Columns(Some(names)) = &shape
            && names.is_empty()
        {
            return Err(c.invalid("columns", "at least one column"));
        }
        let conflict = match c.json::<ConflictDecl>("on_conflict")? {
            None => Conflict::Fail,
            Some(_) if one => {
                return Err(c.invalid("on_conflict", &format!("nothing in mode = \"{whole}\"")));
            }
            Some(d) if d.keys.is_empty() => {
                return Err(c.invalid("on_conflict", "at least one key column in `keys`"));
            }
            Some(d) => match d.action.as_str() {
                "update" => Conflict::Update(d.keys),
                "nothing" => Conflict::Nothing(d.keys),
                _ => {
                    return Err(c.invalid("on_conflict", "`action` = \"update\" or \"nothing\""));
                }
            },
        };
        Ok(Layout {
            shape,
            paths,
            conflict,
        })
    }

    /// The columns a batch writes, in order, checked against the table's `existing` ones (the
    /// conflict keys too); the error names the config key, the wrong name and the table's
    /// columns.
    pub fn written(&self, table: &str, existing: &[Column]) -> Result<Vec<String>, String> {
        let all: Vec<&str> = existing.iter().map(|c| c.name.as_str()).collect();
        let check = |names: &[String], key: &str| match names
            .iter()
            .find(|n| !all.contains(&n.as_str()))
        {
            Some(missing) => Err(format!(
                "config key `{key}`: table `{table}` has no column `{missing}`; its columns: {}",
                all.join(", ")
            )),
            None => Ok(()),
        };
        let columns = match &self.shape {
            Shape::Whole(column) => {
                check(std::slice::from_ref(column), "column")?;
                vec![column.clone()]
            }
            Shape::Columns(Some(names)) => {
                check(names, "columns")?;
                names.clone()
            }
            Shape::Columns(None) => existing
                .iter()
                .filter(|c| !c.automatic)
                .map(|c| c.name.clone())
                .collect(),
        };
        if columns.is_empty() {
            return Err(format!(
                "table `{table}` has no column to write (all are filled by the server); name \
                 them in `columns`"
            ));
        }
        if let Conflict::Nothing(keys) | Conflict::Update(keys) = &self.conflict {
            check(keys, "on_conflict")?;
        }
        Ok(columns)
    }

    /// The values of one payload for `columns` (as [`Layout::written`] gave them); a payload
    /// that is not a JSON object is `invalid-data`. Fields without a column are ignored,
    /// columns without a field get NULL.
    pub fn cells<'a>(&self, columns: &[String], payload: &'a [u8]) -> Result<Vec<Cell<'a>>, Error> {
        let not_json = |e: &dyn std::fmt::Display| {
            Error::invalid_data(format!("the payload is not a JSON object: {e}"))
        };
        if let Shape::Whole(_) = self.shape {
            json::validate(payload).map_err(|e| not_json(&e))?;
            let text = std::str::from_utf8(payload).map_err(|e| not_json(&e))?;
            return Ok(vec![Cell::Json(Cow::Borrowed(text.trim()))]);
        }
        if let Some(paths) = &self.paths {
            let doc: Value = serde_json::from_slice(payload).map_err(|e| not_json(&e))?;
            if !doc.is_object() {
                return Err(not_json(&"it is not an object"));
            }
            return Ok(paths
                .iter()
                .map(|(_, path)| match json::get(&doc, path) {
                    None | Some(Value::Null) => Cell::Null,
                    Some(Value::String(s)) => Cell::Text(Cow::Owned(s.clone())),
                    Some(other) => Cell::Json(Cow::Owned(other.to_string())),
                })
                .collect());
        }
        let fields: HashMap<Cow<'a, str>, &'a RawValue> =
            serde_json::from_slice(payload).map_err(|e| not_json(&e))?;
        columns
            .iter()
            .map(|column| match fields.get(column.as_str()) {
                None => Ok(Cell::Null),
                Some(raw) => cell(raw).map_err(|e| not_json(&e)),
            })
            .collect()
    }
}

/// What writing a run of rows in one statement came to.
#[derive(Debug, Clone)]
pub enum Attempt {
    Written,
    /// The server refused a row's data (the text says so, with the server's words): the run
    /// is split to find that row.
    Refused(String),
    /// Anything else (a lost connection, a missing table): every row of the run fails so.
    Failed(Error),
}

/// Write the rows `which` (indexes into the batch) by `attempt`, a statement per call, each
/// row's outcome into `results`. A data refusal splits the run in halves and tries each, so
/// the refused row ends alone as `invalid-data` with the server's words and the others are
/// written: one statement for a clean batch, about 2·log2(n) more per bad row.
pub fn write_split(
    which: &[usize],
    results: &mut [Result<(), Error>],
    attempt: &mut dyn FnMut(&[usize]) -> Attempt,
) {
    if which.is_empty() {
        return;
    }
    match attempt(which) {
        Attempt::Written => {}
        Attempt::Failed(e) => which.iter().for_each(|&i| results[i] = Err(e.clone())),
        Attempt::Refused(why) => match which {
            [only] => results[*only] = Err(Error::invalid_data(why)),
            _ => {
                let (left, right) = which.split_at(which.len() / 2);
                write_split(left, results, attempt);
                write_split(right, results, attempt);
            }
        },
    }
}

/// A value still in its JSON text as a [`Cell`].
fn cell(raw: &RawValue) -> Result<Cell<'_>, serde_json::Error> {
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'"') => Cell::Text(serde_json::from_str(text)?),
        Some(b'n') => Cell::Null,
        _ => Cell::Json(Cow::Borrowed(text)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<Column> {
        ["id", "name", "amount"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                automatic: *n == "id",
                structured: false,
            })
            .collect()
    }

    fn layout(shape: Shape, conflict: Conflict) -> Layout {
        Layout {
            shape,
            paths: None,
            conflict,
        }
    }

    #[test]
    fn written_columns_are_checked() {
        let all = layout(Shape::Columns(None), Conflict::Fail);
        assert_eq!(
            all.written("t", &columns()),
            Ok(vec!["name".into(), "amount".into()])
        );
        let wrong = layout(Shape::Columns(Some(vec!["nope".into()])), Conflict::Fail);
        assert_eq!(
            wrong.written("orders", &columns()),
            Err(
                "config key `columns`: table `orders` has no column `nope`; its columns: id, \
                 name, amount"
                    .into()
            )
        );
        let keys = layout(Shape::Columns(None), Conflict::Update(vec!["key".into()]));
        assert!(
            keys.written("t", &columns())
                .unwrap_err()
                .starts_with("config key `on_conflict`")
        );
        let whole = layout(Shape::Whole("name".into()), Conflict::Fail);
        assert_eq!(whole.written("t", &columns()), Ok(vec!["name".into()]));
    }

    #[test]
    fn cells_of_a_payload() {
        let l = layout(Shape::Columns(None), Conflict::Fail);
        let cols = vec![
            "id".to_owned(),
            "name".to_owned(),
            "amount".to_owned(),
            "x".to_owned(),
        ];
        let cells = l
            .cells(
                &cols,
                br#"{"id":7,"name":"a\"b","amount":null,"extra":[1]}"#,
            )
            .unwrap();
        assert_eq!(
            cells,
            vec![
                Cell::Json("7".into()),
                Cell::Text("a\"b".into()),
                Cell::Null,
                Cell::Null
            ]
        );
        assert!(l.cells(&cols, b"[1]").is_err());
        let mapped = Layout {
            paths: Some(vec![("total".into(), "order.total".into())]),
            ..l.clone()
        };
        assert_eq!(
            mapped
                .cells(&["total".into()], br#"{"order":{"total":{"eur":3}}}"#)
                .unwrap(),
            vec![Cell::Json(r#"{"eur":3}"#.into())]
        );
        let whole = layout(Shape::Whole("doc".into()), Conflict::Fail);
        assert_eq!(
            whole.cells(&["doc".into()], b" {\"a\":1} ").unwrap(),
            vec![Cell::Json("{\"a\":1}".into())]
        );
    }

    #[test]
    fn a_refused_row_is_found_and_the_rest_written() {
        let mut results = vec![Ok(()); 10];
        let mut statements = 0;
        let which: Vec<usize> = (0..10).collect();
        write_split(&which, &mut results, &mut |run| {
            statements += 1;
            match run.contains(&7) {
                true => Attempt::Refused("row 7 is bad".into()),
                false => Attempt::Written,
            }
        });
        assert!(
            results
                .iter()
                .enumerate()
                .all(|(i, r)| r.is_ok() == (i != 7))
        );
        assert_eq!(results[7], Err(Error::invalid_data("row 7 is bad")));
        assert!(statements <= 8, "{statements}");
    }
}
