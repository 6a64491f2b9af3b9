//! Plugins written with the Python and JavaScript SDKs, and in C (sdk-c; all built by
//! `cargo xtask test` into `target/plugins/`), in real pipelines and through the compliance kit;
//! and the SDKs as packages, used from a project outside the repository.

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
    let fields = vec!["--config", r#"fields=["name","tags"]"#];
    let runs: [(&str, Vec<&str>); 4] = [
        ("redact", fields.clone()),
        ("py-redact", fields.clone()),
        ("js-redact", fields),
        ("py-csv-sink", vec!["--pipeline", &file, "--plugin", "csv"]),
    ];
    for (name, extra) in runs {
        let wasm = crate::plugin(name);
        let out = s.run(&[&["test-plugin", wasm.as_str()][..], &extra].concat());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}:\n{stdout}{stderr}");
        // 11 checks, and 12 for the Rust one (its packed call, rule 23).
        assert!(
            stdout.contains(" passed, 0 failed, 0 not applicable"),
            "{name}:\n{stdout}"
        );
        // wit/README.md rule 10a: JSON with a lone surrogate is refused alike in Rust, Python
        // and JavaScript (Python's json.loads and JSON.parse alone would accept it).
        assert!(
            stdout.contains("a lone surrogate in JSON: invalid-data;"),
            "{name}:\n{stdout}"
        );
    }
}

/// The package's copy of the contract (`dir`, from the repository root) is `wit/`, file for file.
fn same_wit(dir: &str) {
    let root = crate::root();
    for file in ["types.wit", "worlds.wit"] {
        assert_eq!(
            std::fs::read_to_string(root.join(dir).join(file)).unwrap(),
            std::fs::read_to_string(root.join("wit").join(file)).unwrap(),
            "{dir}/{file} differs from wit/{file}: copy it"
        );
    }
}

/// Run a command that must succeed; its output.
fn run(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Python SDK as a package: its wheel (`pip wheel sdk-python`) installed with pip into a
/// fresh virtual environment outside the repository, a plugin project there built with the
/// wheel's `patchbay-py-build` (the WIT comes inside the package), then checked by
/// `test-plugin` and run in a pipeline.
#[test]
fn a_python_plugin_builds_outside_the_repository_from_the_wheel() {
    let s = Scratch::new();
    let root = crate::root();
    same_wit("sdk-python/patchbay_sdk/wit");
    // Built from a copy, so the checkout stays clean (setuptools builds in the tree).
    run(std::process::Command::new("cp")
        .arg("-r")
        .arg(root.join("sdk-python"))
        .arg(s.path().join("sdk-src")));
    run(std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            "dist",
            "./sdk-src", // a path, not a package name
        ])
        .current_dir(s.path()));
    run(std::process::Command::new("python3")
        .args(["-m", "venv", "venv"])
        .current_dir(s.path()));
    let bin = s.path().join("venv/bin");
    run(std::process::Command::new(bin.join("pip"))
        .args(["install", "-q", "dist/patchbay_sdk-0.1.0-py3-none-any.whl"])
        .current_dir(s.path()));
    s.mkdir("project");
    std::fs::copy(
        root.join("sdk-python/examples/redact/app.py"),
        s.path().join("project/app.py"),
    )
    .unwrap();
    run(std::process::Command::new(bin.join("patchbay-py-build"))
        .args(["app", "-w", "transform", "-o", "redact.wasm"])
        .current_dir(s.path().join("project")));
    let wasm = s.path().join("project/redact.wasm").display().to_string();
    let out = s.run(&["test-plugin", &wasm, "--config", r#"fields=["name"]"#]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(" passed, 0 failed, "), "{stdout}");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = 100 }}

[plugins.redact]
path = "{wasm}"
config = {{ fields = ["data"] }}

[plugins.null]
path = "{{plugin:blackhole}}"

[[pipeline]]
name = "p"
source = "gen"
transforms = ["redact"]
sinks = ["null"]
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pipeline `p`: 100 in, 0 dropped, 100 written to `null`"),
        "{stderr}"
    );
}

