//! `patchbay inspect`, `validate` and `test-plugin`: looking at plugins and pipeline files
//! without moving data.

use super::*;

/// `patchbay test-plugin`: run the compliance checks and print one line per check.
pub(super) async fn test_plugin(
    runtime: &Runtime,
    path: PathBuf,
    config: &[String],
    from: Option<(&Path, &str)>,
    (input, show, no_data): (Option<&Path>, bool, bool),
    source_budget: Duration,
) -> anyhow::Result<ExitCode> {
    let mut options = crate::compliance::Options {
        path,
        config: Vec::new(),
        grants: Default::default(),
        limits: Default::default(),
        input: input.map(crate::compliance::read_input).transpose()?,
        source_budget,
        no_data,
    };
    if let Some((file, name)) = from {
        let decl = plugin_decl(file, name)?;
        options.config = crate::contract::init_entries(&decl).map_err(anyhow::Error::msg)?;
        options.grants = decl.grants;
        options.limits = decl.limits;
    }
    for pair in config {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("--config `{pair}`: write KEY=VALUE, e.g. --config path=/data/in.csv");
        };
        options.config.retain(|e| e.key != key);
        options.config.push(crate::contract::ConfigEntry {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    println!("test-plugin: {}", options.path.display());
    if !no_data {
        // A sink's data checks deliver real messages: say so where it matters.
        let loaded = runtime.load(&options.path, None)?;
        if loaded.role == crate::config::Role::Sink {
            println!(
                "note: a sink's checks write real messages where its config points (thousands \
                 of them); use a scratch target, or --no-data to skip those checks"
            );
        }
    }
    if show {
        for line in crate::compliance::show(runtime, &options).await? {
            println!("{line}");
        }
    }
    let report = crate::compliance::run(runtime, &options).await?;
    println!("{} ({})", report.plugin, report.role.noun());
    for check in &report.checks {
        println!("  {check}");
    }
    let failed = report.failures();
    let not_applicable = report
        .checks
        .iter()
        .filter(|c| matches!(c.verdict, crate::compliance::Verdict::NotApplicable(_)))
        .count();
    println!(
        "{} checks: {} passed, {failed} failed, {not_applicable} not applicable",
        report.checks.len(),
        report.checks.len() - failed - not_applicable
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A plugin's declaration in a pipeline file.
pub(super) fn plugin_decl(file: &Path, name: &str) -> anyhow::Result<crate::config::PluginDecl> {
    let config = Config::load(file)?;
    match config.plugins.get(name) {
        Some(decl) => Ok(decl.clone()),
        None => anyhow::bail!(
            "{}: no plugin named `{name}`; it declares: {}",
            file.display(),
            config
                .plugins
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub(super) async fn validate(runtime: &Runtime, path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let loaded = assemble::load(runtime, &config).await?;
    println!(
        "{}: ok: {} pipeline{}, {} plugin{}",
        path.display(),
        config.pipelines.len(),
        plural(config.pipelines.len()),
        loaded.plugins.len(),
        plural(loaded.plugins.len())
    );
    for pipeline in &config.pipelines {
        let mut chain = vec![pipeline.source.name.clone()];
        chain.extend(pipeline.transforms.iter().map(|t| t.name.clone()));
        let sinks: Vec<&str> = pipeline.sinks.iter().map(|s| s.name.as_str()).collect();
        println!(
            "  pipeline `{}`: {} → [{}]",
            pipeline.name,
            chain.join(" → "),
            sinks.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn inspect(
    runtime: &Runtime,
    path: &Path,
    granted_by: Option<(&Path, &str)>,
) -> anyhow::Result<ExitCode> {
    let decl = match granted_by {
        Some((file, name)) => Some(plugin_decl(file, name)?),
        None => None,
    };
    let loaded = runtime.load(path, None)?;
    let label: Arc<str> = Arc::from("inspect");
    let mut instance = runtime
        .instantiate(
            &loaded,
            label.clone(),
            label,
            &Default::default(),
            &Default::default(),
            PluginState::default(),
        )
        .await?;
    let meta = instance.metadata().await?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!("plugin   {} {}", meta.name, meta.version);
    let world = if loaded.replies() {
        "source-reply".to_owned()
    } else if loaded.packed() {
        format!("{}-packed", loaded.role)
    } else {
        loaded.role.to_string()
    };
    let how = if loaded.replies() {
        ": answers requests (a pipeline may send to `reply`)"
    } else if loaded.packed() {
        ": called through the packed fast path"
    } else {
        ""
    };
    println!(
        "world    {world} (patchbay:connector@{}){how}",
        loaded.contract
    );
    println!("about    {}", meta.description);
    println!(
        "file     {} ({})",
        path.display(),
        bytesize::ByteSize(size).display().iec()
    );
    println!("sha256   {}", loaded.sha256);
    println!();
    if meta.config_keys.is_empty() {
        println!("config keys: none");
    } else {
        println!("config keys:");
        let width = meta
            .config_keys
            .iter()
            .map(|k| k.name.len())
            .max()
            .unwrap_or(0);
        for key in &meta.config_keys {
            let need = if key.required {
                "required".to_owned()
            } else {
                match &key.default_value {
                    Some(d) => format!("default {d}"),
                    None => "optional".to_owned(),
                }
            };
            println!("  {:width$}  {}  [{need}]", key.name, key.description);
        }
    }
    println!();
    println!("imports (capability, then the interface):");
    for import in &loaded.imports {
        println!("  {:12} {import}", capability(import));
    }
    if let (Some((file, name)), Some(decl)) = (granted_by, &decl) {
        let g = &decl.grants;
        println!();
        println!("grants ([plugins.{name}] in {}):", file.display());
        for (capability, granted) in g.rows() {
            println!("  {capability:12} {granted}");
        }
        let mut warned = std::collections::BTreeSet::new();
        for import in &loaded.imports {
            let cap = capability(import);
            // Rust's std::net imports name lookup in every program that opens a socket; it
            // matters only when a granted address is a name.
            if cap == "dns" && !g.names_a_host() {
                continue;
            }
            if !g.grants_capability(cap) && warned.insert(cap) {
                println!(
                    "warning: it imports {cap} ({import}) but the config grants no {cap} access: those calls will be denied"
                );
            }
        }
        println!();
        println!("limits: {}", decl.limits.line());
    }
    Ok(ExitCode::SUCCESS)
}
