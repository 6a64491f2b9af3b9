//! Hot swap: replace a plugin's code while its pipelines run, with nothing lost or duplicated.
//!
//! A reload compiles the new component off the data path (on a blocking thread, through the
//! precompiled cache), checks its world against the role the plugin plays and its config keys
//! against its metadata, and runs a trial instance's `init` with the plugin's own config, grants
//! and limits. Only then does it publish the new code by bumping a generation counter. Each stage
//! using the plugin notices the new generation *between* batches: the batch in flight finishes
//! on the old instance, the next one runs on a fresh instance of the new code. The host-owned
//! state (the `state` interface) belongs to the stage, not the instance, so it carries over.
//! A reload that fails any check changes nothing: the old version keeps serving.

//!
//! It may import `plugin`, `contract`, `config` and `pipeline` (whose `swap` channel it
//! publishes on); the pipeline layer never imports it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{PluginDecl, Role};
use crate::contract::PluginState;
use crate::pipeline::{Code, CodeSender, CodeWatch};
use crate::plugin::{LoadedPlugin, Runtime};

/// The code one `[plugins.NAME]` currently runs, swappable at runtime.
pub struct Swappable {
    name: String,
    decl: PluginDecl,
    role: Role,
    current: Mutex<Current>,
    code: CodeSender,
    allowed: Vec<PathBuf>,
    reloading: tokio::sync::Mutex<()>,
    states: Mutex<Vec<(String, PluginState)>>,
}

#[derive(Clone)]
struct Current {
    plugin: LoadedPlugin,
    version: String,
}

/// What a reload answered.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Swapped {
    /// Plugin name.
    pub plugin: String,
    /// The new code's own version.
    pub version: String,
    /// Its sha256.
    pub sha256: String,
    /// The file it came from.
    pub path: String,
    /// How many swaps so far.
    pub generation: u64,
}

/// Why a reload was refused; the old version keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The path is outside the directories plugins may be loaded from.
    #[error("{0}")]
    Forbidden(String),
    /// The new code failed a check.
    #[error("{0}")]
    Invalid(String),
}

impl Swappable {
    /// The swappable plugin `decl`, now running `plugin` (version `version`). Reloads may come
    /// from `allowed` directories only.
    pub fn new(
        decl: &PluginDecl,
        plugin: &LoadedPlugin,
        version: String,
        allowed: Vec<PathBuf>,
    ) -> Arc<Swappable> {
        Arc::new(Swappable {
            name: decl.name.clone(),
            decl: decl.clone(),
            role: plugin.role,
            current: Mutex::new(Current {
                plugin: plugin.clone(),
                version: version.clone(),
            }),
            code: CodeSender::new(Code {
                generation: 0,
                version,
            }),
            allowed,
            reloading: tokio::sync::Mutex::new(()),
            states: Mutex::new(Vec::new()),
        })
    }

