//! `test-hostile` (test only): a transform that attacks the sandbox, chosen by `attack`. Attacks
//! that can be answered replace every message with one line, `attack NAME: ok: DETAIL` or
//! `attack NAME: denied: ERROR`, so the sink's output shows what the plugin could do; the
//! others (loops, bombs, recursion) must be stopped by the host.

use std::hint::black_box;

use patchbay_sdk::{Config, ConfigKey, Error, Message, Metadata, Outcome, Transform};

const ATTACKS: &[&str] = &[
    "none",
    "loop",
    "memory",
    "read-file",
    "list-dir",
    "write-file",
    "tcp-connect",
    "dns",
    "http",
    "sleep",
    "env",
    "recursion",
    "big-output",
    "many-headers",
    "init-loop",
    "init-memory",
    "log-flood",
    "metrics",
    "mkdir",
    "symlink",
    "dns-flood",
    "fields-hoard",
    "socket-hoard",
    "file-hoard",
    "udp-send",
    "udp-receive",
];

struct Hostile {
    attack: String,
    path: String,
    addr: String,
    host: String,
    url: String,
    count: usize,
    size: usize,
    report: Option<String>,
}

/// `symlink-at` in the first granted directory: `name` (inside it) pointing at `target`.
fn symlink(target: &str, name: &str) -> Result<String, String> {
    let dirs = wasip2::filesystem::preopens::get_directories();
    let Some((dir, guest)) = dirs.first() else {
        return Err("no granted directory".to_owned());
    };
    let inside = name.strip_prefix(guest.as_str()).unwrap_or(name);
    dir.symlink_at(target, inside.trim_start_matches('/'))
        .map(|()| format!("{name} -> {target}"))
        .map_err(|e| format!("{e:?}"))
}

/// Hold `count` `wasi:http` header maps in the host, each with eight `size`-byte headers:
/// host memory the plugin's own linear memory never sees.
fn fields_hoard(count: usize, size: usize) -> Result<String, String> {
    use wasip2::http::types::Fields;
    let value = vec![b'x'; size];
    let mut kept = Vec::new();
    for _ in 0..count {
        let fields = Fields::new();
        for i in 0..8 {
            fields
                .append(&format!("h{i}"), &value)
                .map_err(|e| format!("{e:?}"))?;
        }
        kept.push(fields);
    }
    Ok(format!("kept {} header maps", kept.len()))
}

/// Create `count` TCP sockets (never connected) and keep them: `kept N, refused M: ERROR`.
fn socket_hoard(count: usize) -> String {
    use wasip2::sockets::{network::IpAddressFamily, tcp_create_socket};
    let mut kept = Vec::new();
    let mut refused = 0;
    let mut error = String::new();
    for _ in 0..count {
        match tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
            Ok(socket) => kept.push(socket),
            Err(e) => {
                refused += 1;
                error = format!("{e:?}");
            }
        }
    }
    format!("kept {}, refused {refused}: {error}", kept.len())
}

/// Open file `path` `count` times and keep every handle: `kept N, refused M: ERROR`.
fn file_hoard(path: &str, count: usize) -> String {
    let mut kept = Vec::new();
    let mut refused = 0;
    let mut error = String::new();
    for _ in 0..count {
        match std::fs::File::open(path) {
            Ok(file) => kept.push(file),
            Err(e) => {
                refused += 1;
                error = e.to_string();
            }
        }
    }
    format!("kept {}, refused {refused}: {error}", kept.len())
}

