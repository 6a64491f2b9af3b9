//! The AMQP connectors against RabbitMQ on 127.0.0.1:5672 (guest/guest), checked with
//! `rabbitmqctl`: every message once through the sink and the source, a message no queue
//! takes dead-lettered with the broker's reply, the broker closing the connection mid-run
//! loses nothing, and no grant means the sandbox's denial.

use std::process::Command;
use std::time::Duration;

use crate::{Running, Scratch, seq_counts, text, wait_until};

const MQ: &str = "127.0.0.1:5672";
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const COUNT: u64 = 10_000;

pub(crate) fn require_rabbitmq() {
    assert!(
        std::net::TcpStream::connect(MQ).is_ok(),
        "RabbitMQ is not listening on {MQ}; start it with `service rabbitmq-server start`"
    );
}

pub(crate) fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["-q"])
        .args(args)
        .output()
        .expect("rabbitmqctl (Debian package rabbitmq-server)");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Messages in `queue` (ready and unacknowledged), as the broker counts them.
pub(crate) fn queue_depth(queue: &str) -> u64 {
    rabbitmqctl(&["list_queues", "name", "messages"])
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0)
}

fn unique(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("pb-{kind}-{}-{nanos}", std::process::id())
}

fn fill(s: &Scratch, queue: &str, count: u64) {
    s.write(
        "fill.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {count} }}

[plugins.mq]
path = "{{plugin:amqp-sink}}"
config = {{ url = "{URL}", routing_key = "{queue}", queue = "{queue}" }}
grants = {{ tcp = ["{MQ}"] }}

[[pipeline]]
name = "to-amqp"
source = "gen"
sinks = ["mq"]
"#
        ),
    );
    let out = s.run(&["run", "fill.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `to-amqp`: {count} in, 0 dropped, {count} written to `mq`"
        )),
        "{stderr}"
    );
}

fn drain(queue: &str, sink: &str) -> String {
    format!(
        r#"
[plugins.mq]
path = "{{plugin:amqp-source}}"
config = {{ url = "{URL}", queue = "{queue}", prefetch = 500 }}
grants = {{ tcp = ["{MQ}"] }}

[plugins.out]
{sink}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "from-amqp"
source = "mq"
sinks = ["out"]
"#
    )
}

fn lines(s: &Scratch) -> usize {
    std::fs::read_to_string(s.path().join("out/out.jsonl")).map_or(0, |t| t.lines().count())
}

#[test]
fn amqp_sink_and_source_move_every_message_once() {
    require_rabbitmq();
    let s = Scratch::new();
    s.mkdir("out");
    let queue = unique("q");
    fill(&s, &queue, COUNT);
    assert_eq!(queue_depth(&queue), COUNT);
    let file = r#"path = "{plugin:file-sink}"
config = { path = "/out/out.jsonl" }"#;
    s.write("drain.toml", &drain(&queue, file));
    let mut run = Running::start(s.path(), &["run", "drain.toml"]);
    run.wait_for("every message read", Duration::from_secs(60), || {
        lines(&s) >= COUNT as usize
    });
    let (code, stderr) = run.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let counts = seq_counts(&s.read("out/out.jsonl"));
    assert_eq!(counts.len() as u64, COUNT, "{stderr}");
    assert!(counts.values().all(|n| *n == 1));
    // Acknowledged: the broker holds none of them any more.
    wait_until("the queue to be empty", Duration::from_secs(10), || {
        queue_depth(&queue) == 0
    });
    rabbitmqctl(&["delete_queue", &queue]);
}

#[test]
fn the_broker_closing_the_connection_mid_run_loses_nothing() {
    require_rabbitmq();
    let s = Scratch::new();
    s.mkdir("out");
    let queue = unique("kill");
    let total = 2 * COUNT;
    fill(&s, &queue, total);
    let slow = r#"path = "{plugin:slow-sink}"
config = { path = "/out/out.jsonl", delay = "0ms", per_message = "100us" }"#;
    s.write("drain.toml", &drain(&queue, slow));
    let mut run = Running::start(s.path(), &["run", "drain.toml"]);
    run.wait_for("some messages read", Duration::from_secs(60), || {
        lines(&s) >= 2_000
    });
    rabbitmqctl(&[
        "close_all_connections",
        "patchbay test: connection closed mid-run",
    ]);
    run.wait_for("every message read", Duration::from_secs(120), || {
        seq_counts(&s.read("out/out.jsonl")).len() as u64 >= total
    });
    let (code, stderr) = run.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    // At least once: every number, some perhaps twice (unacknowledged when the connection
    // went, delivered again); the reconnect was logged.
    let counts = seq_counts(&s.read("out/out.jsonl"));
    assert_eq!(counts.len() as u64, total);
    assert!(
        stderr.contains("amqp 127.0.0.1:5672: reconnected"),
        "{stderr}"
    );
    wait_until("the queue to be empty", Duration::from_secs(10), || {
        queue_depth(&queue) == 0
    });
    rabbitmqctl(&["delete_queue", &queue]);
}

#[test]
fn an_unroutable_message_is_dead_lettered_and_a_missing_grant_named() {
    require_rabbitmq();
    let s = Scratch::new();
    s.mkdir("out");
    let pipeline = |grants: &str| {
        format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = 5 }}

[plugins.mq]
path = "{{plugin:amqp-sink}}"
config = {{ url = "{URL}", routing_key = "pb-no-such-queue" }}
{grants}

[[pipeline]]
name = "nowhere"
source = "gen"
sinks = ["mq"]
on_error = "dead-letter"
dead_letter = {{ path = "out/dead.jsonl" }}
"#
        )
    };
    s.write(
        "p.toml",
        &pipeline(&format!("grants = {{ tcp = [\"{MQ}\"] }}")),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let dead = s.read("out/dead.jsonl");
    assert_eq!(dead.lines().count(), 5, "{stderr}");
    assert!(
        dead.contains(
            "amqp: exchange `` routed the message to no queue (routing key `pb-no-such-queue`): 312 NO_ROUTE"
        ),
        "{dead}"
    );
    s.write("p.toml", &pipeline(""));
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains("amqp 127.0.0.1:5672: the sandbox refused the connection")
            && stderr.contains(&format!("grants = {{ tcp = [\"{MQ}\"] }}")),
        "{stderr}"
    );
}
