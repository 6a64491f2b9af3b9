//! Integration tests: the real `patchbay` binary with real plugins built by `cargo xtask build`
//! (into `target/plugins/`). Each test asserts what a user sees: exit codes, counts, messages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
pub(crate) mod amqp;
mod audit;
mod bad_input;
mod cdc;
mod cli;
mod cluster;
mod compat;
mod compliance;
mod concurrency;
mod console;
mod delivery;
mod examples;
mod formats;
mod host_memory;
mod http;
mod map;
mod mariadb;
mod mqtt;
pub(crate) mod nats;
mod pipelines;
pub(crate) mod postgres;
mod redis;
mod reload;
mod reply;
mod resilience;
mod routing;
mod sandbox;
mod sdk;
mod telemetry;
pub(crate) mod tls;
mod webhook;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where `cargo xtask build` puts the plugins.
pub fn plugins_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("plugins")
}

/// Absolute path of a built plugin; fails with the command to run when it is missing.
pub fn plugin(name: &str) -> String {
    let path = plugins_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask build` (or `cargo xtask test`) first",
        path.display()
    );
    path.display().to_string()
}

/// A `patchbay` command with the shared test cache.
pub fn patchbay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchbay"));
    if std::env::var_os("PATCHBAY_CACHE_DIR").is_none() {
        cmd.env(
            "PATCHBAY_CACHE_DIR",
            plugins_dir().join("../patchbay-cache"),
        );
    }
    cmd.env_remove("RUST_LOG");
    cmd.stdin(Stdio::null());
    cmd
}

/// Run `patchbay ARGS` in `dir`.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    patchbay().args(args).current_dir(dir).output().unwrap()
}

/// Stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `patchbay` process a test talks to while it runs.
///
/// Its stderr goes to a file, not a pipe: a pipe nobody reads until the end fills up after
/// 64 KiB of log and stalls the process, which would look like a bug in the pipeline. If the test
/// fails before stopping it, the process is killed rather than left behind.
/// How long a process that was asked to stop (or expected to end) may take.
pub const EXIT_WITHIN: Duration = Duration::from_secs(120);

pub struct Running {
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Running {
    /// Spawn `cmd`, a command made by [`patchbay`].
    pub fn spawn(cmd: &mut Command) -> Running {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = cmd.stderr(log.reopen().unwrap()).spawn().unwrap();
        Running {
            child: Some(child),
            log,
        }
    }

    /// `patchbay ARGS` in `dir`.
    pub fn start(dir: &Path, args: &[&str]) -> Running {
        Running::spawn(patchbay().args(args).current_dir(dir))
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Poll `done` until it holds. Fails, with what `patchbay` said, after `timeout` or as soon
    /// as the process has exited.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                // It may have finished the work just before it exited.
                if done() {
                    return;
                }
                panic!("{what}: patchbay exited ({status}):\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not after {timeout:?}; patchbay said:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it has exited (it is reaped if so).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    /// SIGKILL, as `kill -9` does (no drain, no flush, no ack); returns once it is gone.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Ctrl-C, then its exit code and everything it wrote to stderr.
    pub fn interrupt(self) -> (Option<i32>, String) {
        let status = Command::new("kill")
            .args(["-INT", &self.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait()
    }

    /// Wait for it to exit by itself; its exit code and stderr. A process still there after
    /// two minutes is killed and the test fails with what it said: a test never hangs CI.
    pub fn wait(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + EXIT_WITHIN;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), self.stderr());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "patchbay did not exit within {EXIT_WITHIN:?}; killed. It said:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run `cmd` to its end like `Command::output`, but kill it and fail after `limit` (a command
/// talking to a server the test broke must not hang CI).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("{cmd:?} did not end within {limit:?}; killed. It said:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Poll `done` every 50 ms until it holds; fail with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary directory with a pipeline file written into it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `name` with `{plugin:NAME}` replaced by absolute plugin paths.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let mut text = content.to_owned();
        while let Some(start) = text.find("{plugin:") {
            let end = start + text[start..].find('}').unwrap();
            let plugin_name = text[start + 8..end].to_owned();
            text.replace_range(start..=end, &plugin(&plugin_name));
        }
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap()
    }

    /// `patchbay ARGS` with this directory as working directory.
    pub fn run(&self, args: &[&str]) -> Output {
        run_in(self.path(), args)
    }
}

/// Sequence numbers of a JSON Lines file of generator messages, with how often each occurs.
/// A last line without its newline that does not parse is one the sink is still writing (the
/// file was read while the pipeline ran): it is left for the next read. (A complete object
/// line cannot be mistaken for it, and a prefix of one never parses.)
pub fn seq_counts(jsonl: &str) -> std::collections::BTreeMap<u64, u32> {
    let mut counts = std::collections::BTreeMap::new();
    let mut lines = jsonl.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        let last_unfinished = lines.peek().is_none() && !line.ends_with('\n');
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if last_unfinished => break,
            Err(e) => panic!("not a JSON line ({e}): {line}"),
        };
        *counts.entry(v["seq"].as_u64().unwrap()).or_insert(0) += 1;
    }
    counts
}

pub fn dead_letter_seqs(jsonl: &str) -> Vec<u64> {
    jsonl
        .lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let payload: serde_json::Value =
                serde_json::from_str(entry["message"]["payload"].as_str().unwrap()).unwrap();
            payload["seq"].as_u64().unwrap()
        })
        .collect()
}
