//! Pipelines end to end: counts in and out, exact output, traps and contract violations.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{Scratch, patchbay, root, run_in, text};

fn seqs(jsonl: &str) -> Vec<u64> {
    jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn quickstart_turns_every_csv_row_into_one_json_record() {
    let example = root().join("examples/quickstart");
    let _ = std::fs::remove_file(example.join("out/orders.jsonl"));
    let out = run_in(&example, &["run", "pipeline.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let input = std::fs::read_to_string(example.join("data/orders.csv")).unwrap();
    let output = std::fs::read_to_string(example.join("out/orders.jsonl")).unwrap();
    let rows = input.lines().count() - 1;
    assert_eq!(output.lines().count(), rows);
    let first: serde_json::Value = serde_json::from_str(output.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], 1001);
    assert_eq!(first["customer"], "Ada Lovelace");
    assert_eq!(first["total"], 120.5);
    assert_eq!(first["source"], "quickstart");
    assert!(
        first.get("email").is_none(),
        "email must be dropped: {first}"
    );
    // The quoted field with a comma survives as one value.
    let fourth: serde_json::Value = serde_json::from_str(output.lines().nth(3).unwrap()).unwrap();
    assert_eq!(fourth["customer"], "Hopper, Grace");
    assert!(
        stderr.contains("pipeline `orders`: 9 in, 1 dropped, 8 written to `jsonl`"),
        "{stderr}"
    );
}

#[test]
fn a_million_generated_messages_are_mapped_and_written_exactly_once() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 1000000, size = 100 }

[plugins.map]
path = "{plugin:json-map}"
config = { rename = { data = "body" }, set = { tag = "v1" } }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/all.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "million"
source = "gen"
transforms = ["map"]
sinks = ["out"]
batch_size = 1024
"#,
    );
    let started = Instant::now();
    let out = s.run(&["run", "p.toml", "--progress", "0s"]);
    let elapsed = started.elapsed();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let output = s.read("out/all.jsonl");
    let seqs = seqs(&output);
    assert_eq!(seqs.len(), 1_000_000);
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), 1_000_000);
    assert_eq!(distinct.first(), Some(&0));
    assert_eq!(distinct.last(), Some(&999_999));
    assert!(output.lines().next().unwrap().contains(r#""tag":"v1""#));
    assert!(
        stderr.contains("pipeline `million`: 1000000 in, 0 dropped, 1000000 written to `out`"),
        "{stderr}"
    );
    // A figure for the log, not an assertion: these machines are shared and noisy.
    eprintln!(
        "1,000,000 messages in {:.2}s ({:.0} msg/s end to end, including start-up)",
        elapsed.as_secs_f64(),
        1e6 / elapsed.as_secs_f64()
    );
}

#[test]
fn several_pipelines_in_one_file_run_concurrently_and_each_delivers_everything() {
    let s = Scratch::new();
    s.mkdir("out");
    let mut config = String::new();
    for (name, count) in [("a", 5000), ("b", 7000), ("c", 3000)] {
        config.push_str(&format!(
            r#"
[plugins.gen-{name}]
path = "{{plugin:generator}}"
config = {{ count = {count} }}

[plugins.out-{name}]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/{name}.jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "{name}"
source = "gen-{name}"
sinks = ["out-{name}"]
batch_size = 100
"#
        ));
    }
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(s.read("out/a.jsonl").lines().count(), 5000);
    assert_eq!(s.read("out/b.jsonl").lines().count(), 7000);
    assert_eq!(s.read("out/c.jsonl").lines().count(), 3000);
    for line in [
        "pipeline `a`: 5000 in, 0 dropped, 5000 written to `out-a`",
        "pipeline `b`: 7000 in, 0 dropped, 7000 written to `out-b`",
        "pipeline `c`: 3000 in, 0 dropped, 3000 written to `out-c`",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in {stderr}");
    }
}

#[test]
fn every_message_goes_to_every_sink() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 2500 }

[plugins.one]
path = "{plugin:file-sink}"
config = { path = "/out/one.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.two]
path = "{plugin:file-sink}"
config = { path = "/out/two.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "fan"
source = "gen"
sinks = ["one", "two"]
batch_size = 64
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(seqs(&s.read("out/one.jsonl")).len(), 2500);
    assert_eq!(s.read("out/one.jsonl"), s.read("out/two.jsonl"));
}

#[test]
fn stdin_to_stdout_with_csv_filter_and_map() {
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.in]
path = "{plugin:file-source}"
config = { path = "-" }
grants = { stdin = true }

[plugins.csv]
path = "{plugin:csv-to-json}"

[plugins.big]
path = "{plugin:filter}"
config = { field = "amount", op = "ge", value = 100 }

[plugins.map]
path = "{plugin:json-map}"
config = { rename = { name = "customer" }, drop = ["amount"], set = { big = true } }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "-" }
grants = { stdout = true }

