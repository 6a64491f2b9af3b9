//! The "amqp" rows of the databases section: generator → amqp-sink (publisher confirms,
//! persistent) and amqp-source (manual acks, prefetch) → blackhole through RabbitMQ on
//! 127.0.0.1:5672, next to a plain client doing the same natively in one thread: the
//! publisher sends windows of 1024 persistent messages and waits for the broker's confirms of
//! each window (as amqp-sink does per batch), the consumer acknowledges every 1024 deliveries
//! with prefetch 1024. The plain client is Patchbay's own AMQP codec (`patchbay-proto-amqp`)
//! run natively over `std::net` — the same protocol work without the sandbox and the
//! pipeline, so the ratio is what the plugin layer costs; no independent AMQP client builds
//! without an async runtime the bench does not carry. Queue depths are checked with
//! `rabbitmqctl`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use patchbay_proto_amqp::codec::{Method, Properties};
use patchbay_proto_amqp::{Conn, Event};

use crate::scaling::run;
use crate::{Options, Report};

const ADDR: &str = "127.0.0.1:5672";
const WINDOW: u64 = 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .context("rabbitmqctl (Debian package rabbitmq-server)")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Messages ready in `queue`.
fn depth(queue: &str) -> anyhow::Result<u64> {
    let listing = rabbitmqctl(&["list_queues", "name", "messages_ready"])?;
    listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("no queue {queue} in {listing}"))
}

fn open() -> anyhow::Result<Conn> {
    let stream = std::net::TcpStream::connect(ADDR).context("RabbitMQ on 127.0.0.1:5672")?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(Conn::open(
        Box::new(stream),
        ADDR,
        ("guest", "guest"),
        "/",
        0,
        TIMEOUT,
    )?)
}

