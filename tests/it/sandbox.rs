//! Hostile plugins (`tests/plugins/test-hostile`, `test-unknown-import`): each attack is denied
//! or stopped, with the message a security team would look for, and nothing else suffers.

use std::time::Instant;

use crate::{Scratch, text};

/// A one-message pipeline through `test-hostile` with the given plugin settings; the report
/// the attack writes lands in `out/NAME.txt`.
pub(crate) fn attack_pipeline(name: &str, hostile: &str, extra: &str) -> String {
    format!(
        r#"
[plugins.gen-{name}]
path = "{{plugin:generator}}"
config = {{ count = 1 }}

[plugins.{name}]
path = "{{plugin:test-hostile}}"
{hostile}

[plugins.out-{name}]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/{name}.txt", append = false }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "{name}"
source = "gen-{name}"
transforms = ["{name}"]
sinks = ["out-{name}"]
retry = {{ attempts = 1 }}
{extra}
"#
    )
}

/// A victim pipeline `calm`: `count` generated messages (`rate` a second; 0: as fast as it
/// goes) into `out/calm.jsonl`, for a hostile pipeline in the same file not to disturb.
pub(crate) fn victim_pipeline(count: u64, rate: u64) -> String {
    format!(
        r#"
[plugins.gen-calm]
path = "{{plugin:generator}}"
config = {{ count = {count}, rate = {rate} }}

[plugins.out-calm]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/calm.jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "calm"
source = "gen-calm"
sinks = ["out-calm"]
"#
    )
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline_while_another_pipeline_runs_on() {
    let s = Scratch::new();
    s.mkdir("out");
    let mut config = attack_pipeline(
        "spin",
        r#"config = { attack = "loop" }
limits = { call_timeout = "300ms" }"#,
        "",
    );
    config.push_str(&victim_pipeline(300_000, 300_000));
    s.write("p.toml", &config);
    let started = Instant::now();
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: pipeline `spin`: transform `spin` (#1) trapped in `process`: the call ran past \
             its deadline of 300ms and was stopped after "
        ),
        "{stderr}"
    );
    assert!(stderr.contains("(limits.call_timeout)"), "{stderr}");
    // The healthy pipeline delivered everything while the loop ran.
    assert_eq!(s.read("out/calm.jsonl").lines().count(), 300_000);
    assert!(
        stderr.contains("pipeline `calm`: 300000 in, 0 dropped, 300000 written to `out-calm`"),
        "{stderr}"
    );
    eprintln!("run took {:?}", started.elapsed());
}

#[test]
fn a_memory_bomb_is_stopped_at_the_cap_with_plugin_and_limit_named() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &attack_pipeline(
            "bomb",
            r#"config = { attack = "memory" }
limits = { memory = "16MiB" }"#,
            "",
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: pipeline `bomb`: transform `bomb` (#1) trapped in `process`: memory limit of \
             16.0 MiB reached (limits.memory)"
        ),
        "{stderr}"
    );
}

pub(crate) fn report(s: &Scratch, name: &str) -> String {
    s.read(&format!("out/{name}.txt")).trim_end().to_owned()
}

