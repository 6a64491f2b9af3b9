//! TLS done by the host (`wasi:tls`, `grants.tls`) for the connectors, against private servers
//! this test starts with certificates it makes with `openssl`: the right CA works, a wrong one
//! fails naming the host and the cause, mutual TLS presents the granted client certificate,
//! and a `grants.tls` file that is not there is a config error at its place in the file.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Scratch, text, wait_until};

const COUNT: u64 = 10_000;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME-ca.pem`) and a certificate it signed (`NAME.pem`, `NAME.key`) for
/// 127.0.0.1/localhost, usable by a server and a client.
pub(crate) fn certificates(dir: &Path, name: &str) {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// A private redis-server speaking only TLS on `port`, asking clients for a certificate
/// signed by `server-ca` (mutual TLS).
fn tls_redis(dir: &Path, port: u16) -> Server {
    Server::start(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
            ])
            .args([
                "--tls-ca-cert-file",
                "server-ca.pem",
                "--tls-auth-clients",
                "yes",
            ])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .current_dir(dir),
        port,
    )
}

fn redis_cli(dir: &Path, port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .args([
            "--cacert",
            "server-ca.pem",
            "--cert",
            "client.pem",
            "--key",
            "client.key",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn pipeline(port: u16, tls: &str) -> String {
    format!(
        r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.out]
path = "{{plugin:redis-sink}}"
config = {{ url = "rediss://127.0.0.1:{port}", mode = "list", key = "tls-list" }}
grants = {{ tcp = ["127.0.0.1:{port}"]{tls} }}

[[pipeline]]
name = "tls"
source = "gen"
sinks = ["out"]
"#
    )
}

#[test]
fn redis_over_tls_with_the_granted_ca_and_client_certificate() {
    let s = Scratch::new();
    certificates(s.path(), "server");
    certificates(s.path(), "client");
    certificates(s.path(), "other");
    // The server trusts client certificates signed by the server's CA: sign the client's
    // with it too.
    openssl(
        s.path(),
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "server-ca.pem",
            "-CAkey",
            "server-ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
    );
    let port = 26379;
    let _redis = tls_redis(s.path(), port);

    // Mutual TLS: the granted CA verifies the server, the granted certificate the client.
    let granted = r#", tls = { ca = "server-ca.pem", cert = "client.pem", key = "client.key" }"#;
    s.write("p.toml", &pipeline(port, granted));
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `tls`: {COUNT} in, 0 dropped, {COUNT} written to `out`"
        )),
        "{stderr}"
    );
    assert_eq!(
        redis_cli(s.path(), port, &["LLEN", "tls-list"]),
        COUNT.to_string()
    );

    // A CA that did not sign the server's certificate: the start fails naming host and cause.
    let wrong = r#", tls = { ca = "other-ca.pem", cert = "client.pem", key = "client.key" }"#;
    s.write("p.toml", &pipeline(port, wrong));
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "redis 127.0.0.1:{port}: TLS with 127.0.0.1 failed: the server's certificate is not \
             signed by a trusted CA (grant the CA that signed it: grants.tls = {{ ca = \
             \"FILE.pem\" }})"
        )),
        "{stderr}"
    );
    // No grants.tls: the system's roots, which do not hold a test CA.
    s.write("p.toml", &pipeline(port, ""));
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains("TLS with 127.0.0.1 failed: the server's certificate is not signed"),
        "{stderr}"
    );
    // A file that is not there: a config error at its place.
    s.write(
        "p.toml",
        &pipeline(port, r#", tls = { ca = "missing.pem" }"#),
    );
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains("p.toml:9:52: ")
            && stderr.contains("plugin `out`: grants.tls: cannot read CA file"),
        "{stderr}"
    );
    // A certificate without its key.
    s.write(
        "p.toml",
        &pipeline(port, r#", tls = { cert = "client.pem" }"#),
    );
    let (_, stderr) = text(&s.run(&["run", "p.toml"]));
    assert!(
        stderr.contains("grants.tls: a client certificate needs its private key: add `key`"),
        "{stderr}"
    );
}

/// A private server process, killed at the end.
pub(crate) struct Server(Child);

impl Server {
    pub(crate) fn start(cmd: &mut Command, port: u16) -> Server {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server (Debian packages mosquitto, nats-server, redis-server…)");
        let server = Server(child);
        wait_until("the TLS server to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn file_sink(dir: &str) -> String {
    format!(
        r#"
[plugins.file]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{dir}", guest = "/out", mode = "rw" }}] }}
"#
    )
}

/// Wait until the source pipeline `run` wrote every message to out/out.jsonl, stop it, and
/// check each number came once.
fn every_message_once(s: &Scratch, mut run: crate::Running) {
    run.wait_for("every message in the file", Duration::from_secs(60), || {
        lines(s, "out/out.jsonl") >= COUNT as usize
    });
    let _ = run.interrupt();
    let counts = crate::seq_counts(&s.read("out/out.jsonl"));
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
}

fn lines(s: &Scratch, file: &str) -> usize {
    std::fs::read_to_string(s.path().join(file)).map_or(0, |t| t.lines().count())
}

/// MQTT over TLS both ways: a QoS 1 session (made by `mosquitto_sub -c -E`, which exits once
/// subscribed) receives what mqtt-sink publishes over `mqtts://`, and mqtt-source drains it
/// over `mqtts://` into a file.
#[test]
fn mqtt_over_tls_both_ways() {
    let s = Scratch::new();
    certificates(s.path(), "server");
    s.mkdir("out");
    let port = 28883;
    s.write(
        "mosquitto.conf",
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             cafile server-ca.pem\ncertfile server.pem\nkeyfile server.key\nuser root\n"
        ),
    );
    let _broker = Server::start(
        Command::new("mosquitto")
            .args(["-c", "mosquitto.conf"])
            .current_dir(s.path()),
        port,
    );
    let subscribed = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--cafile",
            "server-ca.pem",
        ])
        .args(["-c", "-i", "pb-tls", "-q", "1", "-t", "tls/test", "-E"])
        .current_dir(s.path())
        .output()
        .expect("mosquitto_sub (Debian package mosquitto-clients)");
    assert!(subscribed.status.success(), "{subscribed:?}");
    let url = format!("mqtts://127.0.0.1:{port}");
    let grants =
        format!(r#"grants = {{ tcp = ["127.0.0.1:{port}"], tls = {{ ca = "server-ca.pem" }} }}"#);
    s.write(
        "sink.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.out]
path = "{{plugin:mqtt-sink}}"
config = {{ url = "{url}", topic = "tls/test", qos = 1 }}
{grants}

[[pipeline]]
name = "to-mqtt"
source = "gen"
sinks = ["out"]
"#
        ),
    );
    let out = s.run(&["run", "sink.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    s.write(
        "source.toml",
        &format!(
            r#"
[plugins.in]
path = "{{plugin:mqtt-source}}"
config = {{ url = "{url}", topics = ["tls/test"], qos = 1, client_id = "pb-tls" }}
{grants}
{}
[[pipeline]]
name = "from-mqtt"
source = "in"
sinks = ["file"]
"#,
            file_sink("out")
        ),
    );
    let run = crate::Running::start(s.path(), &["run", "source.toml"]);
    every_message_once(&s, run);
}

