//! The `map` transform (plugins/map): fields and whole documents computed by CEL expressions,
//! a message dropped by `drop_if`, one that fails an expression dead-lettered with the reason,
//! and a bad expression refused at start naming the key and the entry.

use crate::{Scratch, dead_letter_seqs, text};

const N: u64 = 1000;

fn pipeline(config: &str) -> String {
    format!(
        r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {N}, size = 40 }}

[plugins.m]
path = "{{plugin:map}}"
config = {config}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "p"
source = "gen"
transforms = ["m"]
sinks = ["out"]
on_error = "dead-letter"
dead_letter = {{ path = "out/dead.jsonl" }}
"#
    )
}

#[test]
fn expressions_compute_fields_drop_and_dead_letter_per_message() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &pipeline(
            r#"{ set = { half = "double(json.seq) / 2.0", parity = "json.seq % 2 == 0 ? 'even' : 'odd'", "meta.key" = "key + '-' + string(size(json.data))", "meta.inverse" = "100 / (json.seq % 10)" }, delete = ["data"], drop_if = "json.seq % 10 == 9" }"#,
        ),
    );
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    // seq % 10 == 9 dropped (100), seq % 10 == 0 divides by zero (100 dead letters).
    assert!(
        stderr.contains(&format!(
            "pipeline `p`: {N} in, 100 dropped, 800 written to `out`"
        )),
        "{stderr}"
    );
    let written = s.read("out/out.jsonl");
    let mut seqs = Vec::new();
    for line in written.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        seqs.push(seq);
        assert_eq!(v["half"].as_f64(), Some(seq as f64 / 2.0), "{line}");
        let parity = if seq.is_multiple_of(2) { "even" } else { "odd" };
        assert_eq!(v["parity"], parity, "{line}");
        assert_eq!(v["meta"]["inverse"], 100 / (seq % 10), "{line}");
        assert!(
            v["meta"]["key"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{seq}-")),
            "{line}"
        );
        assert!(v.get("data").is_none(), "{line}");
    }
    let expected: Vec<u64> = (0..N).filter(|n| n % 10 != 9 && n % 10 != 0).collect();
    assert_eq!(seqs, expected);
    let dead_text = s.read("out/dead.jsonl");
    let mut dead = dead_letter_seqs(&dead_text);
    dead.sort_unstable();
    assert_eq!(dead, (0..N).step_by(10).collect::<Vec<_>>());
    assert!(
        dead_text.contains("set.meta.inverse: "),
        "the reason names the entry: {dead_text}"
    );
}

#[test]
fn mixing_int_and_double_fails_with_the_fix_in_the_reason() {
    let s = Scratch::new();
    let sample = s.write("in.txt", "{\"price\":2.5,\"qty\":3}\n");
    let wasm = crate::plugin("map");
    let show = |set: &str| {
        let out = s.run(&[
            "test-plugin",
            &wasm,
            "--config",
            set,
            "--input",
            sample.to_str().unwrap(),
            "--show",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        stdout
    };
    let stdout = show(r#"set={"total":"json.price * json.qty"}"#);
    assert!(
        stdout.contains("→ invalid-data error: set.total: Unsupported binary operator 'mul': Float(2.5), Int(3); CEL does not mix int and double: write double(…) around the int, or 2.0 for 2"),
        "{stdout}"
    );
    let stdout = show(r#"set={"total":"json.price * double(json.qty)"}"#);
    assert!(
        stdout.contains(r#"→ {"price":2.5,"qty":3,"total":7.5}"#),
        "{stdout}"
    );
}

#[test]
fn root_builds_a_new_document_with_its_fields_in_name_order() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &pipeline(
            r#"{ root = "{'seq': json.seq, 'label': 'n-' + string(json.seq), 'tags': ['a', 'b'].map(t, t.upperAscii())}" }"#,
        ),
    );
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    let written = s.read("out/out.jsonl");
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len() as u64, N);
    assert_eq!(lines[7], r#"{"label":"n-7","seq":7,"tags":["A","B"]}"#);
}

#[test]
fn a_bad_expression_is_refused_at_start_naming_the_key() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &pipeline(r#"{ set = { total = "json.price *" } }"#),
    );
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: pipeline `p`: transform `m` could not start: `init` returned fatal error: config key `set` entry `total`: the CEL expression `json.price *` does not parse (at 1:13): Syntax error: mismatched input '<EOF>' expecting "
        ),
        "{stderr}"
    );
    assert!(
        stderr
            .trim_end()
            .ends_with("; fix [plugins.m.config] in the pipeline file"),
        "{stderr}"
    );
    s.write("p.toml", &pipeline(r#"{ set = { total = 3 } }"#));
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "config key `set`: entry `total` is 3, not a CEL expression in a string; write total = \"json.a + json.b\""
        ),
        "{stderr}"
    );
}
