//! `patchbay test-plugin`: the compliance kit. It runs the MUST rules of `wit/README.md` against
//! one plugin, each check on a fresh instance so that one failure cannot hide the next, and
//! reports pass or fail per check with the reason.
//!
//! A check that does not apply (an endless source cannot show that `end-of-stream` sticks) is
//! reported as such, never as a pass.
//!
//! `data` holds the transform and sink rules, `source` the source rules. It drives plugins
//! through `plugin::Instance` directly (never through a pipeline) and may import `plugin`,
//! `contract`, `config` and `defaults`; nothing but `cli` imports it.

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

mod data;
mod show;
mod source;

use data::*;
pub use show::show;
use source::*;

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
    /// Skip the checks that send messages to a sink (they write real data where its config
    /// points).
    pub no_data: bool,
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
        self.fresh_with(&self.options.limits).await
    }

    async fn fresh_with(&self, limits: &Limits) -> anyhow::Result<Instance> {
        self.runtime
            .instantiate(
                &self.loaded,
                self.label.clone(),
                self.label.clone(),
                &self.options.grants,
                limits,
                PluginState::default(),
            )
            .await
    }

    /// A fresh instance, initialised with the working configuration.
    async fn ready(&self) -> Result<Instance, String> {
        self.ready_for(0).await
    }

    /// A fresh instance for batches of up to `largest` messages: `call_timeout` is meant for a
    /// pipeline's batches (256 by default), so it grows with the batch. The large-batch rule
    /// checks that the answer is right, not how fast the machine is.
    async fn ready_for(&self, largest: usize) -> Result<Instance, String> {
        let mut limits = self.options.limits;
        let scale = largest
            .div_ceil(crate::defaults::BATCH_SIZE as usize)
            .max(1);
        limits.call_timeout = limits
            .call_timeout
            .saturating_mul(u32::try_from(scale).unwrap_or(u32::MAX));
        let mut instance = self
            .fresh_with(&limits)
            .await
            .map_err(|e| format!("{e:#}"))?;
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
        Role::Sink if options.no_data => check(
            6,
            "the data rules (6, 7, 10, 23)",
            Verdict::NotApplicable(
                "--no-data: no message was written; point the sink at a scratch target and \
                 run without it for these checks"
                    .into(),
            ),
        ),
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
