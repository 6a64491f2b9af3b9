//! `sql-source`: the rows of a table (or of a query) as JSON messages, read in the order of an
//! increasing column (`id`, `updated_at`) and polled for new ones: the classic JDBC source.
//!
//! ```toml
//! [plugins.orders]
//! path = "target/plugins/sql-source.wasm"
//! config = { url = "postgres://app@127.0.0.1:5432/shop", table = "orders", column = "id" }
//! grants = { tcp = ["127.0.0.1:5432"] }
//! ```
//!
//! Each poll asks for the rows whose `column` is above the last one read, in its order, at
//! most a batch (`SELECT … FROM (table or query) AS q WHERE q.column > $1 ORDER BY q.column
//! LIMIT n`), each row one JSON message (key: the `key_column`'s value when set). The
//! last value read moves on in memory at each poll and is stored in the host state only at
//! `ack` (after every destination took the rows), so a restart reads nothing twice after a
//! clean stop and skips nothing after a crash (rows read but not acknowledged are read again)
//! — across restarts of `patchbay` when the pipeline file has `[state] dir`, which keeps the
//! host state on disk (without it, a new process starts over from `start`).
//! A poll that finds fewer rows than it asked for waits `interval` before the next query.
//!
//! The column must only grow: a row inserted later with a lower value (a sequence value
//! taken by a transaction that commits after a later one) is not seen. Several rows may share
//! a value (a timestamp): a batch never ends inside such a group (it ends before it, and the
//! next poll reads the group whole), unless one group alone is larger than a batch, which is
//! an error naming the value (raise `batch_size`, or use a unique column).
//!
//! PostgreSQL (`postgres://`, TLS with `?sslmode=require`; the server makes the JSON with
//! `row_to_json`) and MariaDB or MySQL (`mysql://` or `mariadb://`, TLS with
//! `?ssl-mode=required`; the plugin makes the JSON from the text protocol's values: numbers
//! unquoted, every other type a string).

mod mysql;
mod pg;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use patchbay_sdk::{Config, Error, Key, Message, Metadata, PollResult, Source, state};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`postgres://user[:password]@host[:port]/database` (`?sslmode=require` for TLS) or `mysql://user[:password]@host[:port]/database` (MariaDB and MySQL; `?ssl-mode=required` for TLS); the address must be granted in `grants.tcp`.",
    )
    .required(),
    Key::text("table", "The table to read (`schema.table` allowed); or give `query`.").default(""),
    Key::text(
        "query",
        "Instead of `table`: a SELECT whose rows are read (it must return `column`).",
    )
    .default(""),
    Key::text("column", "The increasing column rows are read in the order of (`id`, `updated_at`).")
        .required(),
    Key::text("key_column", "A column whose value becomes each message's key.").default(""),
    Key::text(
        "start",
        "Read only rows whose `column` is above this value on the first run (default: all).",
    )
    .default(""),
    Key::duration(
        "interval",
        "How long to wait after a poll that found fewer rows than it asked for, e.g. \"1s\".",
    )
    .default("1s"),
];

/// The host state key of the last acknowledged value.
const LAST: &str = "last-value";
const TIMEOUT: Duration = Duration::from_secs(30);

/// One row read: its JSON, its `column` value (as text) and its key.
pub struct Row {
    payload: String,
    value: String,
    key: Option<String>,
}

fn null_column(column: &str) -> Error {
    Error::fatal(format!(
        "a row whose `{column}` is NULL: the column must have a value in every row"
    ))
}

/// The database the rows come from.
enum Db {
    Pg(pg::Pg),
    My(mysql::My),
}

struct SqlSource {
    db: Db,
    column: String,
    /// The last value read (in memory: the next poll goes on after it).
    last: Option<String>,
    /// Batches read and not acknowledged: checkpoint → the last value of that batch.
    inflight: VecDeque<(u64, String)>,
    checkpoint: u64,
    interval: Duration,
    next_query: Instant,
}

impl SqlSource {
    /// Rows after the last value.
    fn query(&mut self, max: u32) -> Result<Vec<Row>, Error> {
        let last = self.last.as_deref();
        match &mut self.db {
            Db::Pg(db) => db.rows(last, max, TIMEOUT),
            Db::My(db) => db.rows(last, max, TIMEOUT),
        }
    }
}

