//! postgres-cdc against a private PostgreSQL with `wal_level = logical` (the machine's server
//! has `replica`): changes in commit order, and `kill -9` mid-stream loses none.

use std::process::Command;
use std::time::Duration;

use crate::postgres::PrivatePostgres;
use crate::{Running, Scratch};

const PORT: u16 = 25435;

fn pipeline() -> String {
    format!(
        r#"
[plugins.changes]
path = "{{plugin:postgres-cdc}}"
config = {{ url = "postgres://postgres@127.0.0.1:{PORT}/postgres", tables = ["public.cdc"] }}
grants = {{ tcp = ["127.0.0.1:{PORT}"] }}

[plugins.file]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/changes.jsonl", append = true }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "cdc"
source = "changes"
sinks = ["file"]
"#
    )
}

/// (op, id) of each change in the file, in order (a torn last line left by `kill -9` skipped).
fn changes(s: &Scratch) -> Vec<(String, u64)> {
    s.read("out/changes.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|c| {
            let row = if c["op"] == "delete" {
                &c["before"]
            } else {
                &c["after"]
            };
            (
                c["op"].as_str().unwrap().to_owned(),
                row["id"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn postgres_changes_arrive_in_commit_order_and_survive_kill_9() {
    let pg = PrivatePostgres::start(PORT, &["wal_level=logical"], &[]);
    pg.psql("CREATE TABLE cdc (id bigint PRIMARY KEY, note text, n integer)");
    let s = Scratch::new();
    s.mkdir("out");
    s.write("p.toml", &pipeline());
    let lines = || changes(&s).len();
    let mut run = Running::start(s.path(), &["run", "p.toml"]);
    crate::wait_until("the slot to stream", Duration::from_secs(30), || {
        run.stderr()
            .contains("streaming changes of publication `patchbay`")
    });
    // 10,000 inserts, 1,000 updates, 1,000 deletes: three transactions.
    pg.psql("INSERT INTO cdc SELECT n, 'row ' || n, n FROM generate_series(1, 10000) n");
    pg.psql("UPDATE cdc SET note = 'updated' WHERE id <= 1000");
    pg.psql("DELETE FROM cdc WHERE id > 9000");
    run.wait_for("12,000 changes", Duration::from_secs(60), || {
        lines() >= 12_000
    });
    let mut expected: Vec<(String, u64)> = (1..=10_000).map(|n| ("insert".to_owned(), n)).collect();
    expected.extend((1..=1000).map(|n| ("update".to_owned(), n)));
    expected.extend((9001..=10_000).map(|n| ("delete".to_owned(), n)));
    assert_eq!(changes(&s), expected, "not the changes in commit order");
    let first: serde_json::Value =
        serde_json::from_str(s.read("out/changes.jsonl").lines().nth(10_000).unwrap()).unwrap();
    assert_eq!(
        first,
        serde_json::json!({"table": "public.cdc", "op": "update",
            "before": null, "after": {"id": 1, "note": "updated", "n": 1}})
    );

    // 40 transactions of 250 inserts from another process; `kill -9` once some arrived.
    let mut writer = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &PORT.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-q", "-c"])
        .arg(
            "DO $$ BEGIN FOR t IN 0..39 LOOP \
             INSERT INTO cdc SELECT 20000 + t * 250 + n, 'late', n FROM generate_series(1, 250) n; \
             COMMIT; END LOOP; END $$",
        )
        .spawn()
        .unwrap();
    run.wait_for("some of the late changes", Duration::from_secs(60), || {
        lines() > 12_000
    });
    run.kill_9();
    assert!(writer.wait().unwrap().success());

    // A restart resumes at the slot's confirmed position: every change at least once.
    let mut run = Running::start(s.path(), &["run", "p.toml"]);
    let late = || {
        changes(&s)
            .into_iter()
            .filter(|(op, id)| op == "insert" && *id > 20_000)
            .map(|(_, id)| id)
            .collect::<std::collections::BTreeSet<u64>>()
    };
    run.wait_for("every late change", Duration::from_secs(60), || {
        late().len() >= 10_000
    });
    let (code, stderr) = run.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(late(), (20_001..=30_000).collect(), "{stderr}");
    // What was confirmed before the kill is not sent again: the first 12,000 stay once each.
    let early = changes(&s)
        .into_iter()
        .filter(|(_, id)| *id <= 10_000)
        .count();
    assert_eq!(early, 12_000);
}

/// Without its grant, postgres-cdc stops at start with the sandbox's refusal and the grant to
/// add (no server needed: the connection is refused before it is made).
#[test]
fn postgres_cdc_needs_its_grant() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &pipeline().replace(&format!("grants = {{ tcp = [\"127.0.0.1:{PORT}\"] }}"), ""),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = crate::text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "postgres 127.0.0.1:{PORT}: the sandbox refused the connection"
        )) && stderr.contains(&format!("grants = {{ tcp = [\"127.0.0.1:{PORT}\"] }}")),
        "{stderr}"
    );
}
