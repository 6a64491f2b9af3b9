//! Project tasks: `cargo xtask <task>`.
//!
//! - `build`: install the wasm32-wasip2 target if missing, build every plugin (profile `plugin`: release with LTO, wasm32-wasip2)
//!   into `target/plugins/<name>.wasm`, the operator's console (`console/`, with npm; without npm
//!   a warning, and the binary says it has no console), and the `patchbay` binary (release).
//! - `quickstart`: `build`, then run `examples/quickstart/pipeline.toml` and show the output.
//! - `test`: `build` (the console required, and Chromium with ChromeDriver installed for its
//!   browser tests), then fmt check, clippy (host and guests), the whole test suite, and
//!   `bench --quick` as a smoke test (it checks results and that every row has a number; without
//!   the peers, which only `bench` builds).
//! - `fuzz [--minutes N]`: the fuzz tests (`runtime/tests/fuzz.rs`: packed answers, pipeline
//!   files, the admin API's reload body) with 100,000 cases a property, round after round with
//!   fresh seeds, until N minutes (default 10) are up. `test` runs them once with 256 cases.
//! - `bench [--quick] [--only SECTIONS]`: `build`, plus the benchmark's Extism and Fluvio guests
//!   (wasm32-unknown-unknown, into `target/bench-guests/`), then the benchmark (bench/, with its
//!   `peers` feature), which writes `bench/results.md`.

mod c_sdk;
mod console;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// First-party plugins (plugins/) and test-only plugins (tests/plugins/): package names.
const PLUGINS: &[&str] = &[
    "generator",
    "file-source",
    "file-sink",
    "json-map",
    "map",
    "xml-to-json",
    "json-to-xml",
    "json-schema",
    "json-to-csv",
    "avro",
    "protobuf",
    "redact",
    "csv-to-json",
    "filter",
    "blackhole",
    "redis-source",
    "redis-sink",
    "redis-lookup",
    "http-sink",
    "http-source",
    "mqtt-source",
    "mqtt-sink",
    "nats-source",
    "nats-sink",
    "postgres-sink",
    "sql-source",
    "postgres-cdc",
    "amqp-source",
    "amqp-sink",
    "mariadb-sink",
];
/// Plugins with unit tests of their own (`#[cfg(test)]`), run natively by `test`.
const UNIT_TESTED_PLUGINS: &[&str] = &[
    "http-source",
    "json-map",
    "postgres-sink",
    "redis-lookup",
    "flaky-sink",
    "slow-sink",
];
/// The protocol libraries that connector plugins share (plugins/proto/): package names. They
/// are not components, so not in `PLUGINS`: `test` lints them for wasm32-wasip2 with the
/// plugins, and lints and runs their unit tests natively.
const PROTO_CRATES: &[&str] = &[
    "patchbay-proto-nats",
    "patchbay-proto-mqtt",
    "patchbay-proto-resp",
    "patchbay-proto-pg",
    "patchbay-proto-amqp",
    "patchbay-proto-mysql",
    "patchbay-proto-sqlmap",
    "patchbay-proto-testing",
];
const TEST_PLUGINS: &[&str] = &[
    "test-trap",
    "test-bad-count",
    "flaky-sink",
    "slow-sink",
    "test-hostile",
    "test-unknown-import",
    "test-ack-source",
    "test-state-source",
    "tagger-v1",
    "tagger-v2",
    "test-broken-transform",
    "test-broken-source",
    "test-broken-sink",
    "test-packed",
    "v010-upper",
    "v010-sink",
];

/// Plugins written with the Python SDK (sdk-python/examples): folder, world, output name.
const PYTHON_PLUGINS: &[(&str, &str, &str)] = &[
    ("redact", "transform", "py-redact"),
    ("csv_sink", "sink", "py-csv-sink"),
];

/// Plugins written with the JavaScript SDK (sdk-js/examples): folder, world, output name.
const JS_PLUGINS: &[(&str, &str, &str)] = &[("redact", "transform", "js-redact")];

/// The peers' guests for the benchmark (bench/guests/), built for wasm32-unknown-unknown.
const PEER_GUESTS: &[&str] = &["bench-extism-map", "bench-fluvio-map"];

