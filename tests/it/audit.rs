//! Refusals the host makes before a grant is consulted are audited like the others: a TCP
//! connect, a UDP `stream` or a datagram to an unspecified address (which the kernel would take
//! for this machine) or to an IPv4-mapped IPv6 address is refused, logged with plugin,
//! capability and target, and counted. So is a datagram a UDP listener may not hear.

use crate::sandbox::{attack_pipeline, report};
use crate::{Scratch, text};

#[test]
fn connects_to_unspecified_and_v4_mapped_addresses_are_refused_and_audited() {
    let s = Scratch::new();
    s.mkdir("out");
    let mut config = String::new();
    for (name, attack, addr, grant) in [
        ("unspec", "tcp-connect", "0.0.0.0:5432", "tcp"),
        ("mapped", "tcp-connect", "[::ffff:127.0.0.1]:5432", "tcp"),
        ("unspec-udp", "udp-send", "0.0.0.0:5432", "udp"),
        ("mapped-udp", "udp-send", "[::ffff:127.0.0.1]:5432", "udp"),
    ] {
        config.push_str(&attack_pipeline(
            name,
            &format!(
                "config = {{ attack = \"{attack}\", addr = \"{addr}\" }}\n\
                 grants = {{ {grant} = [\"127.0.0.1:5432\"] }}"
            ),
            "",
        ));
    }
    s.write("p.toml", &config);
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for name in ["unspec", "mapped"] {
        let r = report(&s, name);
        assert!(r.starts_with("attack tcp-connect: denied: "), "{r}");
    }
    // Both ways of sending a datagram are refused: `stream` to the address, and `send` with
    // the address on the datagram.
    for name in ["unspec-udp", "mapped-udp"] {
        let r = report(&s, name);
        assert!(
            r.starts_with("attack udp-send: ok: stream: invalid-argument")
                && r.contains("; send: invalid-argument"),
            "{r}"
        );
    }
    for expected in [
        "sandbox: denied tcp access to 0.0.0.0:5432 for plugin `unspec/unspec` (an unspecified \
         address (0.0.0.0, ::) is no destination)",
        "sandbox: denied tcp access to [::ffff:127.0.0.1]:5432 for plugin `mapped/mapped` (an \
         IPv4-mapped IPv6 address is refused: use the IPv4 address itself)",
        "tcp by mapped/mapped (1)",
        "tcp by unspec/unspec (1)",
        "sandbox: denied udp access to 0.0.0.0:5432 for plugin `unspec-udp/unspec-udp` (an \
         unspecified address (0.0.0.0, ::) is no destination)",
        "sandbox: denied udp access to [::ffff:127.0.0.1]:5432 for plugin \
         `mapped-udp/mapped-udp` (an IPv4-mapped IPv6 address is refused: use the IPv4 address \
         itself)",
        "udp by mapped-udp/mapped-udp (2)",
        "udp by unspec-udp/unspec-udp (2)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

/// A `listen` grant lets a plugin bind a UDP port (given a `udp` grant to make UDP sockets at
/// all), not hear from anyone: a datagram from a sender outside `grants.udp` is dropped before
/// the plugin sees it, and the drop audited; one from a granted sender arrives. With `listen`
/// alone, no UDP socket.
#[test]
fn a_udp_listener_hears_only_senders_in_its_udp_grant() {
    use std::net::UdpSocket;
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Scratch::new();
    s.mkdir("out");
    let free_port = || {
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|u| u.local_addr())
            .unwrap()
            .port()
    };
    let (deaf, hears) = (free_port(), free_port());
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = sender.local_addr().unwrap();
    let mut config = attack_pipeline(
        "deaf",
        &format!(
            "config = {{ attack = \"udp-receive\", addr = \"127.0.0.1:{deaf}\", count = 3000 }}\n\
             grants = {{ listen = [\"127.0.0.1:{deaf}\"], udp = [\"127.0.0.1:9\"] }}\n\
             limits = {{ call_timeout = \"10s\" }}"
        ),
        "",
    );
    config.push_str(&attack_pipeline(
        "hears",
        &format!(
            "config = {{ attack = \"udp-receive\", addr = \"127.0.0.1:{hears}\", count = 8000 }}\n\
             grants = {{ listen = [\"127.0.0.1:{hears}\"], udp = [\"{from}\"] }}\n\
             limits = {{ call_timeout = \"10s\" }}"
        ),
        "",
    ));
    config.push_str(&attack_pipeline(
        "nosocket",
        &format!(
            "config = {{ attack = \"udp-receive\", addr = \"127.0.0.1:{deaf}\", count = 10 }}\n\
             grants = {{ listen = [\"127.0.0.1:{deaf}\"] }}"
        ),
        "",
    ));
    s.write("p.toml", &config);
    // Datagrams to both ports every 20 ms until the run is over.
    let over = AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !over.load(Ordering::Relaxed) {
                for port in [deaf, hears] {
                    let _ = sender.send_to(b"hello", ("127.0.0.1", port));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let out = s.run(&["run", "p.toml"]);
        over.store(true, Ordering::Relaxed);
        out
    });
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(report(&s, "deaf"), "attack udp-receive: ok: received 0");
    assert!(
        report(&s, "nosocket").starts_with("attack udp-receive: denied: access-denied"),
        "{}",
        report(&s, "nosocket")
    );
    let heard = report(&s, "hears");
    assert!(
        heard.starts_with("attack udp-receive: ok: received ")
            && heard.ends_with(&format!(" from {from}")),
        "{heard}"
    );
    assert!(
        stderr.contains(&format!(
            "sandbox: denied udp access to {from} for plugin `deaf/deaf` (not in grants.udp)"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("for plugin `hears/hears`"), "{stderr}");
    assert!(
        stderr.contains(
            "sandbox: denied udp access to a new socket for plugin `nosocket/nosocket` (not \
             granted: no grants.udp)"
        ),
        "{stderr}"
    );
}
