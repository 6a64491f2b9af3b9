//! The format plugins: xml-to-json and json-to-xml (plugins/xml-to-json, plugins/json-to-xml).
//! A corpus with attributes, namespaces, CDATA, entities and repeated elements goes
//! XML → JSON → XML → JSON: the two JSON forms are equal, and the JSON and XML of one document
//! are checked as written; input that is not XML is dead-lettered with the reason.

use crate::{Scratch, text};

// Pipeline-file pieces. Every test works in a scratch folder with `in/` (read), `out/`
// (written; the dead letters go there too) and, for schemas, a folder of its own.

/// `[plugins.NAME]`: file-source reading `/in/FILE`, the scratch's `in/` granted `ro`.
fn source(name: &str, file: &str) -> String {
    plugin(
        name,
        "file-source",
        &format!(r#"{{ path = "/in/{file}" }}"#),
        Some("in"),
    )
}

/// `[plugins.NAME]`: file-sink writing `/out/FILE`, the scratch's `out/` granted `rw`.
fn sink(name: &str, file: &str) -> String {
    format!(
        "[plugins.{name}]\npath = \"{{plugin:file-sink}}\"\nconfig = {{ path = \"/out/{file}\" }}\n\
         grants = {{ dirs = [{{ host = \"out\", guest = \"/out\", mode = \"rw\" }}] }}\n\n"
    )
}

/// `[plugins.NAME]` for a first-party plugin with its config (an inline table), and the
/// scratch's folder `ro` at the same path when it reads files.
fn plugin(name: &str, wasm: &str, config: &str, folder: Option<&str>) -> String {
    let grants = folder
        .map(|f| {
            format!(
                "grants = {{ dirs = [{{ host = \"{f}\", guest = \"/{f}\", mode = \"ro\" }}] }}\n"
            )
        })
        .unwrap_or_default();
    format!("[plugins.{name}]\npath = \"{{plugin:{wasm}}}\"\nconfig = {config}\n{grants}\n")
}

/// A `[[pipeline]]` whose failed records go to `out/DEAD`.
fn pipeline(name: &str, source: &str, transforms: &[&str], sink: &str, dead: &str) -> String {
    let transforms: Vec<String> = transforms.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[[pipeline]]\nname = \"{name}\"\nsource = \"{source}\"\ntransforms = [{}]\n\
         sinks = [\"{sink}\"]\non_error = \"dead-letter\"\n\
         dead_letter = {{ path = \"out/{dead}\" }}\n\n",
        transforms.join(", ")
    )
}

/// One document per line (file-source reads lines).
const CORPUS: &[&str] = &[
    r#"<order id="7" xmlns:p="urn:parts"><p:item sku="a">2</p:item><p:item sku="b"/><note><![CDATA[<fragile> & "dry"]]></note><city>K&#246;ln &amp; Bonn</city></order>"#,
    r#"<?xml version="1.0"?><!-- a comment --><feed xmlns="http://www.w3.org/2005/Atom"><title type="text">News</title><entry><id>1</id></entry><entry><id>2</id></entry><entry><id>3</id></entry></feed>"#,
    r#"<lines><line n="1">one</line><empty/><text>  spaced  </text><mixed>a<b>bold</b>c</mixed></lines>"#,
    r#"<single><entry><id>9</id></entry></single>"#,
];

const BAD: &[&str] = &["not xml at all", "<a><b></a>", "<a/><b/>"];

