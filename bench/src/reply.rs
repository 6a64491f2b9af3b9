//! The "reply" section: request/reply through `patchbay run`. http-source → map → `reply`
//! (`respond = "pipeline"`: each caller gets the document the pipeline computed) against the
//! same load sent fire-and-forget style (`respond = "delivery"`: http-source → map →
//! blackhole, each caller gets `{"accepted":1}` once its record is delivered). One JSON
//! request per POST over 16 keep-alive connections; the client times every request.

use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use crate::connectors::{Running, connect, free_port, http_answer, plugins};
use crate::{Options, Report};

const CONNECTIONS: usize = 16;

/// What one mode gave: requests per second and the latencies, sorted.
struct Measured {
    rate: f64,
    latencies: Vec<Duration>,
}

impl Measured {
    fn quantile(&self, q: f64) -> Duration {
        let i = ((self.latencies.len() as f64 * q) as usize).min(self.latencies.len() - 1);
        self.latencies[i]
    }
}

fn pipeline(plugins: &Path, port: u16, reply: bool) -> String {
    let (respond, sinks, sink) = if reply {
        ("pipeline", r#"["reply"]"#, String::new())
    } else {
        (
            "delivery",
            r#"["null"]"#,
            format!(
                "[plugins.null]\npath = \"{}\"\n",
                plugins.join("blackhole.wasm").display()
            ),
        )
    };
    format!(
        r#"
[plugins.api]
path = "{http}"
grants = {{ listen = ["127.0.0.1:{port}"] }}
config = {{ listen = "127.0.0.1:{port}", path = "/api", respond = "{respond}" }}

[plugins.m]
path = "{map}"
config = {{ root = "{{'id': json.id, 'twice': json.n * 2, 'name': json.name}}" }}
{sink}
[[pipeline]]
name = "bench"
source = "api"
transforms = ["m"]
sinks = {sinks}
"#,
        http = plugins.join("http-source.wasm").display(),
        map = plugins.join("map.wasm").display(),
    )
}

/// `per_connection` requests on each of the connections; every answer checked.
fn load(addr: &str, per_connection: usize, reply: bool) -> anyhow::Result<Measured> {
    let go = Arc::new(Barrier::new(CONNECTIONS + 1));
    let mut threads = Vec::new();
    for c in 0..CONNECTIONS {
        let (addr, go) = (addr.to_owned(), go.clone());
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<(Vec<Duration>, Instant)> {
                let mut conn = BufReader::new(connect(&addr)?);
                let mut one = |i: usize| -> anyhow::Result<Duration> {
                    let body = format!(r#"{{"id":{i},"n":{c},"name":"caller {c}"}}"#);
                    let head = format!(
                        "POST /api HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let sent = Instant::now();
                    conn.get_mut().write_all(head.as_bytes())?;
                    conn.get_mut().write_all(body.as_bytes())?;
                    let (status, _, answer) = http_answer(&mut conn)?;
                    let took = sent.elapsed();
                    let expected = if reply {
                        format!(r#"{{"id":{i},"name":"caller {c}","twice":{}}}"#, c * 2)
                    } else {
                        r#"{"accepted":1}"#.to_owned()
                    };
                    if status != 200 || answer != expected {
                        bail!("answered {status} `{answer}`, not `{expected}`");
                    }
                    Ok(took)
                };
                for i in 0..20 {
                    one(i)?;
                }
                go.wait();
                let mut took = Vec::with_capacity(per_connection);
                for i in 0..per_connection {
                    took.push(one(i)?);
                }
                Ok((took, Instant::now()))
            },
        ));
    }
    go.wait();
    let started = Instant::now();
    let mut last = started;
    let mut latencies = Vec::new();
    for t in threads {
        let (took, end) = t
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
        latencies.extend(took);
        last = last.max(end);
    }
    latencies.sort();
    Ok(Measured {
        rate: latencies.len() as f64 / (last - started).as_secs_f64().max(1e-9),
        latencies,
    })
}

fn run(o: &Options, dir: &Path, per_connection: usize, reply: bool) -> anyhow::Result<Measured> {
    let port = free_port()?;
    let name = if reply { "reply" } else { "delivery" };
    let mut running = Running::start(o, dir, name, &pipeline(&plugins(o)?, port, reply))?;
    let addr = format!("127.0.0.1:{port}");
    running.wait_for(&format!("http-source listening on {addr}"), || {
        Ok(connect(&addr).is_ok())
    })?;
    let measured = load(&addr, per_connection, reply)?;
    running.stop()?;
    Ok(measured)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let per_connection = if o.quick { 100 } else { 2000 };
    let dir = tempfile::tempdir()?;
    let delivery = run(o, dir.path(), per_connection, false)?;
    let reply = run(o, dir.path(), per_connection, true)?;
    r.line(format!(
        "## Request/reply: http-source → map → `reply` against the same requests answered on \
         delivery ({} requests of one JSON object, {CONNECTIONS} keep-alive connections, one \
         request at a time on each)\n",
        per_connection * CONNECTIONS
    ));
    r.line(
        "`respond = \"delivery\"` answers `{\"accepted\":1}` once the record reached the sink \
         (a blackhole); `respond = \"pipeline\"` answers with the document `map` computed, \
         through the pipeline's `reply` destination. Latency is the client's, from sending the \
         request to reading the whole answer.\n",
    );
    r.line("| mode | requests/s | p50 | p99 | requests/s vs delivery |");
    r.line("|---|---|---|---|---|");
    for (mode, m) in [("delivery", &delivery), ("pipeline (reply)", &reply)] {
        r.line(format!(
            "| {mode} | {:.0} | {} | {} | {:.2} |",
            m.rate,
            ms(m.quantile(0.5)),
            ms(m.quantile(0.99)),
            m.rate / delivery.rate
        ));
    }
    r.line("");
    Ok(())
}
