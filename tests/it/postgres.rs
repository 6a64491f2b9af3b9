//! The PostgreSQL connectors against the server on 127.0.0.1:5432 (database `test`, trust),
//! checked with `psql`. Each test makes tables of its own name and drops them at the end.

use std::process::Command;
use std::time::Duration;

use crate::{Scratch, text};

const PG: &str = "127.0.0.1:5432";
const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const COUNT: u64 = 10_000;

pub(crate) fn require_postgres() {
    assert!(
        std::net::TcpStream::connect(PG).is_ok(),
        "PostgreSQL is not listening on {PG}; start it with `pg_ctlcluster 15 main start`"
    );
}

/// `psql -tA -c SQL` against `test`: its output, trimmed.
pub(crate) fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-tA",
            "-v",
        ])
        .arg("ON_ERROR_STOP=1")
        .args(["-c", sql])
        .output()
        .expect("psql (Debian package postgresql-client)");
    assert!(
        out.status.success(),
        "psql -c {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A table name no other run uses.
pub(crate) fn unique(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("pb_{kind}_{}_{nanos}", std::process::id())
}

fn sink_plugin(table: &str, extra: &str) -> String {
    format!(
        r#"
[plugins.db]
path = "{{plugin:postgres-sink}}"
config = {{ url = "{URL}", table = "{table}"{extra} }}
grants = {{ tcp = ["{PG}"] }}
"#
    )
}

#[test]
fn the_postgres_sink_writes_every_message_once() {
    require_postgres();
    let table = unique("seq");
    psql(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, seq bigint UNIQUE NOT NULL, data text)"
    ));
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT}, size = 100 }}
{}
[[pipeline]]
name = "to-pg"
source = "gen"
sinks = ["db"]
"#,
            sink_plugin(&table, "")
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `to-pg`: {COUNT} in, 0 dropped, {COUNT} written to `db`"
        )),
        "{stderr}"
    );
    // Every number once; `id` (a serial the sink leaves alone) filled by the server.
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq), count(id), \
             min(length(data)) > 50 FROM {table}"
        )),
        format!("{COUNT}|{COUNT}|0|{}|{COUNT}|t", COUNT - 1)
    );
    psql(&format!("DROP TABLE {table}"));
}

#[test]
fn a_row_the_server_rejects_is_dead_lettered_with_its_words_and_the_rest_is_written() {
    require_postgres();
    let table = unique("bad");
    psql(&format!(
        "CREATE TABLE {table} (seq integer PRIMARY KEY, amount integer NOT NULL)"
    ));
    let s = Scratch::new();
    s.mkdir("data");
    s.mkdir("out");
    let mut lines = String::new();
    for n in 0..1000 {
        match n {
            500 => lines.push_str(&format!("{{\"seq\":{n},\"amount\":\"abc\"}}\n")),
            700 => lines.push_str(&format!("{{\"seq\":{n}}}\n")),
            // Not JSON at all: refused before it reaches the server.
            900 => lines.push_str(&format!("seq {n}\n")),
            _ => lines.push_str(&format!("{{\"seq\":{n},\"amount\":{}}}\n", n * 2)),
        }
    }
    s.write("data/in.jsonl", &lines);
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:file-source}}"
config = {{ path = "/data/in.jsonl" }}
grants = {{ dirs = [{{ host = "data", guest = "/data", mode = "ro" }}] }}
{}
[[pipeline]]
name = "rows"
source = "src"
sinks = ["db"]
on_error = "dead-letter"
dead_letter = {{ path = "out/dead.jsonl" }}
"#,
            sink_plugin(&table, "")
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        psql(&format!("SELECT count(*), sum(amount) FROM {table}")),
        format!(
            "997|{}",
            (0..1000)
                .filter(|n| ![500, 700, 900].contains(n))
                .map(|n| n * 2)
                .sum::<i64>()
        )
    );
    let dead: Vec<serde_json::Value> = s
        .read("out/dead.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let reason = |payload: &str| {
        dead.iter()
            .find(|d| d["message"]["payload"] == payload)
            .map(|d| d["error"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("{payload} not dead-lettered: {dead:?}"))
    };
    assert_eq!(
        reason(r#"{"seq":500,"amount":"abc"}"#),
        "postgres refused the row: invalid input syntax for type integer: \"abc\" (SQLSTATE 22P02)"
    );
    assert!(
        reason(r#"{"seq":700}"#)
            .starts_with("postgres refused the row: null value in column \"amount\" of relation"),
        "{dead:?}"
    );
    assert!(
        reason("seq 900").starts_with("the payload is not a JSON object"),
        "{dead:?}"
    );
    psql(&format!("DROP TABLE {table}"));
}

#[test]
fn the_postgres_sink_upserts_by_key_with_columns_from_paths() {
    require_postgres();
    let table = unique("upsert");
    psql(&format!(
        "CREATE TABLE {table} (id integer PRIMARY KEY, total numeric, tags jsonb)"
    ));
    let s = Scratch::new();
    s.mkdir("data");
    // 3,000 messages over 100 ids: the last total of each id must be the one kept, within a
    // batch as well as across batches.
    let mut lines = String::new();
    for n in 0..3000 {
        lines.push_str(&format!(
            "{{\"order\":{{\"id\":{}}},\"amount\":{n},\"tags\":[\"t{n}\"]}}\n",
            n % 100
        ));
    }
    s.write("data/in.jsonl", &lines);
    let extra = r#", columns = { id = "order.id", total = "amount", tags = "tags" }, on_conflict = { keys = ["id"], action = "update" }"#;
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:file-source}}"
config = {{ path = "/data/in.jsonl" }}
grants = {{ dirs = [{{ host = "data", guest = "/data", mode = "ro" }}] }}
{}
[[pipeline]]
name = "upsert"
source = "src"
sinks = ["db"]
"#,
            sink_plugin(&table, extra)
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        psql(&format!(
            "SELECT count(*), sum(total), min(total), max(total) FROM {table}"
        )),
        format!("100|{}|2900|2999", (2900..3000).sum::<i64>())
    );
    assert_eq!(
        psql(&format!("SELECT tags FROM {table} WHERE id = 7")),
        "[\"t2907\"]"
    );
    psql(&format!("DROP TABLE {table}"));
}

