//! `mariadb-sink`: writes JSON messages into a MariaDB (or MySQL) table, a batch per
//! statement, over a granted TCP address.
//!
//! ```toml
//! [plugins.db]
//! path = "target/plugins/mariadb-sink.wasm"
//! config = { url = "mysql://app@127.0.0.1:3306/shop", table = "orders",
//!            on_conflict = { keys = ["id"], action = "update" } }
//! grants = { tcp = ["127.0.0.1:3306"] }
//! ```
//!
//! Payloads map to rows as in postgres-sink (`patchbay-proto-sqlmap`): `mode = "columns"`
//! (default) puts each top-level field into the column of its name (`columns` as a list picks
//! some, as a table of column = "dotted.path" takes each from a path; without it, every
//! column that is not auto-increment or generated); `mode = "json"` puts the whole payload
//! into one column (`column`). `on_conflict = { keys = [...], action = "update" | "nothing" }`
//! is an upsert (`ON DUPLICATE KEY UPDATE`: MariaDB matches on any unique key of the table,
//! `keys` names the one meant and is not updated; within one batch the last message of a key
//! wins).
//!
//! A batch is one multi-row INSERT, so one round trip and one transaction (InnoDB), as
//! MySQL Connector/J's `rewriteBatchedStatements` does it: each value an SQL literal the
//! server converts to its column's type (strings quoted and escaped by the session's
//! sql_mode, numbers as written, objects and arrays as JSON text). A batch longer than the
//! server's `max_allowed_packet` becomes several statements. The session runs in strict mode
//! (`STRICT_ALL_TABLES` added to its sql_mode), so a wrong value is an error, never a silent
//! truncation. A row the server refuses as data (a wrong type, NULL into NOT NULL, a duplicate
//! key without `on_conflict`, a CHECK constraint) is found by halving the batch, so the others
//! are written and that message alone is `invalid-data` with the server's words (to the
//! dead-letter channel). A lost connection, a deadlock or a lock wait timeout makes the batch
//! `retryable` (reconnect with back-off); a missing table or column, or a privilege the user
//! lacks, is `fatal`.

use std::time::Duration;

use patchbay_proto_mysql::{Conn, Error as MyError, ServerError, Url, quote_ident};
use patchbay_proto_sqlmap::{Attempt, Cell, Column, Conflict, Layout, write_split};
use patchbay_sdk::net::Reconnect;
use patchbay_sdk::{Config, Error, ErrorKind, Key, Message, Metadata, Sink, log, tls};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`mysql://user[:password]@host[:port]/database` (also `mariadb://`), with `?ssl-mode=required` for TLS, done by the host: the server verified against the system roots or `grants.tls.ca`, chain and name. The address must be granted in `grants.tcp` (a password is best given as ${env:NAME}).",
    )
    .required(),
    Key::text(
        "table",
        "The table to write (`database.table` allowed).",
    )
    .required(),
    Key::choice(
        "mode",
        &["columns", "json"],
        "`columns`: top-level fields into the columns of their names; `json`: the whole payload into `column`.",
    )
    .default("columns"),
    Key::json(
        "columns",
        "Columns mode: a list of columns to write, or a table of column = \"dotted.path\" in the payload. Default: every column that is not auto-increment or generated.",
    ),
    Key::text("column", "Json mode: the column that gets the whole payload.").default("doc"),
    Key::json(
        "on_conflict",
        "Upsert: { keys = [\"id\"], action = \"update\" | \"nothing\" } (columns mode; ON DUPLICATE KEY UPDATE, so the table needs a unique key).",
    ),
];

const TIMEOUT: Duration = Duration::from_secs(30);
/// Room left in `max_allowed_packet` for the packet header and the statement's ends.
const SLACK: usize = 1024;

struct MariadbSink {
    url: Url,
    link: Reconnect,
    table: String,
    layout: Layout,
    conn: Option<Conn>,
    /// Built at the first connection (it needs the table's columns): the columns written,
    /// and the statement's text before and after the rows.
    columns: Vec<String>,
    head: String,
    tail: String,
}

fn kind(e: &ServerError) -> ErrorKind {
    if e.is_transient() {
        ErrorKind::Retryable
    } else {
        ErrorKind::Fatal
    }
}

