//! The MariaDB connectors (mariadb-sink, sql-source with a mysql:// URL) against the server
//! on 127.0.0.1:3306 (root, no password, database `test`), checked with the `mariadb`
//! client. Each test makes tables of its own name and drops them at the end; the TLS test
//! starts a private server (`mariadb-install-db`, `mariadbd`) that accepts only TLS.

use std::process::Command;
use std::time::Duration;

use crate::postgres::unique;
use crate::{Scratch, text};

const MY: &str = "127.0.0.1:3306";
const URL: &str = "mysql://root@127.0.0.1:3306/test";
const COUNT: u64 = 10_000;

fn require_mariadb() {
    assert!(
        std::net::TcpStream::connect(MY).is_ok(),
        "MariaDB is not listening on {MY}; start it with `service mariadb start`"
    );
}

/// `mariadb -N -B -e SQL` against `test`: its output, trimmed (columns tab-separated).
fn mariadb(sql: &str) -> String {
    let out = Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "-N",
            "-B",
            "test",
            "-e",
            sql,
        ])
        .output()
        .expect("mariadb (Debian package mariadb-client)");
    assert!(
        out.status.success(),
        "mariadb -e {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn sink_plugin(table: &str, extra: &str) -> String {
    format!(
        r#"
[plugins.db]
path = "{{plugin:mariadb-sink}}"
config = {{ url = "{URL}", table = "{table}"{extra} }}
grants = {{ tcp = ["{MY}"] }}
"#
    )
}

/// `source` (a plugin named `src`) into the sink, dead letters to out/dead.jsonl.
fn into_sink(source: &str, table: &str, extra: &str) -> String {
    format!(
        r#"
{source}
{}
[[pipeline]]
name = "to-mariadb"
source = "src"
sinks = ["db"]
on_error = "dead-letter"
dead_letter = {{ path = "out/dead.jsonl" }}
"#,
        sink_plugin(table, extra)
    )
}

const LINES: &str = r#"
[plugins.src]
path = "{plugin:file-source}"
config = { path = "/data/in.jsonl" }
grants = { dirs = [{ host = "data", guest = "/data", mode = "ro" }] }
"#;

#[test]
fn the_mariadb_sink_writes_every_message_once() {
    require_mariadb();
    let table = unique("seq");
    mariadb(&format!(
        "CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, seq BIGINT UNIQUE NOT \
         NULL, data TEXT)"
    ));
    let s = Scratch::new();
    s.mkdir("out");
    let generator = format!(
        "[plugins.src]\npath = \"{{plugin:generator}}\"\nconfig = {{ count = {COUNT}, size = 100 }}"
    );
    s.write("p.toml", &into_sink(&generator, &table, ""));
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `to-mariadb`: {COUNT} in, 0 dropped, {COUNT} written to `db`"
        )),
        "{stderr}"
    );
    // Every number once; `id` (auto-increment, left alone) filled by the server.
    assert_eq!(
        mariadb(&format!(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq), count(id), \
             min(length(data)) > 50 FROM {table}"
        )),
        format!("{COUNT}\t{COUNT}\t0\t{}\t{COUNT}\t1", COUNT - 1)
    );
    mariadb(&format!("DROP TABLE {table}"));
}

