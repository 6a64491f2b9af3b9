//! The "formats" section: each format plugin on 1 KiB documents, through the plugin layer
//! (Wasm, in process, the packed call, batches of 256, limits on) against the same plugin crate
//! compiled natively and called directly (its `Transform` impl: the same code, the same
//! crates: quick-xml, csv, jsonschema, apache-avro, prost-reflect, cel), so the ratio is what
//! the sandbox costs each format.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use patchbay_runtime::config::{DirGrant, DirMode, Grants, Limits};
use patchbay_runtime::contract::{ConfigEntry, Message, Outcome, PluginState};
use patchbay_runtime::plugin::{Instance, Runtime};
use patchbay_sdk::Transform;

use crate::{Options, Report};

const BATCH: usize = 256;
/// Items of an order and string fields of a record: documents of about 1 KiB.
const ITEMS: u64 = 12;
const FIELDS: usize = 14;

/// One order of about 1 KiB as JSON, in the shape xml-to-json gives it.
fn order_json(n: u64) -> String {
    let items: Vec<String> = (0..ITEMS)
        .map(|i| {
            format!(
                r#"{{"sku":"SKU-{n}-{i}","qty":"{}","price":"{}.50","note":"handle with care"}}"#,
                i + 1,
                10 + i
            )
        })
        .collect();
    format!(
        r#"{{"order":{{"-id":"{n}","-currency":"EUR","customer":"Customer number {n}","street":"1 Long Road","city":"Springfield","item":[{}]}}}}"#,
        items.join(",")
    )
}

fn order_xml(n: u64) -> String {
    let items: String = (0..ITEMS)
        .map(|i| {
            format!(
                "<item><sku>SKU-{n}-{i}</sku><qty>{}</qty><price>{}.50</price><note>handle with care</note></item>",
                i + 1,
                10 + i
            )
        })
        .collect();
    format!(
        r#"<?xml version="1.0"?><order id="{n}" currency="EUR"><customer>Customer number {n}</customer><street>1 Long Road</street><city>Springfield</city>{items}</order>"#
    )
}

