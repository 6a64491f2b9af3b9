//! Per-stage settings of a pipeline: `concurrency` and `partition_by`, pipeline-wide and in
//! `[pipeline.stages.NAME]` tables, checked and put on each stage's [`PluginRef`]. The
//! pipeline-wide `concurrency` applies to transforms and sinks; a source runs several instances
//! only when its own stage table says so (and its plugin can share the work).

use std::collections::BTreeMap;

use toml::Spanned;

use super::diagnostic::{Diagnostic, Locator};
use super::raw::RawStage;
use super::units::Concurrency;
use super::{Parallel, PartitionBy, PluginRef};
use crate::defaults;

/// What the pipeline table says about stages.
pub(super) struct StageSettings {
    pub(super) concurrency: Option<Spanned<Concurrency>>,
    pub(super) partition_by: Option<Spanned<String>>,
    pub(super) stages: BTreeMap<Spanned<String>, RawStage>,
}

/// The first line of the CEL compiler's complaint about `text`, if it has one.
pub(super) fn cel_error(text: &str) -> Option<String> {
    let error = cel::Program::compile(text).err()?.to_string();
    Some(
        error
            .lines()
            .next()
            .unwrap_or("syntax error")
            .trim()
            .to_owned(),
    )
}

/// Put the settings on the stages of pipeline `name`; every problem names where it was written.
pub(super) fn apply(
    name: &str,
    settings: StageSettings,
    source: &mut PluginRef,
    transforms: &mut [PluginRef],
    sinks: &mut [PluginRef],
    locator: &Locator,
    problems: &mut Vec<Diagnostic>,
) {
    let default = Parallel {
        instances: instances(name, settings.concurrency.as_ref(), locator, problems).unwrap_or(1),
        partition_by: settings
            .partition_by
            .as_ref()
            .and_then(|p| partition(name, p, locator, problems)),
    };
    for stage in transforms.iter_mut().chain(sinks.iter_mut()) {
        stage.parallel = default.clone();
    }
    for (stage_name, raw) in settings.stages {
        let at = locator.at(&stage_name);
        let stage_name = stage_name.into_inner();
        let concurrency = instances(name, raw.concurrency.as_ref(), locator, problems);
        let partition_by = raw
            .partition_by
            .as_ref()
            .and_then(|p| partition(name, p, locator, problems));
        if stage_name == source.name {
            // A source's instances each read their own share (the source plugin says whether
            // it can split, when it starts): there is no batch to partition.
            if partition_by.is_some() {
                problems.push(
                    Diagnostic::new(
                        at,
                        format!(
                            "pipeline `{name}`: source `{stage_name}` takes `concurrency` but not \
                             `partition_by`: a source's instances each read their own share, \
                             and the broker decides which"
                        ),
                    )
                    .hint("remove `partition_by` from [pipeline.stages] of the source"),
                );
            }
            if let Some(n) = concurrency {
                source.parallel.instances = n;
            }
            continue;
        }
        let mut found = false;
        for stage in transforms.iter_mut().chain(sinks.iter_mut()) {
            if stage.name == stage_name {
                found = true;
                if let Some(n) = concurrency {
                    stage.parallel.instances = n;
                }
                if partition_by.is_some() {
                    stage.parallel.partition_by = partition_by.clone();
                }
            }
        }
        if !found {
            let names: Vec<&str> = std::iter::once(source.name.as_str())
                .chain(
                    transforms
                        .iter()
                        .chain(sinks.iter())
                        .map(|s| s.name.as_str()),
                )
                .collect();
            problems.push(
                Diagnostic::new(
                    at,
                    format!(
                        "pipeline `{name}`: [pipeline.stages.{stage_name}] names no stage of \
                         this pipeline"
                    ),
                )
                .hint(&format!("use one of: {}", names.join(", "))),
            );
        }
    }
}

fn instances(
    name: &str,
    value: Option<&Spanned<Concurrency>>,
    locator: &Locator,
    problems: &mut Vec<Diagnostic>,
) -> Option<usize> {
    let value = value?;
    let wanted = value.get_ref().count();
    let max = u64::from(defaults::MAX_CONCURRENCY);
    match value.get_ref() {
        Concurrency::Auto => Some(wanted.clamp(1, max) as usize),
        Concurrency::Count(n) if (1..=max).contains(n) => Some(*n as usize),
        Concurrency::Count(n) => {
            problems.push(
                Diagnostic::new(
                    locator.at(value),
                    format!("pipeline `{name}`: concurrency {n} is out of range"),
                )
                .hint(&format!(
                    "use 1 to {max} instances, or \"auto\" for one per core"
                )),
            );
            None
        }
    }
}

fn partition(
    name: &str,
    value: &Spanned<String>,
    locator: &Locator,
    problems: &mut Vec<Diagnostic>,
) -> Option<PartitionBy> {
    let text = value.get_ref().trim();
    if text == "key" {
        return Some(PartitionBy::Key);
    }
    if text.is_empty() {
        problems.push(
            Diagnostic::new(
                locator.at(value),
                format!("pipeline `{name}`: partition_by is empty"),
            )
            .hint("write \"key\" or a CEL expression such as \"json.customer\""),
        );
        return None;
    }
    if let Some(error) = cel_error(text) {
        problems.push(
            Diagnostic::new(
                locator.at(value),
                format!("pipeline `{name}`: partition_by `{text}` is not valid CEL: {error}"),
            )
            .hint("write \"key\" or a CEL expression such as \"json.customer\""),
        );
        return None;
    }
    Some(PartitionBy::Expression(text.to_owned()))
}