/// Send one datagram to `addr` (a UDP socket bound to an ephemeral port) twice over: through
/// `stream(some(addr))`, then through `stream(none)` and `send` with `addr` on the datagram.
/// Each result: `ok` or the error code.
fn udp_send(addr: &str) -> Result<String, String> {
    use wasip2::sockets::network::{
        IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
    };
    use wasip2::sockets::udp::OutgoingDatagram;
    use wasip2::sockets::{instance_network, udp_create_socket};
    let target: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let (family, any, remote) = match target {
        std::net::SocketAddr::V4(a) => {
            let o = a.ip().octets();
            let remote = IpSocketAddress::Ipv4(Ipv4SocketAddress {
                port: a.port(),
                address: (o[0], o[1], o[2], o[3]),
            });
            let any = IpSocketAddress::Ipv4(Ipv4SocketAddress {
                port: 0,
                address: (0, 0, 0, 0),
            });
            (IpAddressFamily::Ipv4, any, remote)
        }
        std::net::SocketAddr::V6(a) => {
            let s = a.ip().segments();
            let remote = IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port: a.port(),
                flow_info: 0,
                address: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                scope_id: 0,
            });
            let any = IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port: 0,
                flow_info: 0,
                address: (0, 0, 0, 0, 0, 0, 0, 0),
                scope_id: 0,
            });
            (IpAddressFamily::Ipv6, any, remote)
        }
    };
    let network = instance_network::instance_network();
    let bound = || {
        let socket = udp_create_socket::create_udp_socket(family).map_err(|e| e.to_string())?;
        socket
            .start_bind(&network, any)
            .map_err(|e| e.to_string())?;
        socket.subscribe().block();
        socket.finish_bind().map_err(|e| e.to_string())?;
        Ok::<_, String>(socket)
    };
    let connected = match bound()?.stream(Some(remote)) {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    let socket = bound()?;
    let (_incoming, outgoing) = socket.stream(None).map_err(|e| e.to_string())?;
    outgoing.subscribe().block();
    let permitted = outgoing.check_send().map_err(|e| e.to_string())?;
    let sent = if permitted == 0 {
        "no permit".to_owned()
    } else {
        match outgoing.send(&[OutgoingDatagram {
            data: b"x".to_vec(),
            remote_address: Some(remote),
        }]) {
            Ok(n) => format!("ok ({n})"),
            Err(e) => e.to_string(),
        }
    };
    Ok(format!("stream: {connected}; send: {sent}"))
}

/// Bind a UDP socket to `addr` and wait up to `count` milliseconds for datagrams, returning as
/// soon as some arrive: `received N from SENDER` or `received 0`.
fn udp_receive(addr: &str, wait_ms: usize) -> Result<String, String> {
    use wasip2::clocks::monotonic_clock;
    use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    use wasip2::sockets::{instance_network, udp_create_socket};
    let local: std::net::SocketAddrV4 = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let o = local.ip().octets();
    let network = instance_network::instance_network();
    let socket =
        udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4).map_err(|e| e.to_string())?;
    let at = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port: local.port(),
        address: (o[0], o[1], o[2], o[3]),
    });
    socket
        .start_bind(&network, at)
        .map_err(|e| format!("bind: {e}"))?;
    socket.subscribe().block();
    socket.finish_bind().map_err(|e| format!("bind: {e}"))?;
    let (incoming, _outgoing) = socket.stream(None).map_err(|e| e.to_string())?;
    let timer = monotonic_clock::subscribe_duration(wait_ms as u64 * 1_000_000);
    let ready = incoming.subscribe();
    loop {
        let woke = wasip2::io::poll::poll(&[&ready, &timer]);
        if woke.contains(&0) {
            let got = incoming.receive(16).map_err(|e| e.to_string())?;
            if let Some(first) = got.first() {
                let from = match first.remote_address {
                    IpSocketAddress::Ipv4(a) => {
                        let (a0, a1, a2, a3) = a.address;
                        format!("{a0}.{a1}.{a2}.{a3}:{}", a.port)
                    }
                    IpSocketAddress::Ipv6(a) => format!("[v6]:{}", a.port),
                };
                return Ok(format!("received {} from {from}", got.len()));
            }
        }
        if woke.contains(&1) || timer.ready() {
            return Ok("received 0".to_owned());
        }
    }
}

