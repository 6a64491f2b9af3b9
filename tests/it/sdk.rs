//! Plugins written with the Python and JavaScript SDKs (built by `cargo xtask test` into
//! `target/plugins/`), in real pipelines and through the compliance kit.

use crate::{Scratch, seq_counts, text};

const COUNT: u64 = 10_000;

/// generator → `transform` (redacting `data`) → file sink: every number once, `data` masked.
fn redacts_every_message(transform: &str) {
    let s = Scratch::new();
    let out = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.redact]
path = "{{plugin:{transform}}}"
config = {{ fields = ["data", "missing.field"], mask = "[redacted]" }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "redact"
source = "gen"
transforms = ["redact"]
sinks = ["out"]
"#,
            out.display()
        ),
    );
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `redact`: {COUNT} in, 0 dropped, {COUNT} written to `out`"
        )),
        "{stderr}"
    );
    let written = s.read("out/out.jsonl");
    let counts = seq_counts(&written);
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
    for line in written.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["data"], "[redacted]", "{line}");
    }
}

#[test]
fn a_python_transform_runs_in_a_pipeline() {
    redacts_every_message("py-redact");
}

#[test]
fn a_javascript_transform_runs_in_a_pipeline() {
    redacts_every_message("js-redact");
}

#[test]
fn a_python_sink_writes_csv_rows() {
    let s = Scratch::new();
    let out = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.redact]
path = "{{plugin:py-redact}}"
config = {{ fields = ["data"] }}

[plugins.csv]
path = "{{plugin:py-csv-sink}}"
config = {{ path = "/out/report.csv", columns = ["seq", "data", "absent"] }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "report"
source = "gen"
transforms = ["redact"]
sinks = ["csv"]
"#,
            out.display()
        ),
    );
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `report`: {COUNT} in, 0 dropped, {COUNT} written to `csv`"
        )),
        "{stderr}"
    );
    let csv = s.read("out/report.csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("seq,data,absent"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len() as u64, COUNT);
    for (n, row) in rows.iter().enumerate() {
        assert_eq!(*row, format!("{n},***,"));
    }
}

#[test]
fn sdk_plugins_explain_bad_config_in_their_own_words() {
    let s = Scratch::new();
    for (plugin, detail) in [
        (
            "py-redact",
            "config key `fields`: expected JSON (Expecting value: line 1 column 1 (char 0)), found 'data'",
        ),
        (
            "js-redact",
            "config key `fields`: expected JSON (JSON.parse: unexpected character at line 1 column 1 of the JSON data), found \"data\"",
        ),
    ] {
        s.write(
            "bad.toml",
            &format!(
                r#"
[plugins.gen]
path = "{{plugin:generator}}"

[plugins.r]
path = "{{plugin:{plugin}}}"
config = {{ fields = "data" }}

[plugins.null]
path = "{{plugin:blackhole}}"

[[pipeline]]
name = "p"
source = "gen"
transforms = ["r"]
sinks = ["null"]
"#
            ),
        );
        let run = s.run(&["run", "bad.toml"]);
        let (_, stderr) = text(&run);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "error: pipeline `p`: transform `r` could not start: `init` returned fatal error: {detail}; fix [plugins.r.config] in the pipeline file"
            )
        );
    }
}

#[test]
fn sdk_plugins_pass_the_compliance_kit() {
    let s = Scratch::new();
    let out = s.mkdir("out");
    let file = s.write(
        "sink.toml",
        &format!(
            r#"
[plugins.csv]
path = "{{plugin:py-csv-sink}}"
config = {{ path = "/out/report.csv", columns = ["seq", "name"] }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[plugins.gen]
path = "{{plugin:generator}}"

[[pipeline]]
name = "csv"
source = "gen"
sinks = ["csv"]
"#,
            out.display()
        ),
    );
    let file = file.display().to_string();
    let runs: [(&str, Vec<&str>); 3] = [
        ("py-redact", vec!["--config", r#"fields=["name","tags"]"#]),
        ("js-redact", vec!["--config", r#"fields=["name","tags"]"#]),
        ("py-csv-sink", vec!["--pipeline", &file, "--plugin", "csv"]),
    ];
    for (name, extra) in runs {
        let wasm = crate::plugin(name);
        let out = s.run(&[&["test-plugin", wasm.as_str()][..], &extra].concat());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}:\n{stdout}{stderr}");
        assert!(
            stdout.contains("11 checks: 11 passed, 0 failed, 0 not applicable"),
            "{name}:\n{stdout}"
        );
    }
}
