//! `patchbay test-plugin`: every first-party plugin passes, and each test-only broken plugin is
//! caught on exactly the rule it breaks.

use crate::{Scratch, patchbay, text};

/// `patchbay test-plugin ARGS` with `BREAK` set (or not): exit code, and the report (stdout)
/// followed by the log and errors (stderr).
fn test_plugin(scratch: &Scratch, args: &[&str], mode: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = patchbay();
    cmd.arg("test-plugin")
        .args(args)
        .current_dir(scratch.path());
    match mode {
        Some(m) => cmd.env("BREAK", m),
        None => cmd.env_remove("BREAK"),
    };
    let out = cmd.output().unwrap();
    let (stdout, stderr) = text(&out);
    (out.status.code(), format!("{stdout}{SPLIT}{stderr}"))
}

/// Between the report and the log in `test_plugin`'s text.
const SPLIT: &str = "\n--- stderr ---\n";

/// The report's summary line: the last line of stdout.
fn summary(output: &str) -> &str {
    output
        .split(SPLIT)
        .next()
        .and_then(|report| report.lines().last())
        .unwrap_or_default()
}

fn failures(report: &str) -> Vec<&str> {
    report
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("FAIL"))
        .collect()
}

#[test]
fn every_first_party_plugin_passes_the_compliance_kit() {
    let s = Scratch::new();
    let input = s.mkdir("in");
    let output = s.mkdir("out");
    std::fs::write(
        input.join("orders.csv"),
        "id,item\n1,apple\n2,pear\n3,plum\n",
    )
    .unwrap();
    let file = s.write(
        "files.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:file-source}}"
config = {{ path = "/in/orders.csv" }}
grants = {{ dirs = [{{ host = "{}", guest = "/in", mode = "ro" }}] }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl", append = true }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[plugins.check]
path = "{{plugin:json-schema}}"
config = {{ schema = "/in/schema.json" }}
grants = {{ dirs = [{{ host = "{}", guest = "/in", mode = "ro" }}] }}

[[pipeline]]
name = "files"
source = "src"
transforms = ["check"]
sinks = ["out"]
"#,
            input.display(),
            output.display(),
            input.display()
        ),
    );
    std::fs::write(input.join("schema.json"), r#"{"required": ["seq"]}"#).unwrap();
    let file = file.display().to_string();
    let runs: Vec<(&str, Vec<String>)> = vec![
        ("generator", vec!["--config".into(), "count=1000".into()]),
        (
            "file-source",
            vec![
                "--pipeline".into(),
                file.clone(),
                "--plugin".into(),
                "src".into(),
            ],
        ),
        (
            "file-sink",
            vec![
                "--pipeline".into(),
                file.clone(),
                "--plugin".into(),
                "out".into(),
            ],
        ),
        (
            "json-map",
            vec!["--config".into(), r#"rename={"name":"title"}"#.into()],
        ),
        (
            "redact",
            vec!["--config".into(), r#"fields=["name"]"#.into()],
        ),
        (
            "map",
            vec!["--config".into(), r#"set={"fields":"size(json)"}"#.into()],
        ),
        (
            "json-schema",
            vec![
                "--pipeline".into(),
                file.clone(),
                "--plugin".into(),
                "check".into(),
            ],
        ),
        (
            "json-to-csv",
            vec!["--config".into(), r#"columns=["seq","name"]"#.into()],
        ),
        ("xml-to-json", vec![]),
        ("json-to-xml", vec![]),
        ("csv-to-json", vec![]),
        (
            "filter",
            vec![
                "--config".into(),
                "field=seq".into(),
                "--config".into(),
                "op=gt".into(),
                "--config".into(),
                "value=3".into(),
            ],
        ),
        ("blackhole", vec![]),
    ];
    for (name, extra) in runs {
        let wasm = crate::plugin(name);
        let mut args = vec![wasm.as_str()];
        args.extend(extra.iter().map(String::as_str));
        let (code, report) = test_plugin(&s, &args, None);
        assert_eq!(code, Some(0), "{name}:\n{report}");
        assert!(failures(&report).is_empty(), "{name}:\n{report}");
        assert!(
            summary(&report).contains(" passed, 0 failed, "),
            "{name}:\n{report}"
        );
    }
    // The file-sink checks wrote their records where the grant points, nowhere else.
    // (The rule 10 check writes non-UTF-8 payloads too: count lines as bytes.)
    let written = std::fs::read(output.join("out.jsonl")).unwrap();
    let lines = written.iter().filter(|b| **b == b'\n').count();
    assert!(lines >= 4096, "{lines} lines written");
}

/// The pipeline file that grants `BREAK` to the broken plugins.
fn broken_pipeline(s: &Scratch) -> String {
    s.write(
        "broken.toml",
        r#"
[plugins.t]
path = "{plugin:test-broken-transform}"
grants = { env = ["BREAK"] }

[plugins.s]
path = "{plugin:test-broken-source}"
grants = { env = ["BREAK"] }

[plugins.k]
path = "{plugin:test-broken-sink}"
grants = { env = ["BREAK"] }

[[pipeline]]
name = "broken"
source = "s"
transforms = ["t"]
sinks = ["k"]
"#,
    )
    .display()
    .to_string()
}

#[test]
fn the_compliance_kit_catches_each_broken_rule() {
    let s = Scratch::new();
    let file = broken_pipeline(&s);
    let args = |plugin: &'static str, name: &'static str| -> Vec<String> {
        vec![
            crate::plugin(plugin),
            "--pipeline".into(),
            file.clone(),
            "--plugin".into(),
            name.into(),
            "--config".into(),
            "level=3".into(),
        ]
    };
    // Unbroken, each passes: every failure below comes from the rule its mode breaks.
    for (plugin, name) in [
        ("test-broken-transform", "t"),
        ("test-broken-source", "s"),
        ("test-broken-sink", "k"),
    ] {
        let mut a = args(plugin, name);
        if plugin != "test-broken-transform" {
            a.truncate(5);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, report) = test_plugin(&s, &a, None);
        assert_eq!(code, Some(0), "{plugin} unbroken:\n{report}");
    }
    // Mode, plugin, and the one failing line expected (rule, check, start of the reason).
    let cases: &[(&str, &str, &str)] = &[
        (
            "describe-trap",
            "t",
            "FAIL  rule  1  `describe` returns metadata without trapping: trapped in `describe`: wasm trap: wasm `unreachable` instruction executed; its last words on stderr: panicked at",
        ),
        (
            "describe-unstable",
            "t",
            "FAIL  rule  1  `describe` gives the same metadata after `init`: the description was \"Test-only: breaks the rule named by $BREAK.\" before `init`, \"Test-only: a description that changed after init.\" after",
        ),
        (
            "bad-name",
            "t",
            "FAIL  rule  1  the metadata is well formed: name `Broken_Transform` is not lowercase letters, digits and dashes",
        ),
        (
            "duplicate-key",
            "t",
            "FAIL  rule  2  config key names are unique: `level` is listed twice",
        ),
        (
            "init-trap",
            "t",
            "FAIL  rule  3  `init` answers bad values with a fatal error naming the key, never a trap: with level=\"\": trapped in `init`:",
        ),
        (
            "init-retryable",
            "t",
            "FAIL  rule  3  `init` answers bad values with a fatal error naming the key, never a trap: with level=\"\": the error is `retryable`, not `fatal`: level: try again later",
        ),
        (
            "init-unnamed",
            "t",
            "FAIL  rule  3  `init` answers bad values with a fatal error naming the key, never a trap: with level=\"\": the error does not name the key `level`: bad value",
        ),
        (
            "required-ignored",
            "t",
            "FAIL  rule  3  `init` without a required key returns a fatal error naming it: `init` accepted a configuration without the required key `level`",
        ),
        (
            "empty-batch",
            "t",
            "FAIL  rule  7  `process` accepts an empty batch and returns no outcome: call 1 of 1: 1 answer for 0 messages",
        ),
        (
            "large-batch",
            "t",
            "FAIL  rule  6  `process` takes a large batch (4,096 messages): call 1 of 1 (4096 messages): trapped in `process`:",
        ),
        (
            "repeated",
            "t",
            "FAIL  rule  6  `process` keeps its word over 1,000 calls in a row: call 500 of 1000 (3 messages): trapped in `process`:",
        ),
        (
            "non-utf8",
            "t",
            "FAIL  rule 10  `process` handles empty and non-UTF-8 payloads without trapping: invalid UTF-8: trapped in `process`:",
        ),
        (
            "empty-payload",
            "t",
            "FAIL  rule 10  `process` handles empty and non-UTF-8 payloads without trapping: an empty payload: trapped in `process`:",
        ),
        (
            "poll-over-max",
            "s",
            "FAIL  rule 11  `poll(max)` returns at most `max` messages: `poll(0)` returned 1 message",
        ),
        (
            "eos-not-sticky",
            "s",
            "FAIL  rule 12  `end-of-stream` sticks once returned: poll 1 after `end-of-stream` returned a batch of 1",
        ),
        (
            "checkpoint-back",
            "s",
            // The Rust SDK hands the host checkpoints of its own (to split batches within
            // `batch_bytes`), so it is the SDK that catches a source going backwards.
            "FAIL  rule 11  `poll` keeps working: `poll` failed: fatal error: checkpoint went \
             backwards from 8 to 0; checkpoints must not decrease",
        ),
        (
            "ack-trap",
            "s",
            "FAIL  rule 14  `ack` of a delivered checkpoint succeeds: `ack(1)` trapped in `ack`:",
        ),
        (
            "empty-batch",
            "k",
            "FAIL  rule  7  `write` accepts an empty batch and returns no result: call 1 of 1: 1 answer for 0 messages",
        ),
        (
            "non-utf8-retryable",
            "k",
            "FAIL  rule 10  `write` answers empty and non-UTF-8 payloads with `ok` or `invalid-data`, never a trap: invalid UTF-8 got a `retryable` error, not `invalid-data`: cannot decode, try again",
        ),
    ];
    for (mode, name, expected) in cases {
        let plugin = match *name {
            "t" => "test-broken-transform",
            "s" => "test-broken-source",
            _ => "test-broken-sink",
        };
        let mut a = args(plugin, name);
        if *name != "t" {
            a.truncate(5);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, report) = test_plugin(&s, &a, Some(mode));
        assert_eq!(code, Some(1), "{mode}:\n{report}");
        let failed = failures(&report);
        assert_eq!(failed.len(), 1, "{mode}: one failure expected:\n{report}");
        assert!(
            failed[0].starts_with(expected),
            "{mode}:\n  expected: {expected}\n  got:      {}",
            failed[0]
        );
        assert!(
            summary(&report).contains(" 1 failed, "),
            "{mode}:\n{report}"
        );
    }
    // A wrong count shows on every check that counts.
    let a = args("test-broken-sink", "k");
    let a: Vec<&str> = a[..5].iter().map(String::as_str).collect();
    let (code, report) = test_plugin(&s, &a, Some("count"));
    assert_eq!(code, Some(1));
    assert_eq!(
        failures(&report),
        [
            "FAIL  rule  6  `write` returns one result per message, in batches of 1, 7 and 100: call 2 of 3: 6 answers for 7 messages",
            "FAIL  rule  6  `write` takes a large batch (4,096 messages): call 1 of 1: 4095 answers for 4096 messages",
            "FAIL  rule  6  `write` keeps its word over 1,000 calls in a row: call 1 of 1000: 2 answers for 3 messages",
        ],
        "{report}"
    );
}

/// Rule 23 on a transform with a hand-written packed call (`test-packed`).
#[test]
fn the_compliance_kit_checks_the_packed_call_against_the_typed_one() {
    let s = Scratch::new();
    let file = s
        .write(
            "packed.toml",
            r#"
[plugins.gen]
path = "{plugin:generator}"

[plugins.t]
path = "{plugin:test-packed}"
grants = { env = ["BREAK"] }

[plugins.null]
path = "{plugin:blackhole}"

[[pipeline]]
name = "packed"
source = "gen"
transforms = ["t"]
sinks = ["null"]
"#,
        )
        .display()
        .to_string();
    let wasm = crate::plugin("test-packed");
    let args = [wasm.as_str(), "--pipeline", &file, "--plugin", "t"];
    let (code, report) = test_plugin(&s, &args, None);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(
            "pass  rule 23  `process-packed` answers exactly as `process` does: 4 batches, 111 \
             messages, the same answers"
        ),
        "{report}"
    );

    let (code, report) = test_plugin(&s, &args, Some("differs"));
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(
        failures(&report),
        [
            "FAIL  rule 23  `process-packed` answers exactly as `process` does: batch 1 (1 \
          message): answer 1: packed Outcome::Drop, typed Outcome::Keep"
        ],
        "{report}"
    );

    // Not a frame: every data call fails, saying where the frame went wrong.
    let (code, report) = test_plugin(&s, &args, Some("malformed"));
    assert_eq!(code, Some(1), "{report}");
    let failed = failures(&report);
    assert!(failed.len() >= 4, "{report}");
    assert!(
        failed[0].starts_with(
            "FAIL  rule  6  `process` returns one outcome per message, in batches of 1, 7 and \
             100: call 1 of 3 (1 messages): trapped in `process`: its answer through \
             `process-packed` is not a valid frame (malformed frame at byte 0: item count: 4 \
             bytes, but only 3 are left); see \"Packed frames\" in wit/README.md"
        ),
        "{report}"
    );
}

#[test]
fn test_plugin_explains_a_missing_required_key_and_a_bad_config_argument() {
    let s = Scratch::new();
    let filter = crate::plugin("filter");
    let (code, report) = test_plugin(&s, &[&filter], None);
    assert_eq!(code, Some(1));
    assert!(
        report.contains(
            "error: filter 0.1.0 requires config key `field` (Dotted path of the field to test, e.g. `order.amount`.); pass it with --config field=VALUE"
        ),
        "{report}"
    );
    let (code, report) = test_plugin(&s, &[&filter, "--config", "field"], None);
    assert_eq!(code, Some(1));
    assert!(
        report
            .contains("error: --config `field`: write KEY=VALUE, e.g. --config path=/data/in.csv"),
        "{report}"
    );
    let (code, report) = test_plugin(&s, &[&filter, "--config", "feild=x"], None);
    assert_eq!(code, Some(1));
    assert!(
        report.contains(
            "error: filter 0.1.0 has no config key `feild`; it accepts: field, op, value"
        ),
        "{report}"
    );
}

#[test]
fn the_network_connectors_pass_the_compliance_kit() {
    let _redis = crate::redis::redis_lock();
    let _nats = crate::nats::nats_lock();
    let _mqtt = crate::mqtt::mqtt_lock();
    let (nats_subject, nats_stream) = crate::nats::unique("compliance");
    let mut nats = crate::nats::Client::connect();
    nats.create_stream(&nats_stream, &nats_subject);
    let (http, _) = crate::http::server(std::sync::Arc::new(|_, _| 200));
    let s = Scratch::new();
    let stream = format!("patchbay-test:compliance:{}", std::process::id());
    let file = s.write(
        "net.toml",
        &format!(
            r#"
[plugins.rsrc]
path = "{{plugin:redis-source}}"
config = {{ stream = "{stream}", start = "0" }}
grants = {{ tcp = ["127.0.0.1:6379"] }}

[plugins.rsink]
path = "{{plugin:redis-sink}}"
config = {{ key = "{stream}" }}
grants = {{ tcp = ["127.0.0.1:6379"] }}

[plugins.web]
path = "{{plugin:http-sink}}"
config = {{ url = "http://{http}/in", batch = "ndjson" }}
grants = {{ http = ["{http}"] }}

[plugins.msrc]
path = "{{plugin:mqtt-source}}"
config = {{ topics = ["{stream}/#"], qos = 1, client_id = "pb-compliance" }}
grants = {{ tcp = ["127.0.0.1:1883"] }}

[plugins.msink]
path = "{{plugin:mqtt-sink}}"
config = {{ topic = "{stream}/out", client_id = "pb-compliance-sink", qos = 0 }}
grants = {{ tcp = ["127.0.0.1:1883"] }}

[[pipeline]]
name = "net"
source = "rsrc"
sinks = ["rsink", "web"]

[plugins.nsrc]
path = "{{plugin:nats-source}}"
config = {{ mode = "jetstream", stream = "{nats_stream}", consumer = "compliance", ack_wait_ms = 5000 }}
grants = {{ tcp = ["127.0.0.1:4222"] }}

[plugins.nsink]
path = "{{plugin:nats-sink}}"
config = {{ subject = "{nats_subject}", mode = "jetstream" }}
grants = {{ tcp = ["127.0.0.1:4222"] }}

[[pipeline]]
name = "mqtt"
source = "msrc"
sinks = ["msink"]

[[pipeline]]
name = "nats"
source = "nsrc"
sinks = ["nsink"]
"#
        ),
    );
    let file = file.display().to_string();
    // The sink's checks fill the stream first; the source then reads them back.
    for (plugin, name) in [
        ("redis-sink", "rsink"),
        ("redis-source", "rsrc"),
        ("http-sink", "web"),
        ("mqtt-sink", "msink"),
        ("mqtt-source", "msrc"),
        ("nats-sink", "nsink"),
        ("nats-source", "nsrc"),
    ] {
        let wasm = crate::plugin(plugin);
        let args = [
            wasm.as_str(),
            "--pipeline",
            &file,
            "--plugin",
            name,
            "--source-budget",
            "2s",
        ];
        let (code, report) = test_plugin(&s, &args, None);
        assert_eq!(code, Some(0), "{plugin}:\n{report}");
        assert!(
            summary(&report).contains(" passed, 0 failed, "),
            "{plugin}:\n{report}"
        );
    }
    let _ = std::process::Command::new("redis-cli")
        .args(["DEL", &stream])
        .output();
    nats.delete_stream(&nats_stream);
}

/// `--show` prints each sample and the plugin's answer before the checks: what a transform
/// made of it, a drop, or an error with its kind.
#[test]
fn test_plugin_shows_each_answer() {
    let s = Scratch::new();
    s.write(
        "in.jsonl",
        "{\"name\":\"ada\",\"seq\":1}\nnot json\n{\"seq\":2}\n",
    );
    let input = s.path().join("in.jsonl").display().to_string();
    let wasm = crate::plugin("json-map");
    let (code, report) = test_plugin(
        &s,
        &[
            &wasm,
            "--config",
            r#"rename={"name":"title"}"#,
            "--input",
            &input,
            "--show",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{report}");
    let shown = "3 samples through `process` as one batch:\n    1  {\"name\":\"ada\",\"seq\":1}\n       → {\"title\":\"ada\",\"seq\":1}\n    2  not json\n       → invalid-data error: ";
    assert!(report.contains(shown), "{report}");
    assert!(
        report.contains("    3  {\"seq\":2}\n       → kept unchanged\n")
            || report.contains("    3  {\"seq\":2}\n       → {\"seq\":2}\n"),
        "{report}"
    );
    // The checks follow.
    assert!(summary(&report).contains(" passed, 0 failed, "), "{report}");
}

/// A sink's checks write real messages: test-plugin says so, and `--no-data` skips those
/// checks (nothing is written).
#[test]
fn test_plugin_on_a_sink_warns_and_no_data_writes_nothing() {
    let s = Scratch::new();
    let out = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "p"
source = "gen"
sinks = ["out"]
"#,
            out.display()
        ),
    );
    let wasm = crate::plugin("file-sink");
    let (code, report) = test_plugin(
        &s,
        &[
            &wasm,
            "--pipeline",
            "p.toml",
            "--plugin",
            "out",
            "--no-data",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(
            "n/a   rule  6  the data rules (6, 7, 10, 23): --no-data: no message was written"
        ) || report.contains("the data rules (6, 7, 10, 23): --no-data: no message was written"),
        "{report}"
    );
    assert!(
        !report.contains("note: a sink's checks write real messages"),
        "{report}"
    );
    // `init` (of the config checks) may create the file; no message is in it.
    assert_eq!(
        std::fs::read_to_string(out.join("out.jsonl")).unwrap_or_default(),
        ""
    );
    let (code, report) = test_plugin(
        &s,
        &[&wasm, "--pipeline", "p.toml", "--plugin", "out"],
        None,
    );
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.starts_with(&format!(
            "test-plugin: {wasm}\nnote: a sink's checks write real messages where its config \
             points (thousands of them); use a scratch target, or --no-data to skip those checks\n"
        )),
        "{report}"
    );
}
