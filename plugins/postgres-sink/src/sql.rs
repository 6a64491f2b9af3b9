//! The one statement a batch is written with, built once per connection from the config and
//! the table's columns.
//!
//! Plain inserts go by `COPY … FROM STDIN` (text format: each value as the text PostgreSQL's
//! own input function for the column reads, escaped by [`copy_escape`]), which the server
//! takes about 3× as fast as an INSERT of the same rows. Upserts, and tables with array or
//! composite columns (whose JSON form COPY cannot read), go by one INSERT whose single
//! parameter is the batch as a JSON array, turned into rows by the server:
//! `json_populate_recordset(NULL::table, $1)` (each top-level field into the column of its
//! name) or `jsonb_array_elements($1)` (jsonb mode). Either way a batch is one round trip and
//! one transaction, and the plugin never writes a value into SQL text.

use patchbay_proto_pg::{Conn, Error as PgError, quote_ident, quote_literal};

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
    /// Top-level fields into the columns of their names: `None` takes the table's columns
    /// (see [`insertable`]).
    Columns(Option<Vec<String>>),
    /// The whole payload into this one column.
    Jsonb(String),
}

/// One column as the catalog describes it.
pub struct Column {
    pub name: String,
    /// Filled by the server on its own: identity, generated, or a serial's `nextval` default.
    pub automatic: bool,
    /// An array or composite type: COPY's text form of it is not JSON.
    pub structured: bool,
}

/// The table's columns, in order; `Ok(empty)` when there is no such table (or the user may
/// not see it).
pub fn columns(conn: &mut Conn, table: &str) -> Result<Vec<Column>, PgError> {
    let sql = format!(
        "SELECT a.attname, (a.attidentity <> '' OR a.attgenerated <> '' \
         OR coalesce(pg_get_expr(d.adbin, d.adrelid), '') LIKE 'nextval(%')::text, \
         (t.typcategory IN ('A', 'C'))::text \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = to_regclass({}) AND a.attnum > 0 \
         AND NOT a.attisdropped ORDER BY a.attnum",
        quote_literal(&quote_ident(table))
    );
    Ok(conn
        .query(&sql)?
        .into_iter()
        .filter_map(|row| {
            let mut values = row.into_iter();
            let name = values.next().flatten()?;
            let automatic = values.next().flatten().as_deref() == Some("true");
            let structured = values.next().flatten().as_deref() == Some("true");
            Some(Column {
                name,
                automatic,
                structured,
            })
        })
        .collect())
}

/// The columns a batch writes when the config names none: every column the server does not
/// fill on its own.
pub fn insertable(columns: &[Column]) -> Vec<String> {
    columns
        .iter()
        .filter(|c| !c.automatic)
        .map(|c| c.name.clone())
        .collect()
}

/// How a batch is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// `COPY … FROM STDIN`; each row a line of these columns' values.
    Copy { sql: String, columns: Vec<String> },
    /// An INSERT whose `$1` is the batch as a JSON array of objects (or documents).
    Insert { sql: String },
}

/// The statement for one batch: COPY where it can, else [`insert`].
pub fn statement(
    table: &str,
    shape: &Shape,
    conflict: &Conflict,
    existing: &[Column],
) -> Result<Statement, String> {
    let sql = insert(table, shape, conflict, existing)?;
    let columns = match shape {
        Shape::Jsonb(column) => vec![column.clone()],
        Shape::Columns(Some(names)) => names.clone(),
        Shape::Columns(None) => insertable(existing),
    };
    let structured = existing
        .iter()
        .any(|c| c.structured && columns.contains(&c.name));
    if *conflict != Conflict::Fail || (structured && matches!(shape, Shape::Columns(_))) {
        return Ok(Statement::Insert { sql });
    }
    let list: Vec<String> = columns.iter().map(|c| quote_ident_part(c)).collect();
    Ok(Statement::Copy {
        sql: format!(
            "COPY {} ({}) FROM STDIN",
            quote_ident(table),
            list.join(", ")
        ),
        columns,
    })
}

/// Append `value` to a COPY text line, escaped (backslash, newline, carriage return, tab).
pub fn copy_escape(value: &[u8], line: &mut Vec<u8>) {
    for &b in value {
        match b {
            b'\\' => line.extend_from_slice(b"\\\\"),
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            b'\t' => line.extend_from_slice(b"\\t"),
            _ => line.push(b),
        }
    }
}