/// The JavaScript SDK as a package: `npm pack` of sdk-js installed into a project outside the
/// repository, a plugin there importing `patchbay-sdk` built with the package's
/// `patchbay-js-build` (bundled, then componentize-js, the WIT from the package), checked by
/// `test-plugin`.
#[test]
fn a_javascript_plugin_builds_outside_the_repository_from_the_npm_package() {
    let s = Scratch::new();
    let root = crate::root();
    same_wit("sdk-js/wit");
    s.mkdir("dist");
    run(std::process::Command::new("npm")
        .args(["pack", "--pack-destination"])
        .arg(s.path().join("dist"))
        .current_dir(root.join("sdk-js")));
    s.mkdir("project");
    let project = s.path().join("project");
    run(std::process::Command::new("npm")
        .args(["init", "-y"])
        .current_dir(&project));
    run(std::process::Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "../dist/patchbay-sdk-0.1.0.tgz",
        ])
        .current_dir(&project));
    let example = std::fs::read_to_string(root.join("sdk-js/examples/redact/plugin.js")).unwrap();
    let plugin = example.replace("'../../patchbay-sdk.js'", "'patchbay-sdk'");
    assert_ne!(
        plugin, example,
        "the example imports the SDK by a relative path"
    );
    s.write("project/plugin.js", &plugin);
    run(std::process::Command::new("npx")
        .args(["patchbay-js-build", "plugin.js", "transform", "redact.wasm"])
        .current_dir(&project));
    let wasm = project.join("redact.wasm").display().to_string();
    let out = s.run(&["test-plugin", &wasm, "--config", r#"fields=["name"]"#]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(" passed, 0 failed, "), "{stdout}");
}

/// The C example (sdk-c/examples/upper, built by xtask with wit-bindgen's C generator, clang
/// and wasi-libc): it passes the compliance kit, upper-cases every one of 10,000 generated
/// records with its prefix, and explains a bad value in its own words.
#[test]
fn a_c_transform_passes_the_kit_and_runs_in_a_pipeline() {
    let s = Scratch::new();
    let wasm = crate::plugin("c-upper");
    let out = s.run(&["test-plugin", &wasm, "--config", "prefix=C:"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("11 checks: 10 passed, 0 failed, 1 not applicable"),
        "{stdout}"
    );
    let dir = s.mkdir("out");
    let pipeline = |max_bytes: &str| {
        format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.upper]
path = "{{plugin:c-upper}}"
config = {{ prefix = "C:", max_bytes = {max_bytes} }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.txt" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "upper"
source = "gen"
transforms = ["upper"]
sinks = ["out"]
"#,
            dir.display()
        )
    };
    s.write("p.toml", &pipeline("4096"));
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `upper`: {COUNT} in, 0 dropped, {COUNT} written to `out`"
        )),
        "{stderr}"
    );
    let written = s.read("out/out.txt");
    let mut seen = vec![0u32; COUNT as usize];
    for line in written.lines() {
        let doc = line
            .strip_prefix("C:")
            .unwrap_or_else(|| panic!("no prefix: {line}"));
        assert_eq!(doc, doc.to_ascii_uppercase(), "{line}");
        let v: serde_json::Value = serde_json::from_str(doc).unwrap();
        seen[v["SEQ"].as_u64().unwrap() as usize] += 1;
    }
    assert!(seen.iter().all(|n| *n == 1), "every record exactly once");

    s.write("bad.toml", &pipeline("\"lots\""));
    let run = s.run(&["run", "bad.toml"]);
    let (_, stderr) = text(&run);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: pipeline `upper`: transform `upper` could not start: `init` returned fatal error: config key `max_bytes`: expected a whole number of bytes from 1 to 1073741824, got `lots`; fix [plugins.upper.config] in the pipeline file"
    );
}
