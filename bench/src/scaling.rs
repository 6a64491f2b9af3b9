//! The "scaling" section: `concurrency` on a transform-bound pipeline (1 vs 2 instances of a
//! transform that costs tens of µs per message), and one pipeline vs two of the same shape in
//! one process. Each row is one `patchbay run`; rates are over the pipelines' own running
//! time (as their summary lines give it: loading and `init` left out); CPU time is the child's user + system time
//! (from `/proc/self/stat` of this process, which the kernel charges waited children to).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::{Options, Report};

/// Ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on Linux everywhere in practice).
pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds used so far by this process's waited-for children.
pub(crate) fn children_cpu() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit(')').next().context("odd /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 (1-based), so 13 and 14 after `)`.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .context("odd /proc/self/stat")
    };
    Ok((ticks(13)? + ticks(14)?) / clock_ticks())
}

/// One run: messages per second over all pipelines (start-up included) and CPU seconds.
pub(crate) fn run(
    o: &Options,
    dir: &Path,
    name: &str,
    toml: &str,
    total: u64,
) -> anyhow::Result<(f64, f64)> {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, toml)?;
    let cpu = children_cpu()?;
    let started = Instant::now();
    let out = Command::new(&o.patchbay)
        .arg("run")
        .arg(&file)
        .env("PATCHBAY_CACHE_DIR", dir.join("cache"))
        .output()
        .with_context(|| format!("cannot run {}", o.patchbay.display()))?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = children_cpu()? - cpu;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `pipeline `p0`: 1000 in, 0 dropped, 1000 written to `null`; 0.74s, 1351 msg/s`
    let summaries: Vec<(u64, f64)> = stderr
        .lines()
        .filter_map(|l| l.split(" in, 0 dropped, ").nth(1))
        .filter_map(|rest| {
            let (sinks, timing) = rest.split_once("; ")?;
            // `500 written to `a`, 500 written to `b``: every sink's count.
            let written = sinks
                .split(", ")
                .filter_map(|part| part.split(' ').next()?.parse::<u64>().ok())
                .sum();
            let seconds = timing.split('s').next()?.parse().ok()?;
            Some((written, seconds))
        })
        .collect();
    let delivered: u64 = summaries.iter().map(|s| s.0).sum();
    if !out.status.success() || delivered != total {
        bail!("{name}: expected {total} messages delivered, got {delivered}:\n{stderr}");
    }
    // From the first pipeline's start to the last one's end, plugin loading left out (each
    // pipeline's own clock); the process's whole run as a fallback.
    let running = summaries
        .iter()
        .map(|s| s.1)
        .fold(0.0, f64::max)
        .max(1e-3)
        .min(elapsed);
    Ok((total as f64 / running, cpu))
}

/// A pipeline file: `pipelines` copies of generator → `transform` → blackhole.
fn pipelines(
    o: &Options,
    pipelines: usize,
    count: u64,
    transform: (&str, &str),
    concurrency: usize,
) -> anyhow::Result<String> {
    let plugins = std::path::absolute(&o.plugins)?;
    let mut text = format!(
        "[plugins.t]\npath = \"{}\"\nconfig = {}\n",
        plugins.join(transform.0).display(),
        transform.1
    );
    text.push_str(&format!(
        "[plugins.null]\npath = \"{}\"\n",
        plugins.join("blackhole.wasm").display()
    ));
    for i in 0..pipelines {
        text.push_str(&format!(
            r#"
[plugins.gen{i}]
path = "{gen}"
config = {{ count = {count}, size = 100 }}

[[pipeline]]
name = "p{i}"
source = "gen{i}"
transforms = ["t"]
sinks = ["null"]
batch_size = 256

[pipeline.stages.t]
concurrency = {concurrency}
"#,
            gen = plugins.join("generator.wasm").display(),
        ));
    }
    Ok(text)
}

fn row(r: &mut Report, what: &str, total: u64, (rate, cpu): (f64, f64), base: f64) {
    r.line(format!(
        "| {what} | {total} | {:.1} k/s | {:.2} s ({:.1} µs per message) | {:.2}× |",
        rate / 1e3,
        cpu,
        cpu * 1e6 / total as f64,
        rate / base
    ));
}

