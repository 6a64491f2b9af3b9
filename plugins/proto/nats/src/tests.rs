//! The NATS client against scripted servers: frames split across reads, malformed input, the
//! exact error texts.

use std::time::{Duration, Instant};

use super::*;

fn one(input: &[u8]) -> (Op, usize) {
    parse(input).unwrap().unwrap()
}

#[test]
fn control_lines() {
    assert_eq!(one(b"PING\r\n"), (Op::Ping, 6));
    assert_eq!(one(b"pong\r\nPING\r\n"), (Op::Pong, 6));
    assert_eq!(one(b"+OK\r\n"), (Op::Ok, 5));
    assert_eq!(
        one(b"-ERR 'Authorization Violation'\r\n").0,
        Op::Err("Authorization Violation".into())
    );
    assert_eq!(one(b"INFO {\"a\":1} \r\n").0, Op::Info("{\"a\":1}".into()));
    assert!(parse(b"PIN").unwrap().is_none());
    assert!(parse(b"BOGUS x\r\n").is_err());
    assert!(parse(&vec![b'x'; MAX_CONTROL_LINE + 1]).is_err());
}

#[test]
fn messages_in_pieces() {
    let wire = b"MSG a.b 7 _INBOX.x.1 5\r\nhello\r\nMSG c 1 0\r\n\r\n";
    // Any prefix short of the whole first message is "not yet".
    for cut in 0..31 {
        assert!(parse(&wire[..cut]).unwrap().is_none(), "{cut}");
    }
    let (op, used) = one(wire);
    assert_eq!(used, 31);
    let Op::Msg(m) = op else { panic!() };
    assert_eq!(
        (
            m.subject.as_str(),
            m.sid,
            m.reply.as_deref(),
            &m.payload[..]
        ),
        ("a.b", 7, Some("_INBOX.x.1"), &b"hello"[..])
    );
    let (op, used) = one(&wire[31..]);
    assert_eq!(used, wire.len() - 31);
    let Op::Msg(m) = op else { panic!() };
    assert!(m.payload.is_empty() && m.reply.is_none());
    // Payload bytes that look like protocol are payload.
    let (op, _) = one(b"MSG s 1 6\r\nPING\r\n\r\n");
    let Op::Msg(m) = op else { panic!() };
    assert_eq!(m.payload, b"PING\r\n");
    assert!(parse(b"MSG s 1 2\r\nabcd").is_err());
    assert!(parse(b"MSG s x 2\r\nab\r\n").is_err());
    assert!(parse(b"MSG s\r\n").is_err());
}

#[test]
fn headers_and_status() {
    let block = header_block([("a", "1"), ("Trace-Id", "x y")]);
    assert_eq!(block, b"NATS/1.0\r\na: 1\r\nTrace-Id: x y\r\n\r\n");
    let mut out = Vec::new();
    publish(&mut out, "s.t", Some("r"), &block, b"body");
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.starts_with(&format!(
        "HPUB s.t r {} {}\r\n",
        block.len(),
        block.len() + 4
    )));
    // What the server relays is the same bytes after an HMSG line.
    let wire = [
        format!("HMSG s.t 3 {} {}\r\n", block.len(), block.len() + 4).as_bytes(),
        &block,
        b"body\r\n",
    ]
    .concat();
    let Op::Msg(m) = one(&wire).0 else { panic!() };
    assert_eq!(m.payload, b"body");
    assert_eq!(m.status, None);
    assert_eq!(
        m.headers,
        vec![("a".into(), "1".into()), ("Trace-Id".into(), "x y".into())]
    );
    assert_eq!(m.header("trace-id"), Some("x y"));
    let status = b"HMSG _INBOX.x.2 1 28 28\r\nNATS/1.0 404 No Messages\r\n\r\n\r\n";
    let Op::Msg(m) = one(status).0 else { panic!() };
    assert_eq!(
        (m.status, m.description.as_str()),
        (Some(404), "No Messages")
    );
    let Op::Msg(m) = one(b"HMSG r 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n").0 else {
        panic!()
    };
    assert_eq!(m.status, Some(503));
    assert!(api_answer(&m).is_err());
    let mut plain = Vec::new();
    publish(&mut plain, "s", None, &[], b"");
    assert_eq!(plain, b"PUB s 0\r\n\r\n");
}

