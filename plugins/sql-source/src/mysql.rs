//! The MariaDB/MySQL side of `sql-source`: rows come back as text with their column types,
//! and the plugin makes each row's JSON object (numbers unquoted, NULL as null, every other
//! type, dates and JSON columns included, as a string).

use std::time::Duration;

use patchbay_proto_mysql::{Conn, Error as MyError, Outcome, Url, quote_ident};
use patchbay_sdk::net::Reconnect;
use patchbay_sdk::{Error, tls};
use serde_json::Value;

use super::Row;

pub struct My {
    url: Url,
    link: Reconnect,
    conn: Option<Conn>,
    base: String,
    column: String,
    key: String,
}

impl My {
    /// Rows of `base` (a SELECT) read by `column`, each keyed by `key` (a column, or "").
    pub fn new(url: Url, base: &str, column: &str, key: &str) -> My {
        My {
            link: Reconnect::new("mariadb", url.addr.clone()),
            url,
            conn: None,
            base: base.to_owned(),
            column: column.to_owned(),
            key: key.to_owned(),
        }
    }

    fn connection(&mut self, timeout: Duration) -> Result<&mut Conn, Error> {
        if self.conn.is_none() {
            self.link.ready()?;
            let opened = tls::connect(
                &self.url.addr,
                tls::Start::upgradable_if(self.url.tls),
                timeout,
            )
            .map_err(MyError::Io)
            .and_then(|stream| Conn::over(stream, &self.url, timeout));
            let conn = match opened {
                Ok(conn) => conn,
                Err(MyError::Io(e)) => return Err(self.link.failed(&e)),
                Err(MyError::Server(e)) => {
                    return Err(Error::fatal(format!(
                        "mariadb {}: the server refused the login: {e}",
                        self.url.addr
                    )));
                }
            };
            self.link.connected();
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::retryable("mariadb: not connected"))
    }

    /// At most `max` rows after `last` (all rows when `None`), in the column's order.
    pub fn rows(
        &mut self,
        last: Option<&str>,
        max: u32,
        timeout: Duration,
    ) -> Result<Vec<Row>, Error> {
        let col = format!("q.{}", quote_ident(&self.column));
        let (base, column) = (self.base.clone(), self.column.clone());
        let conn = self.connection(timeout)?;
        let filter = match last {
            // A number compares as one (a string would be compared as a double).
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                format!("WHERE {col} > {v} ")
            }
            Some(v) => {
                let mut literal = Vec::new();
                conn.quote(v.as_bytes(), &mut literal);
                format!("WHERE {col} > {} ", String::from_utf8_lossy(&literal))
            }
            None => String::new(),
        };
        let sql = format!("SELECT q.* FROM ({base}) AS q {filter}ORDER BY {col} LIMIT {max}");
        match conn.query(&sql) {
            Ok(outcome) => to_rows(outcome, &column, &self.key),
            Err(MyError::Io(e)) => {
                self.conn = None;
                Err(self.link.lost(&e))
            }
            Err(MyError::Server(e)) => {
                let message = format!("mariadb refused the query: {e}");
                Err(match e.is_transient() {
                    true => Error::retryable(message),
                    false => Error::fatal(message),
                })
            }
        }
    }
}

/// Each row as a JSON object, with its `column` value and `key` value.
fn to_rows(outcome: Outcome, column: &str, key: &str) -> Result<Vec<Row>, Error> {
    let find = |name: &str| outcome.columns.iter().position(|c| c.name == name);
    let at = find(column).ok_or_else(|| {
        Error::fatal(format!(
            "config key `column`: the query returns no column `{column}`"
        ))
    })?;
    let key_at = match key {
        "" => None,
        k => Some(find(k).ok_or_else(|| {
            Error::fatal(format!(
                "config key `key_column`: the query returns no column `{k}`"
            ))
        })?),
    };
    let text = |v: Option<&Option<Vec<u8>>>| {
        v.and_then(Option::as_deref)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    outcome
        .rows
        .iter()
        .map(|row| {
            // The object's text written directly, so that a DECIMAL keeps every digit (as
            // PostgreSQL's row_to_json does).
            let mut doc = String::from("{");
            for (n, (c, value)) in outcome.columns.iter().zip(row).enumerate() {
                if n > 0 {
                    doc.push(',');
                }
                doc.push_str(&Value::String(c.name.clone()).to_string());
                doc.push(':');
                match text(Some(value)) {
                    None => doc.push_str("null"),
                    Some(t)
                        if c.numeric && serde_json::from_str::<serde_json::Number>(&t).is_ok() =>
                    {
                        doc.push_str(&t)
                    }
                    Some(t) => doc.push_str(&Value::String(t).to_string()),
                }
            }
            doc.push('}');
            let value = text(row.get(at)).ok_or_else(|| super::null_column(column))?;
            Ok(Row {
                payload: doc,
                value,
                key: key_at.and_then(|k| text(row.get(k))),
            })
        })
        .collect()
}
