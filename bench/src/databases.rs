//! The "databases" section: postgres-sink into the machine's PostgreSQL (database `test`) at
//! batches of 256 and 1024, against `psql`'s `\copy` of the same rows into the same table;
//! amqp-sink and amqp-source against a plain client (`amqp`); and
//! what TLS costs one connector: redis-sink into one private redis-server that listens in
//! clear text and over TLS at once (certificates made with `openssl`), so both runs meet the
//! same server. Each row is one `patchbay run` (rates over the pipeline's own running time,
//! as `scaling` measures them); counts are checked with `psql` and `redis-cli`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::scaling::run;
use crate::{Options, Report};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const TABLE: &str = "pb_bench_rows";

fn psql(sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-tA",
            "-v",
        ])
        .args(["ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("psql (Debian package postgresql-client)")?;
    if !out.status.success() {
        bail!("psql -c {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn plugin(o: &Options, name: &str) -> anyhow::Result<String> {
    Ok(std::path::absolute(o.plugins.join(format!("{name}.wasm")))?
        .display()
        .to_string())
}

fn sink_pipeline(
    o: &Options,
    n: u64,
    batch: u32,
    concurrency: u32,
    sink: &str,
) -> anyhow::Result<String> {
    Ok(format!(
        r#"
[plugins.gen]
path = "{}"
config = {{ count = {n}, size = 100 }}

[plugins.out]
{sink}

[[pipeline]]
name = "p"
source = "gen"
sinks = ["out"]
batch_size = {batch}

[pipeline.stages.out]
concurrency = {concurrency}
"#,
        plugin(o, "generator")?
    ))
}

/// postgres-sink rows and the `\copy` ceiling.
fn postgres(o: &Options, dir: &Path, r: &mut Report, n: u64) -> anyhow::Result<()> {
    psql(&format!(
        "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (seq bigint, data text)"
    ))?;
    // The ceiling: the generator's rows (`{"seq":N,"data":"xxx…"}` of 100 bytes) as COPY text.
    let rows = dir.join("rows.tsv");
    let mut text = String::new();
    for seq in 0..n {
        let pad = 100usize.saturating_sub(format!(r#"{{"seq":{seq},"data":""}}"#).len());
        text.push_str(&format!("{seq}\t{}\n", "x".repeat(pad)));
    }
    std::fs::write(&rows, text)?;
    let copy = || -> anyhow::Result<f64> {
        psql(&format!("TRUNCATE {TABLE}"))?;
        let started = Instant::now();
        psql(&format!(
            "\\copy {TABLE} (seq, data) FROM '{}'",
            rows.display()
        ))?;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let count = psql(&format!("SELECT count(*) FROM {TABLE}"))?;
        if count != n.to_string() {
            bail!("\\copy wrote {count} rows, not {n}");
        }
        Ok(rate)
    };
    let mut ceiling = 0.0f64;
    for _ in 0..3 {
        ceiling = ceiling.max(copy()?);
    }
    let sink = format!(
        "path = \"{}\"\nconfig = {{ url = \"{PG_URL}\", table = \"{TABLE}\" }}\ngrants = {{ tcp = [\"127.0.0.1:5432\"] }}",
        plugin(o, "postgres-sink")?
    );
    r.line("| postgres-sink | batch | instances | rows/s | × `psql \\copy` |");
    r.line("| --- | --- | --- | --- | --- |");
    for (batch, concurrency) in [(256, 1), (1024, 1), (1024, 2)] {
        let mut best = 0.0f64;
        for round in 0..3 {
            psql(&format!("TRUNCATE {TABLE}"))?;
            let toml = sink_pipeline(o, n, batch, concurrency, &sink)?;
            let (rate, _) = run(
                o,
                dir,
                &format!("pg-{batch}-{concurrency}-{round}"),
                &toml,
                n,
            )?;
            let count = psql(&format!(
                "SELECT count(*), count(DISTINCT seq) FROM {TABLE}"
            ))?;
            if count != format!("{n}|{n}") {
                bail!("postgres-sink wrote {count} (rows, distinct), not {n}");
            }
            best = best.max(rate);
        }
        r.line(format!(
            "| generator → postgres-sink | {batch} | {concurrency} | {:.1} k/s | {:.2} |",
            best / 1e3,
            best / ceiling
        ));
    }
    r.line(format!(
        "| `psql \\copy` of the same {n} rows (text format), best of 3 | — | — | {:.1} k/s | 1.00 |",
        ceiling / 1e3
    ));
    psql(&format!("DROP TABLE {TABLE}"))?;
    Ok(())
}

/// A private redis-server listening on `plain` in clear text and on `tls` over TLS.
struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &str) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args.split(' '))
        .current_dir(dir)
        .output()
        .context("openssl")?;
    if !out.status.success() {
        bail!("openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn redis(dir: &Path, plain: u16, tls: u16) -> anyhow::Result<Redis> {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(
        dir,
        &format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-CA"),
    )?;
    openssl(
        dir,
        &format!("req {ec} -keyout server.key -out server.csr -subj /CN=localhost"),
    )?;
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n")?;
    openssl(
        dir,
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext",
    )?;
    let child = Command::new("redis-server")
        .args(["--port", &plain.to_string(), "--tls-port", &tls.to_string()])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--bind", "127.0.0.1"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .context("redis-server")?;
    let server = Redis(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls)).is_err() {
        if Instant::now() > deadline {
            bail!("the private redis-server did not listen on {tls}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

fn llen(port: u16, key: &str) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "LLEN", key])
        .output()
        .context("redis-cli")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// redis-sink in clear text and over TLS, same server, taking turns.
fn tls_cost(o: &Options, dir: &Path, r: &mut Report, n: u64) -> anyhow::Result<()> {
    let (plain, tls) = (26390, 26391);
    let _server = redis(dir, plain, tls)?;
    let ca = dir.join("ca.pem");
    let mut best = [0.0f64; 2];
    for round in 0..3 {
        for (i, secure) in [false, true].into_iter().enumerate() {
            let key = format!("bench-{round}-{i}");
            let (url, port, extra) = match secure {
                false => (format!("redis://127.0.0.1:{plain}"), plain, String::new()),
                true => (
                    format!("rediss://127.0.0.1:{tls}"),
                    tls,
                    format!(", tls = {{ ca = \"{}\" }}", ca.display()),
                ),
            };
            let sink = format!(
                "path = \"{}\"\nconfig = {{ url = \"{url}\", mode = \"list\", key = \"{key}\" }}\ngrants = {{ tcp = [\"127.0.0.1:{port}\"]{extra} }}",
                plugin(o, "redis-sink")?
            );
            let toml = sink_pipeline(o, n, 1024, 1, &sink)?;
            let (rate, _) = run(o, dir, &format!("redis-{round}-{i}"), &toml, n)?;
            let length = llen(plain, &key)?;
            if length != n.to_string() {
                bail!("redis-sink wrote {length} entries to {key}, not {n}");
            }
            best[i] = best[i].max(rate);
        }
    }
    r.line("");
    r.line(
        "| redis-sink (RPUSH, batches of 1024), one private redis-server | msg/s | × clear text |",
    );
    r.line("| --- | --- | --- |");
    r.line(format!(
        "| `redis://` clear text | {:.1} k/s | 1.00 |",
        best[0] / 1e3
    ));
    r.line(format!(
        "| `rediss://` TLS 1.3 done by the host (wasi:tls, rustls) | {:.1} k/s | {:.2} |",
        best[1] / 1e3,
        best[1] / best[0]
    ));
    Ok(())
}

pub(crate) fn table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let n = if o.quick { 50_000 } else { 500_000 };
    r.line("");
    r.line(format!(
        "## Databases, RabbitMQ and TLS: postgres-sink against `psql \\copy`; amqp-sink and amqp-source against a plain client; redis-sink in clear text and over TLS ({n} 100-byte JSON messages per run, best of 3)"
    ));
    r.line("");
    postgres(o, dir.path(), r, n)?;
    crate::amqp::rows(o, dir.path(), r, n)?;
    tls_cost(o, dir.path(), r, n)?;
    Ok(())
}
