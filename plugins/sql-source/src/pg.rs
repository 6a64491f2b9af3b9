//! The PostgreSQL side of `sql-source`: the server makes each row's JSON (`row_to_json`).

use std::time::Duration;

use patchbay_proto_pg::{Conn, DbError, Error as PgError, Url};
use patchbay_sdk::net::Reconnect;
use patchbay_sdk::{Error, tls};

use super::Row;

pub struct Pg {
    url: Url,
    link: Reconnect,
    conn: Option<Conn>,
    /// The SELECT over the rows above `$1` (and the first one, over all rows).
    after: String,
    first: String,
    column: String,
}

fn db_error(e: &DbError) -> Error {
    let message = format!("postgres refused the query: {e}");
    match e.is_transient() {
        true => Error::retryable(message),
        false => Error::fatal(message),
    }
}

impl Pg {
    /// Rows of `base` (a SELECT) read by `column`, each keyed by `key` (a column, or "").
    pub fn new(url: Url, base: &str, column: &str, key: &str) -> Pg {
        let col = format!("q.\"{}\"", column.replace('"', "\"\""));
        let key = match key {
            "" => String::new(),
            k => format!(", q.\"{}\"::text", k.replace('"', "\"\"")),
        };
        let select = format!("SELECT row_to_json(q)::text, {col}::text{key} FROM ({base}) AS q");
        Pg {
            link: Reconnect::new("postgres", url.addr.clone()),
            url,
            conn: None,
            after: format!("{select} WHERE {col} > $1 ORDER BY {col} LIMIT $2::bigint"),
            first: format!("{select} ORDER BY {col} LIMIT $1::bigint"),
            column: column.to_owned(),
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
            .map_err(PgError::Io)
            .and_then(|stream| Conn::over(stream, &self.url, &[]));
            let conn = match opened {
                Ok(conn) => conn,
                Err(PgError::Io(e)) => return Err(self.link.failed(&e)),
                Err(PgError::Db(e)) => {
                    return Err(Error::fatal(format!(
                        "postgres {}: the server refused the login: {e}",
                        self.url.addr
                    )));
                }
            };
            self.link.connected();
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::retryable("postgres: not connected"))
    }

    /// At most `max` rows after `last` (all rows when `None`), in the column's order.
    pub fn rows(
        &mut self,
        last: Option<&str>,
        max: u32,
        timeout: Duration,
    ) -> Result<Vec<Row>, Error> {
        let limit = max.to_string();
        let (sql, params) = match last {
            Some(last) => (self.after.clone(), vec![last.to_owned(), limit]),
            None => (self.first.clone(), vec![limit]),
        };
        let conn = self.connection(timeout)?;
        let params: Vec<Option<&[u8]>> = params.iter().map(|p| Some(p.as_bytes())).collect();
        match conn.execute(&sql, &params) {
            Ok((rows, _)) => rows
                .into_iter()
                .map(|row| {
                    let mut values = row.into_iter();
                    match (values.next().flatten(), values.next().flatten()) {
                        (Some(payload), Some(value)) => Ok(Row {
                            payload,
                            value,
                            key: values.next().flatten(),
                        }),
                        _ => Err(super::null_column(&self.column)),
                    }
                })
                .collect(),
            Err(PgError::Io(e)) => {
                self.conn = None;
                Err(self.link.lost(&e))
            }
            Err(PgError::Db(e)) => Err(db_error(&e)),
        }
    }
}
