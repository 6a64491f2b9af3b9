//! `postgres-cdc`: every insert, update and delete on chosen tables as a JSON message, from
//! PostgreSQL's logical replication (`pgoutput`), in commit order.
//!
//! ```toml
//! [plugins.changes]
//! path = "target/plugins/postgres-cdc.wasm"
//! config = { url = "postgres://repl@127.0.0.1:5432/shop", tables = ["public.orders"] }
//! grants = { tcp = ["127.0.0.1:5432"] }
//! ```
//!
//! Each message: `{"table":"public.orders","op":"insert"|"update"|"delete","before":{…}|null,
//! "after":{…}|null}` (before: on a delete, or an update that changed the key, the old key;
//! the whole old row with `REPLICA IDENTITY FULL`; else null; numbers keep their digits),
//! header `pg-lsn` (the transaction's commit position) and `pg-xid`, key the row's key
//! columns' values. The server needs `wal_level = logical`; with `create = true` (default) the
//! publication (`FOR TABLE` the `tables`) and the replication slot are made when missing.
//!
//! The slot's confirmed position moves only in `ack`, to the end of the last transaction all of
//! whose changes were delivered, so a restart (even after `kill -9`) resumes there: every change
//! is delivered at least once, none is skipped (a transaction cut by a crash comes again
//! whole). The server's keepalives are answered while the source is polled (the pipeline
//! polls an idle source every few milliseconds, well within `wal_sender_timeout`).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use patchbay_proto_pg::pgoutput::{self, Change, Frame, Relations};
use patchbay_proto_pg::{Conn, Error as PgError, Url, quote_ident, quote_literal};
use patchbay_sdk::net::Reconnect;
use patchbay_sdk::{Config, Error, Key, Message, Metadata, PollResult, Source, log, tls};

const KEYS: &[Key] = &[
    Key::text(
        "url",
        "`postgres://user[:password]@host[:port]/database` of a user with the REPLICATION attribute (`?sslmode=require` for TLS); the address must be granted in `grants.tcp`.",
    )
    .required(),
    Key::json("tables", "The tables whose changes to capture, e.g. [\"public.orders\"] (used when creating the publication).").default("[]"),
    Key::text("publication", "The publication to read.").default("patchbay"),
    Key::text("slot", "The logical replication slot (its position is what survives restarts).").default("patchbay"),
    Key::bool("create", "Create the publication and the slot when they are missing.").default("true"),
    Key::duration("wait", "How long one poll waits for a first change, e.g. \"100ms\" (at most 900ms).")
        .default("100ms")
        .range(0, 900),
];

const TIMEOUT: Duration = Duration::from_secs(30);