[[pipeline]]
name = "stdio"
source = "in"
transforms = ["csv", "big", "map"]
sinks = ["out"]
"#,
    );
    let mut child = patchbay()
        .args(["run", "p.toml"])
        .current_dir(s.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"name,amount\nada,120\nalan,99.5\ngrace,100\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "{\"customer\":\"ada\",\"big\":true}\n{\"customer\":\"grace\",\"big\":true}\n"
    );
    assert!(
        stderr.contains("pipeline `stdio`: 4 in, 2 dropped, 2 written to `out`"),
        "{stderr}"
    );
}

#[test]
fn a_trapping_transform_is_reported_with_plugin_stage_and_cause() {
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 100 }

[plugins.boom]
path = "{plugin:test-trap}"
config = { after = 10 }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "-" }
grants = { stdout = true }

[[pipeline]]
name = "traps"
source = "gen"
transforms = ["boom"]
sinks = ["out"]
batch_size = 20
retry = { attempts = 2, backoff = "1ms" }
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: pipeline `traps`: transform `boom` (#1) trapped in `process`:"),
        "{stderr}"
    );
    assert!(stderr.contains("test-trap: deliberate panic"), "{stderr}");
    assert!(stderr.contains("(after 2 attempts)"), "{stderr}");
    assert!(
        !stderr.contains("panicked at runtime"),
        "host panic: {stderr}"
    );
    // Every fresh instance traps again on the first batch: nothing is delivered, nothing acked.
    assert_eq!(stdout, "");
}

#[test]
fn a_transform_returning_the_wrong_number_of_outcomes_fails_its_pipeline_only() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 100 }

[plugins.short]
path = "{plugin:test-bad-count}"

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/bad.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.gen2]
path = "{plugin:generator}"
config = { count = 3000 }

[plugins.out2]
path = "{plugin:file-sink}"
config = { path = "/out/good.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "bad"
source = "gen"
transforms = ["short"]
sinks = ["out"]
batch_size = 10

[[pipeline]]
name = "good"
source = "gen2"
sinks = ["out2"]
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: pipeline `bad`: transform `short` (#1) broke the plugin contract: `process` \
             returned 9 outcomes for 10 messages; it must return exactly one outcome per input, in order"
        ),
        "{stderr}"
    );
    assert_eq!(s.read("out/bad.jsonl"), "");
    assert_eq!(s.read("out/good.jsonl").lines().count(), 3000);
}

#[cfg(unix)]
#[test]
fn interrupt_drains_in_flight_messages_and_exits_zero() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 0, rate = 20000 }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/live.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "live"
source = "gen"
sinks = ["out"]
batch_size = 100
"#,
    );
    let child = patchbay()
        .args(["run", "p.toml"])
        .current_dir(s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until messages flow, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.read_opt("out/live.jsonl").lines().count() < 1000 {
        assert!(Instant::now() < deadline, "no output after 60s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let seqs = seqs(&s.read("out/live.jsonl"));
    // Every message the source produced was delivered, in order, exactly once.
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(
        stderr.contains(&format!(
            "pipeline `live`: {n} in, 0 dropped, {n} written to `out`",
            n = seqs.len()
        )),
        "{stderr}"
    );
}

use std::process::Command;

impl Scratch {
    fn read_opt(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }
}

#[test]
fn the_blackhole_reports_latency_from_the_generators_time_header() {
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 2000, rate = 4000, time_header = "sent-us" }

[plugins.null]
path = "{plugin:blackhole}"
config = { report_every = 1000, latency_header = "sent-us" }

[[pipeline]]
name = "timed"
source = "gen"
sinks = ["null"]
batch_size = 64
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // A summary each time the count crosses a multiple of 1000 (at a batch's end), each over
    // the messages since the one before: together they cover every message once.
    let windows: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.split("latency over the last ").nth(1))
        .map(|rest| rest.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(windows.len(), 2, "{stderr}");
    assert_eq!(windows.iter().sum::<u64>(), 2000, "{stderr}");
    assert!(
        stderr.contains("discarded 2000 messages (128000 bytes); latency over the last "),
        "{stderr}"
    );
    let last = stderr
        .lines()
        .rfind(|l| l.contains("latency over"))
        .unwrap();
    for field in ["p50 ", ", p99 ", ", max "] {
        assert!(last.contains(field), "{last}");
    }
    assert!(!stderr.contains("without a usable time header"), "{stderr}");
}

#[test]
fn a_config_value_can_come_from_the_environment_and_a_missing_one_is_named() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 5 }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "${env:PB_TEST_OUT_PATH}" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "env"
source = "gen"
sinks = ["out"]
"#,
    );
    let out = crate::patchbay()
        .args(["run", "p.toml"])
        .env("PB_TEST_OUT_PATH", "/out/from-env.jsonl")
        .current_dir(s.path())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(s.read("out/from-env.jsonl").lines().count(), 5);

    let out = crate::patchbay()
        .args(["run", "p.toml"])
        .env_remove("PB_TEST_OUT_PATH")
        .current_dir(s.path())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "plugin `out`: config key `path` is `${env:PB_TEST_OUT_PATH}`, but the environment \
             variable `PB_TEST_OUT_PATH` is not set for this process; set it where patchbay runs"
        ),
        "{stderr}"
    );
}
