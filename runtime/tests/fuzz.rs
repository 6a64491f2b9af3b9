//! Fuzz tests of the surfaces a plugin or a user reaches: the host's decoding of packed answers
//! (outcomes and results frames, `plugin::packed`), the pipeline-file parser
//! (`Config::parse`), and the admin API's reload body. They are `proptest` properties (it runs
//! on the stable toolchain): inputs are generated, or taken from the corpus
//! (`tests/fuzz-corpus/`, and the pipeline files of `examples/`) and mutated byte by byte and
//! line by line. Each property says what must hold whatever the input: no panic, refusals
//! before allocation (no answer beyond `most_answers`, no replaced messages beyond
//! `max_output`), valid frames decoded exactly, and every refused file explained.
//!
//! `cargo test` runs 256 cases a property (a few seconds); `cargo xtask fuzz --minutes N` runs
//! them over and over with fresh seeds. A failure is shrunk and saved by proptest in a
//! `proptest-regressions` folder (its default place); commit it: it is replayed first from then
//! on.

use std::path::{Path, PathBuf};

use patchbay_frame::{Kind, Writer};
use patchbay_runtime::admin::ReloadRequest;
use patchbay_runtime::config::Config;
use patchbay_runtime::contract::Outcome;
use patchbay_runtime::plugin::{message_size, packed};
use proptest::prelude::*;

/// A message as a generator describes it.
#[derive(Debug, Clone)]
struct Msg {
    payload: Vec<u8>,
    key: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    timestamp: Option<u64>,
}

/// An outcome as a generator describes it.
#[derive(Debug, Clone)]
enum Out {
    Keep,
    Drop,
    Replace(Vec<Msg>),
    Fail(u8, String),
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        prop::collection::vec(any::<u8>(), 0..64),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        prop::collection::vec(("[a-z-]{0,8}", ".{0,12}"), 0..4),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(payload, key, headers, timestamp)| Msg {
            payload,
            key,
            headers,
            timestamp,
        })
}

fn out() -> impl Strategy<Value = Out> {
    prop_oneof![
        Just(Out::Keep),
        Just(Out::Drop),
        prop::collection::vec(msg(), 0..4).prop_map(Out::Replace),
        (0u8..3, ".{0,20}").prop_map(|(k, t)| Out::Fail(k, t)),
    ]
}

fn kind(code: u8) -> Kind {
    match code {
        0 => Kind::Retryable,
        1 => Kind::InvalidData,
        _ => Kind::Fatal,
    }
}

fn write_message(w: &mut Writer, m: &Msg) {
    w.message(
        &m.payload,
        m.key.as_deref(),
        m.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        m.timestamp,
    );
}

fn outcomes_frame(outs: &[Out]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    w.count(outs.len());
    for o in outs {
        match o {
            Out::Keep => w.keep(),
            Out::Drop => w.drop_message(),
            Out::Replace(ms) => {
                w.replace(ms.len());
                for m in ms {
                    write_message(&mut w, m);
                }
            }
            Out::Fail(k, t) => w.fail(kind(*k), t),
        }
    }
    w.finish()
}

fn results_frame(results: &[Option<(u8, String)>]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    w.count(results.len());
    for r in results {
        match r {
            None => w.ok(),
            Some((k, t)) => w.err(kind(*k), t),
        }
    }
    w.finish()
}

/// One change to an input.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize, usize),
    Truncate(usize),
    Repeat(usize, usize),
    /// Line-wise (for text): drop, duplicate or swap lines.
    DropLine(usize),
    DupLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Repeat(i, n)),
        any::<usize>().prop_map(Mutation::DropLine),
        any::<usize>().prop_map(Mutation::DupLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn mutate(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = input.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match *m {
            Mutation::Flip(i, b) if len > 0 => input[at(i)] ^= b | 1,
            Mutation::Insert(i, b) => input.insert(if len == 0 { 0 } else { i % (len + 1) }, b),
            Mutation::Remove(i, n) if len > 0 => {
                let start = at(i);
                input.drain(start..(start + n).min(len));
            }
            Mutation::Truncate(i) => input.truncate(if len == 0 { 0 } else { i % (len + 1) }),
            Mutation::Repeat(i, n) if len > 0 => {
                let start = at(i);
                let chunk: Vec<u8> = input[start..(start + n).min(len)].to_vec();
                let end = (start + n).min(len);
                input.splice(end..end, chunk);
            }
            Mutation::DropLine(i) | Mutation::DupLine(i) | Mutation::SwapLines(i, _) => {
                let mut lines: Vec<Vec<u8>> =
                    input.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let n = lines.len();
                match *m {
                    Mutation::DropLine(_) => {
                        lines.remove(i % n);
                    }
                    Mutation::DupLine(_) => {
                        let line = lines[i % n].clone();
                        lines.insert(i % n, line);
                    }
                    Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
                    _ => {}
                }
                input = lines.join(&b'\n');
            }
            _ => {}
        }
    }
    input
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus")
}

/// Every file of the corpus folder `kind` (frames are hex text: one frame per line).
fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir().join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut seeds = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        if f.extension().is_some_and(|e| e == "hex") {
            for line in String::from_utf8_lossy(&bytes).lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let hex: String = line.split_whitespace().collect();
                let frame: Vec<u8> = (0..hex.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                    .collect();
                seeds.push(frame);
            }
        } else {
            seeds.push(bytes);
        }
    }
    seeds
}