    fn current(&self) -> Current {
        match self.current.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The component new instances are made from.
    pub fn component(&self) -> LoadedPlugin {
        self.current().plugin
    }

    /// The current code's version.
    pub fn version(&self) -> String {
        self.current().version
    }

    /// Bumped by every swap.
    pub fn generation(&self) -> u64 {
        self.code.borrow().generation
    }

    /// Follow swaps: the receiver sees each new generation once the new code is in place.
    pub fn subscribe(&self) -> CodeWatch {
        self.code.subscribe()
    }

    /// Plugin name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Remember the host state the plugin has in `pipeline`, for `/v1/plugins`.
    pub fn track_state(&self, pipeline: &str, state: &PluginState) {
        if let Ok(mut states) = self.states.lock() {
            states.push((pipeline.to_owned(), state.clone()));
        }
    }

    /// What `/v1/plugins` shows of it.
    pub fn describe(&self) -> serde_json::Value {
        let current = self.current();
        let state: Vec<serde_json::Value> = self
            .states
            .lock()
            .map(|states| {
                states
                    .iter()
                    .map(|(pipeline, s)| {
                        let (keys, bytes) = s.usage();
                        serde_json::json!({"pipeline": pipeline, "keys": keys, "bytes": bytes})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let grants = &self.decl.grants;
        let mut ungranted = std::collections::BTreeSet::new();
        let imports: Vec<serde_json::Value> = current
            .plugin
            .imports
            .iter()
            .map(|import| {
                let capability = crate::sandbox::capability(import);
                // As `inspect` warns: dns matters only when a granted address is a name.
                if (capability != "dns" || grants.names_a_host())
                    && !grants.grants_capability(capability)
                {
                    ungranted.insert(capability);
                }
                serde_json::json!({"capability": capability, "interface": import})
            })
            .collect();
        let granted: Vec<serde_json::Value> = grants
            .rows()
            .into_iter()
            .map(|(capability, granted)| serde_json::json!({"capability": capability, "granted": granted}))
            .collect();
        serde_json::json!({
            "name": self.name,
            "world": self.role.to_string(),
            "contract": current.plugin.contract,
            "imports": imports,
            "granted": granted,
            "imported_not_granted": ungranted,
            "version": current.version,
            "sha256": current.plugin.sha256,
            "path": current.plugin.path.display().to_string(),
            "generation": self.generation(),
            "watch": self.decl.watch,
            "grants": self.decl.grants.to_json(),
            "limits": self.decl.limits.to_json(),
            "state": state,
        })
    }

    fn check_path(&self, path: &Path) -> Result<PathBuf, ReloadError> {
        let canonical = path
            .canonicalize()
            .map_err(|e| ReloadError::Invalid(format!("cannot read `{}`: {e}", path.display())))?;
        let dir = canonical.parent().unwrap_or(Path::new("/"));
        if self.allowed.iter().any(|allowed| allowed == dir) {
            return Ok(canonical);
        }
        let list: Vec<String> = self
            .allowed
            .iter()
            .map(|d| format!("`{}`", d.display()))
            .collect();
        Err(ReloadError::Forbidden(format!(
            "`{}` is outside the directories plugins are loaded from ({}); copy the new \
             version next to the plugins of the pipeline file",
            path.display(),
            list.join(", ")
        )))
    }

    /// Load, check and publish new code from `path` (default: the configured file).
    pub async fn reload(
        &self,
        runtime: &Arc<Runtime>,
        path: Option<&Path>,
    ) -> Result<Swapped, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let candidate = self
            .prepare(runtime, path, self.decl.sha256.as_deref())
            .await?;
        Ok(self.publish(candidate))
    }

    /// Load, check and publish a component sent as bytes (the console's upload). It is kept
    /// as `NAME-SHA256.wasm` in [`Runtime::uploads_dir`] and goes through every check a file
    /// does, the configured `sha256` pin included; only the directory rule does not apply: the
    /// caller holds the admin token, and the bytes are not a path on this machine.
    pub async fn reload_upload(
        &self,
        runtime: &Arc<Runtime>,
        bytes: &[u8],
    ) -> Result<Swapped, ReloadError> {
        use sha2::Digest as _;
        let _one_at_a_time = self.reloading.lock().await;
        let sha: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = runtime.uploads_dir();
        let path = dir.join(format!("{}-{}.wasm", self.name, &sha[..16]));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, bytes))
            .map_err(|e| {
                ReloadError::Invalid(format!("cannot keep the upload in {}: {e}", dir.display()))
            })?;
        let candidate = self
            .prepare_at(runtime, path, self.decl.sha256.as_deref())
            .await?;
        Ok(self.publish(candidate))
    }

    /// Load and check new code from `path` (default: the configured file), pinned to `pin`
    /// when given, and run its trial `init`; nothing changes until [`Swappable::publish`].
    /// A cluster's rolling upgrade prepares on every node first, then publishes node by node.
    pub async fn prepare(
        &self,
        runtime: &Arc<Runtime>,
        path: Option<&Path>,
        pin: Option<&str>,
    ) -> Result<Candidate, ReloadError> {
        let path = match path {
            Some(p) => self.check_path(p)?,
            None => self.decl.path.clone(),
        };
        self.prepare_at(runtime, path, pin).await
    }

    async fn prepare_at(
        &self,
        runtime: &Arc<Runtime>,
        path: PathBuf,
        pin: Option<&str>,
    ) -> Result<Candidate, ReloadError> {
        if self.role == Role::Source {
            return Err(ReloadError::Invalid(format!(
                "plugin `{}` is a source; sources are not swapped under traffic (their \
                 checkpoints belong to the running instance): restart the pipeline instead",
                self.name
            )));
        }
        let loaded = {
            let runtime = runtime.clone();
            let path = path.clone();
            let pin = pin.map(ToOwned::to_owned);
            tokio::task::spawn_blocking(move || runtime.load(&path, pin.as_deref()))
                .await
                .map_err(|e| ReloadError::Invalid(format!("compiling failed: {e}")))?
                .map_err(|e| ReloadError::Invalid(format!("{:#}", anyhow::Error::from(e))))?
        };
        if loaded.role != self.role {
            return Err(ReloadError::Invalid(format!(
                "`{}` is a {} but plugin `{}` is a {}; a swap keeps the world",
                path.display(),
                loaded.role,
                self.name,
                self.role
            )));
        }
        // A trial instance with the plugin's own grants, limits and config: a version whose
        // `init` fails, traps or runs past init_timeout never reaches a pipeline.
        let mut trial = runtime
            .instantiate(
                &loaded,
                Arc::from(format!("reload/{}", self.name)),
                Arc::from(self.name.as_str()),
                &self.decl.grants,
                &self.decl.limits,
                PluginState::default(),
            )
            .await
            .map_err(|e| ReloadError::Invalid(format!("cannot instantiate: {e:#}")))?;
        let meta = trial
            .metadata()
            .await
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let mut problems = Vec::new();
        crate::contract::check_keys(&self.decl, &meta, &mut problems);
        if !problems.is_empty() {
            return Err(ReloadError::Invalid(problems.join("; ")));
        }
        let entries = crate::contract::init_entries(&self.decl).map_err(ReloadError::Invalid)?;
        match trial.init(&entries).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(ReloadError::Invalid(format!(
                    "`init` of {} {} returned {}",
                    meta.name,
                    meta.version,
                    crate::contract::describe(&error)
                )));
            }
            Err(trap) => return Err(ReloadError::Invalid(trap.to_string())),
        }
        drop(trial);
        Ok(Candidate {
            plugin: loaded,
            version: meta.version,
            path,
        })
    }