#[test]
fn the_postgres_sink_says_what_to_fix_at_start() {
    require_postgres();
    let s = Scratch::new();
    let pipeline = |plugin: &str| {
        format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = 10 }}
{plugin}
[[pipeline]]
name = "p"
source = "gen"
sinks = ["db"]
"#
        )
    };
    // No grant: the sandbox's refusal, naming the grant to add.
    let no_grant = sink_plugin("t", "").replace(&format!("grants = {{ tcp = [\"{PG}\"] }}"), "");
    s.write("p.toml", &pipeline(&no_grant));
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("postgres 127.0.0.1:5432: the sandbox refused the connection")
            && stderr.contains(&format!("grants = {{ tcp = [\"{PG}\"] }}")),
        "{stderr}"
    );
    // A table that does not exist, and a column it does not have.
    let missing = unique("missing");
    s.write("p.toml", &pipeline(&sink_plugin(&missing, "")));
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains(&format!(
            "config key `table`: no table `{missing}` in database `test` (or user `postgres` may \
             not see it); create it first"
        )),
        "{stderr}"
    );
    let table = unique("cols");
    psql(&format!("CREATE TABLE {table} (seq bigint)"));
    s.write(
        "p.toml",
        &pipeline(&sink_plugin(&table, r#", columns = ["seq", "nope"]"#)),
    );
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains(&format!(
            "config key `columns`: table `{table}` has no column `nope`; its columns: seq"
        )),
        "{stderr}"
    );
    psql(&format!("DROP TABLE {table}"));
}

/// A private PostgreSQL server (`initdb` and `pg_ctl` of the installed server, run as the
/// `postgres` user when the tests run as root), on `port` with `settings` (`-c` options);
/// stopped and removed at the end. For tests that need TLS or `wal_level = logical`, which
/// the machine's own server does not have.
pub(crate) struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether the tests run as root (`/proc/self` belongs to the process's user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// A server program, run as `postgres` when we are root (initdb refuses root).
fn as_postgres(program: &str) -> Command {
    let path = format!("{PG_BIN}/{program}");
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", &path]);
        cmd
    } else {
        Command::new(path)
    }
}

impl PrivatePostgres {
    /// `files` are copied into a directory the server can read first; `{dir}` in a setting
    /// stands for it.
    pub(crate) fn start(port: u16, settings: &[&str], files: &[&std::path::Path]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status();
            assert!(chown.is_ok_and(|s| s.success()), "chown -R postgres");
        }
        for f in files {
            let path = dir.path().join(f.file_name().unwrap());
            if path.extension().is_some_and(|e| e == "key") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        let data = dir.path().join("data");
        let init = as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()
            .expect("initdb (Debian package postgresql-15)");
        assert!(init.status.success(), "initdb: {init:?}");
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        for s in settings {
            let s = s.replace("{dir}", &dir.path().display().to_string());
            options.push_str(&format!(" -c {s}"));
        }
        let started = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.path().join("log"))
            .args(["-w", "start"])
            .output()
            .expect("pg_ctl");
        assert!(
            started.status.success(),
            "pg_ctl start: {started:?}; log: {}",
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
        PrivatePostgres { dir, port }
    }