#[cfg(unix)]
#[test]
fn files_outside_the_granted_directory_cannot_be_read() {
    let s = Scratch::new();
    s.mkdir("out");
    s.mkdir("data");
    std::fs::write(s.path().join("data/ok.txt"), "granted content\n").unwrap();
    std::fs::write(s.path().join("secret.txt"), "top secret\n").unwrap();
    std::os::unix::fs::symlink(s.path().join("secret.txt"), s.path().join("data/link-out"))
        .unwrap();
    let grant = r#"grants = { dirs = [{ host = "data", guest = "/data", mode = "ro" }] }"#;
    let mut config = String::new();
    for (name, path) in [
        ("passwd", "/etc/passwd"),
        ("dotdot", "/data/../secret.txt"),
        ("symlink", "/data/link-out"),
        ("granted", "/data/ok.txt"),
    ] {
        config.push_str(&attack_pipeline(
            name,
            &format!("config = {{ attack = \"read-file\", path = \"{path}\" }}\n{grant}"),
            "",
        ));
    }
    config.push_str(&attack_pipeline(
        "write",
        &format!("config = {{ attack = \"write-file\", path = \"/data/new.txt\" }}\n{grant}"),
        "",
    ));
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for name in ["passwd", "dotdot", "symlink", "write"] {
        let r = report(&s, name);
        assert!(r.contains(": denied: "), "{name}: {r}");
        assert!(!r.contains("secret"), "{name} leaked: {r}");
    }
    assert_eq!(
        report(&s, "granted"),
        "attack read-file: ok: granted content"
    );
    assert!(
        !s.path().join("data/new.txt").exists(),
        "read-only grant was written"
    );
    // Escapes that reach the host are audited; `/etc/passwd` matches no granted directory, so
    // the plugin's own libc refuses it without asking the host.
    for (name, target) in [
        ("dotdot", "../secret.txt"),
        ("symlink", "link-out"),
        ("write", "new.txt"),
    ] {
        assert!(
            stderr.contains(&format!(
                "sandbox: denied filesystem access to {target} for plugin `{name}/{name}` (outside its granted directories, or a write under a read-only grant)"
            )),
            "{name}: {stderr}"
        );
    }
    assert!(!stderr.contains("for plugin `granted/granted`"), "{stderr}");
}

#[test]
fn tcp_is_denied_without_a_grant_and_allowed_with_one() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let s = Scratch::new();
    s.mkdir("out");
    let mut config = attack_pipeline(
        "nogrant",
        &format!("config = {{ attack = \"tcp-connect\", addr = \"{addr}\" }}"),
        "",
    );
    config.push_str(&attack_pipeline(
        "granted",
        &format!(
            "config = {{ attack = \"tcp-connect\", addr = \"{addr}\" }}\ngrants = {{ tcp = [\"{addr}\"] }}"
        ),
        "",
    ));
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        report(&s, "nogrant").starts_with("attack tcp-connect: denied: "),
        "{}",
        report(&s, "nogrant")
    );
    assert!(
        report(&s, "granted").starts_with("attack tcp-connect: ok"),
        "{}",
        report(&s, "granted")
    );
    // With no network grant at all, not even a socket: refused where it is made.
    assert!(
        stderr.contains(
            "sandbox: denied tcp access to a new socket for plugin `nogrant/nogrant` (not \
             granted: no grants.tcp or grants.listen)"
        ),
        "{stderr}"
    );
    drop(listener);
}

#[test]
fn a_plugin_sees_only_the_environment_variables_it_is_granted() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &attack_pipeline(
            "env",
            r#"config = { attack = "env" }
grants = { env = ["PATCHBAY_TEST_VISIBLE", "PATCHBAY_TEST_UNSET"] }"#,
            "",
        ),
    );
    let out = crate::patchbay()
        .args(["run", "p.toml"])
        .current_dir(s.path())
        .env("PATCHBAY_TEST_VISIBLE", "yes")
        .env("PATCHBAY_TEST_HIDDEN", "no")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(
        report(&s, "env"),
        "attack env: ok: PATCHBAY_TEST_VISIBLE=yes"
    );
}

