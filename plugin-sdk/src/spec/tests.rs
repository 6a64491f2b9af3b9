//! The config spec: defaults, units, aliases, ranges and the exact messages.

use super::*;
use crate::ErrorKind;

const KEYS: &[Key] = &[
    Key::text("url", "The server.").default("nats://127.0.0.1:4222"),
    Key::choice("mode", &["core", "jetstream"], "How.").default("core"),
    Key::duration("ack_wait", "Ack wait.")
        .default("30s")
        .range(100, 86_400_000)
        .alias_ms("ack_wait_ms"),
    Key::duration("wait", "Poll wait.")
        .default("100ms")
        .range(1, 899)
        .note("a poll must end within its call deadline")
        .alias_ms("wait_ms"),
    Key::uint("max_ack_pending", "Most pending.")
        .default("10000")
        .range(1, 10_000_000),
    Key::uint("min_only", "At least two.").range(2, u64::MAX),
    Key::duration("block", "Block.")
        .default("100ms")
        .range(0, 900)
        .alias_ms("block_ms"),
    Key::size("max_body", "Largest body.")
        .default("1MiB")
        .range(1, 64 << 20),
    Key::text("stream", "The stream.").required(),
    Key::text("queue", "A queue group."),
    Key::bool("flag", "A flag.").default("false"),
    Key::float("rate", "A rate.").default("0"),
    Key::int("start", "Start.").default("-1"),
    Key::json("list", "A list.").default("[]"),
];

fn check(pairs: &[(&str, &str)]) -> Result<Config, Error> {
    let config = Config::from_pairs(pairs.iter().copied());
    config.checked(KEYS)?;
    Ok(config)
}

fn err(pairs: &[(&str, &str)]) -> String {
    let e = check(pairs).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fatal);
    e.message
}

#[test]
fn defaults_apply() {
    let config = check(&[("stream", "S")]).unwrap();
    let c = config.checked(KEYS).unwrap();
    assert_eq!(c.text("url").unwrap(), "nats://127.0.0.1:4222");
    assert_eq!(c.choice("mode").unwrap(), "core");
    assert_eq!(c.duration("ack_wait").unwrap(), Duration::from_secs(30));
    assert_eq!(c.duration("wait").unwrap(), Duration::from_millis(100));
    assert_eq!(c.uint("max_ack_pending").unwrap(), 10_000);
    assert_eq!(c.uint_opt("min_only").unwrap(), None);
    assert_eq!(c.size("max_body").unwrap(), 1 << 20);
    assert_eq!(c.text("stream").unwrap(), "S");
    assert_eq!(c.text("queue").unwrap(), "");
    assert_eq!(c.text_opt("queue").unwrap(), None);
    assert!(!c.bool("flag").unwrap());
    assert_eq!(c.float("rate").unwrap(), 0.0);
    assert_eq!(c.int("start").unwrap(), -1);
    assert_eq!(c.json::<Vec<String>>("list").unwrap(), Some(vec![]));
    assert!(!c.is_given("url").unwrap());
    assert!(c.is_given("stream").unwrap());
}

#[test]
fn given_values() {
    let config = check(&[
        ("stream", "S"),
        ("mode", "jetstream"),
        ("ack_wait", "1m30s"),
        ("max_body", "512KiB"),
        ("max_ack_pending", " 7 "),
        ("flag", "true"),
        ("list", "[\"a\"]"),
    ])
    .unwrap();
    let c = config.checked(KEYS).unwrap();
    assert_eq!(c.choice("mode").unwrap(), "jetstream");
    assert_eq!(c.duration("ack_wait").unwrap(), Duration::from_secs(90));
    assert_eq!(c.size("max_body").unwrap(), 512 << 10);
    assert_eq!(c.uint("max_ack_pending").unwrap(), 7);
    assert!(c.bool("flag").unwrap());
    assert_eq!(
        c.json::<Vec<String>>("list").unwrap(),
        Some(vec!["a".to_owned()])
    );
}