#[test]
fn a_large_message() {
    let payload = vec![7u8; 3 * 1024 * 1024];
    let wire = [
        format!("MSG big 1 {}\r\n", payload.len()).as_bytes(),
        &payload,
        b"\r\n",
    ]
    .concat();
    assert!(parse(&wire[..wire.len() - 1]).unwrap().is_none());
    let Op::Msg(m) = one(&wire).0 else { panic!() };
    assert_eq!(m.payload.len(), payload.len());
}

#[test]
fn names() {
    assert!(check_subject("a.*.c", true).is_ok());
    assert!(check_subject("a.>", true).is_ok());
    assert!(check_subject("a.*", false).is_err());
    assert!(check_subject("a.>.b", true).is_err());
    assert!(check_subject("a..b", true).is_err());
    assert!(check_subject("a b", true).is_err());
    assert!(check_subject("", true).is_err());
    assert!(check_name("orders").is_ok());
    assert!(check_host("127.0.0.1:4222").is_ok());
    assert!(check_host("[::1]:4222").is_ok());
    assert!(check_host("nats-1.local:4222").is_ok());
    assert!(check_host("[[:4222").is_err());
    assert!(check_host("a\u{1}b:4222").is_err());
    assert!(check_name("a.b").is_err());
    assert!(check_header("X-Id", "1").is_ok());
    assert!(check_header("X Id", "1").is_err());
    assert!(check_header("X", "a\nb").is_err());
}

#[test]
fn connect_options() {
    let line = connect_line(&Auth::new(Some("u".into()), Some("p\"q".into())), "pb");
    let v: serde_json::Value =
        serde_json::from_str(line.trim_end().strip_prefix("CONNECT ").unwrap()).unwrap();
    assert_eq!(v["user"], "u");
    assert_eq!(v["pass"], "p\"q");
    assert_eq!(v["headers"], true);
    assert_eq!(v["no_responders"], true);
    assert_eq!(v["verbose"], false);
    let token = connect_line(&Auth::new(Some("s3cret".into()), None), "pb");
    assert!(token.contains("\"auth_token\":\"s3cret\""));
    assert!(server_error("Authorization Violation").kind() == io::ErrorKind::PermissionDenied);
    assert!(
        server_error("Authorization Violation")
            .raw_os_error()
            .is_none()
    );
}

#[test]
fn api_errors() {
    let m = Msg {
        payload: br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#
            .to_vec(),
        ..Msg::default()
    };
    assert_eq!(api_answer(&m), Err((404, 10059, "stream not found".into())));
    let m = Msg {
        payload: br#"{"stream":"S","seq":3}"#.to_vec(),
        ..Msg::default()
    };
    assert_eq!(api_answer(&m).unwrap()["seq"], 3);
}

#[test]
fn publish_round_trip() {
    // What a client publishes, the server relays as the same bytes behind a MSG or HMSG
    // line: encode with `publish`, relay as the server would, parse.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u8], Option<&'a str>);
    let cases: &[Case] = &[
        (&[], b"", None),
        (&[], b"plain", Some("_INBOX.r.1")),
        (&[], b"MSG x 1 2\r\n\r\nPING\r\n", None),
        (
            &[("Nats-Msg-Id", "k-1"), ("a", ""), ("a", "2")],
            &[0, 255, 13, 10, 0],
            Some("r"),
        ),
    ];
    for &(headers, payload, reply) in cases {
        let block = header_block(headers.iter().copied());
        let mut out = Vec::new();
        publish(&mut out, "orders.eu", reply, &block, payload);
        let cr = out.iter().position(|&b| b == b'\r').unwrap();
        let line = std::str::from_utf8(&out[..cr]).unwrap();
        // PUB subject [reply] size… → MSG subject sid [reply] size…
        let mut words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words[0], if block.is_empty() { "PUB" } else { "HPUB" });
        words[0] = if block.is_empty() { "MSG" } else { "HMSG" };
        words.insert(2, "9");
        let wire = [words.join(" ").as_bytes(), &out[cr..]].concat();
        let (op, used) = one(&wire);
        assert_eq!(used, wire.len());
        let Op::Msg(m) = op else { panic!("{op:?}") };
        assert_eq!(m.subject, "orders.eu");
        assert_eq!(m.sid, 9);
        assert_eq!(m.reply.as_deref(), reply);
        assert_eq!(m.payload, payload);
        let sent: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(m.headers, sent);
    }
    let mut out = Vec::new();
    subscribe(&mut out, "a.>", Some("workers"), 3);
    subscribe(&mut out, "b", None, 4);
    assert_eq!(out, b"SUB a.> workers 3\r\nSUB b 4\r\n");
}

