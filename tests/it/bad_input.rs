//! Bad configuration files and bad components: exit 1 and a message that says what and where.

use std::path::Path;

use crate::{Scratch, plugin, root, run_in, text};

/// Cases that only `run` can catch (the plugin's own `init` rejects them); `validate` runs no
/// plugin code beyond `metadata`.
const RUN_ONLY: &[&str] = &["bad-config-value", "latency-without-report"];

/// Every `tests/cases/bad-config/NAME.toml` fails with exit 1, and stderr holds every line of
/// `NAME.err`.
#[test]
fn bad_config_cases() {
    let dir = root().join("tests/cases/bad-config");
    crate::plugin("generator"); // fail early with the build hint when plugins are missing
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let file = format!("{name}.toml");
        let expected = std::fs::read_to_string(case.with_extension("err"))
            .unwrap_or_else(|_| panic!("{name}.err is missing"));
        let mut commands = vec!["run"];
        if !RUN_ONLY.contains(&name.as_str()) {
            commands.push("validate");
        }
        for command in commands {
            let out = run_in(&dir, &[command, &file]);
            let (_, stderr) = text(&out);
            if out.status.code() != Some(1) {
                failures.push(format!(
                    "{name} ({command}): exit {:?}, expected 1\n{stderr}",
                    out.status.code()
                ));
                continue;
            }
            for line in expected.lines().filter(|l| !l.trim().is_empty()) {
                if !stderr.contains(line) {
                    failures.push(format!(
                        "{name} ({command}): expected line\n  {line}\nnot in stderr:\n{stderr}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn bad_component_case(s: &Scratch, file: &str, bytes: &[u8], expected: &str) {
    std::fs::write(s.path().join(file), bytes).unwrap();
    s.write(
        &format!("{file}.toml"),
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"

[plugins.broken]
path = "{file}"

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "-" }}
grants = {{ stdout = true }}

[[pipeline]]
name = "main"
source = "gen"
transforms = ["broken"]
sinks = ["out"]
"#
        ),
    );
    let config = format!("{file}.toml");
    for args in [
        ["validate", config.as_str()],
        ["run", config.as_str()],
        ["inspect", file],
    ] {
        let out = s.run(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn random_bytes_are_not_a_component() {
    let s = Scratch::new();
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    bad_component_case(
        &s,
        "random.wasm",
        &bytes,
        "`random.wasm` is not a WebAssembly component: the file does not start with the \
         WebAssembly magic number",
    );
}

#[test]
fn a_truncated_component_is_refused() {
    let s = Scratch::new();
    let whole = std::fs::read(plugin("json-map")).unwrap();
    bad_component_case(
        &s,
        "truncated.wasm",
        &whole[..whole.len() / 2],
        "`truncated.wasm` is not a WebAssembly component:",
    );
}

#[test]
fn a_core_module_is_refused_with_a_hint() {
    let s = Scratch::new();
    // The smallest valid core module: magic and version 1.
    bad_component_case(
        &s,
        "core.wasm",
        b"\0asm\x01\0\0\0",
        "`core.wasm` is not a WebAssembly component: it is a core WebAssembly module; build the \
         plugin for the wasm32-wasip2 target",
    );
}

#[test]
fn a_component_of_another_world_is_refused() {
    let s = Scratch::new();
    // An empty component: valid, but it implements no Patchbay world.
    bad_component_case(
        &s,
        "empty.wasm",
        b"\0asm\x0d\0\x01\0",
        "`empty.wasm` does not implement a patchbay:connector world (0.2.0 or 0.1.0): it exports nothing",
    );
}

#[test]
fn a_sink_used_as_a_transform_names_both_roles() {
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"

[plugins.wrong]
path = "{plugin:file-sink}"
config = { path = "-" }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "-" }
grants = { stdout = true }

[[pipeline]]
name = "main"
source = "gen"
transforms = ["wrong"]
sinks = ["out"]
"#,
    );
    let out = s.run(&["validate", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(
            "p.toml:17:15: pipeline `main`: plugin `wrong` is a sink (it implements world `sink`), \
             but it is used here as a transform"
        ),
        "{stderr}"
    );
}

#[test]
fn a_missing_pipeline_file_is_reported() {
    let out = run_in(Path::new("."), &["run", "does-not-exist.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("error: does-not-exist.toml: cannot read the pipeline file:"),
        "{stderr}"
    );
}

/// Bad-config cases that are a matter of the file's shape (an unknown key, a wrong type, a
/// value outside an enum, a size or duration that is not one): the JSON Schema refuses them.
const SCHEMA_CASES: &[&str] = &[
    "unknown-key",
    "unknown-grant",
    "wrong-type",
    "bad-dir-mode",
    "bad-on-error",
    "bad-size",
    "bad-duration",
];

/// `patchbay schema` prints a JSON Schema that accepts every pipeline file in `examples/` and
/// refuses every schema-matter case of `tests/cases/bad-config/`.
#[test]
fn the_json_schema_accepts_the_examples_and_refuses_shape_errors() {
    let out = crate::patchbay().arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let as_json = |path: &std::path::Path| -> serde_json::Value {
        let text = std::fs::read_to_string(path).unwrap();
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let mut examples = 0;
    for dir in std::fs::read_dir(root().join("examples")).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let errors: Vec<String> = validator
                    .iter_errors(&as_json(&path))
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{}: {errors:?}", path.display());
                examples += 1;
            }
        }
    }
    assert!(examples >= 5, "only {examples} example files");
    for case in SCHEMA_CASES {
        let path = root().join(format!("tests/cases/bad-config/{case}.toml"));
        assert!(
            !validator.is_valid(&as_json(&path)),
            "the schema accepts {case}.toml"
        );
    }
}