#[test]
fn durations_and_sizes() {
    let ms = Duration::from_millis;
    assert_eq!(parse_duration("250ms"), Some(ms(250)));
    assert_eq!(parse_duration(" 5s "), Some(ms(5000)));
    assert_eq!(parse_duration("1m 30s"), Some(ms(90_000)));
    assert_eq!(parse_duration("1.5s"), Some(ms(1500)));
    assert_eq!(parse_duration("2h"), Some(ms(7_200_000)));
    assert_eq!(parse_duration("1d"), Some(ms(86_400_000)));
    assert_eq!(parse_duration("10us"), Some(Duration::from_micros(10)));
    for bad in ["", "5", "s", "5 parsecs", "-1s", "1.s.", "ms5"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    assert_eq!(parse_size("64MiB"), Some(64 << 20));
    assert_eq!(parse_size("512KiB"), Some(512 << 10));
    assert_eq!(parse_size("1kb"), Some(1000));
    assert_eq!(parse_size("1.5GB"), Some(1_500_000_000));
    assert_eq!(parse_size("100B"), Some(100));
    assert_eq!(parse_size("4096"), Some(4096));
    for bad in ["", "MiB", "1.5", "12 parsecs", "-1KiB", "99999999999TiB"] {
        assert_eq!(parse_size(bad), None, "{bad}");
    }
    assert_eq!(format_duration(ms(86_400_000)), "1d");
    assert_eq!(format_duration(ms(899)), "899ms");
    assert_eq!(format_duration(ms(90_000)), "90s");
    assert_eq!(format_size(64 << 20), "64MiB");
    assert_eq!(format_size(1), "1B");
}

#[test]
fn old_ms_keys_still_work() {
    let config = check(&[("stream", "S"), ("ack_wait_ms", "5000"), ("wait_ms", "20")]).unwrap();
    let c = config.checked(KEYS).unwrap();
    assert_eq!(c.duration("ack_wait").unwrap(), Duration::from_secs(5));
    assert_eq!(c.duration("wait").unwrap(), Duration::from_millis(20));
    assert!(c.is_given("ack_wait").unwrap());
    assert_eq!(
        err(&[("stream", "S"), ("ack_wait_ms", "5s")]),
        "config key `ack_wait_ms`: expected an unsigned integer, got `5s`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("ack_wait_ms", "50")]),
        "config key `ack_wait_ms`: expected 100 to 86400000 milliseconds, got `50`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("wait_ms", "900")]),
        "config key `wait_ms`: expected 1 to 899 milliseconds (a poll must end within its \
         call deadline), got `900`"
    );
}

#[test]
fn both_names_is_an_error() {
    assert_eq!(
        err(&[("stream", "S"), ("ack_wait", "5s"), ("ack_wait_ms", "5000")]),
        "config keys `ack_wait` and `ack_wait_ms` (its old name, in milliseconds) are both \
         given; keep only `ack_wait`"
    );
}

#[test]
fn range_errors() {
    assert_eq!(
        err(&[("stream", "S"), ("max_ack_pending", "0")]),
        "config key `max_ack_pending`: expected 1 to 10000000, got `0`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("min_only", "1")]),
        "config key `min_only`: expected at least 2, got `1`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("ack_wait", "50ms")]),
        "config key `ack_wait`: expected 100ms to 1d, got `50ms`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("wait", "1s")]),
        "config key `wait`: expected 1ms to 899ms (a poll must end within its call \
         deadline), got `1s`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("block", "1s")]),
        "config key `block`: expected at most 900ms, got `1s`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("block_ms", "901")]),
        "config key `block_ms`: expected at most 900 milliseconds, got `901`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("max_body", "65MiB")]),
        "config key `max_body`: expected 1B to 64MiB, got `65MiB`"
    );
}

#[test]
fn format_errors() {
    assert_eq!(
        err(&[("stream", "S"), ("max_ack_pending", "abc")]),
        "config key `max_ack_pending`: expected an unsigned integer, got `abc`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("mode", "fast")]),
        "config key `mode`: expected one of `core`, `jetstream`, got `fast`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("ack_wait", "5000")]),
        "config key `ack_wait`: expected a duration such as `250ms`, `5s` or `1m`, got `5000`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("max_body", "lots")]),
        "config key `max_body`: expected a size such as `512KiB` or `64MiB`, or a number of \
         bytes, got `lots`"
    );
    assert_eq!(
        err(&[("stream", "S"), ("flag", "yes")]),
        "config key `flag`: expected true or false, got `yes`"
    );
}

#[test]
fn required_keys() {
    assert_eq!(err(&[]), "config key `stream` is required but missing");
}

#[test]
fn undeclared_or_mistyped_reads_are_plugin_bugs() {
    let config = check(&[("stream", "S")]).unwrap();
    let c = config.checked(KEYS).unwrap();
    let e = c.uint("nope").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fatal);
    assert_eq!(
        e.message,
        "plugin bug: config key `nope` is read but not declared in the plugin's keys"
    );
    assert_eq!(
        c.duration("url").unwrap_err().message,
        "plugin bug: config key `url` is declared as text but read as a duration"
    );
    assert!(
        c.uint("min_only")
            .unwrap_err()
            .message
            .starts_with("plugin bug: config key `min_only` has no value and no default")
    );
}

#[test]
fn invalid_names_the_key_as_written() {
    let config = check(&[("stream", "S"), ("ack_wait_ms", "5000")]).unwrap();
    let c = config.checked(KEYS).unwrap();
    assert_eq!(
        c.invalid("ack_wait", "less").message,
        "config key `ack_wait_ms`: expected less, got `5000`"
    );
    assert_eq!(
        c.invalid("url", "a URL").message,
        "config key `url`: expected a URL, got `nats://127.0.0.1:4222`"
    );
}

#[test]
fn metadata_lists_aliases_as_deprecated() {
    let meta = Metadata::new("p", "0.1.0", "P.").keys(KEYS);
    let names: Vec<&str> = meta.config_keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "url",
            "mode",
            "ack_wait",
            "ack_wait_ms",
            "wait",
            "wait_ms",
            "max_ack_pending",
            "min_only",
            "block",
            "block_ms",
            "max_body",
            "stream",
            "queue",
            "flag",
            "rate",
            "start",
            "list"
        ]
    );
    let ack = &meta.config_keys[2];
    assert_eq!(
        ack.description,
        "Ack wait (`ack_wait_ms`, in milliseconds, is still accepted)."
    );
    assert_eq!(ack.default_value.as_deref(), Some("30s"));
    let old = &meta.config_keys[3];
    assert!(old.description.starts_with("deprecated: use `ack_wait`"));
    assert!(!old.required);
    assert!(meta.config_keys[11].required);
    assert_eq!(meta.config_keys[12].default_value, None);
}
