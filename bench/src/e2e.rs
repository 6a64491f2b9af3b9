//! The "e2e" section: whole pipelines through `patchbay run`, generator → json-map →
//! blackhole, at four batch sizes: the pipeline's own rate (its summary line: loading and
//! `init` left out) against json-map's own rate through the plugin layer measured in the same
//! section (in process, packed, batches of 1024, limits on, whole passes over as many
//! messages), start-up included, and latency at half the rate; then the idle footprint.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use patchbay_runtime::plugin::Runtime;

use crate::scaling::children_cpu;
use crate::{Options, Report, instance, messages, through_plugin};

/// What one `patchbay run` of the pipeline gave.
pub(crate) struct Run {
    /// Messages per second over the pipeline's own running time (its summary line).
    pub(crate) running: f64,
    /// Messages per second from spawning the process to its exit (start-up included).
    pub(crate) wall: f64,
    /// CPU time per message, all threads, start-up included (µs).
    pub(crate) cpu_us: f64,
    /// Its stderr.
    pub(crate) log: String,
}

/// The pipeline file's text for generator → json-map → blackhole, 100-byte messages: plugins
/// `{prefix}gen`, `{prefix}map`, `{prefix}null`, pipeline `name`. With `rate`, the generator is
/// paced and stamps each batch, and the blackhole summarises latencies once, at `count`.
pub(crate) fn pipeline_toml(
    o: &Options,
    prefix: &str,
    name: &str,
    count: u64,
    batch: u32,
    rate: Option<u64>,
) -> anyhow::Result<String> {
    let plugins = std::path::absolute(&o.plugins)?;
    let plugin = |p: &str| plugins.join(format!("{p}.wasm")).display().to_string();
    let header = if rate.is_some() { "sent-us" } else { "" };
    Ok(format!(
        r#"
[plugins.{prefix}gen]
path = "{gen}"
config = {{ count = {count}, size = 100, rate = {rate}, time_header = "{header}" }}

[plugins.{prefix}map]
path = "{map}"
[plugins.{prefix}map.config]
rename = {{ data = "body" }}
drop = ["seq"]
set = {{ source = "bench" }}

[plugins.{prefix}null]
path = "{null}"
config = {{ report_every = {count}, latency_header = "{header}" }}

[[pipeline]]
name = "{name}"
source = "{prefix}gen"
transforms = ["{prefix}map"]
sinks = ["{prefix}null"]
batch_size = {batch}
"#,
        gen = plugin("generator"),
        map = plugin("json-map"),
        null = plugin("blackhole"),
        rate = rate.unwrap_or(0),
    ))
}

/// One run of generator → json-map → blackhole through `patchbay run`. With `rate`, the
/// generator is paced and the blackhole logs the latency of every message (from the
/// generator's time header) once at the end.
pub(crate) fn pipeline_run(
    o: &Options,
    dir: &Path,
    count: u64,
    batch: u32,
    rate: Option<u64>,
) -> anyhow::Result<Run> {
    pipeline_run_with(o, dir, count, batch, rate, "")
}

/// [`pipeline_run`] with `head` (tables such as `[telemetry]`) at the top of the file.
pub(crate) fn pipeline_run_with(
    o: &Options,
    dir: &Path,
    count: u64,
    batch: u32,
    rate: Option<u64>,
    head: &str,
) -> anyhow::Result<Run> {
    let file = dir.join(format!("bench-{batch}.toml"));
    let text = pipeline_toml(o, "", "bench", count, batch, rate)?;
    std::fs::write(&file, format!("{head}\n{text}"))?;
    let cpu = children_cpu()?;
    let started = Instant::now();
    let out = Command::new(&o.patchbay)
        .args(["run"])
        .arg(&file)
        .env("PATCHBAY_CACHE_DIR", dir.join("cache"))
        .output()
        .with_context(|| format!("cannot run {}", o.patchbay.display()))?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{count} in, 0 dropped, {count} written to `null`");
    if !out.status.success() || !stderr.contains(&expected) {
        bail!("pipeline at batch {batch} did not deliver {count} messages:\n{stderr}");
    }
    // `pipeline `bench`: 1000 in, 0 dropped, 1000 written to `null`; 0.74s, 1351 msg/s`
    let running = stderr
        .lines()
        .find_map(|l| l.split(&expected).nth(1))
        .and_then(|rest| rest.rsplit(", ").next())
        .and_then(|rate| rate.strip_suffix(" msg/s"))
        .and_then(|rate| rate.parse().ok())
        .with_context(|| format!("no rate in the pipeline's summary:\n{stderr}"))?;
    Ok(Run {
        running,
        wall: count as f64 / elapsed.as_secs_f64(),
        cpu_us: (children_cpu()? - cpu) * 1e6 / count as f64,
        log: stderr.into_owned(),
    })
}

/// `p50 1.21 ms, p99 2.87 ms, max 4.02 ms` from the blackhole's summary in a log.
pub(crate) fn latency_line(log: &str) -> anyhow::Result<(String, String, String)> {
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.split("latency over the last ").nth(1))
        .context("the blackhole logged no latency summary")?;
    let field = |name: &str| -> anyhow::Result<String> {
        line.split(name)
            .nth(1)
            .and_then(|rest| rest.split([',', ';']).next())
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no {name} in `{line}`"))
    };
    Ok((field("p50 ")?, field("p99 ")?, field("max ")?))
}