/// `bench` turns on the benchmark's peers (Extism, Fluvio SmartModules). They bring two more
/// wasmtimes (43 and 34), which take ≈12 minutes more to build on 2 cores, so `test` leaves them
/// out: its quick benchmark (a smoke test) has every row but the peers'.
const PEER_FEATURES: &[&str] = &["--features", "patchbay-bench/peers"];

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build(),
        Some("sdk-plugins") => build_sdk_plugins().and_then(|()| c_sdk::build_c_plugins()),
        Some("quickstart") => quickstart(),
        Some("test") => test(),
        Some("bench") => bench(
            args.iter().any(|a| a == "--quick"),
            args.iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1))
                .cloned(),
        ),
        Some("fuzz") => fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <build|sdk-plugins|quickstart|test|bench [--quick] [--only SECTIONS]|fuzz [--minutes N]>\n\n  build       build the runtime and every plugin\n  sdk-plugins build the Python, JavaScript and C SDKs' example plugins (needs python3, node; clang and wasi-libc from Debian)\n  quickstart  build, then run examples/quickstart\n  test        build, then fmt, clippy, the whole test suite and a quick benchmark\n  bench       build, then benchmark into bench/results.md (--quick: under 2 minutes, into target/bench-quick.md; --only cluster,scaling,…: those sections, into target/bench-only.md)\n  fuzz        the fuzz tests (runtime/tests/fuzz.rs) over and over with fresh seeds, for N minutes (default 10)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// The services' own clients the connector tests check results with: command, Debian package.
const SERVICE_CLIENTS: &[(&str, &str)] = &[
    ("mosquitto_pub", "mosquitto-clients"),
    ("mosquitto_sub", "mosquitto-clients"),
    ("redis-cli", "redis-tools"),
    ("psql", "postgresql-client"),
];

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

/// Install the services' clients with apt-get when one is missing (the tests need them).
fn ensure_service_clients() -> Result<()> {
    let mut missing: Vec<&str> = SERVICE_CLIENTS
        .iter()
        .filter(|(command, _)| !on_path(command))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        return Err(format!(
            "the connector tests need the Debian packages {} (or the same commands from your \
             system's packages): install them and run again",
            missing.join(", ")
        ));
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

fn ensure_target() -> Result<()> {
    ensure_rust_target("wasm32-wasip2")
}

/// Install a Rust target with rustup unless it is there.
fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == target) =>
        {
            Ok(())
        }
        Ok(_) => run(Command::new("rustup")
            .args(["target", "add", target])
            .current_dir(root())),
        Err(e) => Err(format!(
            "rustup not found ({e}); install Rust with rustup, or add the {target} target to your toolchain"
        )),
    }
}

/// Build the benchmark's Extism and Fluvio guests into `target/bench-guests/`.
fn build_peer_guests() -> Result<()> {
    ensure_rust_target("wasm32-unknown-unknown")?;
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--profile",
        "plugin",
        "--target",
        "wasm32-unknown-unknown",
    ]);
    for p in PEER_GUESTS {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)?;
    copy_wasm(
        PEER_GUESTS,
        &target_dir().join("wasm32-unknown-unknown").join("plugin"),
        &target_dir().join("bench-guests"),
    )
}

/// Build the Python and JavaScript SDKs' example plugins into `target/plugins/`:
/// componentize-py from PyPI in a virtualenv under `target/`, and componentize-js from npm
/// (`npm ci` in sdk-js/).
fn build_sdk_plugins() -> Result<()> {
    let out_dir = target_dir().join("plugins");
    let venv = target_dir().join("python-venv");
    let componentize_py = venv.join("bin").join("componentize-py");
    if !componentize_py.exists() {
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .current_dir(root()))
        .map_err(|e| format!("{e}; the Python SDK needs python3 (3.10 or later) with venv"))?;
        run(Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "-r", "sdk-python/requirements.txt"])
            .current_dir(root()))?;
    }
    for (folder, world, name) in PYTHON_PLUGINS {
        run(Command::new(&componentize_py)
            .args([
                "-d",
                "wit",
                "-w",
                world,
                "componentize",
                "-p",
                "sdk-python",
                "-p",
            ])
            .arg(Path::new("sdk-python").join("examples").join(folder))
            .arg("app")
            .arg("-o")
            .arg(out_dir.join(format!("{name}.wasm")))
            .current_dir(root()))?;
    }
    let sdk_js = root().join("sdk-js");
    if !sdk_js
        .join("node_modules")
        .join("@bytecodealliance")
        .join("componentize-js")
        .exists()
    {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&sdk_js))
        .map_err(|e| format!("{e}; the JavaScript SDK needs Node.js 18 or later with npm"))?;
    }
    for (folder, world, name) in JS_PLUGINS {
        run(Command::new("node")
            .arg("build.mjs")
            .arg(Path::new("examples").join(folder).join("plugin.js"))
            .arg(world)
            .arg(out_dir.join(format!("{name}.wasm")))
            .current_dir(&sdk_js))?;
    }
    Ok(())
}