struct PostgresCdc {
    url: Url,
    link: Reconnect,
    conn: Option<Conn>,
    tables: Vec<String>,
    publication: String,
    slot: String,
    create: bool,
    wait: Duration,
    relations: Relations,
    /// The transaction being read: its commit position and id.
    tx: Option<(u64, u32)>,
    /// End of the last transaction read whole.
    complete: u64,
    /// Batches delivered and not acknowledged: checkpoint → the position they make safe.
    inflight: VecDeque<(u64, u64)>,
    checkpoint: u64,
    confirmed: u64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl PostgresCdc {
    fn fail(&mut self, e: PgError) -> Error {
        match e {
            PgError::Io(e) => {
                let was_up = self.conn.take().is_some();
                self.relations.clear();
                self.tx = None;
                if was_up {
                    self.link.lost(&e)
                } else {
                    self.link.failed(&e)
                }
            }
            PgError::Db(e) => {
                self.conn = None;
                let message = format!("postgres {}: {e}", self.url.addr);
                match e.is_transient() {
                    true => Error::retryable(message),
                    false => Error::fatal(message),
                }
            }
        }
    }

    fn connect(&mut self) -> Result<(), Error> {
        if self.conn.is_some() {
            return Ok(());
        }
        self.link.ready()?;
        let opened = tls::connect(
            &self.url.addr,
            tls::Start::upgradable_if(self.url.tls),
            TIMEOUT,
        )
        .map_err(PgError::Io)
        .and_then(|stream| Conn::over(stream, &self.url, &[("replication", "database")]));
        let mut conn = opened.map_err(|e| self.fail(e))?;
        self.prepare(&mut conn).map_err(|e| self.fail(e))?;
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {})",
            quote_ident(&self.slot),
            quote_literal(&quote_ident(&self.publication))
        );
        conn.start_replication(&command).map_err(|e| self.fail(e))?;
        self.link.connected();
        log::info(&format!(
            "postgres {}: streaming changes of publication `{}` from slot `{}`",
            self.url.addr, self.publication, self.slot
        ));
        self.conn = Some(conn);
        Ok(())
    }

    /// Make the publication and the slot when asked and missing.
    fn prepare(&self, conn: &mut Conn) -> Result<(), PgError> {
        let exists = |conn: &mut Conn, sql: &str| conn.query(sql).map(|rows| !rows.is_empty());
        let publication = quote_literal(&self.publication);
        if !exists(
            conn,
            &format!("SELECT 1 FROM pg_publication WHERE pubname = {publication}"),
        )? {
            if !self.create || self.tables.is_empty() {
                return Err(PgError::Db(patchbay_proto_pg::DbError {
                    code: "42704".into(),
                    message: format!(
                        "publication `{}` does not exist; create it (CREATE PUBLICATION … FOR \
                         TABLE …) or give `tables` with create = true",
                        self.publication
                    ),
                    detail: None,
                }));
            }
            let tables: Vec<String> = self.tables.iter().map(|t| quote_ident(t)).collect();
            conn.query(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(&self.publication),
                tables.join(", ")
            ))?;
        }
        let slot = quote_literal(&self.slot);
        if !exists(
            conn,
            &format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot}"),
        )? {
            if !self.create {
                return Err(PgError::Db(patchbay_proto_pg::DbError {
                    code: "42704".into(),
                    message: format!(
                        "replication slot `{}` does not exist; set create = true",
                        self.slot
                    ),
                    detail: None,
                }));
            }
            conn.query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput",
                quote_ident(&self.slot)
            ))?;
        }
        Ok(())
    }

    /// Confirm `lsn` to the server (the slot moves there).
    fn confirm(&mut self, lsn: u64) -> Result<(), Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let sent = conn.send_copy_data(&pgoutput::status_update(lsn, now_micros()));
        sent.map_err(|e| self.fail(e))
    }

    /// The message of one row change.
    fn message(
        &self,
        oid: u32,
        op: &str,
        before: Option<&[pgoutput::Value]>,
        after: Option<&[pgoutput::Value]>,
    ) -> Result<Message, Error> {
        let relation = self.relations.get(&oid).ok_or_else(|| {
            Error::retryable(format!("a change to relation {oid} before its description"))
        })?;
        let row = |values: Option<&[pgoutput::Value]>| {
            values.map_or_else(|| "null".to_owned(), |v| pgoutput::row_json(relation, v))
        };
        let table = serde_json::Value::String(format!("{}.{}", relation.namespace, relation.name));
        let doc = format!(
            r#"{{"table":{table},"op":"{op}","before":{},"after":{}}}"#,
            row(before),
            row(after)
        );
        let values = after.or(before).unwrap_or(&[]);
        let key: Vec<String> = relation
            .columns
            .iter()
            .zip(values)
            .filter(|(c, _)| c.key)
            .map(|(_, v)| match v {
                pgoutput::Value::Text(t) => t.clone(),
                _ => String::new(),
            })
            .collect();
        let (lsn, xid) = self.tx.unwrap_or_default();
        let mut m = Message::new(doc.into_bytes())
            .with_header("pg-lsn", pgoutput::lsn_text(lsn))
            .with_header("pg-xid", xid.to_string());
        if !key.is_empty() {
            m = m.with_key(key.join(",").into_bytes());
        }
        Ok(m)
    }
}