/// Runs of each batch size take turns with passes of json-map alone, `ROUNDS` times over;
/// every row keeps its best.
const ROUNDS: usize = 3;

pub(crate) async fn table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Warm the precompiled cache so every row measures the same thing.
    pipeline_run(o, dir.path(), 10, 16, None)?;
    let seconds = if o.quick { 2 } else { 5 };
    let batches = [1u32, 16, 128, 1024];
    let count = |batch: u32| -> u64 {
        match (o.quick, batch) {
            (true, 1) => 20_000,
            (true, _) => 200_000,
            (false, 1) => 200_000,
            (false, _) => 1_000_000,
        }
    };
    // json-map alone, as the host calls it in the pipeline: packed, batches of 1024, limits on.
    let runtime = Runtime::new(None)?;
    let mut alone = instance(&runtime, &o.plugins.join("json-map.wasm")).await?;
    let input = messages(count(1024) as usize, 100);
    through_plugin(&mut alone, &input[..10_000.min(input.len())], 1024).await?;
    let mut alone_best = 0f64;
    let mut alone_cpu = f64::MAX;
    let mut best: Vec<Option<Run>> = batches.iter().map(|_| None).collect();
    for round in 0..ROUNDS {
        let ns = through_plugin(&mut alone, &input, 1024).await?;
        alone_best = alone_best.max(1e9 / ns);
        alone_cpu = alone_cpu.min(ns / 1e3);
        for (i, &batch) in batches.iter().enumerate() {
            let run = pipeline_run(o, dir.path(), count(batch), batch, None)?;
            if best[i].as_ref().is_none_or(|b| run.running > b.running) {
                best[i] = Some(run);
            }
        }
        eprintln!("e2e: round {} of {ROUNDS}", round + 1);
    }
    r.line("## End to end: `patchbay run`, generator → json-map → blackhole (100-byte messages)\n");
    r.line(format!(
        "Throughput: as fast as the pipeline takes them, best of {ROUNDS} runs; the rate over the \
         pipeline's own running time (its summary line: loading the plugins and `init` left \
         out), and from starting the process to its exit. × json-map alone: against json-map's \
         own rate through the plugin layer in the same section ({:.0} k/s: the host's packed \
         call, batches of 1024, limits on, best of {ROUNDS} whole passes over {} messages, \
         taking turns with the runs), so the routing core's cost shows as the distance from \
         1.00. Latency: a further run with the generator paced at half the best rate for \
         {seconds} s; from when the generator made a message's batch to when the blackhole \
         took it. CPU per message: the process's user and system time over all its threads, \
         start-up included, per message; json-map alone takes {alone_cpu:.2} µs a message on \
         one thread.\n",
        alone_best / 1e3,
        input.len()
    ));
    r.line(
        "| batch size | messages | msg/s | × json-map alone | start-up included | CPU per message \
         | latency p50 at half rate | p99 | max |",
    );
    r.line("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (&batch, run) in batches.iter().zip(&best) {
        let Some(run) = run else {
            bail!("no run at batch {batch}");
        };
        let half = ((run.running / 2.0) as u64).max(1);
        let paced = pipeline_run(o, dir.path(), half * seconds, batch, Some(half))?;
        let (p50, p99, max) = latency_line(&paced.log)
            .with_context(|| format!("batch {batch} at {half} msg/s:\n{}", paced.log))?;
        r.line(format!(
            "| {batch} | {} | {:.0} k/s | {:.2} | {:.0} k/s | {:.2} µs | {p50} (at {:.0} k/s) | \
             {p99} | {max} |",
            count(batch),
            run.running / 1e3,
            run.running / alone_best,
            run.wall / 1e3,
            run.cpu_us,
            half as f64 / 1e3
        ));
    }
    r.line("");
    idle_rss(o, dir.path(), r)?;
    Ok(())
}

fn idle_rss(o: &Options, dir: &Path, r: &mut Report) -> anyhow::Result<()> {
    let plugins = std::path::absolute(&o.plugins)?;
    let file = dir.join("idle.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[plugins.gen]
path = "{gen}"
config = {{ count = 0, rate = 1 }}

[plugins.null]
path = "{null}"

[[pipeline]]
name = "idle"
source = "gen"
sinks = ["null"]
"#,
            gen = plugins.join("generator.wasm").display(),
            null = plugins.join("blackhole.wasm").display(),
        ),
    )?;
    let mut child = Command::new(&o.patchbay)
        .args(["run"])
        .arg(&file)
        .env("PATCHBAY_CACHE_DIR", dir.join("cache"))
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l.trim_start_matches("VmRSS:").trim().to_owned())
        .context("cannot read the runtime's resident memory")?;
    r.line(format!(
        "Idle runtime (one pipeline, generator at 1 msg/s → blackhole): resident memory {rss}.\n"
    ));
    Ok(())
}