/// NATS over TLS both ways (TLS after the server's INFO): nats-source subscribed over
/// `tls://`, then nats-sink publishes over `tls://`; and a `nats://` URL to a server that
/// requires TLS says what to write.
#[test]
fn nats_over_tls_both_ways() {
    let s = Scratch::new();
    certificates(s.path(), "server");
    s.mkdir("out");
    let port = 24225;
    let _server = Server::start(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--tls", "--tlscert", "server.pem", "--tlskey", "server.key"])
            .current_dir(s.path()),
        port,
    );
    let grants =
        format!(r#"grants = {{ tcp = ["127.0.0.1:{port}"], tls = {{ ca = "server-ca.pem" }} }}"#);
    let source = |scheme: &str| {
        format!(
            r#"
[plugins.in]
path = "{{plugin:nats-source}}"
config = {{ url = "{scheme}://127.0.0.1:{port}", subject = "tls.test" }}
{grants}
{}
[[pipeline]]
name = "from-nats"
source = "in"
sinks = ["file"]
"#,
            file_sink("out")
        )
    };
    s.write("plain.toml", &source("nats"));
    let (_, stderr) = text(&s.run(&["run", "plain.toml"]));
    assert!(
        stderr.contains(&format!(
            "127.0.0.1:{port} requires TLS: write its URL as tls://127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    s.write("source.toml", &source("tls"));
    let run = crate::Running::start(s.path(), &["run", "source.toml"]);
    wait_until("the source to subscribe", Duration::from_secs(30), || {
        run.stderr().contains("connected to")
    });
    s.write(
        "sink.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.out]
path = "{{plugin:nats-sink}}"
config = {{ url = "tls://127.0.0.1:{port}", subject = "tls.test" }}
{grants}

[[pipeline]]
name = "to-nats"
source = "gen"
sinks = ["out"]
"#
        ),
    );
    let out = s.run(&["run", "sink.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    every_message_once(&s, run);
}

/// postgres-sink with `sslmode=require` against a private PostgreSQL with `ssl = on`: the
/// granted CA verifies it; the machine's own server, whose certificate no granted CA signed,
/// is refused naming host and cause.
#[test]
fn postgres_over_tls() {
    let s = Scratch::new();
    certificates(s.path(), "server");
    let pg = crate::postgres::PrivatePostgres::start(
        25433,
        &[
            "ssl=on",
            "ssl_cert_file={dir}/server.pem",
            "ssl_key_file={dir}/server.key",
        ],
        &[&s.path().join("server.pem"), &s.path().join("server.key")],
    );
    pg.psql("CREATE TABLE tls_rows (seq bigint PRIMARY KEY, data text)");
    let pipeline = |port: u16| {
        format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.db]
path = "{{plugin:postgres-sink}}"
config = {{ url = "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require", table = "tls_rows" }}
grants = {{ tcp = ["127.0.0.1:{port}"], tls = {{ ca = "server-ca.pem" }} }}

[[pipeline]]
name = "to-pg"
source = "gen"
sinks = ["db"]
"#
        )
    };
    s.write("p.toml", &pipeline(pg.port));
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        pg.psql("SELECT count(*), count(DISTINCT seq) FROM tls_rows"),
        format!("{COUNT}|{COUNT}")
    );
    assert!(
        stderr.contains(&format!("{COUNT} written to `db`")),
        "{stderr}"
    );

    // The machine's server speaks TLS with its own certificate (Debian's snakeoil), which the
    // granted CA did not sign; or it does not speak TLS at all. Either way the start fails
    // and says why.
    crate::postgres::require_postgres();
    s.write("p.toml", &pipeline(5432));
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("postgres 127.0.0.1:5432: TLS with 127.0.0.1 failed: the server's certificate is not signed by a trusted CA")
            || stderr.contains("127.0.0.1:5432: the server does not accept TLS (sslmode=require)"),
        "{stderr}"
    );
}

/// A private HTTPS server (Python's http.server behind its ssl module) on `port` that asks
/// for a client certificate signed by `client-ca.pem` and appends each POST body to
/// `received.jsonl`.
const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
port, out = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(out, "ab") as f:
            f.write(body if body.endswith(b"\n") else body + b"\n")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("server.pem", "server.key")
context.verify_mode = ssl.CERT_REQUIRED
context.load_verify_locations("client-ca.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// http-sink to `https://` with mutual TLS: the granted CA verifies the server, the granted
/// client certificate gets past the server's check, and all 10,000 records arrive; without
/// the CA, the host's log names the server and the cause and the sink stops (fatal).
#[test]
fn http_sink_over_https_with_mutual_tls() {
    let s = Scratch::new();
    certificates(s.path(), "server");
    certificates(s.path(), "client");
    s.write("server.py", HTTPS_SERVER);
    let port = 18443;
    let _server = Server::start(
        Command::new("python3")
            .args(["server.py", &port.to_string(), "received.jsonl"])
            .current_dir(s.path()),
        port,
    );
    let pipeline = |tls: &str| {
        format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.api]
path = "{{plugin:http-sink}}"
config = {{ url = "https://127.0.0.1:{port}/ingest", batch = "ndjson" }}
grants = {{ http = ["https://127.0.0.1:{port}"]{tls} }}

[[pipeline]]
name = "to-https"
source = "gen"
sinks = ["api"]
batch_size = 500
"#
        )
    };
    s.write(
        "p.toml",
        &pipeline(r#", tls = { ca = "server-ca.pem", cert = "client.pem", key = "client.key" }"#),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{COUNT} written to `api`")),
        "{stderr}"
    );
    let counts = crate::seq_counts(&s.read("received.jsonl"));
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));

    // The system's roots do not know the test CA: refused, with host and reason, and fatal.
    s.write("p.toml", &pipeline(""));
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "TLS with 127.0.0.1 failed: the server's certificate is not signed by a trusted CA \
             (grant the CA that signed it: grants.tls = { ca = \"FILE.pem\" })"
        ) && stderr.contains("the server's TLS certificate was refused"),
        "{stderr}"
    );
}