#[test]
fn deep_recursion_and_oversized_output_are_stopped() {
    let s = Scratch::new();
    s.mkdir("out");
    let mut config = attack_pipeline("deep", r#"config = { attack = "recursion" }"#, "");
    config.push_str(&attack_pipeline(
        "flood",
        r#"config = { attack = "big-output", count = 20000, size = 1024 }"#,
        "",
    ));
    // 400,000 empty headers on one message: no bytes, but 64 each against max_output, so the
    // transform that made them is refused, not the sink that would have had to take them.
    config.push_str(&attack_pipeline(
        "headers",
        r#"config = { attack = "many-headers", count = 400000 }"#,
        "",
    ));
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Rust guests keep their stack in linear memory: overflowing it is an out-of-bounds
    // access; tiny frames hit the engine's own stack limit instead. Either way, a trap.
    assert!(
        stderr.contains(
            "error: pipeline `deep`: transform `deep` (#1) trapped in `process`: wasm trap: out \
             of bounds memory access"
        ) || stderr.contains("trapped in `process`: call stack exhausted"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "error: pipeline `flood`: transform `flood` (#1) trapped in `process`: output of"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("is over the limit of 16.0 MiB (limits.max_output)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "error: pipeline `headers`: transform `headers` (#1) trapped in `process`: output of"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("sink `out-headers`"), "{stderr}");
}

#[test]
fn limits_apply_to_init_too() {
    let s = Scratch::new();
    s.mkdir("out");
    let mut config = attack_pipeline(
        "spin",
        r#"config = { attack = "init-loop" }
limits = { init_timeout = "300ms" }"#,
        "",
    );
    config.push_str(&attack_pipeline(
        "bomb",
        r#"config = { attack = "init-memory" }
limits = { memory = "16MiB" }"#,
        "",
    ));
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "pipeline `spin`: transform `spin` could not start: plugin `spin/spin` trapped in \
             `init`: the call ran past its deadline of 300ms and was stopped after "
        ),
        "{stderr}"
    );
    assert!(stderr.contains("(limits.init_timeout)"), "{stderr}");
    assert!(
        stderr.contains(
            "pipeline `bomb`: transform `bomb` could not start: plugin `bomb/bomb` trapped in \
             `init`: memory limit of 16.0 MiB reached (limits.memory)"
        ),
        "{stderr}"
    );
}

#[test]
fn a_component_importing_an_unknown_interface_is_refused_before_any_data_flows() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"

[plugins.evil]
path = "{plugin:test-unknown-import}"

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/never.txt" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "evil"
source = "gen"
transforms = ["evil"]
sinks = ["out"]
"#,
    );
    for command in ["validate", "run"] {
        let out = s.run(&[command, "p.toml"]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("imports `evil:backdoor/shell@1.0.0`, which Patchbay does not provide"),
            "{command}: {stderr}"
        );
    }
    assert!(!s.path().join("out/never.txt").exists());
}

/// The issue's own case: PostgreSQL on 127.0.0.1:5432 is there, and only a grant reaches it.
#[test]
fn postgresql_is_reachable_only_with_a_grant() {
    const PG: &str = "127.0.0.1:5432";
    assert!(
        std::net::TcpStream::connect(PG).is_ok(),
        "PostgreSQL is not listening on {PG}; start it with \
         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
    );
    let s = Scratch::new();
    s.mkdir("out");
    let mut config = attack_pipeline(
        "pg-denied",
        // A grant for another address: the socket is made, the connect is refused.
        &format!(
            "config = {{ attack = \"tcp-connect\", addr = \"{PG}\" }}\ngrants = {{ tcp = [\"127.0.0.1:1\"] }}"
        ),
        "",
    );
    config.push_str(&attack_pipeline(
        "pg-granted",
        &format!("config = {{ attack = \"tcp-connect\", addr = \"{PG}\" }}\ngrants = {{ tcp = [\"127.0.0.1:5432\"] }}"),
        "",
    ));
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        report(&s, "pg-denied").starts_with("attack tcp-connect: denied: "),
        "{}",
        report(&s, "pg-denied")
    );
    assert!(
        report(&s, "pg-granted").starts_with("attack tcp-connect: ok"),
        "{}",
        report(&s, "pg-granted")
    );
    assert!(
        stderr.contains("sandbox: denied tcp access to 127.0.0.1:5432 for plugin `pg-denied/pg-denied` (not in grants.tcp)"),
        "{stderr}"
    );
}

