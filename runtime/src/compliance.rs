//! `patchbay test-plugin`: the compliance kit. It runs the MUST rules of `wit/README.md` against
//! one plugin, each check on a fresh instance so that one failure cannot hide the next, and
//! reports pass or fail per check with the reason.
//!
//! A check that does not apply (an endless source cannot show that `end-of-stream` sticks) is
//! reported as such, never as a pass.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Grants, Limits, Role};
use crate::contract::{
    ConfigEntry, ErrorKind, Header, Message, Metadata, Outcome, PluginState, PollResult, WitError,
};
use crate::plugin::{Instance, LoadedPlugin, Runtime, Trap};

/// What to test and how to run it.
pub struct Options {
    /// The component.
    pub path: PathBuf,
    /// A configuration that works: the checks start from it.
    pub config: Vec<ConfigEntry>,
    /// Grants of the instances (from a pipeline file).
    pub grants: Grants,
    /// Limits of the instances (from a pipeline file).
    pub limits: Limits,
    /// Sample payloads for transforms and sinks (one per line); default: JSON objects.
    pub input: Option<Vec<Vec<u8>>>,
    /// How long a source may take to reach `end-of-stream` before rule 12 is not checked.
    pub source_budget: Duration,
}

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The rule held; what was seen.
    Pass(String),
    /// The rule was broken; how.
    Fail(String),
    /// The check does not apply to this plugin; why.
    NotApplicable(String),
}

/// One check of one rule.
#[derive(Debug, Clone)]
pub struct Check {
    /// Rule number in `wit/README.md`.
    pub rule: u32,
    /// What was checked, e.g. "`process` accepts an empty batch".
    pub what: &'static str,
    /// How it went.
    pub verdict: Verdict,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, detail) = match &self.verdict {
            Verdict::Pass(d) => ("pass", d),
            Verdict::Fail(d) => ("FAIL", d),
            Verdict::NotApplicable(d) => ("n/a ", d),
        };
        write!(f, "{word}  rule {:>2}  {}", self.rule, self.what)?;
        if !detail.is_empty() {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// The outcome of a whole run.
pub struct Report {
    /// `name version`, from `describe`.
    pub plugin: String,
    /// The plugin's world.
    pub role: Role,
    /// Every check, in the order run.
    pub checks: Vec<Check>,
}

impl Report {
    /// Checks that failed.
    pub fn failures(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Fail(_)))
            .count()
    }
}

/// A plugin under test: how to make fresh instances of it.
struct Subject<'a> {
    runtime: &'a Runtime,
    loaded: LoadedPlugin,
    options: &'a Options,
    label: Arc<str>,
}