#[test]
fn malformed_input_says_what_is_wrong() {
    let err = |input: &[u8]| {
        let e = parse(input).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        e.to_string()
    };
    assert_eq!(err(b"BOGUS x\r\n"), "an unknown operation `BOGUS x`");
    assert_eq!(err(b"\xff\r\n"), "a protocol line that is not UTF-8");
    assert_eq!(err(b"MSG s\r\n"), "a malformed `MSG s`");
    assert_eq!(err(b"MSG s x 2\r\n"), "a malformed sid in `MSG s x 2`");
    assert_eq!(err(b"MSG s 1 z\r\n"), "a malformed size in `MSG s 1 z`");
    assert_eq!(
        err(b"MSG s 1 2\r\nabcd"),
        "no CRLF after the 2 bytes of `MSG s 1 2`"
    );
    assert_eq!(
        err(b"HMSG s 1 9 4\r\n"),
        "headers longer than the message in `HMSG s 1 9 4`"
    );
    assert_eq!(
        err(b"HMSG s 1 4 4\r\nXXXX\r\n"),
        "a header block starting with `XXXX`"
    );
    let huge = format!("MSG s 1 {}\r\n", MAX_MESSAGE + 1);
    assert_eq!(
        err(huge.as_bytes()),
        format!("a message of {} bytes", MAX_MESSAGE + 1)
    );
    assert!(
        Info::parse("{")
            .unwrap_err()
            .to_string()
            .starts_with("an unreadable INFO")
    );
}

use patchbay_proto_testing::serve;

#[test]
fn a_connection_reads_frames_split_across_reads() {
    let block = header_block([("K", "v")]);
    let script = [
        b"INFO {\"server_name\":\"t\",\"headers\":true,\"jetstream\":true}\r\nPONG\r\n".to_vec(),
        b"MSG a.b 1 5\r\nhello\r\nPING\r\n".to_vec(),
        format!("HMSG c 2 _INBOX.x {} {}\r\n", block.len(), block.len() + 3).into_bytes(),
        block,
        b"abc\r\n".to_vec(),
    ]
    .concat();
    let (addr, server) = serve(script, 3, false);
    let mut conn = Conn::connect(&addr, &Auth::default(), "t", Duration::from_secs(5)).unwrap();
    assert_eq!(conn.info.server_name, "t");
    assert!(conn.info.jetstream && conn.info.headers);
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = conn.next(deadline).unwrap().unwrap();
    assert_eq!((m.subject.as_str(), m.sid), ("a.b", 1));
    assert_eq!(m.payload, b"hello");
    let m = conn.next(deadline).unwrap().unwrap();
    assert_eq!(
        (m.subject.as_str(), m.reply.as_deref()),
        ("c", Some("_INBOX.x"))
    );
    assert_eq!((m.header("k"), &m.payload[..]), (Some("v"), &b"abc"[..]));
    // Nothing more: `None` at the deadline.
    let soon = Instant::now() + Duration::from_millis(20);
    assert!(conn.next(soon).unwrap().is_none());
    drop(conn);
    let sent = String::from_utf8(server.join().unwrap()).unwrap();
    // CONNECT and the PING that waited for its PONG, then the PONG for the server's PING.
    assert!(sent.starts_with("CONNECT {"), "{sent}");
    assert!(sent.ends_with("}\r\nPING\r\nPONG\r\n"), "{sent}");
}

#[test]
fn a_connection_reports_a_refusal_and_a_hang_up() {
    let script = b"INFO {}\r\n-ERR 'Authorization Violation'\r\n".to_vec();
    let (addr, server) = serve(script, 4, true);
    let e = Conn::connect(&addr, &Auth::default(), "t", Duration::from_secs(5))
        .err()
        .unwrap();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(e.to_string(), "the server said: Authorization Violation");
    server.join().unwrap();
    // The server goes away in the middle of a message.
    let script = b"INFO {}\r\nPONG\r\nMSG a 1 10\r\nhal".to_vec();
    let (addr, server) = serve(script, 5, true);
    let mut conn = Conn::connect(&addr, &Auth::default(), "t", Duration::from_secs(5)).unwrap();
    let e = conn
        .next(Instant::now() + Duration::from_secs(5))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(e.to_string(), format!("{addr} closed the connection"));
    drop(conn);
    server.join().unwrap();
}