/// The plain publisher: `n` persistent 100-byte messages, a window at a time, each window
/// confirmed before the next.
fn publish(queue: &str, n: u64) -> anyhow::Result<f64> {
    let mut conn = open()?;
    conn.declare_queue(queue, "", "", TIMEOUT)?;
    conn.call(&Method::Select, TIMEOUT)?;
    let properties = Properties {
        delivery_mode: Some(2),
        ..Properties::default()
    };
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let upto = (sent + WINDOW).min(n);
        for seq in sent..upto {
            let body = format!("{{\"seq\":{seq},\"data\":\"{}\"}}", "x".repeat(80));
            conn.publish("", queue, false, &properties, body.as_bytes());
        }
        conn.flush()?;
        loop {
            match conn.next(Instant::now() + TIMEOUT)? {
                Some(Event::Confirm { tag, ack: true, .. }) if tag >= upto => break,
                Some(Event::Confirm { ack: false, .. }) => bail!("the broker refused a message"),
                Some(_) => {}
                None => bail!("no confirm within {TIMEOUT:?}"),
            }
        }
        sent = upto;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The plain consumer: `n` deliveries, acknowledged every window.
fn consume(queue: &str, n: u64) -> anyhow::Result<f64> {
    let mut conn = open()?;
    conn.call(&Method::Qos { prefetch: 1024 }, TIMEOUT)?;
    conn.call(
        &Method::Consume {
            queue: queue.to_owned(),
            tag: "bench".into(),
        },
        TIMEOUT,
    )?;
    let started = Instant::now();
    let mut got = 0u64;
    while got < n {
        match conn.next(Instant::now() + TIMEOUT)? {
            Some(Event::Delivery(d)) => {
                got += 1;
                if got.is_multiple_of(WINDOW) || got == n {
                    conn.cast(&Method::Ack {
                        delivery_tag: d.delivery_tag,
                        multiple: true,
                    })?;
                }
            }
            Some(_) => {}
            None => bail!("{got} of {n} deliveries within {TIMEOUT:?}"),
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    conn.flush()?;
    Ok(rate)
}

fn plugin(o: &Options, name: &str) -> anyhow::Result<String> {
    Ok(std::path::absolute(o.plugins.join(format!("{name}.wasm")))?
        .display()
        .to_string())
}

/// amqp-source → blackhole until `n` messages are through: the pipeline runs until the
/// queue is empty (checked every 50 ms), then is stopped; the rate is over that time.
fn source_run(o: &Options, dir: &Path, queue: &str, n: u64) -> anyhow::Result<f64> {
    let file = dir.join(format!("{queue}-source.toml"));
    std::fs::write(
        &file,
        format!(
            r#"
[plugins.mq]
path = "{}"
config = {{ queue = "{queue}", prefetch = 1024 }}
grants = {{ tcp = ["{ADDR}"] }}

[plugins.null]
path = "{}"

[[pipeline]]
name = "p"
source = "mq"
sinks = ["null"]
batch_size = 1024
"#,
            plugin(o, "amqp-source")?,
            plugin(o, "blackhole")?
        ),
    )?;
    let started = Instant::now();
    let mut child = Command::new(&o.patchbay)
        .arg("run")
        .arg(&file)
        .env("PATCHBAY_CACHE_DIR", dir.join("cache"))
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = started + Duration::from_secs(300);
    // The consumer's unacknowledged deliveries are not "ready": the queue is empty of ready
    // and unacknowledged messages once every one was delivered and acknowledged.
    let drained = loop {
        let listing = rabbitmqctl(&["list_queues", "name", "messages"])?;
        let left = listing
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(name, _)| name.trim() == queue)
            .and_then(|(_, m)| m.trim().parse::<u64>().ok());
        if left == Some(0) {
            break Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            break Err(anyhow!("amqp-source left {left:?} of {n} in {queue}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(n as f64 / drained?.as_secs_f64())
}

pub(crate) fn rows(o: &Options, dir: &Path, r: &mut Report, n: u64) -> anyhow::Result<()> {
    let queue = format!("pb-bench-{}", std::process::id());
    let mut best = [0.0f64; 4];
    for round in 0..3 {
        let _ = rabbitmqctl(&["delete_queue", &queue]);
        best[0] = best[0].max(publish(&queue, n)?);
        best[1] = best[1].max(consume(&queue, n)?);
        // The sink fills the queue that the plain consumer and then the source drain.
        let _ = rabbitmqctl(&["delete_queue", &queue]);
        let sink = format!(
            r#"
[plugins.gen]
path = "{}"
config = {{ count = {n}, size = 100 }}

[plugins.mq]
path = "{}"
config = {{ routing_key = "{queue}", queue = "{queue}" }}
grants = {{ tcp = ["{ADDR}"] }}

[[pipeline]]
name = "p"
source = "gen"
sinks = ["mq"]
batch_size = 1024
"#,
            plugin(o, "generator")?,
            plugin(o, "amqp-sink")?
        );
        let (rate, _) = run(o, dir, &format!("amqp-sink-{round}"), &sink, n)?;
        let ready = depth(&queue)?;
        if ready != n {
            bail!("amqp-sink left {ready} messages in {queue}, not {n}");
        }
        best[2] = best[2].max(rate);
        best[3] = best[3].max(source_run(o, dir, &queue, n)?);
    }
    let _ = rabbitmqctl(&["delete_queue", &queue]);
    r.line("");
    r.line("| RabbitMQ (127.0.0.1:5672), persistent 100-byte messages | msg/s | × plain client |");
    r.line("| --- | --- | --- |");
    r.line(format!(
        "| generator → amqp-sink (confirms per batch of 1024) | {:.1} k/s | {:.2} |",
        best[2] / 1e3,
        best[2] / best[0]
    ));
    r.line(format!(
        "| plain publisher, windows of 1024 confirmed | {:.1} k/s | 1.00 |",
        best[0] / 1e3
    ));
    r.line(format!(
        "| amqp-source (prefetch 1024) → blackhole | {:.1} k/s | {:.2} |",
        best[3] / 1e3,
        best[3] / best[1]
    ));
    r.line(format!(
        "| plain consumer, prefetch 1024, acks every 1024 | {:.1} k/s | 1.00 |",
        best[1] / 1e3
    ));
    Ok(())
}
