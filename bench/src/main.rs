//! `patchbay-bench`: one run that measures the same JSON transform (parse an object, rename a
//! field, add one, drop one, serialize) natively and through Patchbay's own plugin layer, what
//! the sandbox's limits cost, start-up costs, and whole pipelines through `patchbay run`; then
//! writes a Markdown report. Run it with `cargo xtask bench [--quick]`.
//!
//! Timings are reported, never checked: the only failures are wrong results and missing rows.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use patchbay_runtime::config::{Grants, Limits};
use patchbay_runtime::contract::{ConfigEntry, Message, Outcome, PluginState};
use patchbay_runtime::plugin::{Instance, Runtime};
use serde_json::Value;

/// The report's sections, in order.
const SECTIONS: &[&str] = &[
    "transform",
    "startup",
    "languages",
    "e2e",
    "telemetry",
    "swap",
    "scaling",
    "isolation",
    "connectors",
    "reply",
    "formats",
    "databases",
    "cluster",
];

struct Options {
    quick: bool,
    /// Run only these sections (`--only transform,startup,e2e,telemetry,swap,scaling,isolation,connectors,reply,formats,databases,cluster`); empty: all.
    only: Vec<String>,
    out: PathBuf,
    plugins: PathBuf,
    /// The peers' guests (bench/guests/), built for wasm32-unknown-unknown.
    #[cfg_attr(not(feature = "peers"), allow(dead_code))]
    peers: PathBuf,
    patchbay: PathBuf,
}

fn options() -> anyhow::Result<Options> {
    let mut quick = false;
    let mut only = Vec::new();
    let mut out = PathBuf::from("bench/results.md");
    let mut plugins = PathBuf::from("target/plugins");
    let mut peers = PathBuf::from("target/bench-guests");
    let mut patchbay = PathBuf::from("target/release/patchbay");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .map(PathBuf::from)
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let list = value("--only")?;
                only = list
                    .to_string_lossy()
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    bail!("--only: unknown section `{bad}`; the sections are {SECTIONS:?}");
                }
            }
            "--out" => out = value("--out")?,
            "--plugins" => plugins = value("--plugins")?,
            "--peers" => peers = value("--peers")?,
            "--patchbay" => patchbay = value("--patchbay")?,
            other => bail!(
                "unknown argument `{other}`; usage: patchbay-bench [--quick] [--only SECTION,…] \
                 [--out FILE] [--plugins DIR] [--peers DIR] [--patchbay BIN]"
            ),
        }
    }
    Ok(Options {
        quick,
        only,
        out,
        plugins,
        peers,
        patchbay,
    })
}

