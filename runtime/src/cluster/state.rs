//! Plugins' host state on a cluster: the `patchbay-state` KV bucket, one entry per plugin per
//! pipeline slot (`SCOPE.PLUGIN`, each part as [`key_of`] writes it) holding that plugin's
//! whole state (a JSON object of base64 values), so that a pipeline that moves to another node
//! (its lease did) starts from the state its last holder wrote: a source that keeps its
//! position there resumes from its last acknowledged checkpoint. One entry per plugin makes
//! loading one read; plugins' states are small (positions, counters), and one over JetStream's
//! message size limit is reported and not written.
//!
//! Writes go behind, on a task per plugin that writes the newest state (states written while
//! one write is under way are folded into the next): a plugin's `state.set` does not wait for
//! JetStream. A node that dies loses at most the newest writes, so the next holder starts from
//! an earlier position and delivers again what followed it: at least once, as everywhere else.
//! A node that lost a pipeline's lease is *fenced*: what it would still write is dropped, so it
//! never overwrites what the new holder writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use tokio::sync::watch;

use super::{Cluster, key_of};
use crate::contract::{PluginState, StateWriter};

/// One plugin's entry of the bucket.
#[derive(Debug)]
struct KvScope {
    map: Mutex<BTreeMap<String, String>>,
    newest: watch::Sender<Option<Bytes>>,
    fence: Arc<AtomicBool>,
}

impl StateWriter for KvScope {
    fn put(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        if self.fence.load(Ordering::Relaxed) {
            return Ok(());
        }
        let snapshot = {
            let mut map = match self.map.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            match value {
                Some(v) => map.insert(key.to_owned(), STANDARD.encode(v)),
                None => map.remove(key),
            };
            serde_json::to_vec(&*map).map_err(|e| e.to_string())?
        };
        self.newest.send_replace(Some(Bytes::from(snapshot)));
        Ok(())
    }
}

/// The state of each of `plugins` in slot `scope` of a pipeline, as the bucket holds it,
/// written behind to it until `fence` is set.
pub async fn load(
    cluster: &Cluster,
    scope: &str,
    plugins: &[String],
    fence: Arc<AtomicBool>,
) -> anyhow::Result<BTreeMap<String, PluginState>> {
    let mut states = BTreeMap::new();
    for plugin in plugins {
        let key = format!("{}.{}", key_of(scope), key_of(plugin));
        let stored: BTreeMap<String, String> = match cluster.state.get(key.as_str()).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("state `{key}` is not readable: {e}"))?,
            Ok(None) => BTreeMap::new(),
            Err(e) => anyhow::bail!("cannot read state `{key}`: {e}"),
        };
        let mut loaded = BTreeMap::new();
        for (k, v) in &stored {
            let bytes = STANDARD
                .decode(v)
                .map_err(|e| anyhow::anyhow!("state `{key}`, key `{k}`: {e}"))?;
            loaded.insert(k.clone(), bytes);
        }
        let (newest, mut changes) = watch::channel::<Option<Bytes>>(None);
        let bucket = cluster.state.clone();
        let entry = key.clone();
        tokio::spawn(async move {
            // Ends when the plugin's state (and so the sender) is gone.
            while changes.changed().await.is_ok() {
                let Some(value) = changes.borrow_and_update().clone() else {
                    continue;
                };
                if let Err(e) = bucket.put(entry.as_str(), value).await {
                    tracing::warn!("plugin state `{entry}` not written to the cluster: {e}");
                }
            }
        });
        let scope = KvScope {
            map: Mutex::new(stored),
            newest,
            fence: fence.clone(),
        };
        states.insert(
            plugin.clone(),
            PluginState::with_writer(loaded, Arc::new(scope)),
        );
    }
    Ok(states)
}