/// Copy `<dir>/<crate_name>.wasm` to `<out>/<package-name>.wasm` for each package.
fn copy_wasm(packages: &[&str], built: &Path, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    for p in packages {
        let from = built.join(format!("{}.wasm", p.replace('-', "_")));
        let to = out_dir.join(format!("{p}.wasm"));
        std::fs::copy(&from, &to)
            .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
    }
    Ok(())
}

fn build_plugins() -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"]);
    for p in PLUGINS.iter().chain(TEST_PLUGINS) {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)?;
    let out_dir = target_dir().join("plugins");
    let all: Vec<&str> = PLUGINS.iter().chain(TEST_PLUGINS).copied().collect();
    copy_wasm(
        &all,
        &target_dir().join("wasm32-wasip2").join("plugin"),
        &out_dir,
    )?;
    eprintln!(
        "xtask: {} plugins in {}",
        PLUGINS.len() + TEST_PLUGINS.len(),
        out_dir.display()
    );
    Ok(())
}

fn build() -> Result<()> {
    ensure_target()?;
    build_plugins()?;
    console::build_console(false)?;
    run(cargo().args(["build", "--release", "-p", "patchbay-runtime"]))
}

fn quickstart() -> Result<()> {
    build()?;
    run_quickstart()
}

/// Run examples/quickstart with the built binary and check its output count.
fn run_quickstart() -> Result<()> {
    let example = root().join("examples").join("quickstart");
    let out = example.join("out");
    let _ = std::fs::remove_file(out.join("orders.jsonl"));
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let patchbay = target_dir().join("release").join("patchbay");
    run(Command::new(&patchbay)
        .args(["run", "pipeline.toml"])
        .current_dir(&example))?;
    let input = std::fs::read_to_string(example.join("data").join("orders.csv"))
        .map_err(|e| format!("cannot read the quickstart input: {e}"))?;
    let output = std::fs::read_to_string(out.join("orders.jsonl"))
        .map_err(|e| format!("cannot read the quickstart output: {e}"))?;
    let rows = input
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
        .saturating_sub(1);
    let lines = output.lines().count();
    eprintln!("\nxtask: examples/quickstart/out/orders.jsonl (first lines):");
    for line in output.lines().take(3) {
        eprintln!("  {line}");
    }
    if rows != lines {
        return Err(format!(
            "quickstart: {rows} input rows but {lines} output records"
        ));
    }
    eprintln!("xtask: quickstart ok: {rows} CSV rows in, {lines} JSON records out");
    Ok(())
}

/// Build the host (the `patchbay` and `patchbay-bench` binaries, and the tests) with every
/// target at once: dev-dependencies unify features as they do for `cargo test`, so the tests
/// then reuse this build instead of compiling wasmtime a second time.
/// The host, its tests and the benchmark, in release: every later host command of `test`
/// (clippy aside) reuses this build.
fn build_host_for_tests() -> Result<()> {
    run(cargo().args(["build", "--release", "--all-targets"]))
}