    /// Put prepared code in place: each stage switches to it at its next batch.
    pub fn publish(&self, candidate: Candidate) -> Swapped {
        let Candidate {
            plugin: loaded,
            version,
            path,
        } = candidate;
        let old_sha = self.component().sha256;
        let swapped = Swapped {
            plugin: self.name.clone(),
            version: version.clone(),
            sha256: loaded.sha256.clone(),
            path: path.display().to_string(),
            generation: 0,
        };
        match self.current.lock() {
            Ok(mut c) => {
                *c = Current {
                    plugin: loaded,
                    version,
                }
            }
            Err(poisoned) => {
                *poisoned.into_inner() = Current {
                    plugin: loaded,
                    version,
                }
            }
        }
        // Publish after the new code is in place: a stage that sees the new generation starts
        // its fresh instance from it.
        let generation = self.generation() + 1;
        self.code.send_replace(Code {
            generation,
            version: swapped.version.clone(),
        });
        tracing::info!(
            "plugin `{}`: swap {generation}: sha256 {old_sha} -> {} (version {}, {}); stages \
             switch at their next batch",
            self.name,
            swapped.sha256,
            swapped.version,
            swapped.path
        );
        Swapped {
            generation,
            ..swapped
        }
    }
}

/// New code that passed every check of a reload and waits to be published.
pub struct Candidate {
    plugin: LoadedPlugin,
    version: String,
    path: PathBuf,
}

impl Candidate {
    /// The new code's sha256.
    pub fn sha256(&self) -> &str {
        &self.plugin.sha256
    }
}

/// How long a file must stay quiet before a watched plugin is reloaded: builds and copies write
/// in several steps.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(400);

/// Watch a plugin's file (`watch = true`) and reload it whenever it changes to new content.
/// The returned watcher must be kept alive. A change that fails a check is logged and the
/// running version keeps serving.
pub fn watch(
    runtime: Arc<Runtime>,
    plugin: Arc<Swappable>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let file = plugin.decl.path.clone();
    let dir = file
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let name = file.file_name().map(std::ffi::OsStr::to_os_string);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && (event.kind.is_create() || event.kind.is_modify())
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    })?;
    // Watch the directory, not the file: builds and editors replace files by renaming.
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tracing::info!(
        "plugin `{}`: watching `{}` for new versions",
        plugin.name,
        file.display()
    );
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until the file has been quiet for a while.
            loop {
                tokio::time::sleep(DEBOUNCE).await;
                if rx.try_recv().is_err() {
                    break;
                }
                while rx.try_recv().is_ok() {}
            }
            let changed =
                crate::plugin::file_sha256(&file).is_ok_and(|sha| sha != plugin.component().sha256);
            if !changed {
                continue;
            }
            match plugin.reload(&runtime, None).await {
                Ok(s) => tracing::info!(
                    "plugin `{}`: `{}` changed; now version {} (generation {})",
                    s.plugin,
                    s.path,
                    s.version,
                    s.generation
                ),
                Err(e) => tracing::warn!(
                    "plugin `{}`: `{}` changed but was not swapped: {e}; the running version \
                     keeps serving",
                    plugin.name,
                    file.display()
                ),
            }
        }
    });
    Ok(watcher)
}

impl Swappable {
    /// Whether the config asks to follow the file (`watch = true`).
    pub fn watched(&self) -> bool {
        self.decl.watch
    }
}