pub(crate) fn table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let py = ("py-redact.wasm", r#"{ fields = ["data"] }"#);
    let map = (
        "json-map.wasm",
        r#"{ rename = { data = "body" }, drop = ["seq"], set = { source = "bench" } }"#,
    );
    // Warm the precompiled cache.
    run(o, dir.path(), "warm", &pipelines(o, 1, 10, py, 1)?, 10)?;
    run(o, dir.path(), "warm2", &pipelines(o, 1, 10, map, 1)?, 10)?;

    r.line(format!(
        "## Scaling: `concurrency` and several pipelines ({cores} cores; 100-byte JSON, batches of 256, generator → transform → blackhole)\n"
    ));
    r.line("The transform-bound rows use the Python `redact` plugin (componentize-py), which costs tens of µs per message: the source, routing core and sink are a small part of the work, as with any heavy transform. Rates are over the pipelines' running time (loading plugins left out); CPU is the process's user + system time for the whole run, start-up included.\n");
    r.line("| pipeline | messages | msg/s | CPU | × first row |");
    r.line("| --- | --- | --- | --- | --- |");
    let n = if o.quick { 40_000 } else { 200_000 };
    let one = run(o, dir.path(), "py1", &pipelines(o, 1, n, py, 1)?, n)?;
    row(r, "Python redact, `concurrency = 1`", n, one, one.0);
    let two = run(o, dir.path(), "py2", &pipelines(o, 1, n, py, 2)?, n)?;
    row(r, "Python redact, `concurrency = 2`", n, two, one.0);
    let auto = cores.clamp(1, 256);
    if auto > 2 {
        let all = run(o, dir.path(), "pyn", &pipelines(o, 1, n, py, auto)?, n)?;
        row(
            r,
            &format!("Python redact, `concurrency = {auto}`"),
            n,
            all,
            one.0,
        );
    }
    let m = if o.quick { 200_000 } else { 1_000_000 };
    let single = run(o, dir.path(), "map1", &pipelines(o, 1, m, map, 1)?, m)?;
    row(r, "json-map, one pipeline", m, single, single.0);
    let pair = run(o, dir.path(), "map2", &pipelines(o, 2, m / 2, map, 1)?, m)?;
    row(
        r,
        "json-map, two pipelines (half the messages each)",
        m,
        pair,
        single.0,
    );
    let wide = run(o, dir.path(), "map1c2", &pipelines(o, 1, m, map, 2)?, m)?;
    row(
        r,
        "json-map, one pipeline, `concurrency = 2`",
        m,
        wide,
        single.0,
    );
    r.line("");
    router_rows(o, dir.path(), r, if o.quick { 500_000 } else { 2_000_000 })?;

    // What the rows predict for more cores: the part of the CPU per message that one
    // instance of the transform does not run (source, routing core, sink) stays on their own
    // tasks, the transform's part spreads over the instances.
    let per_message = |(_, cpu): (f64, f64), total: u64| cpu * 1e6 / total as f64;
    let total = per_message(one, n);
    let host = per_message(single, m);
    r.line(format!(
        "Transform-bound speed-up, 1 → 2 instances: **{:.2}×**. Per message the Python pipeline costs {total:.1} µs of CPU, of which about {host:.1} µs (the whole json-map pipeline's cost, an upper bound) is source, routing core, json-map-sized plugin calls and sink. With the transform spread over N instances and the rest on one core each, the design predicts a ceiling of about min(N / {total:.1} µs, 1 / {host:.1} µs) messages per second: on 16 cores about {:.0} k/s, {:.1}× one instance.\n",
        two.0 / one.0,
        (16.0 / total).min(1.0 / host) * 1e3,
        (16.0 / total).min(1.0 / host) * 1e6 / one.0,
    ));
    Ok(())
}

/// generator → json-map → one blackhole, against the same with a CEL router that sends even
/// `seq`s to one blackhole and the rest to another.
fn router_rows(o: &Options, dir: &Path, r: &mut Report, m: u64) -> anyhow::Result<()> {
    let plugins = std::path::absolute(&o.plugins)?;
    let file = |routed: bool| {
        let mut text = format!(
            r#"
[plugins.gen]
path = "{gen}"
config = {{ count = {m}, size = 100 }}

[plugins.t]
path = "{map}"
config = {{ rename = {{ data = "body" }}, set = {{ source = "bench" }} }}

[plugins.a]
path = "{null}"

[plugins.b]
path = "{null}"

[[pipeline]]
name = "p"
source = "gen"
transforms = ["t"]
batch_size = 256
"#,
            gen = plugins.join("generator.wasm").display(),
            map = plugins.join("json-map.wasm").display(),
            null = plugins.join("blackhole.wasm").display(),
        );
        if routed {
            text.push_str(
                "sinks = [\"a\", \"b\"]\nrouting = \"first\"\n\n[[pipeline.route]]\nwhen = \"json.seq % 2 == 0\"\nto = [\"a\"]\n\n[[pipeline.route]]\nto = [\"b\"]\n",
            );
        } else {
            text.push_str("sinks = [\"a\"]\n");
        }
        text
    };
    let plain = run(o, dir, "plain", &file(false), m)?;
    let routed = run(o, dir, "routed", &file(true), m)?;
    r.line("CEL routing: generator → json-map → one blackhole, against the same with `[[pipeline.route]]` `json.seq % 2 == 0` to one blackhole and the rest to another (`routing = \"first\"`):\n");
    r.line("| pipeline | messages | msg/s | CPU | × first row |");
    r.line("| --- | --- | --- | --- | --- |");
    row(r, "one sink, no routes", m, plain, plain.0);
    row(r, "CEL router, two sinks", m, routed, plain.0);
    r.line("");
    Ok(())
}