fn test() -> Result<()> {
    ensure_target()?;
    ensure_service_clients()?;
    build_plugins()?;
    build_sdk_plugins()?;
    c_sdk::build_c_plugins()?;
    console::build_console(true)?;
    console::ensure_browser()?;
    build_host_for_tests()?;
    let cache = target_dir().join("patchbay-cache");
    // The README's first command, end to end, so that it cannot silently break.
    run_quickstart()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo()
        .args(["clippy", "--release", "--all-targets"])
        .args(["--", "-D", "warnings"]))?;
    let mut guests = cargo();
    guests.args([
        "clippy",
        "--release",
        "--target",
        "wasm32-wasip2",
        "-p",
        "patchbay-sdk",
    ]);
    for p in PLUGINS.iter().chain(TEST_PLUGINS).chain(PROTO_CRATES) {
        guests.args(["-p", p]);
    }
    guests.args(["--", "-D", "warnings"]);
    run(&mut guests)?;
    let mut protos = cargo();
    protos.args(["clippy", "--release", "--all-targets"]);
    for p in PROTO_CRATES {
        protos.args(["-p", p]);
    }
    protos.args(["--", "-D", "warnings"]);
    run(&mut protos)?;
    ensure_rust_target("wasm32-unknown-unknown")?;
    let mut peers = cargo();
    peers.args(["clippy", "--release", "--target", "wasm32-unknown-unknown"]);
    for p in PEER_GUESTS {
        peers.args(["-p", p]);
    }
    peers.args(["--", "-D", "warnings"]);
    run(&mut peers)?;
    // Default members: the runtime (with the integration tests in tests/it), the SDK, xtask.
    run(cargo()
        .args(["test", "--release"])
        .env("PATCHBAY_CACHE_DIR", cache))?;
    // The protocol libraries' unit tests (their codecs) and the plugins' own, run natively.
    let mut units = cargo();
    units.args(["test", "--release"]);
    for p in PROTO_CRATES.iter().chain(UNIT_TESTED_PLUGINS) {
        units.args(["-p", p]);
    }
    run(&mut units)?;
    // The Rust SDK as a third party gets it: packaged and built as `cargo publish` would
    // (tests/it/cli.rs builds a new plugin crate against the packaged files).
    run(cargo()
        .args(["publish", "--dry-run", "--allow-dirty"])
        .args(["-p", "patchbay-frame", "-p", "patchbay-sdk", "--target-dir"])
        .arg(target_dir().join("sdk-package")))?;
    run_bench(true, None)
}

fn fuzz(args: &[String]) -> Result<()> {
    let minutes: u64 = match args {
        [] => 10,
        [flag, n] if flag == "--minutes" => n
            .parse()
            .map_err(|_| format!("--minutes `{n}`: give a whole number of minutes, e.g. 10"))?,
        _ => return Err("usage: cargo xtask fuzz [--minutes N]".into()),
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(minutes * 60);
    let cases = 100_000u64;
    let mut rounds = 0u64;
    // The first round builds the test; each later one is a fresh random seed (proptest's
    // default), so rounds explore new inputs. A failure stops at once, shrunk and saved
    // under runtime/proptest-regressions/.
    while rounds == 0 || std::time::Instant::now() < until {
        run(cargo()
            .args([
                "test",
                "--release",
                "-p",
                "patchbay-runtime",
                "--test",
                "fuzz",
            ])
            .env("PROPTEST_CASES", cases.to_string()))?;
        rounds += 1;
    }
    eprintln!(
        "xtask: fuzz: {rounds} rounds of {cases} cases for each of the 5 properties, no failure"
    );
    Ok(())
}

fn bench(quick: bool, only: Option<String>) -> Result<()> {
    ensure_target()?;
    build_plugins()?;
    build_sdk_plugins()?;
    // Only the transform section measures the peers (their build takes ≈10 minutes).
    let peers = only
        .as_deref()
        .is_none_or(|o| o.split(',').any(|s| s.trim() == "transform"));
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "patchbay-bench",
        "-p",
        "patchbay-runtime",
    ]);
    if peers {
        build_peer_guests()?;
        build.args(PEER_FEATURES);
    }
    run(&mut build)?;
    run_bench(quick, only)
}

fn run_bench(quick: bool, only: Option<String>) -> Result<()> {
    let mut cmd = Command::new(target_dir().join("release").join("patchbay-bench"));
    cmd.current_dir(root());
    cmd.arg("--plugins").arg(target_dir().join("plugins"));
    cmd.arg("--peers").arg(target_dir().join("bench-guests"));
    cmd.arg("--patchbay")
        .arg(target_dir().join("release").join("patchbay"));
    if let Some(only) = only {
        // Some sections: they go beside the committed full results, not over them.
        cmd.args(["--only", &only])
            .arg("--out")
            .arg(target_dir().join("bench-only.md"));
        if quick {
            cmd.arg("--quick");
        }
    } else if quick {
        // A quick run is a smoke test: it must not overwrite the committed full results.
        cmd.arg("--quick")
            .arg("--out")
            .arg(target_dir().join("bench-quick.md"));
    } else {
        cmd.arg("--out")
            .arg(root().join("bench").join("results.md"));
    }
    run(&mut cmd)
}
