//! `inspect`, `validate` and `new` as a user runs them.

use std::process::Command;

use crate::{Scratch, plugin, plugins_dir, root, text};

#[test]
fn inspect_shows_world_metadata_config_keys_and_imports() {
    let s = Scratch::new();
    let out = s.run(&["inspect", &plugin("json-map")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("plugin   json-map 0.1.0"), "{stdout}");
    // Built with the Rust SDK: it has the packed fast path.
    assert!(
        stdout.contains(
            "world    transform-packed (patchbay:connector@0.2.0): called through the packed \
             fast path"
        ),
        "{stdout}"
    );
    for key in ["rename", "copy", "drop", "set"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(key)),
            "config key {key} missing:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("contract     patchbay:connector/types@0.2.0"),
        "{stdout}"
    );
    // Rust std always imports the environment interface; inspect names the capability.
    assert!(
        stdout.contains("env          wasi:cli/environment@0.2."),
        "{stdout}"
    );
}

/// `inspect --config` warns about the name lookup std::net imports only when a granted
/// address is a name (an IP address needs no lookup).
#[test]
fn inspect_warns_about_dns_only_when_a_granted_address_is_a_name() {
    let s = Scratch::new();
    let pipeline = |addr: &str| {
        format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"

[plugins.cache]
path = "{{plugin:redis-sink}}"
config = {{ url = "redis://{addr}", key = "k" }}
grants = {{ tcp = ["{addr}"] }}

[[pipeline]]
name = "p"
source = "gen"
sinks = ["cache"]
"#
        )
    };
    let inspect = |s: &Scratch| {
        let out = s.run(&[
            "inspect",
            &plugin("redis-sink"),
            "--config",
            "p.toml",
            "--plugin",
            "cache",
        ]);
        assert!(out.status.success(), "{}", text(&out).1);
        text(&out).0
    };
    s.write("p.toml", &pipeline("127.0.0.1:6379"));
    let stdout = inspect(&s);
    assert!(stdout.contains("tcp          127.0.0.1:6379"), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
    s.write("p.toml", &pipeline("localhost:6379"));
    let stdout = inspect(&s);
    assert!(
        stdout.contains(
            "warning: it imports dns (wasi:sockets/ip-name-lookup@0.2.12) but the config grants no \
             dns access: those calls will be denied"
        ),
        "{stdout}"
    );
}

/// A command whose output is closed (`patchbay inspect X | head`) ends quietly, as Unix tools
/// do: killed by SIGPIPE, never a panic about the broken pipe.
#[test]
fn a_closed_output_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [
        vec!["inspect".to_owned(), plugin("json-map")],
        vec!["schema".to_owned(), "--markdown".to_owned()],
    ] {
        let mut child = crate::patchbay()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(13),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}

#[test]
fn inspect_names_the_role_of_each_first_party_plugin() {
    let s = Scratch::new();
    for (name, world) in [
        ("generator", "source"),
        ("file-source", "source"),
        ("file-sink", "sink-packed"),
        ("json-map", "transform-packed"),
        ("csv-to-json", "transform-packed"),
        ("filter", "transform-packed"),
        ("py-redact", "transform"),
        ("py-csv-sink", "sink"),
    ] {
        let out = s.run(&["inspect", &plugin(name)]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(
            stdout.contains(&format!("plugin   {name} 0.1.0")),
            "{name}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("world    {world} ")),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn validate_accepts_the_quickstart() {
    let out = crate::run_in(
        &root().join("examples/quickstart"),
        &["validate", "pipeline.toml"],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("pipeline.toml: ok: 1 pipeline, 4 plugins"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pipeline `orders`: orders → to-json → reshape → [jsonl]"),
        "{stdout}"
    );
}

/// `patchbay new transform my-thing` in a directory outside the repository: the crate depends
/// on `patchbay-sdk` by version, as a third party's would; the test packages the SDK as
/// `cargo publish` would (`cargo package`), points the crate at the unpacked `.crate` files with
/// the `[patch]` its README describes, builds it as the README says, and runs it.
#[test]
fn a_new_transform_builds_against_the_packaged_sdk_and_runs() {
    let s = Scratch::new();
    let out = crate::patchbay()
        .args(["new", "transform", "my-thing"])
        .current_dir(s.path())
        .env_remove("PATCHBAY_SDK")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("created my-thing/"), "{stdout}");
    let crate_dir = s.path().join("my-thing");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("\npatchbay-sdk = \"0.1\"\n"),
        "{manifest}"
    );
    let readme = std::fs::read_to_string(crate_dir.join("README.md")).unwrap();
    assert!(readme.contains("[patch.crates-io]"), "{readme}");

    // The SDK as it would be published: patchbay-frame and patchbay-sdk packaged, unpacked.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let packaged = plugins_dir().join("../sdk-package");
    let package = Command::new(&cargo)
        .args([
            "package",
            "--no-verify",
            "--allow-dirty",
            "-p",
            "patchbay-frame",
        ])
        .args(["-p", "patchbay-sdk", "--target-dir"])
        .arg(&packaged)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        package.status.success(),
        "{}",
        String::from_utf8_lossy(&package.stderr)
    );
    s.mkdir("sdk");
    for name in ["patchbay-frame", "patchbay-sdk"] {
        let file = packaged.join(format!("package/{name}-0.1.0.crate"));
        let unpacked = Command::new("tar")
            .arg("xzf")
            .arg(&file)
            .arg("-C")
            .arg(s.path().join("sdk"))
            .status()
            .unwrap();
        assert!(unpacked.success(), "tar xzf {}", file.display());
    }
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        format!(
            "{manifest}\n[patch.crates-io]\npatchbay-sdk = {{ path = \"../sdk/patchbay-sdk-0.1.0\" \
             }}\npatchbay-frame = {{ path = \"../sdk/patchbay-frame-0.1.0\" }}\n"
        ),
    )
    .unwrap();
    let target = plugins_dir().join("../scaffold-target");
    let build = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release/my_thing.wasm");
    assert!(wasm.is_file());
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = 10 }}

