//! Retries, the dead-letter channel and its replay, and back-pressure, with the flaky-sink and
//! slow-sink test plugins; a `retryable` `init` tried again (test-broken-transform).

use crate::{Scratch, dead_letter_seqs, seq_counts, text};

const N: u64 = 100_000;

fn flaky_pipeline(kind: &str) -> String {
    format!(
        r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {N}, size = 60 }}

[plugins.flaky]
path = "{{plugin:flaky-sink}}"
config = {{ path = "/out/out.jsonl", fail_rate = 0.1, kind = "{kind}", seed = 7 }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[plugins.healthy]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl", append = true }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "flaky"
source = "gen"
sinks = ["flaky"]
batch_size = 500
on_error = "dead-letter"
retry = {{ attempts = 12, backoff = "1ms", max_backoff = "5ms" }}
dead_letter = {{ path = "out/dead.jsonl" }}

[[pipeline]]
name = "healthy"
source = "gen"
sinks = ["healthy"]
"#
    )
}

#[test]
fn retryable_failures_are_retried_until_every_record_is_written_once() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write("p.toml", &flaky_pipeline("retryable"));
    let out = s.run(&["dlq", "replay", "p.toml", "--pipeline", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    // Run only the flaky pipeline: the second one shares the file and is for the fatal test.
    let config = s.read("p.toml");
    let flaky_only = &config[..config.find("[[pipeline]]\nname = \"healthy\"").unwrap()];
    s.write("p.toml", flaky_only);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let counts = seq_counts(&s.read("out/out.jsonl"));
    assert_eq!(counts.len() as u64, N, "every sequence number present");
    assert!(counts.values().all(|&c| c == 1), "each exactly once");
    assert!(!s.path().join("out/dead.jsonl").exists(), "no dead letters");
    assert!(
        stderr.contains(&format!(
            "pipeline `flaky`: {N} in, 0 dropped, {N} written to `flaky`;"
        )),
        "{stderr}"
    );
}

#[test]
fn fatal_failures_go_to_the_dead_letter_channel_and_replay_into_a_healthy_sink() {
    let s = Scratch::new();
    s.mkdir("out");
    let config = flaky_pipeline("fatal");
    let flaky_only = &config[..config.find("[[pipeline]]\nname = \"healthy\"").unwrap()];
    s.write("p.toml", flaky_only);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let written = seq_counts(&s.read("out/out.jsonl"));
    let dead_text = s.read("out/dead.jsonl");
    let dead = dead_letter_seqs(&dead_text);
    // Every number exactly once in output ∪ dead letters.
    assert_eq!(written.len() + dead.len(), N as usize);
    assert!(written.values().all(|&c| c == 1));
    for seq in &dead {
        assert!(
            !written.contains_key(seq),
            "{seq} both written and dead-lettered"
        );
    }
    assert!(
        (N / 20..N / 5).contains(&(dead.len() as u64)),
        "about 10 % dead-lettered, got {}",
        dead.len()
    );
    assert!(
        stderr.contains(&format!(
            "pipeline `flaky`: {N} in, 0 dropped, {} written to `flaky`, {} dead-lettered;",
            written.len(),
            dead.len()
        )),
        "{stderr}"
    );
    // Full context in every entry.
    let first: serde_json::Value = serde_json::from_str(dead_text.lines().next().unwrap()).unwrap();
    assert_eq!(first["pipeline"], "flaky");
    assert_eq!(first["stage"], "sink");
    assert_eq!(first["stage_index"], 1);
    assert_eq!(first["plugin"], "flaky");
    assert_eq!(first["plugin_version"], "0.1.0");
    assert_eq!(first["error_kind"], "fatal");
    assert!(
        first["error"].as_str().unwrap().contains("flaky-sink"),
        "{first}"
    );
    assert_eq!(first["attempts"], 1);
    assert!(first["first_failure"].as_str().unwrap().ends_with('Z'));
    assert!(first["last_failure"].as_str().is_some());
    assert!(first["message"]["key"].as_str().is_some());

    // Replay into a healthy sink: the same pipeline with its sink swapped for file-sink.
    let healthy = flaky_only.replace(
        "path = \"{plugin:flaky-sink}\"\nconfig = { path = \"/out/out.jsonl\", fail_rate = 0.1, kind = \"fatal\", seed = 7 }",
        "path = \"{plugin:file-sink}\"\nconfig = { path = \"/out/out.jsonl\", append = true }",
    );
    assert_ne!(healthy, flaky_only);
    s.write("healthy.toml", &healthy);
    let out = s.run(&["dlq", "replay", "healthy.toml", "--pipeline", "flaky"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "replayed {} dead letters of pipeline `flaky`: {} delivered, 0 dead-lettered again",
            dead.len(),
            dead.len()
        )),
        "{stdout}"
    );
    let all = seq_counts(&s.read("out/out.jsonl"));
    assert_eq!(all.len() as u64, N);
    assert!(
        all.values().all(|&c| c == 1),
        "each exactly once after replay"
    );
    assert!(
        !s.path().join("out/dead.jsonl").exists(),
        "dead letters consumed"
    );
}

