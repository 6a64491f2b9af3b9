//! The "telemetry" section: what `[telemetry]` costs the end-to-end pipeline (generator →
//! json-map → blackhole, as in "e2e"), in one run: off; on with `sample = 0` (a sampling
//! decision a record, no header, no spans); on with `sample = 1` (a span per record per stage, exported over
//! OTLP/HTTP to a receiver in this process that reads and drops the bodies).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

use crate::e2e::{Run, pipeline_run_with};
use crate::{Options, Report};

const ROUNDS: usize = 3;
const BATCH: u32 = 1024;

/// An OTLP/HTTP receiver on its own thread: answers every export with 200 and counts the
/// requests and bytes. Its port.
fn receiver(requests: Arc<AtomicU64>, bytes: Arc<AtomicU64>) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            requests.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            async {
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                let _ = axum::serve(listener, app).await;
            }
        });
    });
    Ok(port)
}

pub(crate) fn table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let count: u64 = if o.quick { 100_000 } else { 1_000_000 };
    let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let port = receiver(requests.clone(), bytes.clone())?;
    let otlp = format!("[telemetry]\notlp = \"http://127.0.0.1:{port}\"\n");
    let modes = [
        ("off", String::new()),
        (
            "on, `sample = 0`: a sampling decision per record, no header, no spans",
            format!("{otlp}sample = 0.0\n"),
        ),
        (
            "on, `sample = 1`: a span per record and stage, exported",
            format!("{otlp}sample = 1.0\n"),
        ),
    ];
    // Warm the precompiled cache.
    pipeline_run_with(o, dir.path(), 10, 16, None, "")?;
    let mut best: Vec<Option<Run>> = modes.iter().map(|_| None).collect();
    for round in 0..ROUNDS {
        for (i, (_, head)) in modes.iter().enumerate() {
            let run = pipeline_run_with(o, dir.path(), count, BATCH, None, head)?;
            if best[i].as_ref().is_none_or(|b| run.running > b.running) {
                best[i] = Some(run);
            }
        }
        eprintln!("telemetry: round {} of {ROUNDS}", round + 1);
    }
    let Some(Some(off)) = best.first() else {
        bail!("no run with telemetry off");
    };
    let off = off.running;
    r.line(format!(
        "## Telemetry: `[telemetry]` off and on, generator → json-map → blackhole ({count} \
         100-byte messages, batches of {BATCH}, best of {ROUNDS} runs taking turns)\n"
    ));
    r.line(
        "The rate over the pipeline's own running time (its summary line), as in \"End to end\"; \
         spans go to a receiver in the benchmark's process over OTLP/HTTP (protobuf), which \
         reads each body and answers 200. The SDK's batch processor keeps at most 2048 spans \
         waiting: what the exporter cannot send in time is dropped, not queued without bound.\n",
    );
    r.line("| tracing | msg/s | × off | CPU per message |");
    r.line("| --- | --- | --- | --- |");
    for ((label, _), run) in modes.iter().zip(&best) {
        let run = run.as_ref().context("a mode without a run")?;
        r.line(format!(
            "| {label} | {:.0} k/s | {:.2} | {:.2} µs |",
            run.running / 1e3,
            run.running / off,
            run.cpu_us
        ));
    }
    r.line(format!(
        "\nThe receiver took {} export requests, {:.1} MB in all.\n",
        requests.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed) as f64 / 1e6
    ));
    Ok(())
}