impl MariadbSink {
    fn connection(&mut self) -> Result<&mut Conn, Error> {
        if self.conn.is_none() {
            self.link.ready()?;
            let opened = tls::connect(
                &self.url.addr,
                tls::Start::upgradable_if(self.url.tls),
                TIMEOUT,
            )
            .map_err(MyError::Io)
            .and_then(|stream| Conn::over(stream, &self.url, TIMEOUT));
            let mut conn = match opened {
                Ok(conn) => conn,
                Err(MyError::Io(e)) => return Err(self.link.failed(&e)),
                Err(MyError::Server(e)) => {
                    let message = format!(
                        "mariadb {}: the server refused the login: {e}",
                        self.url.addr
                    );
                    return Err(match kind(&e) {
                        ErrorKind::Retryable => self.link.failed(&std::io::Error::other(message)),
                        _ => Error::fatal(message),
                    });
                }
            };
            let strict = "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), \
                          'STRICT_ALL_TABLES')";
            if let Err(e) = conn.query(strict) {
                return Err(self.setup(e, "cannot set strict mode"));
            }
            if self.head.is_empty() {
                let existing = columns(&mut conn, &self.table)
                    .map_err(|e| self.setup(e, "cannot read the columns"))?;
                if existing.is_empty() {
                    return Err(Error::fatal(format!(
                        "config key `table`: no table `{}` in database `{}` (or user `{}` may \
                         not see it); create it first",
                        self.table, self.url.database, self.url.user
                    )));
                }
                self.columns = self
                    .layout
                    .written(&self.table, &existing)
                    .map_err(Error::fatal)?;
                let list: Vec<String> = self.columns.iter().map(|c| ident(c)).collect();
                self.head = format!(
                    "INSERT INTO {} ({}) VALUES ",
                    quote_ident(&self.table),
                    list.join(", ")
                );
                self.tail = upsert(&self.layout.conflict, &self.columns);
            }
            self.link.connected();
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::retryable("mariadb: not connected"))
    }

    fn setup(&mut self, e: MyError, what: &str) -> Error {
        match e {
            MyError::Io(e) => self.link.failed(&e),
            MyError::Server(e) => Error::fatal(format!(
                "mariadb {}: {what} of `{}`: {e}",
                self.url.addr, self.table
            )),
        }
    }

    /// A message's row as `(v1, v2, …)`, each value an SQL literal.
    fn row(&self, conn: &Conn, message: &Message) -> Result<Vec<u8>, Error> {
        let cells = self.layout.cells(&self.columns, &message.payload)?;
        let mut row = Vec::with_capacity(message.payload.len() + 16);
        row.push(b'(');
        for (n, cell) in cells.iter().enumerate() {
            if n > 0 {
                row.push(b',');
            }
            match cell {
                Cell::Null => row.extend_from_slice(b"NULL"),
                Cell::Text(text) => conn.quote(text.as_bytes(), &mut row),
                Cell::Json(text) => match text.as_bytes().first() {
                    // A number as written; true and false are the keywords.
                    Some(b'-' | b'0'..=b'9' | b't' | b'f') if !self.whole() => {
                        row.extend_from_slice(text.as_bytes())
                    }
                    _ => conn.quote(text.as_bytes(), &mut row),
                },
            }
        }
        row.push(b')');
        Ok(row)
    }

    fn whole(&self) -> bool {
        matches!(self.layout.shape, patchbay_proto_sqlmap::Shape::Whole(_))
    }

    /// Write the rows `which` of `rows`, each outcome into `results`.
    fn insert(&mut self, rows: &[Vec<u8>], which: &[usize], results: &mut [Result<(), Error>]) {
        let fail = |results: &mut [Result<(), Error>], which: &[usize], error: Error| {
            which.iter().for_each(|&i| results[i] = Err(error.clone()))
        };
        let limit = match self.connection() {
            Ok(conn) => conn.max_packet.saturating_sub(SLACK),
            Err(e) => return fail(results, which, e),
        };
        // Statements no longer than the server takes: each a run of rows.
        let mut start = 0;
        while start < which.len() {
            let mut size = self.head.len() + self.tail.len();
            let mut end = start;
            while end < which.len() && (end == start || size + rows[which[end]].len() < limit) {
                size += rows[which[end]].len() + 1;
                end += 1;
            }
            if end == start + 1 && size > limit {
                results[which[start]] = Err(Error::invalid_data(format!(
                    "the row is {size} bytes as SQL, more than the server's max_allowed_packet \
                     ({limit} after the statement's own); raise it on the server"
                )));
            } else {
                write_split(&which[start..end], results, &mut |run| {
                    self.attempt(rows, run)
                });
            }
            start = end;
        }
    }

    /// One INSERT of the rows `which`.
    fn attempt(&mut self, rows: &[Vec<u8>], which: &[usize]) -> Attempt {
        let size = self.head.len()
            + self.tail.len()
            + which.iter().map(|&i| rows[i].len() + 1).sum::<usize>();
        let mut sql = Vec::with_capacity(size);
        sql.extend_from_slice(self.head.as_bytes());
        for (n, &i) in which.iter().enumerate() {
            if n > 0 {
                sql.push(b',');
            }
            sql.extend_from_slice(&rows[i]);
        }
        sql.extend_from_slice(self.tail.as_bytes());
        let conn = match self.connection() {
            Ok(conn) => conn,
            Err(e) => return Attempt::Failed(e),
        };
        // The statement is UTF-8: every part is (payload text was checked as JSON).
        let sql = String::from_utf8_lossy(&sql);
        match conn.query(&sql) {
            Ok(_) => Attempt::Written,
            Err(MyError::Io(e)) => {
                self.conn = None;
                Attempt::Failed(self.link.lost(&e))
            }
            Err(MyError::Server(e)) if e.is_data() => {
                Attempt::Refused(format!("mariadb refused the row: {e}"))
            }
            Err(MyError::Server(e)) => {
                let message = format!("mariadb refused the batch: {e}");
                Attempt::Failed(match kind(&e) {
                    ErrorKind::Retryable => {
                        log::warn(&message);
                        Error::retryable(message)
                    }
                    _ => Error::fatal(message),
                })
            }
        }
    }
}