impl Source for SqlSource {
    fn metadata() -> Metadata {
        Metadata::new(
            "sql-source",
            env!("CARGO_PKG_VERSION"),
            "Reads the rows of a PostgreSQL, MariaDB or MySQL table or query as JSON, in the order of an increasing column, polling for new ones.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = c.text("url")?;
        let mysql = url.starts_with("mysql://") || url.starts_with("mariadb://");
        let quote = |name: &str| match mysql {
            true => patchbay_proto_mysql::quote_ident(name),
            false => patchbay_proto_pg::quote_ident(name),
        };
        let table = c.text("table")?.trim();
        let query = c.text("query")?.trim();
        let base = match (table.is_empty(), query.is_empty()) {
            (false, true) => format!("SELECT * FROM {}", quote(table)),
            (true, false) => query.trim_end_matches(';').to_owned(),
            (true, true) => return Err(c.invalid("table", "a table name, or a `query`")),
            (false, false) => return Err(c.invalid("query", "nothing when `table` is given")),
        };
        let column = c.text("column")?.trim().to_owned();
        if column.is_empty() {
            return Err(c.invalid("column", "the name of an increasing column"));
        }
        let key = c.text("key_column")?.trim();
        let db = if mysql {
            let url = patchbay_proto_mysql::Url::parse(url)
                .map_err(|e| c.invalid("url", &format!("a mysql:// URL ({e})")))?;
            Db::My(mysql::My::new(url, &base, &column, key))
        } else {
            let url = patchbay_proto_pg::Url::parse(url)
                .map_err(|e| c.invalid("url", &format!("a postgres:// or mysql:// URL ({e})")))?;
            Db::Pg(pg::Pg::new(url, &base, &column, key))
        };
        let start = c.text("start")?;
        let mut source = SqlSource {
            db,
            column,
            last: state::get(LAST)
                .and_then(|v| String::from_utf8(v).ok())
                .or_else(|| (!start.is_empty()).then(|| start.to_owned())),
            inflight: VecDeque::new(),
            checkpoint: 0,
            interval: c.duration("interval")?,
            next_query: Instant::now(),
        };
        // Check the query now (a missing table, column or grant shows at start); a server
        // that is down is only a warning.
        match source.query(1) {
            Err(e) if e.kind == patchbay_sdk::ErrorKind::Fatal => Err(e),
            _ => Ok(source),
        }
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        if Instant::now() < self.next_query || max == 0 {
            return Ok(PollResult::batch(Vec::new(), self.checkpoint));
        }
        let mut rows = self.query(max)?;
        if rows.len() < max as usize {
            self.next_query = Instant::now() + self.interval;
        } else if let Some(Row { value: last, .. }) = rows.last() {
            // A full batch may end inside a group of rows sharing the last value: leave the
            // group for the next poll, which reads it whole.
            let last = last.clone();
            let group = rows.iter().rev().take_while(|r| r.value == last).count();
            if group == rows.len() {
                return Err(Error::fatal(format!(
                    "more than {max} rows have `{}` = {last}: a batch cannot hold them; raise \
                     `batch_size` or read by a unique column",
                    self.column
                )));
            }
            rows.truncate(rows.len() - group);
        }
        let Some(Row { value: last, .. }) = rows.last() else {
            return Ok(PollResult::batch(Vec::new(), self.checkpoint));
        };
        self.last = Some(last.clone());
        self.checkpoint += 1;
        self.inflight.push_back((self.checkpoint, last.clone()));
        let messages = rows
            .into_iter()
            .map(|row| {
                let m = Message::new(row.payload.into_bytes());
                match row.key {
                    Some(k) => m.with_key(k.into_bytes()),
                    None => m,
                }
            })
            .collect();
        Ok(PollResult::batch(messages, self.checkpoint))
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        let mut acked = None;
        while self.inflight.front().is_some_and(|(c, _)| *c <= checkpoint) {
            acked = self.inflight.pop_front().map(|(_, value)| value);
        }
        match acked {
            Some(value) => state::set(LAST, value.as_bytes()).map_err(|e| {
                Error::retryable(format!(
                    "cannot store the last value in the host state: {e}"
                ))
            }),
            None => Ok(()),
        }
    }
}

patchbay_sdk::export_source!(SqlSource);