/// Start `count` name lookups without reading any: `started N, refused M`.
fn dns_flood(host: &str, count: usize) -> String {
    use wasip2::sockets::{instance_network, ip_name_lookup};
    let network = instance_network::instance_network();
    let name = host.split(':').next().unwrap_or(host);
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..count {
        match ip_name_lookup::resolve_addresses(&network, name) {
            Ok(stream) => kept.push(stream),
            Err(_) => refused += 1,
        }
    }
    format!("started {}, refused {refused}", kept.len())
}

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = 1;
        }
        hoard.push(black_box(chunk));
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(frame[7] + 1) + frame[3]
}

fn outcome(result: Result<String, String>) -> String {
    match result {
        Ok(detail) => format!("ok: {detail}"),
        Err(error) => format!("denied: {error}"),
    }
}

impl Hostile {
    fn run(&self) -> String {
        let result = match self.attack.as_str() {
            "loop" => spin(),
            "memory" => bomb(),
            "recursion" => Ok(recurse(0).to_string()),
            // `count` lines through the logging interface, each trying to start a line of its
            // own that reads like the host's denial of another plugin.
            // A label value that tries to end its line and forge a series of the host's, a
            // `plugin` label, a name that is no name, then `count` series of one metric.
            "metrics" => {
                use patchbay_sdk::metrics;
                metrics::gauge_set(
                    "hostile_forge",
                    1.0,
                    &[("v", "x\"} 0\npatchbay_pipeline_up{pipeline=\"victim")],
                );
                metrics::gauge_set("hostile_forge", 1.0, &[("plugin", "victim")]);
                metrics::gauge_set("hostile forge\n", 1.0, &[]);
                for i in 0..self.count {
                    metrics::counter_add("hostile_series", 1, &[("i", &i.to_string())]);
                }
                Ok(format!("reported {} series", self.count))
            }
            // A link in a granted directory (`path`) to a file outside it (`addr` holds the
            // target, e.g. /etc/passwd): harmless to the plugin, a trap for the host.
            "symlink" => symlink(&self.addr, &self.path),
            "mkdir" => std::fs::create_dir(&self.path)
                .map(|()| format!("created {}", self.path))
                .map_err(|e| e.to_string()),
            "log-flood" => {
                for i in 0..self.count {
                    patchbay_sdk::log::warn(&format!(
                        "flood {i}\nWARN sandbox: denied tcp access to 10.0.0.1:22 for plugin `victim`"
                    ));
                }
                Ok(format!("logged {} lines", self.count))
            }
            "read-file" => std::fs::read_to_string(&self.path)
                .map(|text| text.lines().next().unwrap_or("").to_owned())
                .map_err(|e| e.to_string()),
            "list-dir" => std::fs::read_dir(&self.path)
                .map_err(|e| e.to_string())
                .map(|entries| {
                    let mut names: Vec<String> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    names.join(",")
                }),
            "write-file" => std::fs::write(&self.path, "x")
                .map(|()| "written".to_owned())
                .map_err(|e| e.to_string()),
            "tcp-connect" => std::net::TcpStream::connect(&self.addr)
                .map(|_| String::new())
                .map_err(|e| e.to_string()),
            // `count` lookups of `host` started at once and kept: how many the host took.
            "dns-flood" => Ok(dns_flood(&self.host, self.count)),
            "fields-hoard" => fields_hoard(self.count, self.size),
            "socket-hoard" => Ok(socket_hoard(self.count)),
            "file-hoard" => Ok(file_hoard(&self.path, self.count)),
            "udp-send" => udp_send(&self.addr),
            "udp-receive" => udp_receive(&self.addr, self.count),
            "dns" => {
                use std::net::ToSocketAddrs;
                self.host
                    .to_socket_addrs()
                    .map_err(|e| e.to_string())
                    .and_then(|mut addrs| {
                        addrs
                            .next()
                            .map(|a| a.to_string())
                            .ok_or_else(|| "no address".to_owned())
                    })
            }
            "http" => patchbay_sdk::http::send(&patchbay_sdk::http::Request::new(
                patchbay_sdk::http::Method::Get,
                self.url.clone(),
            ))
            .map(|r| format!("{} {}", r.status, String::from_utf8_lossy(&r.body).trim()))
            .map_err(|e| e.to_string()),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok("woke up".to_owned())
            }
            "env" => {
                let mut vars: Vec<String> =
                    std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                vars.sort();
                Ok(vars.join(","))
            }
            other => Ok(format!("nothing to do for {other}")),
        };
        let text = outcome(result);
        format!("attack {}: {}", self.attack, text.trim_end_matches(": "))
    }
}