/// `{"id":N,"name":"item-N","price":12.5,"tags":["a","b"],"note":"xxx…"}`, padded to `size`.
fn payload(n: u64, size: usize) -> Vec<u8> {
    let head = format!(r#"{{"id":{n},"name":"item-{n}","price":12.5,"tags":["a","b"],"note":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut text = head;
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str("\"}");
    text.into_bytes()
}

mod amqp;
mod cluster;
mod connectors;
mod databases;
mod e2e;
mod formats;
mod isolation;
/// json-map's own mapping code (`plugins/json-map/src/mapping.rs`), compiled natively here: the
/// native row runs the very code the plugin runs.
#[path = "../../plugins/json-map/src/mapping.rs"]
mod mapping;
#[cfg(feature = "peers")]
mod peers;
mod reply;
mod scaling;
mod telemetry;
mod transform;

/// The mapping's configuration, as every row passes it (Patchbay's `init`, Extism's manifest
/// config, the SmartModule's parameters): JSON text per key.
const CONFIG: [(&str, &str); 3] = [
    ("rename", r#"{"name":"title"}"#),
    ("drop", r#"["tags"]"#),
    ("set", r#"{"source":"bench"}"#),
];

/// The mapping of the bench config: rename `name` to `title`, drop `tags`, set `source`.
fn bench_mapping() -> anyhow::Result<mapping::Mapping> {
    transform::mapping(|key| {
        CONFIG
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    })
    .map_err(anyhow::Error::msg)
}

/// The transform, natively: what json-map's `process` does, with the same code.
fn native(mapping: &mapping::Mapping, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    transform::apply(mapping, payload).map_err(anyhow::Error::msg)
}

fn map_config() -> Vec<ConfigEntry> {
    CONFIG
        .into_iter()
        .map(|(key, value)| ConfigEntry {
            key: key.into(),
            value: value.into(),
        })
        .collect()
}

fn messages(count: usize, size: usize) -> Vec<Message> {
    (0..count as u64)
        .map(|n| Message {
            payload: payload(n, size),
            key: None,
            headers: Vec::new(),
            timestamp: None,
        })
        .collect()
}

async fn instance(runtime: &Runtime, wasm: &Path) -> anyhow::Result<Instance> {
    instance_with(runtime, wasm, &map_config()).await
}

async fn instance_with(
    runtime: &Runtime,
    wasm: &Path,
    config: &[ConfigEntry],
) -> anyhow::Result<Instance> {
    let loaded = runtime.load(wasm, None)?;
    let mut instance = runtime
        .instantiate(
            &loaded,
            Arc::from("bench/map"),
            Arc::from("map"),
            &Grants::default(),
            &Limits::default(),
            PluginState::default(),
        )
        .await?;
    instance
        .init(config)
        .await?
        .map_err(|e| anyhow::anyhow!("{} init: {}", wasm.display(), e.message))?;
    Ok(instance)
}

/// Nanoseconds per message of `write` on a sink that answers `ok` without reading (the
/// blackhole): the cost of the call and of moving the batch, with no work in the plugin.
async fn through_sink(instance: &mut Instance, input: &[Message]) -> anyhow::Result<f64> {
    let started = Instant::now();
    for chunk in input.chunks(1024) {
        let results = instance.write(chunk).await?;
        if results.len() != chunk.len() || results.iter().any(Result::is_err) {
            bail!(
                "the blackhole did not answer `ok` to each of {} messages",
                chunk.len()
            );
        }
        black_box(results);
    }
    Ok(started.elapsed().as_nanos() as f64 / input.len() as f64)
}

/// Nanoseconds per message through the plugin, after checking its output against `native`.
async fn through_plugin(
    instance: &mut Instance,
    input: &[Message],
    batch: usize,
) -> anyhow::Result<f64> {
    let check = instance.process(&input[..1]).await?;
    let expected = native(&bench_mapping()?, &input[0].payload)?;
    let same = |out: &[Message]| -> bool {
        let parse = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).ok();
        out.len() == 1
            && parse(&out[0].payload).is_some()
            && parse(&out[0].payload) == parse(&expected)
    };
    match check.as_slice() {
        [Outcome::Replace(out)] if same(out) => {}
        other => bail!(
            "json-map gave {other:?}, natively {}",
            String::from_utf8_lossy(&expected)
        ),
    }
    let started = Instant::now();
    for chunk in input.chunks(batch) {
        let outcomes = instance.process(chunk).await?;
        if outcomes.len() != chunk.len() {
            bail!("{} outcomes for {} messages", outcomes.len(), chunk.len());
        }
        black_box(outcomes);
    }
    Ok(started.elapsed().as_nanos() as f64 / input.len() as f64)
}

fn through_native(input: &[Message]) -> anyhow::Result<f64> {
    let mapping = bench_mapping()?;
    let started = Instant::now();
    for m in input {
        black_box(native(&mapping, black_box(&m.payload))?);
    }
    Ok(started.elapsed().as_nanos() as f64 / input.len() as f64)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn rate(ns_per_msg: f64) -> String {
    let per_s = 1e9 / ns_per_msg;
    if per_s >= 1e6 {
        format!("{:.2} M/s", per_s / 1e6)
    } else {
        format!("{:.0} k/s", per_s / 1e3)
    }
}

struct Report {
    lines: Vec<String>,
}

impl Report {
    fn line(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("{text}");
        self.lines.push(text);
    }
}

/// Messages per timed round of the transform table. Rounds are short (tens of milliseconds for
/// the fast rows) and the rows take turns, so a slow patch of a shared machine spoils a round of
/// each row rather than a whole row.
const ROUND: usize = 10_000;

/// The rows of the transform table: how each implementation is called.
const ROWS: &[&str] = &[
    "native Rust, in process (the floor)",
    "Patchbay, packed frames (one `list<u8>`), batches of 1024, limits on",
    "Patchbay, typed `list<message>`, batches of 1024, limits on",
    "Patchbay, packed, limits off (no deadline, no memory limit)",
    "Patchbay, packed, one message per call, limits on",
    "Extism 1.30, one call per message (its only way)",
    "Fluvio SmartModule 0.50, batches of 1024",
    "Fluvio SmartModule 0.50, one record per call",
];
const NATIVE: usize = 0;
/// The packed fast path: how json-map (built with the Rust SDK) is called in pipelines.
const ON: usize = 1;
const TYPED: usize = 2;
const OFF: usize = 3;
const ON_1: usize = 4;
const EXTISM: usize = 5;
const FLUVIO: usize = 6;
const FLUVIO_1: usize = 7;

/// The peers' hosts with their plugins loaded (`bench/guests/`).
#[cfg(feature = "peers")]
struct Peers {
    extism: peers::Extism,
    fluvio: peers::Fluvio,
}

#[cfg(feature = "peers")]
impl Peers {
    fn load(o: &Options) -> anyhow::Result<Peers> {
        Ok(Peers {
            extism: peers::Extism::new(&o.peers.join("bench-extism-map.wasm"))?,
            fluvio: peers::Fluvio::new(&o.peers.join("bench-fluvio-map.wasm"))?,
        })
    }

    /// One round over `input`: nanoseconds per message for the Extism, Fluvio (1024) and
    /// Fluvio (1) rows, in that order.
    fn round(&mut self, input: &[Message], expected: &[u8]) -> anyhow::Result<[(usize, f64); 3]> {
        Ok([
            (EXTISM, self.extism.run(input, expected)?),
            (FLUVIO, self.fluvio.run(input, 1024, expected)?),
            (FLUVIO_1, self.fluvio.run(input, 1, expected)?),
        ])
    }
}

/// Without the `peers` feature there is nothing to load, and the peers' rows stay empty.
#[cfg(not(feature = "peers"))]
struct Peers;

#[cfg(not(feature = "peers"))]
impl Peers {
    fn load(_: &Options) -> anyhow::Result<Peers> {
        Ok(Peers)
    }

    fn round(&mut self, _: &[Message], _: &[u8]) -> anyhow::Result<[(usize, f64); 0]> {
        Ok([])
    }
}

async fn transform_table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let wasm = o.plugins.join("json-map.wasm");
    let count = if o.quick { 100_000 } else { 1_000_000 };
    let limited = Runtime::new(None)?;
    let unlimited = Runtime::without_limits(None)?;
    let sizes = [100usize, 1024];
    // Best nanoseconds per message, by row and size.
    let mut best = vec![[f64::MAX; 2]; ROWS.len()];
    let mut peers = Peers::load(o)?;
    let rounds = 3 * count / ROUND;
    let mapping = bench_mapping()?;
    for (i, &size) in sizes.iter().enumerate() {
        let input = messages(count, size);
        let expected = native(&mapping, &input[0].payload)?;
        let mut on = instance(&limited, &wasm).await?;
        let mut typed = instance(&limited, &wasm).await?;
        typed.use_typed_calls();
        let mut off = instance(&unlimited, &wasm).await?;
        // Warm up, then measure in short rounds that take turns, so that drift on a shared
        // machine (another tenant, a frequency change) hits every row alike; keep each row's
        // best round.
        let warm = &input[..input.len().min(10_000)];
        through_plugin(&mut on, warm, 1024).await?;
        through_plugin(&mut typed, warm, 1024).await?;
        through_plugin(&mut off, warm, 1024).await?;
        peers.round(warm, &expected)?;
        for (n, part) in input.chunks(ROUND).cycle().take(rounds).enumerate() {
            let mut round = vec![
                (NATIVE, through_native(part)?),
                (ON, through_plugin(&mut on, part, 1024).await?),
                (TYPED, through_plugin(&mut typed, part, 1024).await?),
                (OFF, through_plugin(&mut off, part, 1024).await?),
                (ON_1, through_plugin(&mut on, part, 1).await?),
            ];
            round.extend(peers.round(part, &native(&mapping, &part[0].payload)?)?);
            for (row, ns) in round {
                best[row][i] = best[row][i].min(ns);
            }
            if (n + 1) % 10 == 0 {
                eprintln!("transform {size} B: round {} of {rounds}", n + 1);
            }
        }
    }
    r.line(format!(
        "## The transform, per message ({count} messages three times over, in rounds of \
         {ROUND} that take turns row by row; best round)\n"
    ));
    r.line("| implementation | 100 B | × native | 1 KiB | × native |");
    r.line("| --- | --- | --- | --- | --- |");
    for (row, name) in ROWS.iter().enumerate() {
        let cell = |i: usize| {
            let ns = best[row][i];
            if ns == f64::MAX {
                "not built (feature `peers`)".to_owned()
            } else {
                format!("{ns:.0} ns ({}) | {:.2}×", rate(ns), ns / best[NATIVE][i])
            }
        };
        r.line(format!("| {name} | {} | {} |", cell(0), cell(1)));
    }
    r.line("");
    // The boundary alone, packed and typed, on the blackhole sink.
    let hole = o.plugins.join("blackhole.wasm");
    let mut call = [[f64::MAX; 2]; 2];
    for (i, &size) in sizes.iter().enumerate() {
        let input = messages(count, size);
        let mut packed = instance_with(&limited, &hole, &[]).await?;
        let mut typed = instance_with(&limited, &hole, &[]).await?;
        typed.use_typed_calls();
        through_sink(&mut packed, &input[..input.len().min(10_000)]).await?;
        through_sink(&mut typed, &input[..input.len().min(10_000)]).await?;
        for part in input.chunks(ROUND).cycle().take(rounds) {
            call[0][i] = call[0][i].min(through_sink(&mut packed, part).await?);
            call[1][i] = call[1][i].min(through_sink(&mut typed, part).await?);
        }
    }
    r.line(format!(
        "The call alone: `write` on `blackhole` (answers `ok` without reading), batches of 1024, \
         per message: packed {:.0} ns, typed {:.0} ns ({:.1}×) at 100 B; packed {:.0} ns, typed \
         {:.0} ns ({:.1}×) at 1 KiB.\n",
        call[0][0],
        call[1][0],
        call[1][0] / call[0][0],
        call[0][1],
        call[1][1],
        call[1][1] / call[0][1],
    ));
    let ratio = |a: usize, b: usize, i: usize| best[a][i] / best[b][i];
    for (i, size) in ["100 B", "1 KiB"].iter().enumerate() {
        let mut text = format!(
            "{size}: the packed frames save {:.0}% against the typed list (typed / packed \
             {:.2}); the limits cost {:.0}% (on / off {:.2})",
            (1.0 - 1.0 / ratio(TYPED, ON, i)) * 100.0,
            ratio(TYPED, ON, i),
            (ratio(ON, OFF, i) - 1.0) * 100.0,
            ratio(ON, OFF, i)
        );
        if best[EXTISM][i] < f64::MAX {
            let above = |row: usize| best[row][i] - best[NATIVE][i];
            text.push_str(&format!(
                "; cost above native per message: Patchbay {:.0} ns, Extism {:.0} ns \
                 ({:.1}× Patchbay's), Fluvio {:.0} ns ({:.1}×)",
                above(ON),
                above(EXTISM),
                above(EXTISM) / above(ON),
                above(FLUVIO),
                above(FLUVIO) / above(ON),
            ));
            text.push_str(&format!(
                "; Patchbay is {:.1}× as fast as Extism and {:.1}× as fast as Fluvio \
                 (batches of 1024), and one message per call {:.1}× as fast as Extism and \
                 {:.1}× as fast as Fluvio",
                ratio(EXTISM, ON, i),
                ratio(FLUVIO, ON, i),
                ratio(EXTISM, ON_1, i),
                ratio(FLUVIO_1, ON_1, i),
            ));
        }
        r.line(format!("{text}.\n"));
    }
    Ok(())
}

async fn startup_table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let wasm = o.plugins.join("json-map.wasm");
    let cache = tempfile::tempdir()?;
    let started = Instant::now();
    let runtime = Runtime::new(Some(cache.path().to_owned()))?;
    let engine = started.elapsed();
    let started = Instant::now();
    let loaded = runtime.load(&wasm, None)?;
    let compile = started.elapsed();
    // A second runtime with the same engine settings loads the precompiled artifact.
    let warm = Runtime::new(Some(cache.path().to_owned()))?;
    let started = Instant::now();
    let from_cache = warm.load(&wasm, None)?;
    let cached = started.elapsed();
    drop(from_cache);
    // Live at once, so within the instance pool's 1000 slots (runtime::DEFAULT_INSTANCE_POOL).
    let n = if o.quick { 200 } else { 800 };
    let before = rss_kib();
    let (grants, limits) = (Grants::default(), Limits::default());
    let fresh = async || {
        runtime
            .instantiate(
                &loaded,
                Arc::from("bench/map"),
                Arc::from("map"),
                &grants,
                &limits,
                PluginState::default(),
            )
            .await
    };
    let mut live = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        live.push(fresh().await?);
    }
    let instantiate = started.elapsed() / n as u32;
    let started = Instant::now();
    for instance in &mut live {
        instance
            .init(&map_config())
            .await?
            .map_err(|e| anyhow::anyhow!("json-map init: {}", e.message))?;
    }
    let init = started.elapsed() / n as u32;
    let per_instance = (rss_kib().saturating_sub(before)) as f64 / n as f64;
    drop(live);
    // What a restart after a trap or a hot swap costs: a fresh instance where one was just
    // dropped (with the pool, in the slot that instance left, already mapped).
    let started = Instant::now();
    for _ in 0..n {
        drop(fresh().await?);
    }
    let reuse = started.elapsed() / n as u32;
    let size = std::fs::metadata(&wasm)?.len();
    r.line("## Start-up (json-map)\n");
    r.line("| step | time |");
    r.line("| --- | --- |");
    r.line(format!("| engine and linker | {engine:.2?} |"));
    r.line(format!(
        "| compile the component ({} KiB), no cache | {compile:.2?} |",
        size / 1024
    ));
    r.line(format!(
        "| load from the precompiled cache | {cached:.2?} |"
    ));
    r.line(format!(
        "| instantiate, {n} live at once (mean) | {instantiate:.2?} |"
    ));
    r.line(format!(
        "| instantiate where an instance was just dropped (a restart, a swap; mean of {n}) | {reuse:.2?} |"
    ));
    r.line(format!(
        "| instance pool | {} |",
        match runtime.instance_pool() {
            Some(slots) => format!("{slots} slots (pooling allocator)"),
            None => "off (on-demand allocation)".to_owned(),
        }
    ));
    r.line(format!("| `init` (mean of {n}) | {init:.2?} |"));
    r.line(format!(
        "| resident memory per live, initialised instance | {per_instance:.0} KiB |"
    ));
    r.line("");
    Ok(())
}

/// The same transform (`redact`) written in Rust, Python and JavaScript: size, start-up,
/// memory and cost per message, each through Patchbay's plugin layer.
async fn languages_table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    // StarlingMonkey's garbage-collected heap settles between 96 and 128 MiB over a long run
    // (at 64 MiB, the default, its GC runs out of memory every ~100,000 messages and the
    // instance is replaced), so the JavaScript plugin gets what docs/writing-plugins.md advises.
    const MIB: u64 = 1024 * 1024;
    let plugins = [
        (
            "Rust (patchbay-sdk)",
            "redact.wasm",
            Limits::default().memory,
        ),
        (
            "Python (componentize-py)",
            "py-redact.wasm",
            Limits::default().memory,
        ),
        ("JavaScript (componentize-js)", "js-redact.wasm", 128 * MIB),
    ];
    let config = vec![ConfigEntry {
        key: "fields".into(),
        value: r#"["name"]"#.into(),
    }];
    r.line("## One transform in three languages (`redact`, batches of 256, 100-byte JSON; limits.memory 64 MiB, 128 MiB for JavaScript)\n");
    r.line("| language | component | compile, no cache | load from cache | instantiate + `init` | memory per instance | per message | × Rust |");
    r.line("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut rust_ns = None;
    for (language, file, memory) in plugins {
        // A generous deadline: this measures the cost per message, and a garbage collector's
        // pause may hold one batch past the default second on a loaded machine (seen once
        // with JavaScript).
        let limits = Limits {
            memory,
            call_timeout: Duration::from_secs(10),
            ..Limits::default()
        };
        let wasm = o.plugins.join(file);
        let size = std::fs::metadata(&wasm)
            .with_context(|| {
                format!(
                    "{} is missing: run `cargo xtask sdk-plugins`",
                    wasm.display()
                )
            })?
            .len();
        let cache = tempfile::tempdir()?;
        let runtime = Runtime::new(Some(cache.path().to_owned()))?;
        let started = Instant::now();
        let loaded = runtime.load(&wasm, None)?;
        let compile = started.elapsed();
        let warm = Runtime::new(Some(cache.path().to_owned()))?;
        let started = Instant::now();
        drop(warm.load(&wasm, None)?);
        let cached = started.elapsed();
        let n = if o.quick { 10 } else { 50 };
        let before = rss_kib();
        let mut live = Vec::with_capacity(n);
        let fresh = async || -> anyhow::Result<Instance> {
            let mut instance = runtime
                .instantiate(
                    &loaded,
                    Arc::from("bench/redact"),
                    Arc::from("redact"),
                    &Grants::default(),
                    &limits,
                    PluginState::default(),
                )
                .await?;
            instance
                .init(&config)
                .await?
                .map_err(|e| anyhow::anyhow!("{file} init: {}", e.message))?;
            Ok(instance)
        };
        let started = Instant::now();
        for _ in 0..n {
            live.push(fresh().await?);
        }
        let start = started.elapsed() / n as u32;
        let per_instance = rss_kib().saturating_sub(before) as f64 / n as f64;
        let mut instance = live.pop().context("no instance")?;
        drop(live);
        let count = match (o.quick, rust_ns.is_none()) {
            (true, true) => 50_000,
            (true, false) => 5_000,
            (false, true) => 500_000,
            (false, false) => 50_000,
        };
        let input = messages(count, 100);
        match instance.process(&input[..1]).await?.as_slice() {
            [Outcome::Replace(out)]
                if serde_json::from_slice::<Value>(&out[0].payload)
                    .is_ok_and(|v| v["name"] == "***") => {}
            other => bail!("{file} did not redact `name`: {other:?}"),
        }
        // Warm up, then keep the best of three rounds.
        // A trap is handled as a pipeline does: a fresh instance, the batch again. The time
        // includes that, and the row counts the restarts.
        let mut ns = f64::MAX;
        let mut restarts = Vec::new();
        for round in 0..4 {
            let started = Instant::now();
            for chunk in input.chunks(256) {
                let outcomes = loop {
                    match instance.process(chunk).await {
                        Ok(outcomes) => break outcomes,
                        Err(trap) if restarts.len() < 100 => {
                            restarts.push(trap.reason);
                            instance = fresh().await?;
                        }
                        Err(trap) => bail!("{file}: 100 restarts, the last after {trap}"),
                    }
                };
                if outcomes.len() != chunk.len() {
                    bail!(
                        "{file}: {} outcomes for {} messages",
                        outcomes.len(),
                        chunk.len()
                    );
                }
                black_box(outcomes);
            }
            if round > 0 {
                ns = ns.min(started.elapsed().as_nanos() as f64 / count as f64);
            }
        }
        let rust = *rust_ns.get_or_insert(ns);
        let restarted = match restarts.first() {
            None => String::new(),
            Some(first) => format!(
                "; {} restarts over {} messages, the first: {first}",
                restarts.len(),
                4 * count
            ),
        };
        r.line(format!(
            "| {language} | {:.1} MiB | {compile:.2?} | {cached:.2?} | {start:.2?} | {} | {ns:.0} ns ({}{restarted}) | {:.1}× |",
            size as f64 / (1024.0 * 1024.0),
            if per_instance >= 1024.0 {
                format!("{:.1} MiB", per_instance / 1024.0)
            } else {
                format!("{per_instance:.0} KiB")
            },
            rate(ns),
            ns / rust
        ));
    }
    r.line("");
    Ok(())
}

/// Gaps between consecutive records' processing times (µs), largest first, from a run of
/// generator → tagger → file at `rate` msg/s; with `swaps`, that many hot swaps v1⇄v2 happen
/// during the run through the admin API.
async fn swap_gaps(
    o: &Options,
    dir: &Path,
    rate: u64,
    seconds: u64,
    swaps: u32,
) -> anyhow::Result<SwapRun> {
    let plugins = std::path::absolute(&o.plugins)?;
    let out_dir = dir.join(format!("out-{swaps}"));
    std::fs::create_dir_all(&out_dir)?;
    let count = rate * seconds;
    let file = dir.join(format!("swap-{swaps}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"
[plugins.gen]
path = "{gen}"
config = {{ count = {count}, rate = {rate} }}

[plugins.tag]
path = "{tag}"

[plugins.out]
path = "{sink}"
config = {{ path = "/out/out.jsonl", append = false, sync = "none" }}
grants = {{ dirs = [{{ host = "{out}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "swap"
source = "gen"
transforms = ["tag"]
sinks = ["out"]
batch_size = 64
"#,
            gen = plugins.join("generator.wasm").display(),
            tag = plugins.join("tagger-v1.wasm").display(),
            sink = plugins.join("file-sink.wasm").display(),
            out = out_dir.display(),
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(&o.patchbay)
        .args(["run", "--progress", "0s", "--admin"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(&file)
        .env("PATCHBAY_CACHE_DIR", dir.join("cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Read the log as it comes, so the pipe never fills.
    let log = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        })
    });
    if swaps > 0 {
        // Start swapping once the run is under way, and finish well before it ends.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let every = Duration::from_millis((seconds * 1000 / 2) / u64::from(swaps));
        for i in 0..swaps {
            let version = if i % 2 == 0 { "tagger-v2" } else { "tagger-v1" };
            let body = serde_json::json!({ "path": plugins.join(format!("{version}.wasm")) });
            let answer = patchbay_runtime::admin_client::call(
                "POST",
                &format!("http://127.0.0.1:{port}/v1/plugins/tag/reload"),
                None,
                Some(body.to_string()),
            )
            .await?;
            if answer.status != 200 {
                bail!("swap {i} refused: {}", answer.body);
            }
            tokio::time::sleep(every).await;
        }
    }
    let status = child.wait()?;
    let log = log.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        bail!("the swap run failed ({status}):\n{log}");
    }
    // How long each stage's switch to new code took on the data path.
    let switches: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("(switched in ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    if switches.len() != swaps as usize {
        bail!(
            "{} switches logged for {swaps} swaps:\n{log}",
            switches.len()
        );
    }
    let text = std::fs::read_to_string(out_dir.join("out.jsonl"))?;
    let mut times = Vec::with_capacity(count as usize);
    let mut due = Vec::with_capacity(count as usize);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)?;
        times.push(v["t"].as_u64().context("a record without `t`")?);
        let seq = v["seq"].as_u64().context("a record without `seq`")?;
        // The generator is paced: record `seq` is due seq / rate seconds after it started.
        due.push(seq * 1_000_000 / rate);
    }
    if times.len() as u64 != count {
        bail!("{} records out of {count}", times.len());
    }
    let mut gaps: Vec<u64> = times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    gaps.sort_unstable_by(|a, b| b.cmp(a));
    // Latency: from when a record was due to when the transform processed it. The generator's
    // start on the wall clock is taken as the earliest `t - due`, so the fastest record counts
    // as zero and every other one as how much later it came.
    let start = times
        .iter()
        .zip(&due)
        .map(|(t, d)| t.saturating_sub(*d))
        .min()
        .unwrap_or(0);
    let mut latencies: Vec<u64> = times
        .iter()
        .zip(&due)
        .map(|(t, d)| t.saturating_sub(start + d))
        .collect();
    latencies.sort_unstable();
    Ok(SwapRun {
        gaps,
        latencies,
        switches,
    })
}

/// What one hot-swap run measured, in microseconds.
struct SwapRun {
    /// Gaps between consecutive records' processing times, largest first.
    gaps: Vec<u64>,
    /// Each record's delay behind its due time, smallest first.
    latencies: Vec<u64>,
    /// How long each switch to new code took on the data path.
    switches: Vec<u64>,
}

async fn swap_table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (rate, seconds) = if o.quick { (20_000, 4) } else { (50_000, 10) };
    let swaps = 10;
    let baseline = swap_gaps(o, dir.path(), rate, seconds, 0).await?;
    let swapping = swap_gaps(o, dir.path(), rate, seconds, swaps).await?;
    let mut switches = swapping.switches.clone();
    switches.sort_unstable();
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    let nth = |g: &[u64], n: usize| g.get(n).copied().unwrap_or(0);
    let quantile = |l: &[u64], q: f64| {
        nth(
            l,
            ((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)),
        )
    };
    r.line(format!(
        "## Hot swap: pauses at {rate} msg/s ({} records, batches of 64, {swaps} swaps v1⇄v2)\n",
        rate * seconds
    ));
    r.line("Latency: from when the paced generator made a record due to when the transform processed it (the fastest record counts as 0). Gaps: between consecutive records' processing times; records arrive in batches, so gaps of a batch's worth of time are normal, and a swap shows up as one of the largest.\n");
    r.line("| run | latency p50 | p99 | p99.9 | max | largest gap | 10th largest gap |");
    r.line("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, run) in [("no swap", &baseline), ("10 swaps", &swapping)] {
        r.line(format!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            ms(quantile(&run.latencies, 0.5)),
            ms(quantile(&run.latencies, 0.99)),
            ms(quantile(&run.latencies, 0.999)),
            ms(run.latencies.last().copied().unwrap_or(0)),
            ms(nth(&run.gaps, 0)),
            ms(nth(&run.gaps, 9)),
        ));
    }
    r.line("");
    r.line(format!(
        "Time each switch to new code took on the data path (a fresh instance of the new version, instantiated and initialised between two batches; compiling and the trial `init` happen before, off the data path): median {}, largest {} over {} swaps.\n",
        ms(switches.get(switches.len() / 2).copied().unwrap_or(0)),
        ms(switches.last().copied().unwrap_or(0)),
        switches.len()
    ));
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let peers = if cfg!(feature = "peers") {
        "; extism 1.30.0 (wasmtime 43), fluvio-smartengine 0.50.1 (wasmtime 34)"
    } else {
        ""
    };
    format!("{date}; {cpu}, {cores} cores; {rustc}; wasmtime 48.0.8{peers}")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    for needed in [
        o.plugins.join("json-map.wasm"),
        o.plugins.join("redact.wasm"),
        o.plugins.join("py-redact.wasm"),
        o.plugins.join("js-redact.wasm"),
        o.plugins.join("generator.wasm"),
        o.plugins.join("blackhole.wasm"),
        o.plugins.join("tagger-v1.wasm"),
        o.plugins.join("tagger-v2.wasm"),
        o.plugins.join("file-sink.wasm"),
        o.patchbay.clone(),
    ] {
        if !needed.exists() {
            bail!(
                "{} is missing; run `cargo xtask build` first (or `cargo xtask bench`, which does)",
                needed.display()
            );
        }
    }
    let mut r = Report { lines: Vec::new() };
    r.line(format!(
        "# Patchbay benchmark{}\n",
        if o.quick { " (quick)" } else { "" }
    ));
    r.line(format!("Measured {}.\n", machine()));
    r.line(
        "The transform parses a JSON object, renames one field, adds one, drops one and \
         serializes it. The Patchbay plugin is `plugins/json-map`; the native row, the Extism \
         plugin and the Fluvio SmartModule (`bench/guests/`) compile json-map's own \
         `mapping.rs`, so every row runs the same code with the same crates. Guests are built \
         alike (release, LTO, one codegen unit). Figures are from one run on a shared machine: \
         compare rows of the same run, not runs.\n",
    );
    let run = |section: &str| o.only.is_empty() || o.only.iter().any(|s| s == section);
    if run("transform") {
        transform_table(&o, &mut r).await?;
    }
    if run("startup") {
        startup_table(&o, &mut r).await?;
    }
    if run("languages") {
        languages_table(&o, &mut r).await?;
    }
    if run("e2e") {
        e2e::table(&o, &mut r).await?;
    }
    if run("telemetry") {
        telemetry::table(&o, &mut r)?;
    }
    if run("swap") {
        swap_table(&o, &mut r).await?;
    }
    if run("scaling") {
        scaling::table(&o, &mut r)?;
    }
    if run("isolation") {
        isolation::table(&o, &mut r)?;
    }
    if run("reply") {
        reply::table(&o, &mut r)?;
    }
    if run("formats") {
        formats::table(&o, &mut r).await?;
    }
    // The bridges need Redis, Mosquitto and nats-server: a full run, or `--only connectors`;
    // the quick smoke test in CI leaves them to the connector tests.
    if o.only.iter().any(|s| s == "connectors") || (o.only.is_empty() && !o.quick) {
        connectors::table(&o, &mut r)?;
    }
    // PostgreSQL and a private TLS redis-server: a full run, or `--only databases`.
    if o.only.iter().any(|s| s == "databases") || (o.only.is_empty() && !o.quick) {
        databases::table(&o, &mut r)?;
    }
    // A private three-server NATS cluster and three nodes: a full run, or `--only cluster`.
    if o.only.iter().any(|s| s == "cluster") || (o.only.is_empty() && !o.quick) {
        cluster::table(&o, &mut r).await?;
    }
    if let Some(parent) = o.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&o.out, r.lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", o.out.display()))?;
    eprintln!("wrote {}", o.out.display());
    Ok(())
}