/// A one-shot-per-connection HTTP server answering every request with `200 hello from test`;
/// returns its address and a counter of requests it answered.
fn http_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = "hello from test";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, served)
}

#[test]
fn http_reaches_only_granted_hosts() {
    let (addr, served) = http_server();
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    let s = Scratch::new();
    s.mkdir("out");
    let url = format!("http://127.0.0.1:{port}/hello");
    let mut config = attack_pipeline(
        "nohttp",
        &format!("config = {{ attack = \"http\", url = \"{url}\" }}"),
        "",
    );
    // Granted another port of the same host: still denied.
    config.push_str(&attack_pipeline(
        "otherport",
        &format!(
            "config = {{ attack = \"http\", url = \"{url}\" }}\ngrants = {{ http = [\"127.0.0.1:1\"] }}"
        ),
        "",
    ));
    // A raw TCP grant is not an HTTP grant.
    config.push_str(&attack_pipeline(
        "tcponly",
        &format!(
            "config = {{ attack = \"http\", url = \"{url}\" }}\ngrants = {{ tcp = [\"{addr}\"] }}"
        ),
        "",
    ));
    config.push_str(&attack_pipeline(
        "granted",
        &format!(
            "config = {{ attack = \"http\", url = \"{url}\" }}\ngrants = {{ http = [\"http://127.0.0.1:{port}\"] }}"
        ),
        "",
    ));
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for name in ["nohttp", "otherport", "tcponly"] {
        assert_eq!(
            report(&s, name),
            "attack http: denied: HTTP request denied by the sandbox: the destination is not in grants.http",
            "{name}"
        );
        assert!(
            stderr.contains(&format!(
                "sandbox: denied http access to http://127.0.0.1:{port} for plugin `{name}/{name}` (not in grants.http)"
            )),
            "{name}: {stderr}"
        );
    }
    assert_eq!(
        report(&s, "granted"),
        "attack http: ok: 200 hello from test"
    );
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the granted plugin's request reached the server"
    );
    assert!(
        stderr.contains("sandbox denied 3 accesses: http by nohttp/nohttp (1), http by otherport/otherport (1), http by tcponly/tcponly (1)"),
        "{stderr}"
    );
}

#[test]
fn a_call_blocked_in_the_host_is_stopped_at_its_deadline() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &attack_pipeline(
            "sleeper",
            r#"config = { attack = "sleep" }
limits = { call_timeout = "300ms" }"#,
            "",
        ),
    );
    let started = Instant::now();
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: pipeline `sleeper`: transform `sleeper` (#1) trapped in `process`: the call \
             was still waiting (on I/O or a timer) at its deadline of 300ms and was stopped \
             (limits.call_timeout)"
        ),
        "{stderr}"
    );
    // Stopped, not slept out: the sleep asked for an hour.
    assert!(started.elapsed() < std::time::Duration::from_secs(600));
}

/// A plugin that floods `logging.log` gets the same budget as its stderr: at most 100 lines a
/// second reach the log, the rest are counted and reported, and a newline in its text is
/// escaped, so it cannot start a line that reads like the host's denial of another plugin.
#[test]
fn a_log_flood_is_rate_limited_and_cannot_forge_a_line() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &attack_pipeline(
            "flood",
            r#"config = { attack = "log-flood", count = 5000 }"#,
            "",
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        report(&s, "flood"),
        "attack log-flood: ok: logged 5000 lines"
    );
    let logged = stderr
        .lines()
        .filter(|l| l.contains("flood/flood: flood "))
        .count();
    // The flood takes well under a second, but may straddle one boundary: two budgets at most.
    assert!(
        (100..=200).contains(&logged),
        "{logged} lines logged:\n{stderr}"
    );
    let dropped: u64 = stderr
        .lines()
        .filter_map(|l| l.split("(log): ").nth(1))
        .filter_map(|l| l.strip_suffix(" lines dropped by the rate limit (100/s)"))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(dropped + logged as u64, 5000, "{stderr}");
    for line in stderr.lines().filter(|l| l.contains("for plugin `victim`")) {
        assert!(
            line.contains("flood/flood: flood "),
            "a forged line: {line}"
        );
        assert!(line.contains("\\nWARN sandbox: denied"), "{line}");
    }
}