impl Transform for Hostile {
    fn metadata() -> Metadata {
        Metadata::new(
            "test-hostile",
            env!("CARGO_PKG_VERSION"),
            "Test only: attacks the sandbox in the way `attack` says.",
        )
        .key(ConfigKey::optional(
            "attack",
            "none, loop, memory, recursion, metrics, symlink, mkdir, log-flood, read-file, list-dir, write-file, tcp-connect, udp-send, udp-receive, dns, dns-flood, fields-hoard, socket-hoard, file-hoard, http, sleep, env, big-output, many-headers, init-loop or init-memory.",
            "none",
        ))
        .key(ConfigKey::optional("path", "File or directory for read-file, list-dir, write-file and mkdir.", "/etc/passwd"))
        .key(ConfigKey::optional("addr", "HOST:PORT for tcp-connect, udp-send and udp-receive (IPv6 in brackets).", "127.0.0.1:5432"))
        .key(ConfigKey::optional("host", "HOST:PORT to resolve for dns.", "localhost:80"))
        .key(ConfigKey::optional("url", "URL to GET for http.", "http://127.0.0.1:80/"))
        .key(ConfigKey::optional("count", "Messages per input for big-output, lines for log-flood, series for metrics, milliseconds to wait for udp-receive.", "100000"))
        .key(ConfigKey::optional("size", "Bytes per message for big-output.", "1024"))
    }

    fn init(config: Config) -> Result<Self, Error> {
        let attack = config.get("attack").unwrap_or("none").to_owned();
        if !ATTACKS.contains(&attack.as_str()) {
            return Err(Error::fatal(format!(
                "config key `attack`: `{attack}` is not one of {}",
                ATTACKS.join(", ")
            )));
        }
        match attack.as_str() {
            "init-loop" => spin(),
            "init-memory" => bomb(),
            _ => {}
        }
        Ok(Hostile {
            attack,
            path: config.get("path").unwrap_or("/etc/passwd").to_owned(),
            addr: config.get("addr").unwrap_or("127.0.0.1:5432").to_owned(),
            host: config.get("host").unwrap_or("localhost:80").to_owned(),
            url: config
                .get("url")
                .unwrap_or("http://127.0.0.1:80/")
                .to_owned(),
            count: config.parse("count")?.unwrap_or(100_000),
            size: config.parse("size")?.unwrap_or(1024),
            report: None,
        })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        match self.attack.as_str() {
            "none" => Outcome::Keep,
            "big-output" => Outcome::Replace(
                (0..self.count)
                    .map(|_| message.with_payload(vec![b'x'; self.size]))
                    .collect(),
            ),
            // Empty headers: no bytes, but each costs the host (and the next plugin) memory.
            "many-headers" => {
                let mut m = message.clone();
                m.headers = (0..self.count)
                    .map(|_| patchbay_sdk::Header {
                        name: String::new(),
                        value: String::new(),
                    })
                    .collect();
                Outcome::Replace(vec![m])
            }
            _ => {
                if self.report.is_none() {
                    self.report = Some(self.run());
                }
                let report = self.report.clone().unwrap_or_default();
                Outcome::Replace(vec![message.with_payload(report)])
            }
        }
    }
}

patchbay_sdk::export_transform!(Hostile);