impl Subject<'_> {
    async fn fresh(&self) -> anyhow::Result<Instance> {
        self.runtime
            .instantiate(
                &self.loaded,
                self.label.clone(),
                self.label.clone(),
                &self.options.grants,
                &self.options.limits,
                PluginState::default(),
            )
            .await
    }

    /// A fresh instance, initialised with the working configuration.
    async fn ready(&self) -> Result<Instance, String> {
        let mut instance = self.fresh().await.map_err(|e| format!("{e:#}"))?;
        match instance.init(&self.options.config).await {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(e)) => Err(format!(
                "`init` refused the given configuration: {} error: {}",
                e.kind, e.message
            )),
            Err(trap) => Err(trapped(&trap)),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn trapped(trap: &Trap) -> String {
    format!("trapped in `{}`: {}", trap.function, trap.reason)
}

/// Run every check that applies to the plugin's world.
pub async fn run(runtime: &Runtime, options: &Options) -> anyhow::Result<Report> {
    let loaded = runtime.load(&options.path, None)?;
    let role = loaded.role;
    let subject = Subject {
        runtime,
        loaded,
        options,
        label: Arc::from("test-plugin"),
    };
    let mut checks = Vec::new();
    let mut check = |rule: u32, what: &'static str, verdict: Verdict| {
        checks.push(Check {
            rule,
            what,
            verdict,
        })
    };

    // Rule 1: `describe` works before `init`, and its answer does not depend on configuration.
    let mut instance = subject.fresh().await?;
    let meta = match instance.metadata().await {
        Ok(meta) => meta,
        Err(trap) => {
            check(
                1,
                "`describe` returns metadata without trapping",
                Verdict::Fail(trapped(&trap)),
            );
            return Ok(Report {
                plugin: options.path.display().to_string(),
                role,
                checks,
            });
        }
    };
    check(
        1,
        "`describe` returns metadata without trapping",
        Verdict::Pass(format!(
            "{} {}, {} config key{}",
            meta.name,
            meta.version,
            meta.config_keys.len(),
            plural(meta.config_keys.len())
        )),
    );
    check(1, "the metadata is well formed", well_formed(&meta));
    let plugin = format!("{} {}", meta.name, meta.version);

    // The working configuration must fit the plugin's own keys (rule 2 is the host's side).
    for entry in &options.config {
        if !meta.config_keys.iter().any(|k| k.name == entry.key) {
            anyhow::bail!(
                "{plugin} has no config key `{}`; it accepts: {}",
                entry.key,
                key_list(&meta)
            );
        }
    }
    if let Some(missing) = meta
        .config_keys
        .iter()
        .find(|k| k.required && !options.config.iter().any(|e| e.key == k.name))
    {
        anyhow::bail!(
            "{plugin} requires config key `{}` ({}); pass it with --config {}=VALUE",
            missing.name,
            missing.description,
            missing.name
        );
    }
    let mut ready = match subject.ready().await {
        Ok(instance) => instance,
        Err(why) => anyhow::bail!(
            "{plugin}: {why}; give a configuration that works with --config KEY=VALUE or \
             --pipeline FILE --plugin NAME"
        ),
    };
    check(
        1,
        "`describe` gives the same metadata after `init`",
        match ready.metadata().await {
            Ok(after) if after == meta => Verdict::Pass(String::new()),
            Ok(after) => Verdict::Fail(metadata_change(&meta, &after)),
            Err(trap) => Verdict::Fail(trapped(&trap)),
        },
    );
    drop(ready);
    check(2, "config key names are unique", unique_keys(&meta));

    // Rule 3: bad configuration is a fatal error naming the key, never a trap.
    let (verdict, tries) = bad_config(&subject, &meta).await?;
    check(
        3,
        "`init` answers bad values with a fatal error naming the key, never a trap",
        match verdict {
            Verdict::Pass(_) => Verdict::Pass(format!("{tries} bad configurations tried")),
            other => other,
        },
    );
    check(
        3,
        "`init` without a required key returns a fatal error naming it",
        missing_required(&subject, &meta).await?,
    );

    match role {
        Role::Transform | Role::Sink => {
            let samples = options.input.clone().unwrap_or_else(default_samples);
            if samples.is_empty() {
                anyhow::bail!("the input file has no lines: give at least one sample payload");
            }
            let call = if role == Role::Transform {
                "process"
            } else {
                "write"
            };
            data_checks(&subject, call, &samples, &mut check).await;
            if subject.loaded.packed() {
                check(
                    23,
                    if role == Role::Transform {
                        "`process-packed` answers exactly as `process` does"
                    } else {
                        "`write-packed` answers exactly as `write` does"
                    },
                    packed_agrees(&subject, role, &samples).await,
                );
            }
        }
        Role::Source => source_checks(&subject, &mut check).await,
    }
    Ok(Report {
        plugin,
        role,
        checks,
    })
}

/// What differs between two answers of `describe`.
fn metadata_change(before: &Metadata, after: &Metadata) -> String {
    let field =
        |name: &str, a: &str, b: &str| format!("{name} was {a:?} before `init`, {b:?} after");
    if before.name != after.name {
        field("the name", &before.name, &after.name)
    } else if before.version != after.version {
        field("the version", &before.version, &after.version)
    } else if before.description != after.description {
        field("the description", &before.description, &after.description)
    } else {
        format!(
            "the config keys were {} before `init`, {} after",
            key_list(before),
            key_list(after)
        )
    }
}