/// A column name (never split at dots).
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The statement's end for `conflict`: nothing, or `ON DUPLICATE KEY UPDATE …`.
fn upsert(conflict: &Conflict, columns: &[String]) -> String {
    match conflict {
        Conflict::Fail => String::new(),
        Conflict::Nothing(keys) | Conflict::Update(keys) => {
            let set: Vec<String> = match conflict {
                Conflict::Update(_) => columns
                    .iter()
                    .filter(|c| !keys.contains(c))
                    .map(|c| format!("{0} = VALUES({0})", ident(c)))
                    .collect(),
                _ => Vec::new(),
            };
            let set = match (set.is_empty(), keys.first()) {
                // Nothing to change: a no-op assignment keeps the existing row.
                (true, Some(key)) => format!("{0} = {0}", ident(key)),
                _ => set.join(", "),
            };
            format!(" ON DUPLICATE KEY UPDATE {set}")
        }
    }
}

/// The table's columns, in order; empty when there is no such table (or the user may not
/// see it).
fn columns(conn: &mut Conn, table: &str) -> Result<Vec<Column>, MyError> {
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => {
            let mut s = Vec::new();
            conn.quote(schema.as_bytes(), &mut s);
            (String::from_utf8_lossy(&s).into_owned(), name)
        }
        None => ("DATABASE()".to_owned(), table),
    };
    let mut quoted = Vec::new();
    conn.quote(name.as_bytes(), &mut quoted);
    let sql = format!(
        "SELECT COLUMN_NAME, (EXTRA LIKE '%auto_increment%' OR EXTRA LIKE '%GENERATED%') \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {schema} AND TABLE_NAME = {} \
         ORDER BY ORDINAL_POSITION",
        String::from_utf8_lossy(&quoted)
    );
    Ok(conn
        .query(&sql)?
        .rows
        .into_iter()
        .filter_map(|row| {
            let mut values = row.into_iter();
            let name = String::from_utf8(values.next().flatten()?).ok()?;
            let automatic = values.next().flatten().as_deref() == Some(b"1");
            Some(Column {
                name,
                automatic,
                structured: false,
            })
        })
        .collect())
}

impl Sink for MariadbSink {
    fn metadata() -> Metadata {
        Metadata::new(
            "mariadb-sink",
            env!("CARGO_PKG_VERSION"),
            "Writes JSON messages into a MariaDB or MySQL table: batched inserts or upserts, a batch per statement.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = Url::parse(c.text("url")?)
            .map_err(|e| c.invalid("url", &format!("a mysql:// URL ({e})")))?;
        let table = c.text("table")?.trim().to_owned();
        if table.is_empty() {
            return Err(c.invalid("table", "a table name"));
        }
        let layout = Layout::from_config(&c, "json")?;
        let mut sink = MariadbSink {
            link: Reconnect::new("mariadb", url.addr.clone()),
            url,
            table,
            layout,
            conn: None,
            columns: Vec::new(),
            head: String::new(),
            tail: String::new(),
        };
        // Connect now, so that a missing grant, a refused login or a missing table shows at
        // start; a server that is down is only a warning: writes retry until it is back.
        if let Err(e) = sink.connection()
            && e.kind == ErrorKind::Fatal
        {
            return Err(e);
        }
        Ok(sink)
    }

    fn write(&mut self, message: &Message) -> Result<(), Error> {
        self.write_batch(vec![message.clone()])
            .pop()
            .unwrap_or(Ok(()))
    }

    fn write_batch(&mut self, batch: Vec<Message>) -> Vec<Result<(), Error>> {
        // Literals are escaped as the connection's sql_mode reads them.
        let rows: Vec<Result<Vec<u8>, Error>> = match self.connection() {
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
            Ok(_) => match self.conn.as_ref() {
                Some(conn) => batch.iter().map(|m| self.row(conn, m)).collect(),
                None => {
                    return batch
                        .iter()
                        .map(|_| Err(Error::retryable("mariadb: not connected")))
                        .collect();
                }
            },
        };
        let mut results = Vec::with_capacity(batch.len());
        let mut which = Vec::with_capacity(batch.len());
        let mut built = Vec::with_capacity(batch.len());
        for (i, row) in rows.into_iter().enumerate() {
            match row {
                Ok(row) => {
                    built.push(row);
                    which.push(i);
                    results.push(Ok(()));
                }
                Err(e) => {
                    built.push(Vec::new());
                    results.push(Err(e));
                }
            }
        }
        self.insert(&built, &which, &mut results);
        results
    }
}

patchbay_sdk::export_sink!(MariadbSink);