#[test]
fn replaying_into_the_still_failing_sink_keeps_every_entry() {
    let s = Scratch::new();
    s.mkdir("out");
    let config = flaky_pipeline("fatal").replace(&format!("count = {N}"), "count = 2000");
    let flaky_only = &config[..config.find("[[pipeline]]\nname = \"healthy\"").unwrap()];
    s.write("p.toml", flaky_only);
    let out = s.run(&["run", "p.toml"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let mut before = dead_letter_seqs(&s.read("out/dead.jsonl"));
    assert!(!before.is_empty());
    let out = s.run(&["dlq", "replay", "p.toml", "--pipeline", "flaky"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "replayed {n} dead letters of pipeline `flaky`: 0 delivered, {n} dead-lettered again",
            n = before.len()
        )),
        "{stdout}"
    );
    let mut after = dead_letter_seqs(&s.read("out/dead.jsonl"));
    before.sort();
    after.sort();
    assert_eq!(before, after, "nothing vanished");
    let leftovers: Vec<_> = std::fs::read_dir(s.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("replaying"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn fan_out_with_one_fatally_failing_sink_dead_letters_only_that_copy() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 20000 }

[plugins.good]
path = "{plugin:file-sink}"
config = { path = "/out/good.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.bad]
path = "{plugin:flaky-sink}"
config = { path = "/out/bad.jsonl", fail_rate = 1.0, kind = "fatal" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "fan"
source = "gen"
sinks = ["good", "bad"]
on_error = "dead-letter"
dead_letter = { path = "out/dead.jsonl" }
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(seq_counts(&s.read("out/good.jsonl")).len(), 20000);
    let dead_text = s.read("out/dead.jsonl");
    assert_eq!(dead_letter_seqs(&dead_text).len(), 20000);
    assert!(dead_text.lines().all(|l| l.contains(r#""plugin":"bad""#)));
    assert!(
        stderr.contains("pipeline `fan`: 20000 in, 0 dropped, 20000 written to `good`, 0 written to `bad`, 20000 dead-lettered;"),
        "{stderr}"
    );
    // Replay sends the copies to `bad` only: `good` gets no duplicates. With the sink still
    // failing they come back to the dead-letter file.
    let out = s.run(&["dlq", "replay", "p.toml", "--pipeline", "fan"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(seq_counts(&s.read("out/good.jsonl")).len(), 20000);
    assert!(
        seq_counts(&s.read("out/good.jsonl"))
            .values()
            .all(|&c| c == 1)
    );
    assert_eq!(dead_letter_seqs(&s.read("out/dead.jsonl")).len(), 20000);
}

/// Peak resident memory (VmHWM) of a running process, in KiB.
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(target_os = "linux")]
#[test]
fn a_slow_sink_pauses_the_source_and_memory_stays_bounded() {
    const COUNT: u64 = 200_000;
    let s = Scratch::new();
    s.mkdir("out");
    // 1 KiB messages: 200 MB pass through; the in-flight budget is 4 MiB.
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT}, size = 1024 }}

[plugins.slow]
path = "{{plugin:slow-sink}}"
config = {{ path = "/out/slow.jsonl", delay = "0ms", per_message = "20us" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "slow"
source = "gen"
sinks = ["slow"]
batch_size = 500
buffer = 2
max_in_flight = "4MiB"
"#
        ),
    );
    let mut child = crate::patchbay()
        .args(["run", "p.toml", "--progress", "0s"])
        .current_dir(s.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let counts = seq_counts(&s.read("out/slow.jsonl"));
    assert_eq!(counts.len() as u64, COUNT, "nothing dropped");
    assert!(counts.values().all(|&c| c == 1));
    // 200 MB went through; the process never held more than a small multiple of the budget
    // on top of the runtime itself (≈ 20–40 MiB). The figure is printed for the record.
    eprintln!(
        "peak RSS with a 4 MiB in-flight budget: {} MiB",
        peak / 1024
    );
    assert!(peak > 0, "could not read VmHWM");
    assert!(peak < 150 * 1024, "peak RSS {} MiB", peak / 1024);
}

#[test]
fn dead_letters_can_go_to_a_sink_plugin_and_be_replayed_from_its_output() {
    let s = Scratch::new();
    s.mkdir("out");
    let config = r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 3000 }

[plugins.bad]
path = "{plugin:flaky-sink}"
config = { path = "/out/bad.jsonl", fail_rate = 0.5, kind = "invalid-data" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.dlq]
path = "{plugin:file-sink}"
config = { path = "/out/dlq-sink.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "to-sink"
source = "gen"
sinks = ["bad"]
on_error = "dead-letter"
dead_letter = { sink = "dlq" }
"#;
    s.write("p.toml", config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let written = seq_counts(&s.read("out/bad.jsonl"));
    let dead = dead_letter_seqs(&s.read("out/dlq-sink.jsonl"));
    assert_eq!(written.len() + dead.len(), 3000);
    assert!(!dead.is_empty());
    assert!(
        s.read("out/dlq-sink.jsonl")
            .lines()
            .all(|l| l.contains(r#""error_kind":"invalid-data""#))
    );
    // The sink's output is in the dead-letter format: replay it into a healthy sink.
    let healthy = config
        .replace(
            "path = \"{plugin:flaky-sink}\"\nconfig = { path = \"/out/bad.jsonl\", fail_rate = 0.5, kind = \"invalid-data\" }",
            "path = \"{plugin:file-sink}\"\nconfig = { path = \"/out/bad.jsonl\", append = true }",
        )
        .replace("config = { path = \"/out/dlq-sink.jsonl\" }", "config = { path = \"/out/dlq-again.jsonl\" }");
    s.write("healthy.toml", &healthy);
    let out = s.run(&[
        "dlq",
        "replay",
        "healthy.toml",
        "--pipeline",
        "to-sink",
        "--from",
        "out/dlq-sink.jsonl",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "replayed {n} dead letters of pipeline `to-sink`: {n} delivered",
            n = dead.len()
        )),
        "{stdout}"
    );
    let all = seq_counts(&s.read("out/bad.jsonl"));
    assert_eq!(all.len(), 3000);
    assert!(all.values().all(|&c| c == 1));
}

/// The source checks, at each ack, that both destinations of the fan-out hold every record up
/// to the checkpoint: the slow healthy sink, and the failing sink's output or the dead letters.
#[test]
fn a_checkpoint_is_acknowledged_only_after_every_destination_settled_it() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.src]
path = "{plugin:test-ack-source}"
config = { count = 3000, report = "/out/acks.txt", groups = [["/out/good.jsonl"], ["/out/bad.jsonl", "/out/dead.jsonl"]] }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.good]
path = "{plugin:slow-sink}"
config = { path = "/out/good.jsonl", delay = "2ms" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.bad]
path = "{plugin:flaky-sink}"
config = { path = "/out/bad.jsonl", fail_rate = 0.3, kind = "fatal" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "acks"
source = "src"
sinks = ["good", "bad"]
batch_size = 100
on_error = "dead-letter"
dead_letter = { path = "out/dead.jsonl" }
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let acks = s.read("out/acks.txt");
    assert!(acks.lines().count() >= 2, "{acks}");
    assert!(acks.lines().all(|l| l.ends_with(" ok")), "{acks}");
    assert_eq!(acks.lines().last(), Some("ack 2999 ok"));
}

/// A plugin whose `init` answers `retryable` (its server not up yet) is tried again on a fresh
/// instance with back-off, and the pipeline starts once it succeeds; a `fatal` one would stop
/// the start at once (tests/it/sdk.rs).
#[test]
fn a_retryable_init_is_tried_again_until_it_succeeds() {
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 100 }

[plugins.late]
path = "{plugin:test-broken-transform}"
grants = { env = ["BREAK"] }

[plugins.null]
path = "{plugin:blackhole}"

[[pipeline]]
name = "p"
source = "gen"
transforms = ["late"]
sinks = ["null"]
"#,
    );
    let out = crate::patchbay()
        .args(["run", "p.toml"])
        .current_dir(s.path())
        .env("BREAK", "init-late")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for attempt in [1, 2] {
        assert!(
            stderr.contains(&format!(
                "`init` returned retryable error: not ready yet (attempt {attempt}); trying again in"
            )),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("pipeline `p`: 100 in, 0 dropped, 100 written to `null`"),
        "{stderr}"
    );
}