/// The INSERT for one batch (`$1`: the JSON array of its rows), checked against the table's
/// columns; the error says which name is wrong and what the table has.
pub fn insert(
    table: &str,
    shape: &Shape,
    conflict: &Conflict,
    existing: &[Column],
) -> Result<String, String> {
    let known = |name: &String| existing.iter().any(|c| &c.name == name);
    let list = |names: &[String]| {
        names
            .iter()
            .map(|n| quote_ident_part(n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all: Vec<&str> = existing.iter().map(|c| c.name.as_str()).collect();
    let check = |names: &[String], key: &str| match names.iter().find(|n| !known(n)) {
        Some(missing) => Err(format!(
            "config key `{key}`: table `{table}` has no column `{missing}`; its columns: {}",
            all.join(", ")
        )),
        None => Ok(()),
    };
    let target = quote_ident(table);
    match shape {
        Shape::Jsonb(column) => {
            check(std::slice::from_ref(column), "column")?;
            Ok(format!(
                "INSERT INTO {target} ({}) SELECT e FROM jsonb_array_elements($1::jsonb) AS e",
                quote_ident_part(column)
            ))
        }
        Shape::Columns(named) => {
            let columns = match named {
                Some(names) => {
                    check(names, "columns")?;
                    names.clone()
                }
                None => insertable(existing),
            };
            if columns.is_empty() {
                return Err(format!(
                    "table `{table}` has no column to write (all are filled by the server); \
                     name them in `columns`"
                ));
            }
            let cols = list(&columns);
            let rows = format!("json_populate_recordset(NULL::{target}, $1::json)");
            Ok(match conflict {
                Conflict::Fail => {
                    format!("INSERT INTO {target} ({cols}) SELECT {cols} FROM {rows}")
                }
                Conflict::Nothing(keys) => {
                    check(keys, "on_conflict")?;
                    format!(
                        "INSERT INTO {target} ({cols}) SELECT {cols} FROM {rows} \
                         ON CONFLICT ({}) DO NOTHING",
                        list(keys)
                    )
                }
                Conflict::Update(keys) => {
                    check(keys, "on_conflict")?;
                    let set: Vec<String> = columns
                        .iter()
                        .filter(|c| !keys.contains(c))
                        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident_part(c)))
                        .collect();
                    let action = match set.is_empty() {
                        true => "NOTHING".to_owned(),
                        false => format!("UPDATE SET {}", set.join(", ")),
                    };
                    // A key twice in one batch: the last row wins (an upsert may not touch a
                    // row twice in one statement).
                    format!(
                        "INSERT INTO {target} ({cols}) SELECT DISTINCT ON ({keys}) {cols} \
                         FROM {rows} WITH ORDINALITY AS r ORDER BY {keys}, r.ordinality DESC \
                         ON CONFLICT ({keys}) DO {action}",
                        keys = list(keys)
                    )
                }
            })
        }
    }
}

/// A column name (never split at dots).
fn quote_ident_part(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Vec<Column> {
        ["id", "name", "amount"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                automatic: *n == "id",
                structured: false,
            })
            .collect()
    }

    #[test]
    fn plain_inserts_copy_and_upserts_insert() {
        let t = table();
        assert_eq!(
            statement("orders", &Shape::Columns(None), &Conflict::Fail, &t),
            Ok(Statement::Copy {
                sql: "COPY \"orders\" (\"name\", \"amount\") FROM STDIN".into(),
                columns: vec!["name".into(), "amount".into()],
            })
        );
        let upsert = Conflict::Update(vec!["id".into()]);
        let cols = Shape::Columns(Some(vec!["id".into(), "amount".into()]));
        assert!(matches!(
            statement("orders", &cols, &upsert, &t),
            Ok(Statement::Insert { .. })
        ));
        let mut line = Vec::new();
        copy_escape(b"a\\b\tc\nd\re", &mut line);
        assert_eq!(line, b"a\\\\b\\tc\\nd\\re");
    }

    #[test]
    fn statements_for_each_shape() {
        let t = table();
        assert_eq!(
            insert("orders", &Shape::Columns(None), &Conflict::Fail, &t).unwrap(),
            "INSERT INTO \"orders\" (\"name\", \"amount\") SELECT \"name\", \"amount\" FROM \
             json_populate_recordset(NULL::\"orders\", $1::json)"
        );
        let upsert = insert(
            "s.orders",
            &Shape::Columns(Some(vec!["id".into(), "amount".into()])),
            &Conflict::Update(vec!["id".into()]),
            &t,
        )
        .unwrap();
        assert!(upsert.contains("DISTINCT ON (\"id\")"), "{upsert}");
        assert!(
            upsert.ends_with("ON CONFLICT (\"id\") DO UPDATE SET \"amount\" = EXCLUDED.\"amount\""),
            "{upsert}"
        );
        assert!(upsert.contains("NULL::\"s\".\"orders\""), "{upsert}");
        assert_eq!(
            insert("orders", &Shape::Jsonb("name".into()), &Conflict::Fail, &t).unwrap(),
            "INSERT INTO \"orders\" (\"name\") SELECT e FROM jsonb_array_elements($1::jsonb) AS e"
        );
        assert_eq!(
            insert(
                "orders",
                &Shape::Columns(Some(vec!["nope".into()])),
                &Conflict::Fail,
                &t
            ),
            Err(
                "config key `columns`: table `orders` has no column `nope`; its columns: id, \
                 name, amount"
                    .into()
            )
        );
    }
}
