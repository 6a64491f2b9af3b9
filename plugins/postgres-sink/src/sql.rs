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
use patchbay_proto_sqlmap::{Column, Conflict, Layout, Shape};

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

/// How a batch is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// `COPY … FROM STDIN`; each row a line of these columns' values.
    Copy { sql: String, columns: Vec<String> },
    /// An INSERT whose `$1` is the batch as a JSON array of objects (or documents).
    Insert { sql: String },
}

/// The statement for one batch: COPY where it can, else [`insert`]; the error says which name
/// in the config is wrong and what the table has.
pub fn statement(table: &str, layout: &Layout, existing: &[Column]) -> Result<Statement, String> {
    let columns = layout.written(table, existing)?;
    let structured = existing
        .iter()
        .any(|c| c.structured && columns.contains(&c.name));
    if layout.conflict != Conflict::Fail
        || (structured && matches!(layout.shape, Shape::Columns(_)))
    {
        return Ok(Statement::Insert {
            sql: insert(table, layout, &columns),
        });
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

/// The INSERT for one batch (`$1`: the JSON array of its rows) of `columns`, as
/// [`Layout::written`] checked them.
pub fn insert(table: &str, layout: &Layout, columns: &[String]) -> String {
    let list = |names: &[String]| {
        names
            .iter()
            .map(|n| quote_ident_part(n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let target = quote_ident(table);
    if let Shape::Whole(column) = &layout.shape {
        return format!(
            "INSERT INTO {target} ({}) SELECT e FROM jsonb_array_elements($1::jsonb) AS e",
            quote_ident_part(column)
        );
    }
    let cols = list(columns);
    let rows = format!("json_populate_recordset(NULL::{target}, $1::json)");
    match &layout.conflict {
        Conflict::Fail => format!("INSERT INTO {target} ({cols}) SELECT {cols} FROM {rows}"),
        Conflict::Nothing(keys) => format!(
            "INSERT INTO {target} ({cols}) SELECT {cols} FROM {rows} ON CONFLICT ({}) DO NOTHING",
            list(keys)
        ),
        Conflict::Update(keys) => {
            let set: Vec<String> = columns
                .iter()
                .filter(|c| !keys.contains(c))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident_part(c)))
                .collect();
            let action = match set.is_empty() {
                true => "NOTHING".to_owned(),
                false => format!("UPDATE SET {}", set.join(", ")),
            };
            // A key twice in one batch: the last row wins (an upsert may not touch a row
            // twice in one statement).
            format!(
                "INSERT INTO {target} ({cols}) SELECT DISTINCT ON ({keys}) {cols} FROM {rows} \
                 WITH ORDINALITY AS r ORDER BY {keys}, r.ordinality DESC ON CONFLICT ({keys}) \
                 DO {action}",
                keys = list(keys)
            )
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

    fn layout(shape: Shape, conflict: Conflict) -> Layout {
        Layout {
            shape,
            paths: None,
            conflict,
        }
    }

    #[test]
    fn plain_inserts_copy_and_upserts_insert() {
        let t = table();
        assert_eq!(
            statement("orders", &layout(Shape::Columns(None), Conflict::Fail), &t),
            Ok(Statement::Copy {
                sql: "COPY \"orders\" (\"name\", \"amount\") FROM STDIN".into(),
                columns: vec!["name".into(), "amount".into()],
            })
        );
        let upsert = layout(
            Shape::Columns(Some(vec!["id".into(), "amount".into()])),
            Conflict::Update(vec!["id".into()]),
        );
        assert!(matches!(
            statement("orders", &upsert, &t),
            Ok(Statement::Insert { .. })
        ));
        let mut line = Vec::new();
        copy_escape(b"a\\b\tc\nd\re", &mut line);
        assert_eq!(line, b"a\\\\b\\tc\\nd\\re");
    }

    #[test]
    fn statements_for_each_shape() {
        let all = ["name".to_owned(), "amount".to_owned()];
        assert_eq!(
            insert(
                "orders",
                &layout(Shape::Columns(None), Conflict::Fail),
                &all
            ),
            "INSERT INTO \"orders\" (\"name\", \"amount\") SELECT \"name\", \"amount\" FROM \
             json_populate_recordset(NULL::\"orders\", $1::json)"
        );
        let upsert = insert(
            "s.orders",
            &layout(
                Shape::Columns(Some(vec!["id".into(), "amount".into()])),
                Conflict::Update(vec!["id".into()]),
            ),
            &["id".to_owned(), "amount".to_owned()],
        );
        assert!(upsert.contains("DISTINCT ON (\"id\")"), "{upsert}");
        assert!(
            upsert.ends_with("ON CONFLICT (\"id\") DO UPDATE SET \"amount\" = EXCLUDED.\"amount\""),
            "{upsert}"
        );
        assert!(upsert.contains("NULL::\"s\".\"orders\""), "{upsert}");
        assert_eq!(
            insert(
                "orders",
                &layout(Shape::Whole("name".into()), Conflict::Fail),
                &["name".to_owned()]
            ),
            "INSERT INTO \"orders\" (\"name\") SELECT e FROM jsonb_array_elements($1::jsonb) AS e"
        );
        assert_eq!(
            statement(
                "orders",
                &layout(Shape::Columns(Some(vec!["nope".into()])), Conflict::Fail),
                &table()
            ),
            Err(
                "config key `columns`: table `orders` has no column `nope`; its columns: id, \
                 name, amount"
                    .into()
            )
        );
    }
}