fn key_list(meta: &Metadata) -> String {
    if meta.config_keys.is_empty() {
        return "no keys".into();
    }
    meta.config_keys
        .iter()
        .map(|k| k.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn well_formed(meta: &Metadata) -> Verdict {
    let name_ok = !meta.name.is_empty()
        && meta
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Verdict::Fail(format!(
            "name `{}` is not lowercase letters, digits and dashes",
            meta.name
        ));
    }
    let parts: Vec<&str> = meta
        .version
        .split(['-', '+'])
        .next()
        .unwrap_or_default()
        .split('.')
        .collect();
    if parts.len() != 3 || parts.iter().any(|p| p.parse::<u64>().is_err()) {
        return Verdict::Fail(format!(
            "version `{}` is not a semantic version like 1.2.0",
            meta.version
        ));
    }
    if meta.description.trim().is_empty() {
        return Verdict::Fail("the description is empty".into());
    }
    if let Some(k) = meta
        .config_keys
        .iter()
        .find(|k| k.description.trim().is_empty())
    {
        return Verdict::Fail(format!("config key `{}` has no description", k.name));
    }
    Verdict::Pass(String::new())
}

fn unique_keys(meta: &Metadata) -> Verdict {
    let mut seen = std::collections::HashSet::new();
    match meta
        .config_keys
        .iter()
        .find(|k| !seen.insert(k.name.as_str()))
    {
        Some(k) => Verdict::Fail(format!("`{}` is listed twice", k.name)),
        None => Verdict::Pass(String::new()),
    }
}

/// Values no key of any plugin should take silently as something else. A plugin may accept
/// some of them (a free-text key takes anything); it must never trap on one.
const BAD_VALUES: &[&str] = &[
    "",
    "\u{1}not a valid value\u{1}",
    "-1",
    "[[",
    "{\"x\":",
    "1e999",
];

/// Try each bad value for each key, the rest of the configuration kept working.
async fn bad_config(subject: &Subject<'_>, meta: &Metadata) -> anyhow::Result<(Verdict, usize)> {
    let mut tries = 0;
    for key in &meta.config_keys {
        for bad in BAD_VALUES {
            let mut config: Vec<ConfigEntry> = subject
                .options
                .config
                .iter()
                .filter(|e| e.key != key.name)
                .cloned()
                .collect();
            config.push(ConfigEntry {
                key: key.name.clone(),
                value: (*bad).to_owned(),
            });
            tries += 1;
            let mut instance = subject.fresh().await?;
            let shown = format!("{}={bad:?}", key.name);
            match instance.init(&config).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if let Some(why) = bad_init_error(&e, &key.name) {
                        return Ok((Verdict::Fail(format!("with {shown}: {why}")), tries));
                    }
                }
                Err(trap) => {
                    return Ok((
                        Verdict::Fail(format!("with {shown}: {}", trapped(&trap))),
                        tries,
                    ));
                }
            }
        }
    }
    Ok((Verdict::Pass(String::new()), tries))
}

/// Why an error from `init` about `key` breaks rule 3, if it does.
fn bad_init_error(e: &WitError, key: &str) -> Option<String> {
    if e.kind != ErrorKind::Fatal {
        return Some(format!(
            "the error is `{}`, not `fatal`: {}",
            e.kind, e.message
        ));
    }
    if !e.message.contains(key) {
        return Some(format!(
            "the error does not name the key `{key}`: {}",
            e.message
        ));
    }
    None
}

async fn missing_required(subject: &Subject<'_>, meta: &Metadata) -> anyhow::Result<Verdict> {
    let required: Vec<&str> = meta
        .config_keys
        .iter()
        .filter(|k| k.required)
        .map(|k| k.name.as_str())
        .collect();
    if required.is_empty() {
        return Ok(Verdict::NotApplicable("no key is required".into()));
    }
    for key in &required {
        let config: Vec<ConfigEntry> = subject
            .options
            .config
            .iter()
            .filter(|e| e.key != *key)
            .cloned()
            .collect();
        let mut instance = subject.fresh().await?;
        match instance.init(&config).await {
            Ok(Ok(())) => {
                return Ok(Verdict::Fail(format!(
                    "`init` accepted a configuration without the required key `{key}`"
                )));
            }
            Ok(Err(e)) => {
                if let Some(why) = bad_init_error(&e, key) {
                    return Ok(Verdict::Fail(format!("without `{key}`: {why}")));
                }
            }
            Err(trap) => {
                return Ok(Verdict::Fail(format!(
                    "without `{key}`: {}",
                    trapped(&trap)
                )));
            }
        }
    }
    Ok(Verdict::Pass(format!("{} required", required.join(", "))))
}

