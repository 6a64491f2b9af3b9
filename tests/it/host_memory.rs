//! What a plugin can make the host hold outside its own linear memory: live handles (WASI
//! streams, sockets, `wasi:http` header maps…) are capped by `limits.handles`, and a header map
//! by 16 KiB, so a plugin that hoards them is stopped at a bound SECURITY.md states, while a
//! victim pipeline in the same process delivers everything; the process's file descriptors,
//! by `limits.sockets` and `limits.files`.

use std::time::Duration;

use crate::sandbox::{attack_pipeline, report};
use crate::{Running, Scratch, text};

/// The peak resident memory of process `pid` (`VmHWM`), in KiB, while it runs.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn a_plugin_hoarding_header_maps_is_stopped_at_its_handle_limit() {
    let s = Scratch::new();
    s.mkdir("out");
    // 50,000 header maps of eight 1 KiB headers: about 500 MiB of host memory under
    // wasmtime's own defaults (100,000 handles, 128 KiB a map); here at most 4,096 × 16 KiB.
    s.write(
        "p.toml",
        r#"
[plugins.gen-hoard]
path = "{plugin:generator}"
config = { count = 1 }

[plugins.hoard]
path = "{plugin:test-hostile}"
config = { attack = "fields-hoard", count = 50000, size = 1024 }

[plugins.out-hoard]
path = "{plugin:file-sink}"
config = { path = "/out/hoard.txt" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "hoard"
source = "gen-hoard"
transforms = ["hoard"]
sinks = ["out-hoard"]
retry = { attempts = 1 }

[plugins.gen-calm]
path = "{plugin:generator}"
config = { count = 3000, rate = 3000 }

[plugins.out-calm]
path = "{plugin:file-sink}"
config = { path = "/out/calm.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "calm"
source = "gen-calm"
sinks = ["out-calm"]
"#,
    );
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    let pid = child.id();
    let mut peak = 0;
    child.wait_for(
        "the victim pipeline's 3000 messages",
        Duration::from_secs(60),
        || {
            peak = peak_rss_kib(pid).unwrap_or(0).max(peak);
            std::fs::read_to_string(s.path().join("out/calm.jsonl"))
                .unwrap_or_default()
                .lines()
                .count()
                == 3000
        },
    );
    let (code, stderr) = child.wait();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "pipeline `hoard`: transform `hoard` (#1) trapped in `process`: the instance holds \
             4096 live handles in the host (streams, sockets, header maps…), its limit \
             (limits.handles;"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipeline `calm`: 3000 in, 0 dropped, 3000 written to `out-calm`"),
        "{stderr}"
    );
    // The hoard's share is at most 4,096 × 16 KiB = 64 MiB; the process with both pipelines
    // stays under 200 MiB (its own footprint with two small pipelines is about 35 MiB).
    eprintln!("peak resident memory: {peak} KiB");
    assert!(
        (1..200 * 1024).contains(&peak),
        "peak resident memory {peak} KiB"
    );
}

/// A plugin granted one address may still create sockets without connecting them, and a
/// plugin granted a directory may open one file again and again: each is a file descriptor
/// of the process. Past `limits.sockets` / `limits.files` (64 each) the next is refused, the
/// refusal audited and counted.
#[test]
fn sockets_and_files_an_instance_holds_open_are_capped() {
    let s = Scratch::new();
    s.mkdir("out");
    s.mkdir("data");
    s.write("data/f.txt", "x");
    let mut config = attack_pipeline(
        "sockets",
        r#"config = { attack = "socket-hoard", count = 500 }
grants = { tcp = ["127.0.0.1:9"] }"#,
        "",
    );
    config.push_str(&attack_pipeline(
        "files",
        r#"config = { attack = "file-hoard", path = "/data/f.txt", count = 500 }
grants = { dirs = [{ host = "data", guest = "/data", mode = "ro" }] }
limits = { files = 10 }"#,
        "",
    ));
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let sockets = report(&s, "sockets");
    assert!(
        sockets.starts_with("attack socket-hoard: ok: kept 64, refused 436: "),
        "{sockets}"
    );
    let files = report(&s, "files");
    assert!(
        files.starts_with("attack file-hoard: ok: kept 10, refused 490: "),
        "{files}"
    );
    for expected in [
        "sandbox: denied tcp access to a new socket for plugin `sockets/sockets` (over \
         limits.sockets: 64 sockets open already; close some first, or raise limits.sockets)",
        "sandbox: denied filesystem access to f.txt for plugin `files/files` (over \
         limits.files: 10 files open already; close some first, or raise limits.files)",
        "tcp by sockets/sockets (436)",
        "filesystem by files/files (490)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