/// A pipeline whose plugin cannot start does not keep the others from running: they deliver
/// everything, the failure is reported, and the run ends with exit code 1. With
/// `on_start_failure = "abort"` nothing runs.
#[test]
fn one_pipeline_failing_at_start_does_not_stop_the_others() {
    let s = Scratch::new();
    s.mkdir("out");
    let victim = r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 100 }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/fine.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "fine"
source = "gen"
sinks = ["out"]
"#;
    let bomb = attack_pipeline(
        "bomb",
        r#"config = { attack = "init-memory" }
limits = { memory = "16MiB" }"#,
        "",
    );
    s.write("p.toml", &format!("{bomb}\n{victim}"));
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(s.read("out/fine.jsonl").lines().count(), 100, "{stderr}");
    assert!(
        stderr.contains(
            "error: pipeline `bomb`: transform `bomb` could not start: plugin `bomb/bomb` \
             trapped in `init`: memory limit of 16.0 MiB reached (limits.memory)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipeline `fine`: 100 in, 0 dropped, 100 written to `out`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: pipeline `bomb` did not run: it could not start (see above)"),
        "{stderr}"
    );

    std::fs::remove_file(s.path().join("out/fine.jsonl")).unwrap();
    s.write(
        "p.toml",
        &format!("on_start_failure = \"abort\"\n{bomb}\n{victim}"),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: on_start_failure = \"abort\": no pipeline runs; fix the one above, or set \
             on_start_failure = \"continue\" to run the others"
        ),
        "{stderr}"
    );
    assert!(!s.path().join("out/fine.jsonl").exists() || s.read("out/fine.jsonl").is_empty());
}