#[test]
fn xml_to_json_and_back_keeps_the_content_and_dead_letters_bad_input() {
    let s = Scratch::new();
    s.mkdir("in");
    s.mkdir("out");
    let mut input: Vec<&str> = CORPUS.to_vec();
    input.extend(BAD);
    s.write("in/docs.xml", &(input.join("\n") + "\n"));
    let config = [
        source("src", "docs.xml"),
        plugin(
            "to_json",
            "xml-to-json",
            r#"{ arrays = ["single.entry"] }"#,
            None,
        ),
        plugin("to_xml", "json-to-xml", "{ declaration = false }", None),
        sink("json_out", "first.jsonl"),
        sink("xml_out", "back.xml"),
        sink("again_out", "second.jsonl"),
        pipeline("first", "src", &["to_json"], "json_out", "dead.jsonl"),
        pipeline(
            "back",
            "src",
            &["to_json", "to_xml"],
            "xml_out",
            "dead-back.jsonl",
        ),
        pipeline(
            "again",
            "src",
            &["to_json", "to_xml", "to_json"],
            "again_out",
            "dead-again.jsonl",
        ),
    ];
    s.write("p.toml", &config.concat());
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    let n = CORPUS.len();
    assert!(
        stderr.contains(&format!(
            "pipeline `first`: {} in, 0 dropped, {n} written to `json_out`",
            n + BAD.len()
        )),
        "{stderr}"
    );
    let first = s.read("out/first.jsonl");
    let second = s.read("out/second.jsonl");
    assert_eq!(first.lines().count(), n);
    assert_eq!(
        first, second,
        "XML → JSON → XML → JSON gives the first JSON again"
    );
    let docs: Vec<serde_json::Value> = first
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        docs[0],
        serde_json::json!({"order": {
            "-id": "7", "-xmlns:p": "urn:parts",
            "p:item": [{"-sku": "a", "#text": "2"}, {"-sku": "b"}],
            "note": "<fragile> & \"dry\"",
            "city": "Köln & Bonn"
        }})
    );
    assert_eq!(
        docs[1]["feed"]["entry"],
        serde_json::json!([{"id": "1"}, {"id": "2"}, {"id": "3"}])
    );
    assert_eq!(docs[1]["feed"]["-xmlns"], "http://www.w3.org/2005/Atom");
    assert_eq!(
        docs[2],
        serde_json::json!({"lines": {
            "line": {"-n": "1", "#text": "one"},
            "empty": "",
            "text": "  spaced  ",
            "mixed": {"b": "bold", "#text": "ac"}
        }})
    );
    // `arrays` makes a lone element an array.
    assert_eq!(
        docs[3],
        serde_json::json!({"single": {"entry": [{"id": "9"}]}})
    );
    let back = s.read("out/back.xml");
    assert_eq!(
        back.lines().next(),
        Some(
            r#"<order id="7" xmlns:p="urn:parts"><p:item sku="a">2</p:item><p:item sku="b"/><note>&lt;fragile&gt; &amp; "dry"</note><city>Köln &amp; Bonn</city></order>"#
        )
    );
    let dead = s.read("out/dead.jsonl");
    let reasons: Vec<String> = dead
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["error"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(reasons.len(), BAD.len(), "{dead}");
    assert!(reasons[0].starts_with("payload is not XML"), "{reasons:?}");
    assert!(
        reasons[1].starts_with("payload is not well-formed XML (at byte "),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[2],
        "payload is not one XML document: a second root element at byte 4"
    );
}