/// The corpus's pipeline files and every example's.
fn pipeline_seeds() -> Vec<Vec<u8>> {
    let mut seeds = corpus("pipelines");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for dir in std::fs::read_dir(examples).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if file.path().extension().is_some_and(|e| e == "toml") {
                seeds.push(std::fs::read(file.path()).unwrap_or_default());
            }
        }
    }
    assert!(seeds.len() >= 4, "the pipeline corpus is missing");
    seeds
}

/// A frame from the corpus or the generator, then mutated.
fn mutated_frame(
    seeds: Vec<Vec<u8>>,
    generated: impl Strategy<Value = Vec<u8>>,
) -> impl Strategy<Value = Vec<u8>> {
    let from_corpus = prop::sample::select(seeds);
    (
        prop_oneof![
            from_corpus,
            generated,
            prop::collection::vec(any::<u8>(), 0..256)
        ],
        prop::collection::vec(mutation(), 0..6),
    )
        .prop_map(|(frame, ms)| mutate(frame, &ms))
}

proptest! {
    /// A well-formed outcomes frame decodes to exactly what was written.
    #[test]
    fn valid_outcomes_frames_decode_exactly(outs in prop::collection::vec(out(), 0..24)) {
        let frame = outcomes_frame(&outs);
        let decoded = packed::outcomes(&frame, outs.len(), u64::MAX)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(decoded.len(), outs.len());
        for (d, o) in decoded.iter().zip(&outs) {
            match (d, o) {
                (Outcome::Keep, Out::Keep) | (Outcome::Drop, Out::Drop) => {}
                (Outcome::Replace(got), Out::Replace(want)) => {
                    prop_assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(want) {
                        prop_assert_eq!(&g.payload, &w.payload);
                        prop_assert_eq!(&g.key, &w.key);
                        prop_assert_eq!(g.timestamp, w.timestamp);
                        let headers: Vec<(String, String)> = g
                            .headers
                            .iter()
                            .map(|h| (h.name.clone(), h.value.clone()))
                            .collect();
                        prop_assert_eq!(&headers, &w.headers);
                    }
                }
                (Outcome::Fail(e), Out::Fail(_, text)) => prop_assert_eq!(&e.message, text),
                (d, o) => prop_assert!(false, "decoded {:?} for {:?}", d, o),
            }
        }
    }

    /// Whatever the bytes, decoding outcomes never panics, never answers more than
    /// `most_answers(inputs)`, and never keeps replaced messages beyond `max_output`.
    #[test]
    fn any_outcomes_frame_is_decoded_within_the_limits(
        frame in mutated_frame(
            corpus("outcomes"),
            prop::collection::vec(out(), 0..24).prop_map(|o| outcomes_frame(&o)),
        ),
        inputs in 0usize..40,
        max_output in prop_oneof![0u64..4096, Just(16 << 20)],
    ) {
        if let Ok(decoded) = packed::outcomes(&frame, inputs, max_output) {
            prop_assert!(decoded.len() <= packed::most_answers(inputs));
            let size: u64 = decoded
                .iter()
                .filter_map(|o| match o {
                    Outcome::Replace(ms) => Some(ms.iter().map(message_size).sum::<u64>()),
                    _ => None,
                })
                .sum();
            prop_assert!(size <= max_output, "{} bytes kept over {}", size, max_output);
        }
    }

    /// The same for results frames.
    #[test]
    fn any_results_frame_is_decoded_within_the_limits(
        frame in mutated_frame(
            corpus("results"),
            prop::collection::vec(prop::option::of((0u8..3, ".{0,20}")), 0..24)
                .prop_map(|r| results_frame(&r)),
        ),
        inputs in 0usize..40,
    ) {
        if let Ok(decoded) = packed::results(&frame, inputs) {
            prop_assert!(decoded.len() <= packed::most_answers(inputs));
        }
    }

    /// A pipeline file, mangled: the parser never panics, and a refusal always says what and
    /// where.
    #[test]
    fn any_pipeline_file_is_accepted_or_explained(
        text in (prop::sample::select(pipeline_seeds()), prop::collection::vec(mutation(), 0..8))
            .prop_map(|(seed, ms)| mutate(seed, &ms)),
    ) {
        let text = String::from_utf8_lossy(&text);
        if let Err(e) = Config::parse(Path::new("fuzz.toml"), &text) {
            let shown = e.to_string();
            prop_assert!(shown.contains("fuzz.toml"), "no location in {}", shown);
            prop_assert!(shown.len() > "fuzz.toml".len() + 2, "no explanation: {}", shown);
        }
    }

    /// The admin API's reload body: anything but the documented object (or nothing) is a
    /// refusal that says what to send.
    #[test]
    fn any_reload_body_is_accepted_or_explained(
        body in (
            prop_oneof![
                prop::sample::select(corpus("reload")),
                prop::collection::vec(any::<u8>(), 0..64),
            ],
            prop::collection::vec(mutation(), 0..4),
        )
            .prop_map(|(seed, ms)| mutate(seed, &ms)),
    ) {
        if let Err(e) = ReloadRequest::from_body(&body) {
            prop_assert!(e.contains("send {\"path\""), "{}", e);
        }
    }
}