/// `{"seq":N,"name":"item-N",…}`, with a key and a header on every other message.
fn default_samples() -> Vec<Vec<u8>> {
    (0..16u64)
        .map(|n| {
            format!(
                r#"{{"seq":{n},"name":"item-{n}","price":{n}.5,"tags":["a","b"],"note":"ünïcödé"}}"#
            )
            .into_bytes()
        })
        .collect()
}

fn message(n: usize, payload: Vec<u8>) -> Message {
    Message {
        payload,
        key: n.is_multiple_of(2).then(|| format!("k{n}").into_bytes()),
        headers: if n % 2 == 1 {
            vec![Header {
                name: "content-type".into(),
                value: "application/json".into(),
            }]
        } else {
            Vec::new()
        },
        timestamp: Some(1_700_000_000_000 + n as u64),
    }
}

fn batch(samples: &[Vec<u8>], len: usize) -> Vec<Message> {
    (0..len)
        .map(|n| message(n, samples[n % samples.len()].clone()))
        .collect()
}

/// What a data call returned, reduced to what the rules are about.
struct Answer {
    count: usize,
    /// Errors by kind, for rule 10's check on sinks.
    errors: Vec<WitError>,
}

async fn call(instance: &mut Instance, function: &str, batch: &[Message]) -> Result<Answer, Trap> {
    if function == "process" {
        let outcomes = instance.process(batch).await?;
        let errors = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Fail(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        Ok(Answer {
            count: outcomes.len(),
            errors,
        })
    } else {
        let results = instance.write(batch).await?;
        let errors = results
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect();
        Ok(Answer {
            count: results.len(),
            errors,
        })
    }
}

/// Call `function` with each batch on one fresh instance; check one answer per message.
async fn counts(subject: &Subject<'_>, function: &str, batches: &[Vec<Message>]) -> Verdict {
    let mut instance = match subject.ready().await {
        Ok(i) => i,
        Err(why) => return Verdict::Fail(why),
    };
    let started = Instant::now();
    for (i, b) in batches.iter().enumerate() {
        match call(&mut instance, function, b).await {
            Ok(answer) if answer.count == b.len() => {}
            Ok(answer) => {
                return Verdict::Fail(format!(
                    "call {} of {}: {} answer{} for {} message{}",
                    i + 1,
                    batches.len(),
                    answer.count,
                    plural(answer.count),
                    b.len(),
                    plural(b.len())
                ));
            }
            Err(trap) => {
                return Verdict::Fail(format!(
                    "call {} of {} ({} messages): {}",
                    i + 1,
                    batches.len(),
                    b.len(),
                    trapped(&trap)
                ));
            }
        }
    }
    let messages: usize = batches.iter().map(Vec::len).sum();
    Verdict::Pass(format!(
        "{} call{}, {messages} messages, {:.0?}",
        batches.len(),
        plural(batches.len()),
        started.elapsed()
    ))
}

/// Rule 23: the same batches through the packed call on one fresh instance and through the
/// typed call on another give the same answers. One instance at a time: a connector's two
/// instances would share its client id, and a broker lets only one connect under it.
async fn packed_agrees(subject: &Subject<'_>, role: Role, samples: &[Vec<u8>]) -> Verdict {
    let mut odd = batch(samples, 100);
    for payload in [Vec::new(), vec![0xff, 0xfe, 0x00], (0..=255u8).collect()] {
        odd.push(message(odd.len(), payload));
    }
    let batches = [batch(samples, 1), batch(samples, 7), odd, Vec::new()];
    let packed = match answers(subject, role, &batches, false).await {
        Ok(a) => a,
        Err(why) => return Verdict::Fail(why),
    };
    let typed = match answers(subject, role, &batches, true).await {
        Ok(a) => a,
        Err(why) => return Verdict::Fail(why),
    };
    for (i, ((p, t), b)) in packed.iter().zip(&typed).zip(&batches).enumerate() {
        let differs = match (p, t) {
            (Ok(p), Ok(t)) => first_difference(p, t),
            // Both trapped: they agree (the trap is another rule's failure).
            (Err(_), Err(_)) => None,
            (Err(trap), Ok(_)) => Some(format!("only the packed call {trap}")),
            (Ok(_), Err(trap)) => Some(format!("only the typed call {trap}")),
        };
        if let Some(why) = differs {
            return Verdict::Fail(format!(
                "batch {} ({} message{}): {why}",
                i + 1,
                b.len(),
                plural(b.len())
            ));
        }
    }
    let messages: usize = batches.iter().map(Vec::len).sum();
    Verdict::Pass(format!(
        "{} batches, {messages} messages, the same answers",
        batches.len()
    ))
}

/// Each batch's answers (as text) on one instance, packed or typed; a trapped call gives its
/// trap and the next batch goes to a fresh instance.
async fn answers(
    subject: &Subject<'_>,
    role: Role,
    batches: &[Vec<Message>],
    typed: bool,
) -> Result<Vec<Result<Vec<String>, String>>, String> {
    let mut instance = None;
    let mut out = Vec::new();
    for b in batches {
        let mut current = match instance.take() {
            Some(i) => i,
            None => {
                let mut i = subject.ready().await?;
                if typed {
                    i.use_typed_calls();
                }
                i
            }
        };
        let answer = if role == Role::Transform {
            current
                .process(b)
                .await
                .map(|a| a.iter().map(|o| format!("{o:?}")).collect())
        } else {
            current
                .write(b)
                .await
                .map(|a| a.iter().map(|r| format!("{r:?}")).collect())
        };
        match answer {
            Ok(a) => {
                out.push(Ok(a));
                instance = Some(current);
            }
            Err(trap) => out.push(Err(trapped(&trap))),
        }
    }
    Ok(out)
}

/// Where two lists of answers first differ, if they do.
fn first_difference(packed: &[String], typed: &[String]) -> Option<String> {
    if packed.len() != typed.len() {
        return Some(format!(
            "{} packed answers, {} typed",
            packed.len(),
            typed.len()
        ));
    }
    let i = packed.iter().zip(typed).position(|(p, t)| p != t)?;
    let cut = |v: &str| v.chars().take(200).collect::<String>();
    Some(format!(
        "answer {}: packed {}, typed {}",
        i + 1,
        cut(&packed[i]),
        cut(&typed[i])
    ))
}

async fn data_checks(
    subject: &Subject<'_>,
    function: &'static str,
    samples: &[Vec<u8>],
    check: &mut impl FnMut(u32, &'static str, Verdict),
) {
    let (one_per, empty, large, repeated, odd_payloads) = if function == "process" {
        (
            "`process` returns one outcome per message, in batches of 1, 7 and 100",
            "`process` accepts an empty batch and returns no outcome",
            "`process` takes a large batch (4,096 messages)",
            "`process` keeps its word over 1,000 calls in a row",
            "`process` handles empty and non-UTF-8 payloads without trapping",
        )
    } else {
        (
            "`write` returns one result per message, in batches of 1, 7 and 100",
            "`write` accepts an empty batch and returns no result",
            "`write` takes a large batch (4,096 messages)",
            "`write` keeps its word over 1,000 calls in a row",
            "`write` answers empty and non-UTF-8 payloads with `ok` or `invalid-data`, never a trap",
        )
    };
    let sizes = [1, 7, 100].map(|n| batch(samples, n));
    check(6, one_per, counts(subject, function, &sizes).await);
    check(7, empty, counts(subject, function, &[Vec::new()]).await);
    check(
        6,
        large,
        counts(subject, function, &[batch(samples, 4096)]).await,
    );
    let many: Vec<Vec<Message>> = (0..1000).map(|_| batch(samples, 3)).collect();
    check(6, repeated, counts(subject, function, &many).await);

    let odd: [(&str, Vec<u8>); 4] = [
        ("an empty payload", Vec::new()),
        ("invalid UTF-8", vec![0xff, 0xfe, 0x00, 0xc3, 0x28]),
        ("a lone surrogate in JSON", b"{\"a\":\"\\ud800\"}".to_vec()),
        ("binary bytes", (0..=255u8).collect()),
    ];
    let mut verdict = Verdict::Pass(String::new());
    let mut seen = Vec::new();
    for (what, payload) in odd {
        let mut instance = match subject.ready().await {
            Ok(i) => i,
            Err(why) => {
                verdict = Verdict::Fail(why);
                break;
            }
        };
        match call(&mut instance, function, &[message(0, payload)]).await {
            Ok(answer) if answer.count != 1 => {
                verdict = Verdict::Fail(format!(
                    "{} answer{} for {what}",
                    answer.count,
                    plural(answer.count)
                ));
                break;
            }
            Ok(answer) => {
                if function == "write"
                    && let Some(e) = answer
                        .errors
                        .iter()
                        .find(|e| e.kind != ErrorKind::InvalidData)
                {
                    verdict = Verdict::Fail(format!(
                        "{what} got a `{}` error, not `invalid-data`: {}",
                        e.kind, e.message
                    ));
                    break;
                }
                seen.push(if answer.errors.is_empty() {
                    format!("{what}: ok")
                } else {
                    format!("{what}: {}", answer.errors[0].kind)
                });
            }
            Err(trap) => {
                verdict = Verdict::Fail(format!("{what}: {}", trapped(&trap)));
                break;
            }
        }
    }
    if let Verdict::Pass(_) = verdict {
        verdict = Verdict::Pass(seen.join("; "));
    }
    check(10, odd_payloads, verdict);
}

async fn source_checks(subject: &Subject<'_>, check: &mut impl FnMut(u32, &'static str, Verdict)) {
    // Rule 11: at most `max` messages per poll.
    let mut instance = match subject.ready().await {
        Ok(i) => i,
        Err(why) => {
            check(
                11,
                "`poll(max)` returns at most `max` messages",
                Verdict::Fail(why),
            );
            return;
        }
    };
    let mut verdict = Verdict::Pass(String::new());
    let mut got = Vec::new();
    'maxes: for max in [0u32, 1, 10, 100, 1000] {
        for _ in 0..3 {
            match instance.poll(max).await {
                Ok(Ok(PollResult::Batch(b))) if b.messages.len() > max as usize => {
                    verdict = Verdict::Fail(format!(
                        "`poll({max})` returned {} message{}",
                        b.messages.len(),
                        plural(b.messages.len())
                    ));
                    break 'maxes;
                }
                Ok(Ok(PollResult::Batch(b))) => got.push(format!("{max}→{}", b.messages.len())),
                Ok(Ok(PollResult::EndOfStream)) => {
                    got.push(format!("{max}→end"));
                    break 'maxes;
                }
                Ok(Err(e)) if e.kind == ErrorKind::Retryable => {
                    got.push(format!("{max}→retryable"));
                }
                Ok(Err(e)) => {
                    verdict = Verdict::Fail(format!(
                        "`poll({max})` failed: {} error: {}",
                        e.kind, e.message
                    ));
                    break 'maxes;
                }
                Err(trap) => {
                    verdict = Verdict::Fail(format!("`poll({max})` {}", trapped(&trap)));
                    break 'maxes;
                }
            }
        }
    }
    if let Verdict::Pass(_) = verdict {
        got.dedup();
        verdict = Verdict::Pass(format!("max→messages: {}", got.join(", ")));
    }
    check(11, "`poll(max)` returns at most `max` messages", verdict);

    // Rules 12, 13 and 14 on one instance: poll to the end (or the budget), checkpoints never
    // decrease, each checkpoint acknowledged, then end-of-stream must stick.
    let mut instance = match subject.ready().await {
        Ok(i) => i,
        Err(why) => {
            check(13, "checkpoints never decrease", Verdict::Fail(why));
            return;
        }
    };
    let started = Instant::now();
    let mut last: Option<u64> = None;
    let mut messages = 0usize;
    let mut batches = 0usize;
    let mut ended = false;
    let mut broken: Option<(u32, &'static str, String)> = None;
    while started.elapsed() < subject.options.source_budget {
        // Batches of varied sizes, so that even a short stream comes in several.
        match instance.poll([1, 7, 64, 256][batches % 4]).await {
            Ok(Ok(PollResult::Batch(b))) => {
                if b.messages.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                batches += 1;
                messages += b.messages.len();
                if let Some(prev) = last
                    && b.checkpoint < prev
                {
                    broken = Some((
                        13,
                        "checkpoints never decrease",
                        format!(
                            "batch {batches} carried checkpoint {} after {prev}",
                            b.checkpoint
                        ),
                    ));
                    break;
                }
                last = Some(b.checkpoint);
                match instance.ack(b.checkpoint).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.kind == ErrorKind::Retryable => {}
                    Ok(Err(e)) => {
                        broken = Some((
                            14,
                            "`ack` of a delivered checkpoint succeeds",
                            format!("`ack({})`: {} error: {}", b.checkpoint, e.kind, e.message),
                        ));
                        break;
                    }
                    Err(trap) => {
                        broken = Some((
                            14,
                            "`ack` of a delivered checkpoint succeeds",
                            format!("`ack({})` {}", b.checkpoint, trapped(&trap)),
                        ));
                        break;
                    }
                }
            }
            Ok(Ok(PollResult::EndOfStream)) => {
                ended = true;
                break;
            }
            Ok(Err(e)) if e.kind == ErrorKind::Retryable => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => {
                broken = Some((
                    11,
                    "`poll` keeps working",
                    format!("`poll` failed: {} error: {}", e.kind, e.message),
                ));
                break;
            }
            Err(trap) => {
                broken = Some((
                    11,
                    "`poll` keeps working",
                    format!("`poll` {}", trapped(&trap)),
                ));
                break;
            }
        }
    }
    if let Some((rule, what, why)) = broken {
        // The failure, and the checks of this walk that it kept from finishing.
        let checks: [(u32, &'static str); 3] = [
            (13, "checkpoints never decrease"),
            (14, "`ack` of a delivered checkpoint succeeds"),
            (12, "`end-of-stream` sticks once returned"),
        ];
        if !checks.iter().any(|(r, w)| *r == rule && *w == what) {
            check(rule, what, Verdict::Fail(why.clone()));
        }
        for (r, w) in checks {
            if r == rule && w == what {
                check(r, w, Verdict::Fail(why.clone()));
            } else {
                check(
                    r,
                    w,
                    Verdict::NotApplicable(format!(
                        "not reached: rule {rule} failed first on the same instance"
                    )),
                );
            }
        }
        return;
    }
    let seen = format!(
        "{messages} message{} in {batches} batch{}",
        plural(messages),
        if batches == 1 { "" } else { "es" }
    );
    check(
        13,
        "checkpoints never decrease",
        Verdict::Pass(seen.clone()),
    );
    check(
        14,
        "`ack` of a delivered checkpoint succeeds",
        Verdict::Pass(format!("{batches} ack{}", plural(batches))),
    );
    if !ended {
        check(
            12,
            "`end-of-stream` sticks once returned",
            Verdict::NotApplicable(format!(
                "no end of stream within {:.0?} ({seen}): an endless source",
                subject.options.source_budget
            )),
        );
        return;
    }
    let mut verdict = Verdict::Pass(format!("after {seen}"));
    for i in 1..=3 {
        match instance.poll(10).await {
            Ok(Ok(PollResult::EndOfStream)) => {}
            Ok(Ok(PollResult::Batch(b))) => {
                verdict = Verdict::Fail(format!(
                    "poll {i} after `end-of-stream` returned a batch of {}",
                    b.messages.len()
                ));
                break;
            }
            Ok(Err(e)) => {
                verdict = Verdict::Fail(format!(
                    "poll {i} after `end-of-stream` failed: {} error: {}",
                    e.kind, e.message
                ));
                break;
            }
            Err(trap) => {
                verdict =
                    Verdict::Fail(format!("poll {i} after `end-of-stream` {}", trapped(&trap)));
                break;
            }
        }
    }
    check(12, "`end-of-stream` sticks once returned", verdict);
}

/// Sample payloads from a file, one per line (empty lines skipped).
pub fn read_input(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read the input {}", path.display()))?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}