/// Name lookup without `grants.dns` is refused and, like every other denial, logged and
/// counted; with the grant it resolves.
#[test]
fn a_name_lookup_without_the_dns_grant_is_denied_and_counted() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &attack_pipeline(
            "dns",
            r#"config = { attack = "dns", host = "localhost:80" }"#,
            "",
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(report(&s, "dns").starts_with("attack dns: denied: "));
    assert!(
        stderr.contains(
            "sandbox: denied dns access to localhost for plugin `dns/dns` (not granted: \
             grants.dns is false)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("sandbox denied 1 access: dns by dns/dns (1)"),
        "{stderr}"
    );

    s.write(
        "p.toml",
        &attack_pipeline(
            "dns",
            r#"config = { attack = "dns", host = "localhost:80" }
grants = { dns = true }"#,
            "",
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        report(&s, "dns").starts_with("attack dns: ok: "),
        "{stderr}"
    );
    assert!(!stderr.contains("sandbox denied"), "{stderr}");
}

/// Creating a directory under a read-only grant is refused and, like a refused open, audited.
#[test]
fn a_directory_created_under_a_read_only_grant_is_denied_and_counted() {
    let s = Scratch::new();
    s.mkdir("out");
    s.mkdir("data");
    s.write(
        "p.toml",
        &attack_pipeline(
            "mk",
            r#"config = { attack = "mkdir", path = "/data/new" }
grants = { dirs = [{ host = "data", guest = "/data", mode = "ro" }] }"#,
            "",
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        report(&s, "mk").starts_with("attack mkdir: denied: "),
        "{stderr}"
    );
    assert!(!s.path().join("data/new").exists());
    assert!(
        stderr.contains("sandbox denied 1 access: filesystem by mk/mk (1)"),
        "{stderr}"
    );
}

/// A symlink out of a granted directory (to an absolute path, or up with `..`) is refused
/// and audited; one that stays inside is made.
#[test]
fn a_symlink_pointing_out_of_its_grant_is_refused_and_counted() {
    let s = Scratch::new();
    s.mkdir("out");
    s.mkdir("data");
    let mut config = String::new();
    for (name, target) in [
        ("abs", "/etc/passwd"),
        ("up", "../../etc/passwd"),
        ("inside", "other.txt"),
    ] {
        config.push_str(&attack_pipeline(
            name,
            &format!(
                r#"config = {{ attack = "symlink", path = "/data/{name}", addr = "{target}" }}
grants = {{ dirs = [{{ host = "data", guest = "/data", mode = "rw" }}] }}"#
            ),
            "",
        ));
    }
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for name in ["abs", "up"] {
        assert!(
            report(&s, name).starts_with("attack symlink: denied: "),
            "{name}: {}",
            report(&s, name)
        );
        assert!(
            s.path()
                .join(format!("data/{name}"))
                .symlink_metadata()
                .is_err()
        );
    }
    assert_eq!(
        report(&s, "inside"),
        "attack symlink: ok: /data/inside -> other.txt"
    );
    assert!(s.path().join("data/inside").symlink_metadata().is_ok());
    assert!(
        stderr.contains(
            "sandbox: denied filesystem access to /etc/passwd -> abs for plugin `abs/abs` (a \
             symlink may not point outside its directory (absolute or `..`))"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("filesystem by abs/abs (1)") && stderr.contains("filesystem by up/up (1)"),
        "{stderr}"
    );
}

/// A FIFO in a granted directory is not opened: reading it would hold one of the host's
/// blocking threads until someone writes, for ever. Refused at once, audited.
#[test]
fn a_fifo_in_a_granted_directory_is_refused_without_blocking() {
    let s = Scratch::new();
    s.mkdir("out");
    s.mkdir("data");
    let made = std::process::Command::new("mkfifo")
        .arg(s.path().join("data/pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    s.write(
        "p.toml",
        &attack_pipeline(
            "fifo",
            r#"config = { attack = "read-file", path = "/data/pipe" }
grants = { dirs = [{ host = "data", guest = "/data", mode = "ro" }] }"#,
            "",
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        report(&s, "fifo").starts_with("attack read-file: denied: "),
        "{}",
        report(&s, "fifo")
    );
    assert!(
        stderr.contains(
            "sandbox: denied filesystem access to pipe for plugin `fifo/fifo` (not a \
             regular file or directory (a FIFO, device or socket))"
        ),
        "{stderr}"
    );
}

/// Name lookups hold threads of the host's shared blocking pool: one instance may have 16 in
/// flight; the rest are refused (and audited) while a victim pipeline delivers everything.
#[test]
fn a_flood_of_name_lookups_is_capped_per_instance() {
    let s = Scratch::new();
    s.mkdir("out");
    let mut config = attack_pipeline(
        "lookups",
        r#"config = { attack = "dns-flood", host = "localhost", count = 5000 }
grants = { dns = true }"#,
        "",
    );
    config.push_str(&victim_pipeline(20_000, 0));
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        report(&s, "lookups"),
        "attack dns-flood: ok: started 16, refused 4984"
    );
    assert!(
        stderr.contains(
            "sandbox: denied dns access to localhost for plugin `lookups/lookups` (over 16 \
             lookups in flight: drop finished ones first)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipeline `calm`: 20000 in, 0 dropped, 20000 written to `out-calm`"),
        "{stderr}"
    );
    // Every refusal counted, but the log kept to its budget (20 lines a second).
    assert!(stderr.contains("dns by lookups/lookups (4984)"), "{stderr}");
    let lines = stderr.matches("denied dns access to localhost").count();
    assert!((1..=60).contains(&lines), "{lines} denial lines:\n{stderr}");
}
