//! What a plugin can cost the host: for every class of attack (memory, host handles, sockets,
//! files, blocking I/O, name lookups, oversized answers, metrics, logs, CPU, start-up), the
//! process's peak resident memory stays under the bound SECURITY.md states and a victim
//! pipeline in the same process delivers everything; and the process's file descriptors are
//! capped by `limits.sockets` and `limits.files`.

use std::time::Duration;

use crate::sandbox::{attack_pipeline, report, victim_pipeline};
use crate::{Running, Scratch, text};

/// The peak resident memory of process `pid` (`VmHWM`), in KiB, while it runs.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One attack of each class next to a victim pipeline, each in a process of its own: what the
/// host says about the attack, and what the victim delivered.
struct Class {
    name: &'static str,
    /// The hostile plugin's settings (`config`, `grants`, `limits`).
    hostile: &'static str,
    /// What the host says (stderr) or the attack reports (`out/NAME.txt`) when it is stopped.
    says: &'static str,
}

const CLASSES: &[Class] = &[
    Class {
        name: "memory",
        hostile: r#"config = { attack = "memory" }"#,
        says: "trapped in `process`: memory limit of 64.0 MiB reached (limits.memory)",
    },
    Class {
        // 50,000 header maps of eight 1 KiB headers: about 500 MiB of host memory under
        // wasmtime's own defaults (100,000 handles, 128 KiB a map); here at most 4,096 × 16 KiB.
        name: "fields",
        hostile: r#"config = { attack = "fields-hoard", count = 50000, size = 1024 }"#,
        says: "trapped in `process`: the instance holds 4096 live handles in the host (streams, \
               sockets, header maps…), its limit (limits.handles;",
    },
    Class {
        name: "sockets",
        hostile: r#"config = { attack = "socket-hoard", count = 2000 }
grants = { tcp = ["127.0.0.1:9"] }"#,
        says: "attack socket-hoard: ok: kept 64, refused 1936",
    },
    Class {
        name: "files",
        hostile: r#"config = { attack = "file-hoard", path = "/data/f.txt", count = 2000 }
grants = { dirs = [{ host = "data", guest = "/data", mode = "ro" }] }"#,
        says: "attack file-hoard: ok: kept 64, refused 1936",
    },
    Class {
        name: "fifo",
        hostile: r#"config = { attack = "read-file", path = "/data/pipe" }
grants = { dirs = [{ host = "data", guest = "/data", mode = "ro" }] }"#,
        says: "(not a regular file or directory (a FIFO, device or socket))",
    },
    Class {
        name: "lookups",
        hostile: r#"config = { attack = "dns-flood", host = "localhost", count = 5000 }
grants = { dns = true }"#,
        says: "attack dns-flood: ok: started 16, refused 4984",
    },
    Class {
        name: "answer",
        hostile: r#"config = { attack = "many-headers", count = 400000 }"#,
        says: "is over the limit of 16.0 MiB (limits.max_output)",
    },
    Class {
        name: "output",
        hostile: r#"config = { attack = "big-output", count = 20000, size = 1024 }"#,
        says: "is over the limit of 16.0 MiB (limits.max_output)",
    },
    Class {
        name: "metrics",
        hostile: r#"config = { attack = "metrics", count = 20000 }"#,
        says: "metrics/metrics: a metric was refused: ",
    },
    Class {
        name: "log",
        hostile: r#"config = { attack = "log-flood", count = 200000 }"#,
        says: " lines dropped by the rate limit (100/s)",
    },
    Class {
        name: "cpu",
        hostile: r#"config = { attack = "loop" }"#,
        says: "trapped in `process`: the call ran past its deadline of 1s and was stopped after ",
    },
    Class {
        name: "start",
        hostile: r#"config = { attack = "init-memory" }"#,
        says: "transform `start` could not start: plugin `start/start` trapped in `init`: \
               memory limit of 64.0 MiB reached (limits.memory)",
    },
];

/// Every class of attack a plugin with default limits can make on the host is stopped or
/// capped with a message that says so, while the process's peak resident memory stays under
/// the bound SECURITY.md states (the instance's limits, 160 MiB with the defaults, above the
/// runtime's own ≈35 MiB: 200 MiB in all) and a victim pipeline delivers all its messages.
#[test]
fn every_class_of_attack_leaves_the_host_within_bounds_and_a_victim_whole() {
    for class in CLASSES {
        let s = Scratch::new();
        s.mkdir("out");
        s.mkdir("data");
        s.write("data/f.txt", "x");
        let fifo = std::process::Command::new("mkfifo")
            .arg(s.path().join("data/pipe"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let mut config = attack_pipeline(class.name, class.hostile, "");
        config.push_str(&victim_pipeline(3000, 3000));
        s.write("p.toml", &config);
        let mut child = Running::start(s.path(), &["run", "p.toml"]);
        let pid = child.id();
        let mut peak = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !child.exited() {
            peak = peak_rss_kib(pid).unwrap_or(0).max(peak);
            assert!(
                std::time::Instant::now() < deadline,
                "{}: still running after 60 s:\n{}",
                class.name,
                child.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let stderr = child.stderr();
        let said = format!(
            "{stderr}{}",
            std::fs::read_to_string(s.path().join(format!("out/{}.txt", class.name)))
                .unwrap_or_default()
        );
        assert!(
            said.contains(class.says),
            "{}: missing {:?} in:\n{said}",
            class.name,
            class.says
        );
        assert!(
            stderr.contains("pipeline `calm`: 3000 in, 0 dropped, 3000 written to `out-calm`"),
            "{}: the victim did not deliver everything:\n{stderr}",
            class.name
        );
        assert_eq!(
            std::fs::read_to_string(s.path().join("out/calm.jsonl"))
                .unwrap()
                .lines()
                .count(),
            3000,
            "{}",
            class.name
        );
        eprintln!("{}: peak resident memory {peak} KiB", class.name);
        assert!(
            (1..200 * 1024).contains(&peak),
            "{}: peak resident memory {peak} KiB",
            class.name
        );
    }
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
