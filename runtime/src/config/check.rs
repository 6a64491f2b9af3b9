//! The checks of a parsed pipeline file: names, references between pipelines and plugins,
//! ranges, the dead-letter channel, routes, and each plugin's path, pin, grants and limits.
//! Grant patterns are parsed by the sandbox layer (`sandbox::grants`); this module only says
//! where they were written. Every problem is a [`Diagnostic`]; all of them are reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::diagnostic::{ConfigError, Diagnostic, Loc, Locator};
use super::raw::{RawFile, RawPlugin};
use super::stages;
use super::{
    Breaker, Config, ConfigEntry, OnError, Parallel, PipelineDecl, Placement, PluginDecl,
    PluginRef, Retry, Role, RouteDecl,
};
use crate::defaults;

/// The name of a pipeline's reply destination in `sinks` and route targets.
pub const REPLY: &str = "reply";
use crate::sandbox::grants::{GrantProblem, absolute};
use crate::sandbox::{DirGrant, Grants, HttpPattern, Limits, NetPattern, TlsGrant, TlsProblem};

/// Check the parsed file `raw` of `path` (whose text `locator` maps).
pub(super) fn check(
    raw: RawFile,
    path: &Path,
    file: Arc<Path>,
    locator: &Locator,
) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut problems = Vec::new();

    let admin = super::sections::admin(raw.admin.as_ref(), locator, &mut problems);
    let telemetry = super::sections::telemetry(raw.telemetry, locator, &mut problems);
    let declared: BTreeSet<String> = raw.plugins.keys().map(|k| k.get_ref().clone()).collect();
    let mut plugins = BTreeMap::new();
    for (name, raw_plugin) in raw.plugins {
        let loc = locator.at(&name);
        let name = name.into_inner();
        if let Some(decl) = check_plugin(&name, &loc, raw_plugin, &base, locator, &mut problems) {
            plugins.insert(name, decl);
        }
    }

    if raw.pipeline.is_empty() {
        problems.push(
            Diagnostic::new(locator.loc(0), "no pipeline defined".to_owned())
                .hint("add a [[pipeline]] table with a name, a source and sinks"),
        );
    }
    let mut names = BTreeSet::new();
    let mut pipelines = Vec::new();
    for spanned in raw.pipeline {
        let loc = locator.at(&spanned);
        let raw_pipeline = spanned.into_inner();
        let name_loc = locator.at(&raw_pipeline.name);
        let name = raw_pipeline.name.get_ref().clone();
        if name.trim().is_empty() {
            problems.push(
                Diagnostic::new(name_loc.clone(), "pipeline name is empty".to_owned())
                    .hint("give every pipeline a unique name"),
            );
        } else if !names.insert(name.clone()) {
            problems.push(
                Diagnostic::new(
                    name_loc.clone(),
                    format!("duplicate pipeline name `{name}`"),
                )
                .hint("pipeline names must be unique"),
            );
        }
        let reference = |r: &Spanned<String>,
                         role: Role,
                         problems: &mut Vec<Diagnostic>|
         -> PluginRef {
            let plugin_ref = PluginRef {
                name: r.get_ref().clone(),
                loc: locator.at(r),
                parallel: Parallel::default(),
            };
            if !declared.contains(&plugin_ref.name) {
                let known = declared.iter().cloned().collect::<Vec<_>>().join(", ");
                problems.push(Diagnostic::new(plugin_ref.loc.clone(), format!("pipeline `{name}`: {} `{}` is not declared; declare [plugins.{}] or use one of: {}",
                        role.noun(),
                        plugin_ref.name,
                        plugin_ref.name,
                        if known.is_empty() { "(none declared)".to_owned() } else { known }
                    )));
            }
            plugin_ref
        };
        let mut source = reference(&raw_pipeline.source, Role::Source, &mut problems);
        let mut transforms: Vec<PluginRef> = raw_pipeline
            .transforms
            .iter()
            .map(|t| reference(t, Role::Transform, &mut problems))
            .collect();
        // `reply` is the reply destination, not a plugin.
        let reply = raw_pipeline
            .sinks
            .iter()
            .find(|s| s.get_ref() == REPLY)
            .map(|s| locator.at(s));
        let mut sinks: Vec<PluginRef> = raw_pipeline
            .sinks
            .iter()
            .filter(|s| s.get_ref() != REPLY)
            .map(|s| reference(s, Role::Sink, &mut problems))
            .collect();
        if sinks.is_empty() && reply.is_none() {
            problems.push(
                Diagnostic::new(loc.clone(), format!("pipeline `{name}` has no sinks"))
                    .hint("add sinks = [\"NAME\"] naming at least one sink plugin"),
            );
        }
        let mut seen_sinks = BTreeSet::new();
        for sink in &sinks {
            if !seen_sinks.insert(&sink.name) {
                problems.push(
                    Diagnostic::new(
                        sink.loc.clone(),
                        format!("pipeline `{name}` lists sink `{}` twice", sink.name),
                    )
                    .hint("every message would be delivered twice"),
                );
            }
        }
        let batch_size = count(
            raw_pipeline.batch_size,
            1..=defaults::MAX_BATCH_SIZE,
            defaults::BATCH_SIZE,
            |n| {
                Diagnostic::new(Loc::file(path), format!("batch_size {n} is out of range"))
                    .hint(&format!("use 1 to {}", defaults::MAX_BATCH_SIZE))
            },
            locator,
            &mut problems,
        );
        let source_limit = plugins
            .get(&source.name)
            .map_or(defaults::MAX_OUTPUT, |p: &PluginDecl| p.limits.max_output);
        let batch_bytes = raw_pipeline
            .batch_bytes
            .map_or(defaults::BATCH_BYTES.min(source_limit / 4).max(1), |s| s.0);
        if batch_bytes == 0 || batch_bytes > source_limit {
            problems.push(
                Diagnostic::new(
                    loc.clone(),
                    format!(
                        "pipeline `{name}`: batch_bytes {} is {} the source `{}` may return in \
                         one poll (limits.max_output {})",
                        bytesize::ByteSize(batch_bytes).display().iec(),
                        if batch_bytes == 0 {
                            "less than anything"
                        } else {
                            "more than"
                        },
                        source.name,
                        bytesize::ByteSize(source_limit).display().iec()
                    ),
                )
                .hint("use at most the source's limits.max_output; a quarter of it is the default"),
            );
        }
        let buffer = count(
            raw_pipeline.buffer,
            1..=defaults::MAX_BUFFER,
            defaults::BUFFER,
            |n| {
                Diagnostic::new(Loc::file(path), format!("buffer {n} is out of range"))
                    .hint(&format!("use 1 to {} batches", defaults::MAX_BUFFER))
            },
            locator,
            &mut problems,
        );
        let defaults = Retry::default();
        let attempts = count(
            raw_pipeline.retry.attempts,
            1..=u32::MAX,
            defaults.attempts,
            |_| {
                Diagnostic::new(
                    Loc::file(path),
                    "retry.attempts must be at least 1 (1 means no retry)".to_owned(),
                )
            },
            locator,
            &mut problems,
        );
        let retry = Retry {
            attempts,
            backoff: raw_pipeline.retry.backoff.map_or(defaults.backoff, |d| d.0),
            max_backoff: raw_pipeline
                .retry
                .max_backoff
                .map_or(defaults.max_backoff, |d| d.0),
        };
        let breaker_defaults = Breaker::default();
        let breaker = Breaker {
            traps: count(
                raw_pipeline.breaker.traps,
                1..=u32::MAX,
                breaker_defaults.traps,
                |_| {
                    Diagnostic::new(
                        Loc::file(path),
                        "breaker.traps must be at least 1".to_owned(),
                    )
                },
                locator,
                &mut problems,
            ),
            window: raw_pipeline
                .breaker
                .window
                .map_or(breaker_defaults.window, |d| d.0),
            cooldown: raw_pipeline
                .breaker
                .cooldown
                .map_or(breaker_defaults.cooldown, |d| d.0),
        };
        let dead_letter = match raw_pipeline
            .dead_letter
            .as_ref()
            .and_then(|d| d.path.as_ref())
        {
            Some(path) => base.join(path.get_ref()),
            None => base.join(defaults::dead_letter_path(&name)),
        };
        let dead_letter_sink = raw_pipeline
            .dead_letter
            .as_ref()
            .and_then(|d| d.sink.as_ref())
            .map(|s| reference(s, Role::Sink, &mut problems));
        if let Some(dls) = &dead_letter_sink
            && sinks.iter().any(|s| s.name == dls.name)
        {
            problems.push(Diagnostic::new(dls.loc.clone(), format!("pipeline `{name}`: dead-letter sink `{}` is also one of its destinations, so its own failures would be dead-lettered into itself (a cycle)", dls.name
            )).hint("declare a separate plugin for the dead letters"));
        }
        if let Some(d) = &raw_pipeline.dead_letter
            && d.path.is_some() == d.sink.is_some()
        {
            problems.push(Diagnostic::new(loc.clone(), format!("pipeline `{name}`: dead_letter needs exactly one of `path` (a JSON Lines file) or `sink` (a sink plugin)")));
        }
        if raw_pipeline.dead_letter.is_some() && raw_pipeline.on_error == OnError::Stop {
            problems.push(
                Diagnostic::new(
                    loc.clone(),
                    format!("pipeline `{name}` configures dead_letter but on_error is \"stop\""),
                )
                .hint("set on_error = \"dead-letter\" to use it"),
            );
        }
        let mut routes = Vec::new();
        for raw_route in &raw_pipeline.route {
            let mut to = Vec::new();
            for target in raw_route.to.get_ref() {
                let position = if target.get_ref() == REPLY && reply.is_some() {
                    Some(sinks.len())
                } else {
                    sinks.iter().position(|s| &s.name == target.get_ref())
                };
                match position {
                    Some(i) => to.push(i),
                    None => problems.push(
                        Diagnostic::new(
                            locator.at(target),
                            format!(
                                "pipeline `{name}`: route target `{}` is not one of its sinks ({})",
                                target.get_ref(),
                                sinks
                                    .iter()
                                    .map(|s| s.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                        .hint("add it to `sinks` or fix the name"),
                    ),
                }
            }
            let when = raw_route.when.as_ref().map(|w| {
                if let Some(first) = stages::cel_error(w.get_ref()) {
                    problems.push(Diagnostic::new(
                        locator.at(w),
                        format!(
                            "pipeline `{name}`: route condition `{}` is not valid CEL: {first}",
                            w.get_ref()
                        ),
                    ));
                }
                w.get_ref().clone()
            });
            routes.push(RouteDecl { when, to });
        }
        if !raw_pipeline.route.is_empty() {
            if let Some(at) = &reply
                && !routes.iter().any(|r| r.to.contains(&sinks.len()))
            {
                problems.push(
                    Diagnostic::new(
                        at.clone(),
                        format!(
                            "pipeline `{name}`: `reply` is the target of no route, so no request \
                             would get an answer"
                        ),
                    )
                    .hint("route to it (to = [\"reply\"]) or remove it from `sinks`"),
                );
            }
            for (i, sink) in sinks.iter().enumerate() {
                if !routes.iter().any(|r| r.to.contains(&i)) {
                    problems.push(Diagnostic::new(sink.loc.clone(), format!("pipeline `{name}`: sink `{}` is the target of no route, so it would never get a message", sink.name
                    )).hint("route to it or remove it from `sinks`"));
                }
            }
        }
        stages::apply(
            &name,
            stages::StageSettings {
                concurrency: raw_pipeline.concurrency,
                partition_by: raw_pipeline.partition_by,
                stages: raw_pipeline.stages,
            },
            &mut source,
            &mut transforms,
            &mut sinks,
            locator,
            &mut problems,
        );
        let placement = match raw_pipeline.placement {
            None => Placement::default(),
            Some(raw) => {
                if let Some(nodes) = &raw.nodes
                    && *nodes.get_ref() == 0
                {
                    problems.push(
                        Diagnostic::new(
                            locator.loc(nodes.span().start),
                            format!(
                                "pipeline `{name}`: placement.nodes is 0, so no node would run it"
                            ),
                        )
                        .hint("give 1 or more, or remove `nodes` to run it on every eligible node"),
                    );
                }
                Placement {
                    nodes: raw.nodes.map(|n| *n.get_ref()),
                    tags: raw.tags,
                }
            }
        };
        pipelines.push(PipelineDecl {
            name,
            placement,
            loc,
            source,
            transforms,
            sinks,
            reply,
            reply_timeout: raw_pipeline
                .reply_timeout
                .map_or(defaults::REPLY_TIMEOUT, |d| d.0),
            routing: raw_pipeline.routing,
            routes,
            batch_size,
            batch_bytes,
            buffer,
            max_in_flight: raw_pipeline
                .max_in_flight
                .map_or(defaults::MAX_IN_FLIGHT, |s| s.0),
            on_error: raw_pipeline.on_error,
            retry,
            breaker,
            dead_letter,
            dead_letter_sink,
        });
    }

    if problems.is_empty() {
        Ok(Config {
            file,
            plugins,
            pipelines,
            admin,
            telemetry,
            on_start_failure: raw.on_start_failure,
            state_dir: raw.state.map(|s| base.join(s.dir)),
        })
    } else {
        Err(ConfigError { problems })
    }
}

/// A count as written, within `valid`; one outside it is a problem (`problem` says which, its
/// location is set here) and the default stands in for it, so that checking goes on.
fn count(
    value: Option<Spanned<u32>>,
    valid: std::ops::RangeInclusive<u32>,
    default: u32,
    problem: impl FnOnce(u32) -> Diagnostic,
    locator: &Locator,
    problems: &mut Vec<Diagnostic>,
) -> u32 {
    match value {
        Some(v) if valid.contains(v.get_ref()) => v.into_inner(),
        Some(v) => {
            let mut diagnostic = problem(*v.get_ref());
            diagnostic.location = locator.at(&v);
            problems.push(diagnostic);
            default
        }
        None => default,
    }
}

fn check_plugin(
    name: &str,
    loc: &Loc,
    raw: RawPlugin,
    base: &Path,
    locator: &Locator,
    problems: &mut Vec<Diagnostic>,
) -> Option<PluginDecl> {
    let before = problems.len();
    if name == REPLY {
        problems.push(
            Diagnostic::new(
                loc.clone(),
                format!("plugin name `{REPLY}` is taken by the pipelines' reply destination"),
            )
            .hint("give the plugin another name"),
        );
    }
    if !valid_name(name) {
        problems.push(
            Diagnostic::new(loc.clone(), format!("plugin name `{name}` is not allowed"))
                .hint("use letters, digits, `-` and `_`"),
        );
    }
    let path_loc = locator.at(&raw.path);
    let path = base.join(raw.path.get_ref());
    if raw.path.get_ref().trim().is_empty() {
        problems.push(
            Diagnostic::new(path_loc.clone(), format!("plugin `{name}`: path is empty"))
                .hint("give the component file (.wasm)"),
        );
    } else if !path.is_file() {
        problems.push(Diagnostic::new(path_loc.clone(), format!("plugin `{name}`: component file `{}` not found (resolved to `{}`)",
            raw.path.get_ref(),
            absolute(&path).display()
        )).hint("build the plugins with `cargo xtask build` or fix `path` (it is relative to the pipeline file)"));
    }
    let sha256 = raw.sha256.and_then(|pin| {
        let hex = pin.get_ref().trim().to_ascii_lowercase();
        if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Some(hex)
        } else {
            problems.push(Diagnostic::new(locator.at(&pin), format!("plugin `{name}`: sha256 must be 64 hex digits (run `sha256sum` on the .wasm file)")));
            None
        }
    });
    let config = raw
        .config
        .into_iter()
        .map(|(key, value)| ConfigEntry {
            loc: locator.at(&key),
            key: key.into_inner(),
            value: config_value_text(value),
        })
        .collect();
    let mut dirs = Vec::new();
    let mut guests = BTreeSet::new();
    for dir in raw.grants.dirs {
        let guest = dir.guest.get_ref();
        let checked = DirGrant::check(
            dir.host.get_ref(),
            base.join(dir.host.get_ref()),
            guest,
            dir.mode,
        );
        match checked {
            Ok(grant) => {
                if !guests.insert(guest.clone()) {
                    problems.push(Diagnostic::new(
                        locator.at(&dir.guest),
                        format!("plugin `{name}`: guest path `{guest}` is granted twice"),
                    ));
                }
                dirs.push(grant);
            }
            Err(found) => {
                for problem in found {
                    let (at, text) = match problem {
                        GrantProblem::Host(text) => (locator.at(&dir.host), text),
                        GrantProblem::Guest(text) => (locator.at(&dir.guest), text),
                    };
                    problems.push(Diagnostic::new(
                        at.clone(),
                        format!("plugin `{name}`: {text}"),
                    ));
                }
            }
        }
    }
    let mut patterns = |list: &[Spanned<String>]| -> Vec<NetPattern> {
        list.iter()
            .filter_map(|p| match NetPattern::parse(p.get_ref()) {
                Ok(pattern) => Some(pattern),
                Err(e) => {
                    problems.push(Diagnostic::new(
                        locator.at(p),
                        format!("plugin `{name}`: {e}"),
                    ));
                    None
                }
            })
            .collect()
    };
    let tcp = patterns(&raw.grants.tcp);
    let udp = patterns(&raw.grants.udp);
    let listen = patterns(&raw.grants.listen);
    let http = raw
        .grants
        .http
        .iter()
        .filter_map(|p| match HttpPattern::parse(p.get_ref()) {
            Ok(pattern) => Some(pattern),
            Err(e) => {
                problems.push(Diagnostic::new(
                    locator.at(p),
                    format!("plugin `{name}`: {e}"),
                ));
                None
            }
        })
        .collect();
    let tls = raw.grants.tls.and_then(|t| {
        let path = |p: &Option<Spanned<String>>| p.as_ref().map(|p| base.join(p.get_ref()));
        match TlsGrant::load(path(&t.ca), path(&t.cert), path(&t.key)) {
            Ok(grant) => Some(grant),
            Err(problem) => {
                let (field, text) = match problem {
                    TlsProblem::Ca(text) => (&t.ca, text),
                    TlsProblem::Cert(text) => (&t.cert, text),
                    TlsProblem::Key(text) => (&t.key, text),
                };
                let at = field
                    .as_ref()
                    .or(t.ca.as_ref())
                    .or(t.cert.as_ref())
                    .or(t.key.as_ref());
                let at = at.map_or_else(|| loc.clone(), |f| locator.at(f));
                problems.push(Diagnostic::new(
                    at,
                    format!("plugin `{name}`: grants.tls: {text}"),
                ));
                None
            }
        }
    });
    let defaults = Limits::default();
    let limits = Limits {
        memory: raw.limits.memory.map_or(defaults.memory, |s| s.0),
        call_timeout: raw
            .limits
            .call_timeout
            .map_or(defaults.call_timeout, |d| d.0),
        init_timeout: raw
            .limits
            .init_timeout
            .map_or(defaults.init_timeout, |d| d.0),
        max_output: raw.limits.max_output.map_or(defaults.max_output, |s| s.0),
        handles: raw.limits.handles.map_or(defaults.handles, |n| n as usize),
        sockets: raw.limits.sockets.map_or(defaults.sockets, |n| n as usize),
        files: raw.limits.files.map_or(defaults.files, |n| n as usize),
    };
    for (key, value) in [("sockets", limits.sockets), ("files", limits.files)] {
        if !(1..=defaults::MAX_HANDLES).contains(&value) {
            problems.push(
                Diagnostic::new(
                    loc.clone(),
                    format!("plugin `{name}`: limits.{key} {value} is out of range"),
                )
                .hint(&format!("use 1 to {}", defaults::MAX_HANDLES)),
            );
        }
    }
    if !(defaults::MIN_HANDLES..=defaults::MAX_HANDLES).contains(&limits.handles) {
        problems.push(
            Diagnostic::new(
                loc.clone(),
                format!(
                    "plugin `{name}`: limits.handles {} is out of range",
                    limits.handles
                ),
            )
            .hint(&format!(
                "use {} to {} (the default, {}, is plenty for a connector)",
                defaults::MIN_HANDLES,
                defaults::MAX_HANDLES,
                defaults::HANDLES
            )),
        );
    }
    if limits.memory < 64 * 1024 {
        problems.push(Diagnostic::new(
            loc.clone(),
            format!("plugin `{name}`: limits.memory is below one Wasm page (64KiB)"),
        ));
    }
    if limits.call_timeout.is_zero() || limits.init_timeout.is_zero() {
        problems.push(
            Diagnostic::new(
                loc.clone(),
                format!("plugin `{name}`: a timeout of zero would stop every call"),
            )
            .hint("use e.g. \"1s\""),
        );
    }
    if problems.len() > before {
        return None;
    }
    Some(PluginDecl {
        name: name.to_owned(),
        path,
        path_loc,
        sha256,
        config,
        watch: raw.watch,
        grants: Grants {
            dirs,
            stdin: raw.grants.stdin,
            stdout: raw.grants.stdout,
            tcp,
            udp,
            listen,
            http,
            dns: raw.grants.dns,
            env: raw.grants.env,
            tls,
        },
        limits,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A TOML string is passed as itself; anything else as JSON text.
pub(super) fn config_value_text(value: toml::Value) -> String {
    match value {
        toml::Value::String(s) => s,
        other => toml_to_json(other).to_string(),
    }
}

fn toml_to_json(value: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => J::Object(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_to_json(v)))
                .collect(),
        ),
    }
}