impl Source for PostgresCdc {
    fn metadata() -> Metadata {
        Metadata::new(
            "postgres-cdc",
            env!("CARGO_PKG_VERSION"),
            "Streams inserts, updates and deletes of PostgreSQL tables (logical replication, pgoutput) as JSON, in commit order; the slot advances at ack.",
        )
        .keys(KEYS)
    }

    fn init(config: Config) -> Result<Self, Error> {
        let c = config.checked(KEYS)?;
        let url = Url::parse(c.text("url")?)
            .map_err(|e| c.invalid("url", &format!("a postgres:// URL ({e})")))?;
        let tables: Vec<String> = c.json("tables")?.unwrap_or_default();
        let mut source = PostgresCdc {
            link: Reconnect::new("postgres", url.addr.clone()),
            url,
            conn: None,
            tables,
            publication: c.text("publication")?.to_owned(),
            slot: c.text("slot")?.to_owned(),
            create: c.bool("create")?,
            wait: c.duration("wait")?,
            relations: Relations::new(),
            tx: None,
            complete: 0,
            inflight: VecDeque::new(),
            checkpoint: 0,
            confirmed: 0,
        };
        match source.connect() {
            Err(e) if e.kind == patchbay_sdk::ErrorKind::Fatal => Err(e),
            _ => Ok(source),
        }
    }

    fn poll(&mut self, max: u32) -> Result<PollResult, Error> {
        self.connect()?;
        let mut messages = Vec::new();
        let mut wait = self.wait;
        while messages.len() < max as usize {
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            let data = match conn.copy_data(wait) {
                Ok(Some(data)) => data,
                Ok(None) => break,
                Err(e) => {
                    if messages.is_empty() {
                        return Err(self.fail(e));
                    }
                    // Deliver what was read; the next poll reconnects.
                    self.fail(e);
                    break;
                }
            };
            wait = Duration::from_millis(1);
            match pgoutput::frame(&data).map_err(Error::fatal)? {
                Frame::Keepalive { reply, .. } => {
                    if reply {
                        let confirmed = self.confirmed;
                        self.confirm(confirmed)?;
                    }
                }
                Frame::XLogData { data, .. } => match pgoutput::change(&data)
                    .map_err(Error::fatal)?
                {
                    Change::Begin { final_lsn, xid } => self.tx = Some((final_lsn, xid)),
                    Change::Commit { end_lsn, .. } => {
                        self.tx = None;
                        self.complete = end_lsn;
                    }
                    Change::Relation { oid, relation } => {
                        self.relations.insert(oid, relation);
                    }
                    Change::Insert { oid, new } => {
                        messages.push(self.message(oid, "insert", None, Some(&new))?)
                    }
                    Change::Update { oid, old, new } => {
                        messages.push(self.message(oid, "update", old.as_deref(), Some(&new))?);
                    }
                    Change::Delete { oid, old } => {
                        messages.push(self.message(oid, "delete", Some(&old), None)?)
                    }
                    Change::Other(_) => {}
                },
            }
        }
        let safe = self.complete;
        if messages.is_empty() {
            match self.inflight.back_mut() {
                // The commit of the changes in the last batch came after it: that batch now
                // makes its transaction safe.
                Some((_, lsn)) => *lsn = (*lsn).max(safe),
                // Transactions with nothing to deliver (other tables): confirm them at once.
                None if safe > self.confirmed => {
                    self.confirmed = safe;
                    self.confirm(safe)?;
                }
                None => {}
            }
            return Ok(PollResult::batch(messages, self.checkpoint));
        }
        self.checkpoint += 1;
        self.inflight.push_back((self.checkpoint, safe));
        Ok(PollResult::batch(messages, self.checkpoint))
    }

    fn ack(&mut self, checkpoint: u64) -> Result<(), Error> {
        let mut safe = None;
        while self.inflight.front().is_some_and(|(c, _)| *c <= checkpoint) {
            safe = self.inflight.pop_front().map(|(_, lsn)| lsn);
        }
        match safe {
            Some(lsn) if lsn > self.confirmed => {
                self.confirmed = lsn;
                self.confirm(lsn)
            }
            _ => Ok(()),
        }
    }
}

patchbay_sdk::export_source!(PostgresCdc);
