//! `postgres-sink`: writes JSON messages into a PostgreSQL table, a batch per statement, over
//! a granted TCP address.
//!
//! ```toml
//! [plugins.db]
//! path = "target/plugins/postgres-sink.wasm"
//! config = { url = "postgres://app@127.0.0.1:5432/shop", table = "orders",
//!            on_conflict = { keys = ["id"], action = "update" } }
//! grants = { tcp = ["127.0.0.1:5432"] }
//! ```
//!
//! - `mode = "columns"` (default): each top-level field of the payload (a JSON object) goes into
//!   the column of its name, converted by PostgreSQL (text into `integer`, ISO strings into
//!   `timestamptz`, objects into `jsonb`…); fields without a column are ignored, columns
//!   without a field get NULL. `columns = ["id", "amount"]` writes only those;
//!   `columns = { id = "order.id", total = "amount" }` takes each column from a dotted path.
//!   Without `columns`, every column the server does not fill itself (identity, generated,
//!   serial) is written.
//! - `mode = "jsonb"`: the whole payload into one column (`column`).
//! - `on_conflict = { keys = [...], action = "update" | "nothing" }`: an upsert; within one
//!   batch the last message of a key wins.
//!
//! A batch is one statement, so one round trip and one transaction: `COPY` for plain inserts,
//! an INSERT of the batch as one JSON parameter for upserts (see `sql`). A row the
//! server rejects as data (SQLSTATE class 22, data exception, or 23, a constraint: a wrong type,
//! NOT NULL, a duplicate key without `on_conflict`) is found by halving the batch and retrying
//! the halves, so the others are written and that message alone is `invalid-data` with the
//! server's words (to the dead-letter channel). A lost connection or a server that is busy,
//! shutting down or in a serialization conflict makes the batch `retryable` (reconnect with
//! back-off); a missing table or column, or a permission the user lacks, is `fatal`.

mod sql;

use std::time::Duration;

use patchbay_proto_pg::{Conn, DbError, Error as PgError, Url};
use patchbay_proto_sqlmap::{Attempt, Cell, Layout, Shape, write_split};
use patchbay_sdk::net::Reconnect;
use patchbay_sdk::tls;
use patchbay_sdk::{Config, Error, ErrorKind, Key, Message, Metadata, Sink, json, log};
use serde_json::Value;

use sql::Statement;

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`postgres://user[:password]@host[:port]/database`, with `?sslmode=require` (or `verify-full`) for TLS, done by the host: the server verified against the system roots or `grants.tls.ca`, chain and name. The address must be granted in `grants.tcp` (a password is best given as ${env:NAME}).",
    )
    .required(),
    Key::text(
        "table",
        "The table to write (`schema.table` allowed; names are case-sensitive).",
    )
    .required(),
    Key::choice(
        "mode",
        &["columns", "jsonb"],
        "`columns`: top-level fields into the columns of their names; `jsonb`: the whole payload into `column`.",
    )
    .default("columns"),
    Key::json(
        "columns",
        "Columns mode: a list of columns to write, or a table of column = \"dotted.path\" in the payload. Default: every column the server does not fill itself.",
    ),
    Key::text("column", "Jsonb mode: the column that gets the whole payload.").default("doc"),
    Key::json(
        "on_conflict",
        "Upsert: { keys = [\"id\"], action = \"update\" | \"nothing\" } (columns mode; the keys need a unique index).",
    ),
];

const TIMEOUT: Duration = Duration::from_secs(30);

struct PostgresSink {
    url: Url,
    link: Reconnect,
    table: String,
    layout: Layout,
    conn: Option<Conn>,
    /// Built at the first connection (it needs the table's columns).
    statement: Option<Statement>,
}

/// The error kind for what the server refused (other than a row's data, which is split off).
fn refused(e: &DbError) -> ErrorKind {
    match e.is_transient() {
        true => ErrorKind::Retryable,
        false => ErrorKind::Fatal,
    }
}

impl PostgresSink {
    fn connection(&mut self) -> Result<&mut Conn, Error> {
        if self.conn.is_none() {
            self.link.ready()?;
            let opened = tls::connect(
                &self.url.addr,
                tls::Start::upgradable_if(self.url.tls),
                TIMEOUT,
            )
            .map_err(PgError::Io)
            .and_then(|stream| Conn::over(stream, &self.url, &[]));
            let mut conn = match opened {
                Ok(conn) => conn,
                Err(PgError::Io(e)) => return Err(self.link.failed(&e)),
                Err(PgError::Db(e)) => return Err(self.refused_login(&e)),
            };
            if self.statement.is_none() {
                let columns = sql::columns(&mut conn, &self.table).map_err(|e| self.setup(e))?;
                if columns.is_empty() {
                    return Err(Error::fatal(format!(
                        "config key `table`: no table `{}` in database `{}` (or user `{}` may \
                         not see it); create it first",
                        self.table, self.url.database, self.url.user
                    )));
                }
                let statement =
                    sql::statement(&self.table, &self.layout, &columns).map_err(Error::fatal)?;
                self.statement = Some(statement);
            }
            self.link.connected();
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::retryable("postgres: not connected"))
    }

    fn refused_login(&mut self, e: &DbError) -> Error {
        let message = format!(
            "postgres {}: the server refused the login: {e}",
            self.url.addr
        );
        match refused(e) {
            ErrorKind::Retryable => {
                let io = std::io::Error::other(message);
                self.link.failed(&io)
            }
            _ => Error::fatal(message),
        }
    }

