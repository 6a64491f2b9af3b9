//! The routing core: content-based routes, restarts after traps, the circuit breaker.

use crate::{Scratch, seq_counts, text};

#[test]
fn a_transform_that_traps_is_restarted_and_the_batch_retried() {
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
name = "restarts"
source = "gen"
transforms = ["boom"]
sinks = ["out"]
batch_size = 5
retry = { backoff = "1ms" }
breaker = { traps = 100 }
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // A fresh instance keeps 10 more messages before it traps again: every 2 batches.
    assert_eq!(stdout.lines().count(), 100);
    assert_eq!(
        stderr
            .matches(
                "transform `boom` (#1) trapped in `process`: wasm trap: wasm `unreachable` \
                 instruction executed; its last words on stderr: panicked at \
                 tests/plugins/test-trap/src/lib.rs:51:17: test-trap: deliberate panic after 10 \
                 messages; restarted it with a fresh instance"
            )
            .count(),
        9,
        "{stderr}"
    );
}

#[test]
fn a_cel_route_splits_messages_between_two_sinks_by_a_json_field() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 10000 }

[plugins.even]
path = "{plugin:file-sink}"
config = { path = "/out/even.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.odd]
path = "{plugin:file-sink}"
config = { path = "/out/odd.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "split"
source = "gen"
sinks = ["even", "odd"]
routing = "first"

[[pipeline.route]]
when = "json.seq % 2 == 0"
to = ["even"]

[[pipeline.route]]
to = ["odd"]
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let even = seq_counts(&s.read("out/even.jsonl"));
    let odd = seq_counts(&s.read("out/odd.jsonl"));
    assert_eq!(even.len(), 5000);
    assert_eq!(odd.len(), 5000);
    assert!(even.keys().all(|s| s % 2 == 0) && odd.keys().all(|s| s % 2 == 1));
    assert!(
        stderr.contains(
            "pipeline `split`: 10000 in, 0 dropped, 5000 written to `even`, 5000 written to `odd`;"
        ),
        "{stderr}"
    );
}

#[test]
fn recipient_list_and_filter_routes() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 1000 }

[plugins.all]
path = "{plugin:file-sink}"
config = { path = "/out/all.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.tens]
path = "{plugin:file-sink}"
config = { path = "/out/tens.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "fan"
source = "gen"
sinks = ["all", "tens"]

# Drop the first hundred, send the rest to `all`, and multiples of ten to `tens` as well.
[[pipeline.route]]
when = "json.seq >= 100"
to = ["all"]

[[pipeline.route]]
when = "json.seq >= 100 && json.seq % 10 == 0"
to = ["tens"]
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(seq_counts(&s.read("out/all.jsonl")).len(), 900);
    assert_eq!(seq_counts(&s.read("out/tens.jsonl")).len(), 90);
    assert!(
        stderr.contains(
            "pipeline `fan`: 1000 in, 100 dropped, 900 written to `all`, 90 written to `tens`;"
        ),
        "{stderr}"
    );
}

#[test]
fn a_trap_storm_opens_the_breaker_and_the_other_pipeline_runs_on() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 5000 }

[plugins.storm]
path = "{plugin:test-trap}"
config = { after = 0, mode = "unreachable" }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/storm.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.gen2]
path = "{plugin:generator}"
config = { count = 200000 }

[plugins.out2]
path = "{plugin:file-sink}"
config = { path = "/out/calm.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "storm"
source = "gen"
transforms = ["storm"]
sinks = ["out"]
batch_size = 100
on_error = "dead-letter"
dead_letter = { path = "out/dead.jsonl" }
retry = { attempts = 2, backoff = "1ms" }
breaker = { traps = 3, window = "10s", cooldown = "1h" }

[[pipeline]]
name = "calm"
source = "gen2"
sinks = ["out2"]
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(s.read("out/calm.jsonl").lines().count(), 200_000);
    assert_eq!(s.read("out/storm.jsonl"), "");
    let dead = s.read("out/dead.jsonl");
    assert_eq!(dead.lines().count(), 5000, "every record settled");
    // Three traps opened the breaker; the rest never reached the plugin.
    assert_eq!(
        stderr
            .matches("circuit breaker of transform `storm` (#1) opened")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        dead.matches(r#""error_kind":"trap""#).count(),
        100,
        "the first batch, trapped"
    );
    assert_eq!(dead.matches(r#""error_kind":"circuit-open""#).count(), 4900);
    assert!(
        stderr.contains(
            "pipeline `storm`: 5000 in, 0 dropped, 0 written to `out`, 5000 dead-lettered, 3 \
             instances restarted after traps;"
        ),
        "{stderr}"
    );
}