#[test]
fn a_row_mariadb_rejects_is_dead_lettered_with_its_words_and_upserts_keep_the_last() {
    require_mariadb();
    let table = unique("bad");
    mariadb(&format!(
        "CREATE TABLE {table} (seq INT PRIMARY KEY, amount INT NOT NULL, note VARCHAR(20))"
    ));
    let s = Scratch::new();
    s.mkdir("data");
    s.mkdir("out");
    let mut lines = String::new();
    for n in 0..1000 {
        match n {
            500 => lines.push_str(&format!("{{\"seq\":{n},\"amount\":\"abc\"}}\n")),
            700 => lines.push_str(&format!("{{\"seq\":{n}}}\n")),
            900 => lines.push_str(&format!("seq {n}\n")),
            // Quotes and backslashes arrive as sent.
            _ => lines.push_str(&format!(
                "{{\"seq\":{n},\"amount\":{},\"note\":\"it's \\\\{n}\"}}\n",
                n * 2
            )),
        }
    }
    s.write("data/in.jsonl", &lines);
    s.write("p.toml", &into_sink(LINES, &table, ""));
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        mariadb(&format!("SELECT count(*), sum(amount) FROM {table}")),
        format!(
            "997\t{}",
            (0..1000)
                .filter(|n| ![500, 700, 900].contains(n))
                .map(|n| n * 2)
                .sum::<i64>()
        )
    );
    assert_eq!(
        mariadb(&format!("SELECT note FROM {table} WHERE seq = 7")),
        r"it's \\7"
    );
    let dead: Vec<serde_json::Value> = s
        .read("out/dead.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reason = |payload: &str| {
        dead.iter()
            .find(|d| d["message"]["payload"] == payload)
            .map(|d| d["error"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("{payload} not dead-lettered: {dead:?}"))
    };
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert_eq!(
        reason(r#"{"seq":500,"amount":"abc"}"#),
        format!(
            "mariadb refused the row: Incorrect integer value: 'abc' for column \
             `test`.`{table}`.`amount` at row 1 (error 1366, SQLSTATE 22007)"
        )
    );
    assert_eq!(
        reason(r#"{"seq":700}"#),
        "mariadb refused the row: Column 'amount' cannot be null (error 1048, SQLSTATE 23000)"
    );
    assert!(reason("seq 900").starts_with("the payload is not a JSON object"));

    // Upserts: 3,000 messages over 100 keys, the last amount of each key kept.
    let mut lines = String::new();
    for n in 0..3000 {
        lines.push_str(&format!(
            "{{\"order\":{{\"id\":{}}},\"total\":{n}}}\n",
            n % 100
        ));
    }
    s.write("data/in.jsonl", &lines);
    let upsert = r#", columns = { seq = "order.id", amount = "total" }, on_conflict = { keys = ["seq"], action = "update" }"#;
    s.write("p.toml", &into_sink(LINES, &table, upsert));
    let out = s.run(&["run", "p.toml"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(
        mariadb(&format!(
            "SELECT count(*), min(amount), max(amount) FROM {table} WHERE seq < 100"
        )),
        "100\t2900\t2999"
    );
    mariadb(&format!("DROP TABLE {table}"));
}

#[test]
fn the_mariadb_sink_says_what_to_fix_at_start() {
    require_mariadb();
    let s = Scratch::new();
    s.mkdir("out");
    let generator = "[plugins.src]\npath = \"{plugin:generator}\"\nconfig = { count = 10 }";
    let no_grant =
        into_sink(generator, "t", "").replace(&format!("grants = {{ tcp = [\"{MY}\"] }}"), "");
    s.write("p.toml", &no_grant);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "mariadb 127.0.0.1:3306: the sandbox refused the connection; grant it in the \
             pipeline file: grants = {{ tcp = [\"{MY}\"] }}; the grant goes in [plugins.db]"
        )),
        "{stderr}"
    );
    let missing = unique("missing");
    s.write("p.toml", &into_sink(generator, &missing, ""));
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains(&format!(
            "config key `table`: no table `{missing}` in database `test` (or user `root` may \
             not see it); create it first"
        )),
        "{stderr}"
    );
    // A wrong password: the server's refusal.
    s.write(
        "p.toml",
        &into_sink(generator, "t", "").replace("mysql://root@", "mysql://root:wrong@"),
    );
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains("mariadb 127.0.0.1:3306: the server refused the login: Access denied for user 'root'@'127.0.0.1' (using password: YES) (error 1045, SQLSTATE 28000)"),
        "{stderr}"
    );
}

fn source_pipeline(table: &str, out: &str) -> String {
    format!(
        r#"
[state]
dir = "state"

[plugins.rows]
path = "{{plugin:sql-source}}"
config = {{ url = "{URL}", table = "{table}", column = "id", key_column = "seq", interval = "50ms" }}
grants = {{ tcp = ["{MY}"] }}

[plugins.file]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/{out}" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "from-mariadb"
source = "rows"
sinks = ["file"]
"#
    )
}

fn insert_seqs(table: &str, from: u64, to: u64) {
    mariadb(&format!(
        "INSERT INTO {table} (seq, note, amount) SELECT seq, CONCAT('row ', seq), seq / 4 FROM \
         seq_{from}_to_{}",
        to - 1
    ));
}