    fn setup(&mut self, e: PgError) -> Error {
        match e {
            PgError::Io(e) => self.link.failed(&e),
            PgError::Db(e) => Error::fatal(format!(
                "postgres {}: cannot read the columns of `{}`: {e}",
                self.url.addr, self.table
            )),
        }
    }

    /// The row a payload becomes, in the statement's form: a COPY line, or a JSON object
    /// (the payload itself, or the object built from `paths`) for the INSERT.
    fn row(&self, statement: &Statement, message: &Message) -> Result<Vec<u8>, Error> {
        let not_json = |e: &dyn std::fmt::Display| {
            Error::invalid_data(format!("the payload is not a JSON object: {e}"))
        };
        if let Statement::Copy { columns, .. } = statement {
            let mut line = Vec::with_capacity(message.payload.len() + 8);
            for (n, cell) in self
                .layout
                .cells(columns, &message.payload)?
                .iter()
                .enumerate()
            {
                if n > 0 {
                    line.push(b'\t');
                }
                match cell {
                    Cell::Null => line.extend_from_slice(b"\\N"),
                    Cell::Text(text) | Cell::Json(text) => {
                        sql::copy_escape(text.as_bytes(), &mut line)
                    }
                }
            }
            line.push(b'\n');
            return Ok(line);
        }
        match (&self.layout.shape, &self.layout.paths) {
            (Shape::Whole(_), _) => {
                json::validate(&message.payload).map_err(|e| not_json(&e))?;
                Ok(message.payload.clone())
            }
            (Shape::Columns(_), Some(paths)) => {
                let doc: Value =
                    serde_json::from_slice(&message.payload).map_err(|e| not_json(&e))?;
                if !doc.is_object() {
                    return Err(not_json(&"it is not an object"));
                }
                let row: serde_json::Map<String, Value> = paths
                    .iter()
                    .map(|(column, path)| {
                        let value = json::get(&doc, path).unwrap_or(&Value::Null);
                        (column.clone(), value.clone())
                    })
                    .collect();
                serde_json::to_vec(&row).map_err(|e| not_json(&e))
            }
            (Shape::Columns(_), None) => {
                json::validate(&message.payload).map_err(|e| not_json(&e))?;
                let first = message.payload.iter().find(|b| !b.is_ascii_whitespace());
                if first != Some(&b'{') {
                    return Err(not_json(&"it is not an object"));
                }
                Ok(message.payload.clone())
            }
        }
    }

    /// Write the rows `which` of `rows` in one statement.
    fn attempt(&mut self, rows: &[Vec<u8>], which: &[usize]) -> Attempt {
        if let Err(e) = self.connection() {
            return Attempt::Failed(e);
        }
        let (Some(conn), Some(statement)) = (self.conn.as_mut(), self.statement.as_ref()) else {
            return Attempt::Failed(Error::retryable("postgres: not connected"));
        };
        let size = which.iter().map(|&i| rows[i].len() + 1).sum::<usize>() + 2;
        let mut data = Vec::with_capacity(size);
        let written = match statement {
            Statement::Copy { sql, .. } => {
                which.iter().for_each(|&i| data.extend_from_slice(&rows[i]));
                conn.copy_in(sql, &data)
            }
            Statement::Insert { sql } => {
                data.push(b'[');
                for (n, &i) in which.iter().enumerate() {
                    if n > 0 {
                        data.push(b',');
                    }
                    data.extend_from_slice(&rows[i]);
                }
                data.push(b']');
                conn.execute(sql, &[Some(&data)]).map(|(_, n)| n)
            }
        };
        match written {
            Ok(_) => Attempt::Written,
            Err(PgError::Io(e)) => {
                self.conn = None;
                Attempt::Failed(self.link.lost(&e))
            }
            Err(PgError::Db(e)) if e.is_data() => {
                Attempt::Refused(format!("postgres refused the row: {e}"))
            }
            Err(PgError::Db(e)) => {
                let message = format!("postgres refused the batch: {e}");
                Attempt::Failed(match refused(&e) {
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

impl Sink for PostgresSink {
    fn metadata() -> Metadata {
        Metadata::new(
            "postgres-sink",
            env!("CARGO_PKG_VERSION"),
            "Writes JSON messages into a PostgreSQL table: batched inserts or upserts, a batch per statement.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = Url::parse(c.text("url")?)
            .map_err(|e| c.invalid("url", &format!("a postgres:// URL ({e})")))?;
        let table = c.text("table")?.trim().to_owned();
        if table.is_empty() {
            return Err(c.invalid("table", "a table name"));
        }
        let layout = Layout::from_config(&c, "jsonb")?;
        let mut sink = PostgresSink {
            link: Reconnect::new("postgres", url.addr.clone()),
            url,
            table,
            layout,
            conn: None,
            statement: None,
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
        // The rows' form depends on the statement, which the first connection builds.
        if let Err(e) = self.connection() {
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        let Some(statement) = self.statement.clone() else {
            return batch
                .iter()
                .map(|_| Err(Error::retryable("postgres: not connected")))
                .collect();
        };
        let mut results: Vec<Result<(), Error>> = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        let mut which = Vec::with_capacity(batch.len());
        for (i, message) in batch.iter().enumerate() {
            match self.row(&statement, message) {
                Ok(row) => {
                    rows.push(row);
                    which.push(i);
                    results.push(Ok(()));
                }
                Err(e) => {
                    rows.push(Vec::new());
                    results.push(Err(e));
                }
            }
        }
        write_split(&which, &mut results, &mut |run| self.attempt(&rows, run));
        results
    }
}

patchbay_sdk::export_sink!(PostgresSink);
