//! Precompiled artifacts: a compiled component is cached on disk by the file's sha256 and the
//! engine's compatibility hash, so a second start (or a hot swap to a known version) loads it
//! in under a millisecond instead of compiling it again.

use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::component::LoadError;
use super::engine::Runtime;

impl Runtime {
    /// Compile `bytes` (the file `path`, hashed `sha256`), through the cache when there is one.
    pub(super) fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Component, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::NotAComponent {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        };
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(invalid);
        };
        let cached = dir.join(format!("{sha256}-{}.cwasm", self.engine_key));
        if cached.is_file() {
            match deserialize_cached(&self.engine, &cached) {
                Ok(component) => return Ok(component),
                Err(e) => tracing::debug!("ignoring cache entry {}: {e:#}", cached.display()),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(invalid)?;
        if let Err(e) = store_cached(dir, &cached, &component) {
            tracing::debug!("cannot write cache entry {}: {e:#}", cached.display());
        }
        Ok(component)
    }
}

#[allow(unsafe_code)]
fn deserialize_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `store_cached` from `Component::serialize` into the
    // user's own cache directory, under a name that includes the component's sha256 and the
    // engine's compatibility hash; wasmtime also checks the header and engine settings.
    unsafe { Component::deserialize_file(engine, path) }
}

fn store_cached(dir: &Path, path: &Path, component: &Component) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
