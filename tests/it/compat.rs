//! Contract compatibility (wit/README.md, rule 22): plugins built against contract 0.1.0
//! (`tests/plugins/v010-upper`, `v010-sink`, `test-packed`: plain wit-bindgen over
//! `wit/0.1.0/`) load, pass `test-plugin` and run unchanged next to 0.2.0 plugins in one
//! pipeline.

use crate::{Scratch, plugin, text};

#[test]
fn plugins_built_against_0_1_0_run_unchanged_next_to_0_2_0_ones() {
    let s = Scratch::new();
    s.mkdir("out");
    for (name, world) in [
        ("v010-upper", "transform (patchbay:connector@0.1.0)"),
        ("v010-sink", "sink (patchbay:connector@0.1.0)"),
        ("test-packed", "transform-packed (patchbay:connector@0.1.0)"),
        ("map", "transform-packed (patchbay:connector@0.2.0)"),
        ("http-source", "source-reply (patchbay:connector@0.2.0)"),
    ] {
        let out = s.run(&["inspect", &plugin(name)]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(
            stdout.contains(&format!("world    {world}")),
            "{name}: {stdout}"
        );
    }
    let out = s.run(&["test-plugin", &plugin("v010-upper")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");

    // 0.2.0 source → 0.1.0 transform → 0.1.0 packed transform → 0.2.0 transform → a 0.1.0 sink
    // and a 0.2.0 sink.
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 500 }

[plugins.upper]
path = "{plugin:v010-upper}"

[plugins.packed]
path = "{plugin:test-packed}"

[plugins.m]
path = "{plugin:map}"
config = { set = { next = "json.SEQ + 1" } }

[plugins.old]
path = "{plugin:v010-sink}"
config = { path = "/out/old.txt" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.new]
path = "{plugin:file-sink}"
config = { path = "/out/new.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "mixed"
source = "gen"
transforms = ["upper", "packed", "m"]
sinks = ["old", "new"]
"#,
    );
    let out = s.run(&["validate", "p.toml"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "pipeline `mixed`: 500 in, 0 dropped, 500 written to `old`, 500 written to `new`"
        ),
        "{stderr}"
    );
    let old = s.read("out/old.txt");
    let new = s.read("out/new.jsonl");
    assert_eq!(old, new);
    for (seq, line) in new.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["SEQ"], seq as u64, "{line}");
        assert_eq!(v["next"], seq as u64 + 1, "{line}");
    }
}
