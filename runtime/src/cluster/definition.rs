//! Pipeline definitions as the cluster keeps them: a pipeline file is split into one TOML
//! document per pipeline, holding that pipeline's table and the plugins it uses, each plugin's
//! `path` replaced by `patchbay-store:SHA256` and pinned with `sha256 = SHA256`. A node writes
//! its own copy with each path pointing at the component it fetched into its cache, so the
//! loader's pin check refuses any component whose sha256 differs from the definition's.
//!
//! Everything else is kept as written; relative paths in it (grants' `dirs`, `dead_letter`,
//! `[state] dir`) are resolved on each node against its working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use toml::{Table, Value};

use crate::config::Config;

/// How a stored definition names a component of the plugin store.
pub const STORE_PREFIX: &str = "patchbay-store:";

/// One pipeline of a file, ready to publish.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The pipeline's name.
    pub name: String,
    /// The stored TOML.
    pub text: String,
    /// The plugins it uses: name → (the component file here, its sha256).
    pub plugins: BTreeMap<String, (PathBuf, String)>,
}

/// A component file's sha256, lowercase hex.
pub fn sha256_of(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Split a checked pipeline file (`config`, parsed from `text`) into one definition per
/// pipeline.
pub fn split(config: &Config, text: &str) -> Result<Vec<Definition>, String> {
    let doc: Table = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let no_plugins = Table::new();
    let plugins = doc
        .get("plugins")
        .and_then(Value::as_table)
        .unwrap_or(&no_plugins);
    let tables: Vec<&Table> = doc
        .get("pipeline")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_table).collect())
        .unwrap_or_default();
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for pipeline in &config.pipelines {
        let Some(table) = tables
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(pipeline.name.as_str()))
        else {
            return Err(format!("pipeline `{}` is not in the file", pipeline.name));
        };
        let mut used: Vec<&str> = vec![pipeline.source.name.as_str()];
        used.extend(pipeline.transforms.iter().map(|r| r.name.as_str()));
        used.extend(pipeline.sinks.iter().map(|r| r.name.as_str()));
        used.extend(pipeline.dead_letter_sink.iter().map(|r| r.name.as_str()));
        used.sort_unstable();
        used.dedup();
        let mut own_plugins = Table::new();
        let mut files = BTreeMap::new();
        for name in used {
            let (Some(decl), Some(Value::Table(raw))) =
                (config.plugins.get(name), plugins.get(name))
            else {
                return Err(format!("plugin `{name}` is not declared"));
            };
            let sha = match hashes.get(name) {
                Some(sha) => sha.clone(),
                None => {
                    let sha = sha256_of(&decl.path)?;
                    hashes.insert(name.to_owned(), sha.clone());
                    sha
                }
            };
            let mut raw = raw.clone();
            raw.insert("path".into(), Value::String(format!("{STORE_PREFIX}{sha}")));
            raw.insert("sha256".into(), Value::String(sha.clone()));
            // Watching a file makes no sense on nodes that fetched it from the store.
            raw.remove("watch");
            own_plugins.insert(name.to_owned(), Value::Table(raw));
            files.insert(name.to_owned(), (decl.path.clone(), sha));
        }
        let mut own = Table::new();
        own.insert("plugins".into(), Value::Table(own_plugins));
        own.insert(
            "pipeline".into(),
            Value::Array(vec![Value::Table((*table).clone())]),
        );
        if let Some(state) = doc.get("state") {
            own.insert("state".into(), state.clone());
        }
        let text = toml::to_string(&own).map_err(|e| e.to_string())?;
        out.push(Definition {
            name: pipeline.name.clone(),
            text: format!(
                "# pipeline `{}`, deployed by `patchbay cluster deploy` from {}\n{text}",
                pipeline.name,
                config.file.display()
            ),
            plugins: files,
        });
    }
    Ok(out)
}

/// The plugins a stored definition uses: name → sha256. Every one must come from the store.
pub fn plugins(text: &str) -> Result<BTreeMap<String, String>, String> {
    let doc: Table = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let mut out = BTreeMap::new();
    let Some(plugins) = doc.get("plugins").and_then(Value::as_table) else {
        return Ok(out);
    };
    for (name, raw) in plugins {
        let path = raw.get("path").and_then(Value::as_str).unwrap_or("");
        let pin = raw.get("sha256").and_then(Value::as_str);
        match path.strip_prefix(STORE_PREFIX) {
            Some(sha)
                if pin == Some(sha)
                    && sha.len() == 64
                    && sha.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                out.insert(name.clone(), sha.to_ascii_lowercase());
            }
            _ => {
                return Err(format!(
                    "plugin `{name}` is not a component of the cluster's store (path `{path}`); \
                     deploy the file with `patchbay cluster deploy`"
                ));
            }
        }
    }
    Ok(out)
}