/// A flat record of about 1 KiB (json-to-csv's input, avro's and protobuf's).
fn record_json(n: u64) -> String {
    let filler = "x".repeat(60);
    let fields: Vec<String> = (0..FIELDS)
        .map(|i| format!(r#""f{i}":"{filler}-{i}""#))
        .collect();
    format!(
        r#"{{"id":{n},"amount":{n}.25,"ok":true,{}}}"#,
        fields.join(",")
    )
}

const SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["order"],"properties":{"order":{"type":"object","required":["-id","customer","item"],"properties":{"-id":{"type":"string","pattern":"^[0-9]+$"},"customer":{"type":"string","minLength":1},"item":{"type":"array","items":{"type":"object","required":["sku","qty"],"properties":{"sku":{"type":"string"},"qty":{"type":"string","pattern":"^[0-9]+$"}}}}}}}}"#;

fn avro_schema() -> String {
    let fields: Vec<String> = (0..FIELDS)
        .map(|i| format!(r#"{{"name":"f{i}","type":"string"}}"#))
        .collect();
    format!(
        r#"{{"type":"record","name":"Record","fields":[{{"name":"id","type":"long"}},{{"name":"amount","type":"double"}},{{"name":"ok","type":"boolean"}},{}]}}"#,
        fields.join(",")
    )
}

fn proto() -> String {
    let fields: String = (0..FIELDS)
        .map(|i| format!("  string f{i} = {};\n", i + 4))
        .collect();
    format!(
        "syntax = \"proto3\";\npackage bench;\nmessage Record {{\n  int64 id = 1;\n  double amount = 2;\n  bool ok = 3;\n{fields}}}\n"
    )
}

/// json-to-csv's columns: every field of a record.
fn columns() -> String {
    let mut names = vec!["\"id\"".to_owned(), "\"amount\"".into(), "\"ok\"".into()];
    names.extend((0..FIELDS).map(|i| format!("\"f{i}\"")));
    format!("[{}]", names.join(","))
}

/// One row: the plugin, what it does, its config, its input.
struct Case {
    plugin: &'static str,
    what: &'static str,
    config: Vec<(String, String)>,
    input: fn(u64) -> String,
}

fn cases(files: &str) -> Vec<Case> {
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    vec![
        Case {
            plugin: "xml-to-json",
            what: "XML → JSON",
            config: vec![pair("arrays", r#"["order.item"]"#)],
            input: |n| order_xml(n),
        },
        Case {
            plugin: "json-to-xml",
            what: "JSON → XML",
            config: vec![],
            input: |n| order_json(n),
        },
        Case {
            plugin: "json-schema",
            what: "validate (draft 2020-12)",
            config: vec![pair("schema", &format!("{files}/order.schema.json"))],
            input: |n| order_json(n),
        },
        Case {
            plugin: "json-to-csv",
            what: "JSON → CSV row",
            config: vec![pair("columns", &columns())],
            input: |n| record_json(n),
        },
        Case {
            plugin: "avro",
            what: "JSON → Avro datum",
            config: vec![
                pair("mode", "encode"),
                pair("schema", &format!("{files}/record.avsc")),
            ],
            input: |n| record_json(n),
        },
        Case {
            plugin: "protobuf",
            what: "JSON → Protobuf",
            config: vec![
                pair("mode", "encode"),
                pair("proto", &format!("{files}/record.proto")),
                pair("message", "bench.Record"),
            ],
            input: |n| record_json(n),
        },
        Case {
            plugin: "map",
            what: "CEL: two fields computed",
            config: vec![pair(
                "set",
                r#"{"lines":"size(json.order.item)","who":"json.order.customer + ' in ' + json.order.city"}"#,
            )],
            input: |n| order_json(n),
        },
    ]
}

/// The native `process_batch` of the plugin named `plugin`, over `input` in batches; ns per
/// message, and the outcomes of the first batch.
fn native(plugin: &str, config: &[(String, String)], input: &[Message]) -> anyhow::Result<f64> {
    fn time<T: Transform>(config: &[(String, String)], input: &[Message]) -> anyhow::Result<f64> {
        let mut t = T::init(patchbay_sdk::Config::from_pairs(config.iter().cloned()))
            .map_err(|e| anyhow::anyhow!("native init: {}", e.message))?;
        let batches: Vec<Vec<patchbay_sdk::Message>> = input
            .chunks(BATCH)
            .map(|c| {
                c.iter()
                    .map(|m| patchbay_sdk::Message::new(m.payload.clone()))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        for batch in batches {
            let outcomes = t.process_batch(batch);
            if let Some(patchbay_sdk::Outcome::Fail(e)) = outcomes
                .iter()
                .find(|o| matches!(o, patchbay_sdk::Outcome::Fail(_)))
            {
                bail!("natively: {}", e.message);
            }
            std::hint::black_box(outcomes);
        }
        Ok(started.elapsed().as_nanos() as f64 / input.len() as f64)
    }
    match plugin {
        "xml-to-json" => time::<xml_to_json::XmlToJson>(config, input),
        "json-to-xml" => time::<json_to_xml::JsonToXml>(config, input),
        "json-schema" => time::<json_schema::JsonSchema>(config, input),
        "json-to-csv" => time::<json_to_csv::JsonToCsv>(config, input),
        "avro" => time::<avro::AvroTransform>(config, input),
        "protobuf" => time::<protobuf::Protobuf>(config, input),
        "map" => time::<map::MapTransform>(config, input),
        other => bail!("no native build of `{other}`"),
    }
}

async fn wasm(
    runtime: &Runtime,
    wasm: &Path,
    files: &Path,
    config: &[(String, String)],
    input: &[Message],
) -> anyhow::Result<f64> {
    let loaded = runtime.load(wasm, None)?;
    let grants = Grants {
        dirs: vec![DirGrant {
            host: files.to_owned(),
            guest: "/files".into(),
            mode: DirMode::Ro,
        }],
        ..Grants::default()
    };
    let mut instance: Instance = runtime
        .instantiate(
            &loaded,
            Arc::from("bench/format"),
            Arc::from("format"),
            &grants,
            &Limits::default(),
            PluginState::default(),
        )
        .await?;
    let entries: Vec<ConfigEntry> = config
        .iter()
        .map(|(k, v)| ConfigEntry {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    instance
        .init(&entries)
        .await?
        .map_err(|e| anyhow::anyhow!("{} init: {}", wasm.display(), e.message))?;
    let started = Instant::now();
    for chunk in input.chunks(BATCH) {
        let outcomes = instance.process(chunk).await?;
        if outcomes.len() != chunk.len() {
            bail!("{} outcomes for {} messages", outcomes.len(), chunk.len());
        }
        if let Some(Outcome::Fail(e)) = outcomes.iter().find(|o| matches!(o, Outcome::Fail(_))) {
            bail!("{}: {}", wasm.display(), e.message);
        }
        std::hint::black_box(outcomes);
    }
    Ok(started.elapsed().as_nanos() as f64 / input.len() as f64)
}

pub(crate) async fn table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let count = if o.quick { 2_560 } else { 51_200 };
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("order.schema.json"), SCHEMA)?;
    std::fs::write(dir.path().join("record.avsc"), avro_schema())?;
    std::fs::write(dir.path().join("record.proto"), proto())?;
    let runtime = Runtime::new(None)?;
    r.line(format!(
        "## Formats: each format plugin on 1 KiB documents, in Wasm and the same crate natively \
         ({count} messages, batches of {BATCH}, best of 3)\n"
    ));
    r.line(format!(
        "The Wasm row runs the plugin through Patchbay's plugin layer in process (the packed \
         call, default limits); the native row links the same plugin crate into the benchmark \
         and calls its `Transform::process_batch` directly: the same code and crates, no \
         sandbox. XML and JSON orders have {ITEMS} items; records have {} fields.\n",
        FIELDS + 3
    ));
    r.line("| plugin | work | input bytes | Wasm msg/s | native msg/s | Wasm / native |");
    r.line("|---|---|---|---|---|---|");
    for case in cases("/files") {
        let input: Vec<Message> = (0..count as u64)
            .map(|n| Message {
                payload: (case.input)(n).into_bytes(),
                key: None,
                headers: Vec::new(),
                timestamp: None,
            })
            .collect();
        let native_config: Vec<(String, String)> = case
            .config
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.replace("/files", &dir.path().display().to_string()),
                )
            })
            .collect();
        let file = o.plugins.join(format!("{}.wasm", case.plugin));
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            best.0 = best
                .0
                .min(wasm(&runtime, &file, dir.path(), &case.config, &input).await?);
            best.1 = best.1.min(native(case.plugin, &native_config, &input)?);
        }
        r.line(format!(
            "| `{}` | {} | {} | {:.0} | {:.0} | {:.2} |",
            case.plugin,
            case.what,
            input[0].payload.len(),
            1e9 / best.0,
            1e9 / best.1,
            best.1 / best.0
        ));
    }
    r.line("");
    Ok(())
}