[plugins.mine]
path = "{}"

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "-" }}
grants = {{ stdout = true }}

[[pipeline]]
name = "mine"
source = "gen"
transforms = ["mine"]
sinks = ["out"]
"#,
            wasm.display()
        ),
    );
    let out = s.run(&["validate", "p.toml"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("ok: 1 pipeline, 3 plugins"), "{stdout}");
    let out = s.run(&["run", "p.toml"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 10, "{stdout}");
    // As generated, it follows the contract.
    let out = s.run(&["test-plugin", &wasm.display().to_string()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(" passed, 0 failed, "), "{stdout}");
}

#[test]
fn new_refuses_an_existing_directory() {
    let s = Scratch::new();
    s.mkdir("taken");
    let out = s.run(&["new", "sink", "taken"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("error: `taken` already exists; choose another name or pass --dir"),
        "{stderr}"
    );
}

/// generator → file-sink (stdout), `count` messages.
fn small_pipeline(s: &Scratch, count: u32) {
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {count} }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "-" }}
grants = {{ stdout = true }}

[[pipeline]]
name = "small"
source = "gen"
sinks = ["out"]
"#
        ),
    );
}

/// `patchbay run` of a 10-message [`small_pipeline`] with `PATCHBAY_INSTANCE_POOL=pool`.
fn run_with_pool(pool: &str) -> std::process::Output {
    let s = Scratch::new();
    small_pipeline(&s, 10);
    crate::patchbay()
        .args(["run", "p.toml"])
        .current_dir(s.path())
        .env("PATCHBAY_INSTANCE_POOL", pool)
        .output()
        .unwrap()
}

#[test]
fn a_bad_instance_pool_setting_is_refused_with_what_to_give() {
    let out = run_with_pool("lots");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(
            "error: PATCHBAY_INSTANCE_POOL is `lots`: give a number of instance slots from 1 to \
             100000, or `off` to create instances on demand"
        ),
        "{stderr}"
    );
}

#[test]
fn when_the_instance_pool_is_full_the_error_says_which_setting_to_raise() {
    let out = run_with_pool("1");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "trapped in `instantiate`: all 1 instance slots of the pool are in use (maximum \
             concurrent limit of 1 for component instances reached); raise \
             PATCHBAY_INSTANCE_POOL, or set it to `off` to create instances on demand"
        ),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn without_address_space_for_the_pool_instances_are_created_on_demand() {
    let s = Scratch::new();
    small_pipeline(&s, 100);
    // 64 GiB of address space: room for a few instances' 4 GiB reservations, not for a pool
    // of 1000.
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -v 67108864 && exec {} run p.toml",
                env!("CARGO_BIN_EXE_patchbay")
            ),
        ])
        .current_dir(s.path())
        .env(
            "PATCHBAY_CACHE_DIR",
            plugins_dir().join("../patchbay-cache"),
        )
        .env_remove("PATCHBAY_INSTANCE_POOL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN cannot reserve the instance pool (1000 slots): "),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "; creating instances on demand (set PATCHBAY_INSTANCE_POOL=off to skip the try)"
        ),
        "{stderr}"
    );
    assert_eq!(stdout.lines().count(), 100);
    assert!(
        stderr.contains("pipeline `small`: 100 in, 0 dropped, 100 written to `out`"),
        "{stderr}"
    );
}

/// `--sdk PATH` (or `PATCHBAY_SDK`) makes the new crate depend on a local SDK; a path without
/// a crate is refused with what to pass.
#[test]
fn new_takes_a_local_sdk() {
    let s = Scratch::new();
    let sdk = root().join("plugin-sdk").canonicalize().unwrap();
    let out = s.run(&["new", "sink", "local", "--sdk", &sdk.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let manifest = s.read("local/Cargo.toml");
    assert!(
        manifest.contains(&format!(
            "patchbay-sdk = {{ path = \"{}\" }}",
            sdk.display()
        )),
        "{manifest}"
    );
    let out = s.run(&["new", "sink", "nowhere", "--sdk", "no-such-dir"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .1
            .contains("cannot find the patchbay-sdk crate at `no-such-dir`"),
        "{}",
        text(&out).1
    );
}