/// The definition with each plugin's path pointing at `dir/SHA256.wasm`.
pub fn materialize(text: &str, dir: &Path) -> Result<String, String> {
    let shas = plugins(text)?;
    let mut doc: Table = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    if let Some(Value::Table(plugins)) = doc.get_mut("plugins") {
        for (name, raw) in plugins.iter_mut() {
            if let (Some(sha), Value::Table(raw)) = (shas.get(name), raw) {
                let path = dir.join(format!("{sha}.wasm"));
                raw.insert("path".into(), Value::String(path.display().to_string()));
            }
        }
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[plugins.gen]
path = "gen.wasm"
config = { count = 10 }

[plugins.out]
path = "out.wasm"
config = { path = "/out/x.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.other]
path = "out.wasm"
watch = true

[[pipeline]]
name = "one"
source = "gen"
sinks = ["out"]
placement = { nodes = 2, tags = { zone = "eu" } }

[[pipeline]]
name = "two"
source = "gen"
sinks = ["other"]
"#;

    #[test]
    fn a_file_splits_into_one_definition_per_pipeline_with_plugins_by_sha256() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gen.wasm"), b"gen").unwrap();
        std::fs::write(dir.path().join("out.wasm"), b"out").unwrap();
        // Granted directories exist where the file is, and on the node.
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::create_dir_all(dir.path().join("node/out")).unwrap();
        let file = dir.path().join("p.toml");
        let config = Config::parse(&file, FILE).unwrap();
        let defs = split(&config, FILE).unwrap();
        assert_eq!(defs.len(), 2);
        let gen_sha = hex(&Sha256::digest(b"gen"));
        let out_sha = hex(&Sha256::digest(b"out"));

        let one = &defs[0];
        assert_eq!(one.name, "one");
        let used: Vec<&str> = one.plugins.keys().map(String::as_str).collect();
        assert_eq!(used, ["gen", "out"]);
        let shas = plugins(&one.text).unwrap();
        assert_eq!(shas["gen"], gen_sha);
        assert_eq!(shas["out"], out_sha);
        // What each node runs: paths into its cache, everything else as written.
        // A node fetches each component into its cache first.
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join(format!("{gen_sha}.wasm")), b"gen").unwrap();
        std::fs::write(cache.join(format!("{out_sha}.wasm")), b"out").unwrap();
        let local = materialize(&one.text, &cache).unwrap();
        let node_file = dir.path().join("node").join("one.toml");
        let parsed = Config::parse(&node_file, &local).unwrap();
        assert_eq!(
            parsed.plugins["gen"].path,
            cache.join(format!("{gen_sha}.wasm"))
        );
        assert_eq!(
            parsed.plugins["gen"].sha256.as_deref(),
            Some(gen_sha.as_str())
        );
        assert_eq!(parsed.pipelines[0].placement.nodes, Some(2));
        assert_eq!(parsed.pipelines[0].placement.tags["zone"], "eu");
        assert_eq!(
            parsed.plugins["out"].grants.dirs[0].host,
            dir.path().join("node").join("out")
        );

        let two = &defs[1];
        assert!(!two.text.contains("watch"), "{}", two.text);
        assert_eq!(plugins(&two.text).unwrap()["other"], out_sha);
    }

    #[test]
    fn a_definition_whose_plugin_is_not_from_the_store_is_refused() {
        let text = "[plugins.x]\npath = \"/tmp/x.wasm\"\n";
        let err = plugins(text).unwrap_err();
        assert_eq!(
            err,
            "plugin `x` is not a component of the cluster's store (path `/tmp/x.wasm`); deploy \
             the file with `patchbay cluster deploy`"
        );
        let sha = "a".repeat(64);
        let pinned_otherwise = format!(
            "[plugins.x]\npath = \"{STORE_PREFIX}{sha}\"\nsha256 = \"{}\"\n",
            "b".repeat(64)
        );
        assert!(plugins(&pinned_otherwise).is_err());
    }
}
