//! Refusals the host makes before a grant is consulted are audited like the others: a TCP
//! connect, a UDP `stream` or a datagram to an unspecified address (which the kernel would take
//! for this machine) or to an IPv4-mapped IPv6 address is refused, logged with plugin,
//! capability and target, and counted.

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