#[test]
fn json_to_xml_explains_what_has_no_xml_form() {
    let s = Scratch::new();
    let sample = s.write(
        "in.txt",
        "{\"a\":1,\"b\":2}\n{\"1st\":\"x\"}\n{\"r\":{\"-a\":{\"x\":1}}}\n{\"r\":{\"-id\":\"q\\\"<\",\"x\":[1,2],\"y\":null}}\n",
    );
    let wasm = crate::plugin("json-to-xml");
    let out = s.run(&[
        "test-plugin",
        &wasm,
        "--config",
        "declaration=false",
        "--input",
        sample.to_str().unwrap(),
        "--show",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    for expected in [
        "invalid-data error: payload is not an object with one field (the root element); set `root` to wrap other JSON in an element",
        "invalid-data error: `1st` is not an XML element name",
        "invalid-data error: `-a` must be text, a number or a boolean, not {\"x\":1}",
        r#"→ <r id="q&quot;&lt;"><x>1</x><x>2</x><y/></r>"#,
    ] {
        assert!(stdout.contains(expected), "{expected}\n{stdout}");
    }
}

const ORDER_SCHEMA: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["id", "items"],
  "additionalProperties": false,
  "properties": {
    "id": { "type": "integer" },
    "email": { "type": "string", "pattern": "^[^@]+@[^@]+$" },
    "items": { "type": "array", "minItems": 1, "items": { "$ref": "#/$defs/line" } }
  },
  "$defs": {
    "line": {
      "type": "object",
      "required": ["sku", "qty"],
      "properties": { "sku": { "enum": ["a", "b"] }, "qty": { "type": "integer", "minimum": 1 } }
    }
  }
}"##;

/// A corpus of valid and invalid documents through json-schema: valid ones pass untouched,
/// each invalid one is dead-lettered with the pointer and the rule it broke; a schema file that
/// is not JSON, or not a schema, stops the start naming it.
#[test]
fn json_schema_passes_valid_documents_and_names_pointer_and_rule_for_invalid_ones() {
    let s = Scratch::new();
    s.mkdir("in");
    s.mkdir("out");
    s.mkdir("schemas");
    s.write("schemas/order.json", ORDER_SCHEMA);
    s.write("schemas/broken.json", "{\"type\": ");
    s.write("schemas/wrong.json", "{\"type\": 5}");
    let corpus = [
        (r#"{"id":1,"items":[{"sku":"a","qty":2}]}"#, None),
        (
            r#"{"id":2,"email":"x@y","items":[{"sku":"b","qty":1},{"sku":"a","qty":9}]}"#,
            None,
        ),
        (
            r#"{"id":3,"items":[{"sku":"a","qty":0}]}"#,
            Some(
                "/items/0/qty: 0 is less than the minimum of 1 (rule minimum at /$defs/line/properties/qty/minimum)",
            ),
        ),
        (
            r#"{"id":"4","items":[{"sku":"a","qty":1}]}"#,
            Some(r#"/id: "4" is not of type "integer" (rule type at /properties/id/type)"#),
        ),
        (
            r#"{"items":[]}"#,
            Some(r#"/: "id" is a required property (rule required at /required)"#),
        ),
        (
            r#"{"id":6,"items":[{"sku":"c","qty":1}],"extra":true}"#,
            Some("/items/0/sku"),
        ),
        (
            r#"{"id":7,"email":"nobody","items":[{"sku":"a","qty":1}]}"#,
            Some(
                r#"/email: "nobody" does not match "^[^@]+@[^@]+$" (rule pattern at /properties/email/pattern)"#,
            ),
        ),
        (
            "not json",
            Some("payload is not JSON: expected ident at line 1 column 2"),
        ),
    ];
    let lines: Vec<&str> = corpus.iter().map(|(doc, _)| *doc).collect();
    s.write("in/docs.jsonl", &(lines.join("\n") + "\n"));
    let pipeline = |schema: &str| {
        let config = format!(r#"{{ schema = "/schemas/{schema}" }}"#);
        [
            source("src", "docs.jsonl"),
            plugin("check", "json-schema", &config, Some("schemas")),
            sink("out", "valid.jsonl"),
            pipeline("p", "src", &["check"], "out", "dead.jsonl"),
        ]
        .concat()
    };
    s.write("p.toml", &pipeline("order.json"));
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    let valid: Vec<&str> = corpus
        .iter()
        .filter(|(_, e)| e.is_none())
        .map(|(d, _)| *d)
        .collect();
    assert_eq!(s.read("out/valid.jsonl"), valid.join("\n") + "\n");
    let dead: Vec<serde_json::Value> = s
        .read("out/dead.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let invalid: Vec<(&str, &str)> = corpus
        .iter()
        .filter_map(|(d, e)| e.map(|e| (*d, e)))
        .collect();
    assert_eq!(dead.len(), invalid.len(), "{dead:?}");
    for ((doc, expected), entry) in invalid.iter().zip(&dead) {
        assert_eq!(entry["message"]["payload"], *doc);
        let reason = entry["error"].as_str().unwrap();
        assert!(reason.contains(expected), "{doc}: {reason}");
    }
    for (schema, expected) in [
        (
            "broken.json",
            "config key `schema`: `/schemas/broken.json` is not JSON: EOF while parsing a value at line 1 column 9",
        ),
        (
            "wrong.json",
            "config key `schema`: `/schemas/wrong.json` is not a valid JSON Schema: ",
        ),
        (
            "absent.json",
            "config key `schema`: cannot read `/schemas/absent.json`: ",
        ),
    ] {
        s.write("p.toml", &pipeline(schema));
        let run = s.run(&["run", "p.toml"]);
        let (_, stderr) = text(&run);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
}

/// json-to-csv: columns in the configured order, RFC 4180 quoting, nested paths, empty cells,
/// the header once before the first row.
#[test]
fn json_to_csv_writes_quoted_rows_in_column_order_with_one_header() {
    let s = Scratch::new();
    let sample = s.write(
        "in.txt",
        concat!(
            r#"{"id":1,"name":"Ada, Countess","note":"said \"hi\"","c":{"city":"London"},"total":9.5}"#,
            "\n",
            r#"{"id":2,"name":"two\nlines","total":null,"tags":["x"]}"#,
            "\n",
            r#"[1,2]"#,
            "\n",
        ),
    );
    let wasm = crate::plugin("json-to-csv");
    let out = s.run(&[
        "test-plugin",
        &wasm,
        "--config",
        r#"columns=["id","name","c.city","total","tags","note"]"#,
        "--config",
        "header=true",
        "--input",
        sample.to_str().unwrap(),
        "--show",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    for expected in [
        "→ id,name,c.city,total,tags,note\n",
        r#"→ 1,"Ada, Countess",London,9.5,,"said ""hi""""#,
        r#"→ 2,"two\nlines",,,"[""x""]","#,
        "→ invalid-data error: payload is JSON but not an object: an array",
    ] {
        assert!(stdout.contains(expected), "{expected}\n{stdout}");
    }
}

const ORDER_AVSC: &str = r#"{
  "type": "record", "name": "Order", "namespace": "shop",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "name", "type": "string"},
    {"name": "price", "type": "double"},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
    {"name": "note", "type": ["null", "string"], "default": null},
    {"name": "attrs", "type": {"type": "map", "values": "int"}}
  ]
}"#;

/// avro: JSON → Avro datum → JSON gives the input back; a document that does not match the
/// schema and bytes that are not a datum are dead-lettered with the reason; a schema file that
/// does not parse stops the start naming it.
#[test]
fn avro_encode_then_decode_returns_the_input() {
    let s = Scratch::new();
    s.mkdir("in");
    s.mkdir("out");
    s.mkdir("schemas");
    s.write("schemas/order.avsc", ORDER_AVSC);
    s.write("schemas/broken.avsc", r#"{"type": "record", "name": "X"}"#);
    let good = [
        r#"{"id":1,"name":"ä ö","price":2.5,"tags":["x","y"],"status":"NEW","note":null,"attrs":{"k":1}}"#,
        r#"{"id":9007199254740993,"name":"","price":-0.125,"tags":[],"status":"PAID","note":"fragile","attrs":{}}"#,
    ];
    let bad =
        r#"{"id":"three","name":"c","price":1.5,"tags":[],"status":"NEW","note":null,"attrs":{}}"#;
    s.write(
        "in/orders.jsonl",
        &format!("{}\n{bad}\n{}\n", good[0], good[1]),
    );
    s.write("in/garbage.txt", "garbage\n");
    let pipeline = |schema: &str| {
        let config = |mode: &str| format!(r#"{{ mode = "{mode}", schema = "/schemas/{schema}" }}"#);
        [
            source("src", "orders.jsonl"),
            source("garbage", "garbage.txt"),
            plugin("encode", "avro", &config("encode"), Some("schemas")),
            plugin("decode", "avro", &config("decode"), Some("schemas")),
            sink("out", "back.jsonl"),
            plugin("none", "blackhole", "{}", None),
            pipeline("round", "src", &["encode", "decode"], "out", "dead.jsonl"),
            pipeline(
                "garbage",
                "garbage",
                &["decode"],
                "none",
                "dead-garbage.jsonl",
            ),
        ]
        .concat()
    };
    s.write("p.toml", &pipeline("order.avsc"));
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    assert_eq!(
        s.read("out/back.jsonl"),
        format!("{}\n{}\n", good[0], good[1])
    );
    let reason = |file: &str| {
        let dead = s.read(file);
        assert_eq!(dead.lines().count(), 1, "{dead}");
        let v: serde_json::Value = serde_json::from_str(dead.trim()).unwrap();
        v["error"].as_str().unwrap().to_owned()
    };
    let why = reason("out/dead.jsonl");
    assert!(
        why.starts_with("payload does not match the Avro schema: "),
        "{why}"
    );
    let why = reason("out/dead-garbage.jsonl");
    assert!(why.starts_with("payload is not"), "{why}");
    s.write("p.toml", &pipeline("broken.avsc"));
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("config key `schema`: `/schemas/broken.avsc` is not an Avro schema: "),
        "{stderr}"
    );
}

const ORDER_PROTO: &str = r#"syntax = "proto3";
package shop;
import "line.proto";
enum Status { NEW = 0; PAID = 1; }
message Order {
  int32 id = 1;
  string name = 2;
  repeated string tags = 3;
  Status status = 4;
  Line line = 5;
  map<string, int32> attrs = 6;
  int64 big = 7;
}
"#;

/// protobuf: JSON → protobuf → JSON gives back documents in protobuf's canonical JSON form
/// (the .proto compiled at start, with an import); a document with an unknown field or a wrong
/// type, and bytes that are not the message, are dead-lettered with the reason; a .proto that
/// does not compile, or a message type it lacks, stops the start naming it.
#[test]
fn protobuf_encode_then_decode_returns_the_input() {
    let s = Scratch::new();
    s.mkdir("in");
    s.mkdir("out");
    s.mkdir("protos");
    s.write("protos/order.proto", ORDER_PROTO);
    s.write(
        "protos/line.proto",
        "syntax = \"proto3\";\npackage shop;\nmessage Line { string sku = 1; int32 qty = 2; }\n",
    );
    s.write(
        "protos/broken.proto",
        "syntax = \"proto3\";\nmessage X { int32 = 1; }\n",
    );
    let good = [
        r#"{"id":1,"name":"ä","tags":["x","y"],"status":"PAID","line":{"sku":"s-1","qty":2},"attrs":{"k":3},"big":"9007199254740993"}"#,
        r#"{"id":-5,"line":{"sku":"only"}}"#,
    ];
    let bad = [r#"{"id":"x"}"#, r#"{"id":1,"colour":"red"}"#];
    s.write(
        "in/orders.jsonl",
        &format!("{}\n{}\n{}\n{}\n", good[0], bad[0], good[1], bad[1]),
    );
    let pipeline = |proto: &str, message: &str| {
        let config = |mode: &str| {
            format!(r#"{{ mode = "{mode}", proto = "/protos/{proto}", message = "{message}" }}"#)
        };
        [
            source("src", "orders.jsonl"),
            plugin("encode", "protobuf", &config("encode"), Some("protos")),
            plugin("decode", "protobuf", &config("decode"), Some("protos")),
            sink("out", "back.jsonl"),
            pipeline("round", "src", &["encode", "decode"], "out", "dead.jsonl"),
        ]
        .concat()
    };
    s.write("p.toml", &pipeline("order.proto", "shop.Order"));
    let run = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    let back: Vec<serde_json::Value> = s
        .read("out/back.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<serde_json::Value> = good
        .iter()
        .map(|g| serde_json::from_str(g).unwrap())
        .collect();
    assert_eq!(back, expected);
    let dead: Vec<serde_json::Value> = s
        .read("out/dead.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 2);
    for (entry, doc) in dead.iter().zip(bad) {
        assert_eq!(entry["message"]["payload"], doc);
        let why = entry["error"].as_str().unwrap();
        assert!(
            why.starts_with("payload is not a shop.Order in JSON: "),
            "{why}"
        );
    }
    for (proto, message, expected) in [
        (
            "broken.proto",
            "shop.Order",
            "config key `proto`: `/protos/broken.proto` does not compile: ",
        ),
        (
            "order.proto",
            "shop.Invoice",
            "config key `message`: no message type `shop.Invoice` in the descriptors; they have: ",
        ),
        (
            "absent.proto",
            "shop.Order",
            "config key `proto`: cannot read `/protos/absent.proto`: ",
        ),
    ] {
        s.write("p.toml", &pipeline(proto, message));
        let run = s.run(&["run", "p.toml"]);
        let (_, stderr) = text(&run);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
}
