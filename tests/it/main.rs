//! Integration tests: the real `patchbay` binary with real plugins built by `cargo xtask build`
//! (into `target/plugins/`). Each test asserts what a user sees: exit codes, counts, messages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod bad_input;
mod cli;
mod compliance;
mod examples;
mod http;
mod mqtt;
mod nats;
mod pipelines;
mod redis;
mod reload;
mod resilience;
mod routing;
mod sandbox;
mod sdk;
mod webhook;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
pub fn seq_counts(jsonl: &str) -> std::collections::BTreeMap<u64, u32> {
    let mut counts = std::collections::BTreeMap::new();
    for line in jsonl.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
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