/// sql-source on MariaDB reads every row once, rows inserted while it runs too, and a restart
/// reads only what came since.
#[test]
fn the_sql_source_reads_mariadb_rows_once_and_resumes_after_the_last_acked() {
    require_mariadb();
    let table = unique("src");
    mariadb(&format!(
        "CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, seq BIGINT NOT NULL, note \
         TEXT, amount DECIMAL(12,2))"
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
    insert_seqs(&table, COUNT / 2, COUNT);
    run.wait_for("every row read", Duration::from_secs(60), || {
        lines("first.jsonl") >= COUNT as usize
    });
    let (code, stderr) = run.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let counts = crate::seq_counts(&s.read("out/first.jsonl"));
    assert_eq!(counts.len() as u64, COUNT, "{stderr}");
    assert!(counts.values().all(|n| *n == 1));
    // Each row a JSON object of its columns: numbers as numbers, a DECIMAL with its digits.
    let first = s.read("out/first.jsonl");
    assert!(
        first.starts_with(r#"{"id":1,"seq":0,"note":"row 0","amount":0.00}"#),
        "{}",
        &first[..200]
    );

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
    mariadb(&format!("DROP TABLE {table}"));
}

/// A private MariaDB server on `port` that accepts only TLS, with the certificate
/// `certificates(dir, "server")` made, and a database `test`; stopped at the end.
fn private_tls_mariadb(dir: &std::path::Path, port: u16) -> crate::tls::Server {
    let data = dir.join("mariadb-data");
    let installed = Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            "--user=root",
            "--auth-root-authentication-method=normal",
        ])
        .arg(format!("--datadir={}", data.display()))
        .args(["--skip-test-db"])
        .output()
        .expect("mariadb-install-db (Debian package mariadb-server)");
    assert!(installed.status.success(), "{installed:?}");
    let d = dir.display();
    let server = crate::tls::Server::start(
        Command::new("mariadbd").args([
            "--no-defaults".to_owned(),
            "--user=root".to_owned(),
            format!("--datadir={}", data.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--socket={d}/mariadb.sock"),
            format!("--ssl-cert={d}/server.pem"),
            format!("--ssl-key={d}/server.key"),
            format!("--ssl-ca={d}/server-ca.pem"),
            "--require-secure-transport=ON".to_owned(),
            "--skip-log-bin".to_owned(),
        ]),
        port,
    );
    let created = Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "-u",
            "root",
            "--ssl",
        ])
        .arg(format!("--ssl-ca={d}/server-ca.pem"))
        .args([
            "-e",
            "CREATE DATABASE test; CREATE TABLE test.t (seq BIGINT PRIMARY KEY)",
        ])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    server
}

/// MariaDB over TLS (`?ssl-mode=required`: SSLRequest, then TLS done by the host): the sink
/// writes 10,000 rows and sql-source reads them back, both verifying the server with the
/// granted CA; with the system's roots, the start fails naming the host and the cause.
#[test]
fn mariadb_over_tls_both_ways() {
    let s = Scratch::new();
    crate::tls::certificates(s.path(), "server");
    s.mkdir("out");
    let port = 23306;
    let _server = private_tls_mariadb(s.path(), port);
    let url = format!("mysql://root@127.0.0.1:{port}/test?ssl-mode=required");
    let grants = |tls: &str| format!(r#"grants = {{ tcp = ["127.0.0.1:{port}"]{tls} }}"#);
    let granted = grants(r#", tls = { ca = "server-ca.pem" }"#);
    s.write(
        "sink.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.db]
path = "{{plugin:mariadb-sink}}"
config = {{ url = "{url}", table = "t" }}
{granted}

[[pipeline]]
name = "to-mariadb"
source = "src"
sinks = ["db"]
"#
        ),
    );
    let out = s.run(&["run", "sink.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{COUNT} written to `db`")),
        "{stderr}"
    );
    s.write(
        "source.toml",
        &format!(
            r#"
[plugins.rows]
path = "{{plugin:sql-source}}"
config = {{ url = "{url}", table = "t", column = "seq" }}
{granted}

[plugins.file]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/rows.jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "from-mariadb"
source = "rows"
sinks = ["file"]
"#
        ),
    );
    let mut run = crate::Running::start(s.path(), &["run", "source.toml"]);
    run.wait_for("every row read", Duration::from_secs(60), || {
        std::fs::read_to_string(s.path().join("out/rows.jsonl"))
            .is_ok_and(|t| t.lines().count() >= COUNT as usize)
    });
    let (code, stderr) = run.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let counts = crate::seq_counts(&s.read("out/rows.jsonl"));
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));

    // Without the CA, the system's roots do not know the server's.
    s.write(
        "sink.toml",
        &s.read("sink.toml").replace(&granted, &grants("")),
    );
    let out = s.run(&["run", "sink.toml"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "mariadb 127.0.0.1:{port}: TLS with 127.0.0.1 failed: the server's certificate is \
             not signed by a trusted CA"
        )),
        "{stderr}"
    );
}