    /// `psql -tA -c SQL` against its `postgres` database.
    pub(crate) fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql -c {sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn source_pipeline(table: &str, out: &str) -> String {
    format!(
        r#"
[state]
dir = "state"

[plugins.rows]
path = "{{plugin:sql-source}}"
config = {{ url = "{URL}", table = "{table}", column = "id", key_column = "seq", interval = "50ms" }}
grants = {{ tcp = ["{PG}"] }}

[plugins.file]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/{out}" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "from-pg"
source = "rows"
sinks = ["file"]
"#
    )
}

fn insert_seqs(table: &str, from: u64, to: u64) {
    psql(&format!(
        "INSERT INTO {table} (seq, note) SELECT n, 'row ' || n FROM generate_series({from}, {}) n",
        to - 1
    ));
}

/// sql-source reads every row once, rows inserted while it runs too, and after a clean stop
/// a restart reads only what came since (the last value is stored at ack).
#[test]
fn the_sql_source_reads_every_row_once_and_resumes_after_the_last_acked() {
    require_postgres();
    let table = unique("src");
    psql(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, seq bigint NOT NULL, note text)"
    ));
    insert_seqs(&table, 0, COUNT / 2);
    let s = Scratch::new();
    s.mkdir("out");
    s.write("p.toml", &source_pipeline(&table, "first.jsonl"));
    let lines = |file: &str| {
        std::fs::read_to_string(s.path().join("out").join(file)).map_or(0, |t| t.lines().count())
    };
    let mut run = crate::Running::start(s.path(), &["run", "p.toml"]);
    run.wait_for("the first half read", Duration::from_secs(60), || {
        lines("first.jsonl") >= (COUNT / 2) as usize
    });
    // Inserted while it runs.
    insert_seqs(&table, COUNT / 2, COUNT);
    run.wait_for("every row read", Duration::from_secs(60), || {
        lines("first.jsonl") >= COUNT as usize
    });
    let (code, stderr) = run.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let counts = crate::seq_counts(&s.read("out/first.jsonl"));
    assert_eq!(counts.len() as u64, COUNT, "{stderr}");
    assert!(counts.values().all(|n| *n == 1));
    // Each row a JSON object of its columns, keyed by `seq`.
    let first: serde_json::Value =
        serde_json::from_str(s.read("out/first.jsonl").lines().next().unwrap()).unwrap();
    assert_eq!(first["note"], "row 0");

    // A restart goes on after the last acknowledged row.
    insert_seqs(&table, COUNT, COUNT + 500);
    s.write("p.toml", &source_pipeline(&table, "second.jsonl"));
    let mut run = crate::Running::start(s.path(), &["run", "p.toml"]);
    run.wait_for("the new rows read", Duration::from_secs(60), || {
        lines("second.jsonl") >= 500
    });
    let (code, stderr) = run.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let counts = crate::seq_counts(&s.read("out/second.jsonl"));
    assert_eq!(counts.len(), 500, "{stderr}");
    assert_eq!(counts.keys().next(), Some(&COUNT));
    psql(&format!("DROP TABLE {table}"));
}

#[test]
fn the_sql_source_needs_its_grant_and_an_existing_table() {
    require_postgres();
    let s = Scratch::new();
    s.mkdir("out");
    let table = unique("nogrant");
    psql(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, seq bigint)"
    ));
    s.write(
        "p.toml",
        &source_pipeline(&table, "x.jsonl")
            .replace(&format!("grants = {{ tcp = [\"{PG}\"] }}"), ""),
    );
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains("postgres 127.0.0.1:5432: the sandbox refused the connection")
            && stderr.contains(&format!("grants = {{ tcp = [\"{PG}\"] }}")),
        "{stderr}"
    );
    s.write("p.toml", &source_pipeline("pb_no_such_table", "x.jsonl"));
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains(
            "postgres refused the query: relation \"pb_no_such_table\" does not exist (SQLSTATE 42P01)"
        ),
        "{stderr}"
    );
    psql(&format!("DROP TABLE {table}"));
}
