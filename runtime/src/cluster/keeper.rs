//! A node's keeper: a task of its own that, every [`TICK`], publishes the node's heartbeat and
//! renews the leases it holds, whatever the node's main loop is busy with (compiling a plugin,
//! starting a pipeline, preparing an upgrade can each take seconds on a loaded machine, and a
//! heartbeat or a renewal must not wait for them). A lease it fails to keep is *fenced* (its
//! pipeline's state writes stop at once) and reported lost; the main loop then stops that
//! pipeline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::Mutex;

use super::TICK;
use super::lease::Lease;

struct Held {
    lease: Lease,
    fence: Arc<AtomicBool>,
}

/// What the keeper keeps; shared by the node's main loop and the keeper's task.
#[derive(Default)]
pub struct Keeper {
    held: Mutex<BTreeMap<String, Held>>,
    lost: std::sync::Mutex<Vec<(String, String)>>,
    heartbeat: std::sync::Mutex<Option<Bytes>>,
    retired: AtomicBool,
}

impl Keeper {
    /// Start keeping `node`'s heartbeat and leases; the task ends with the last `Arc`.
    pub fn start(nodes: kv::Store, leases: kv::Store, node: String) -> Arc<Keeper> {
        let keeper = Arc::new(Keeper::default());
        let weak = Arc::downgrade(&keeper);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(keeper) = weak.upgrade() else {
                    return;
                };
                keeper.beat(&nodes, &node).await;
                keeper.renew(&leases).await;
            }
        });
        keeper
    }

    /// Stop heartbeating: the node is leaving (its entry is removed).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// What the next heartbeats say.
    pub fn set_heartbeat(&self, value: Bytes) {
        match self.heartbeat.lock() {
            Ok(mut h) => *h = Some(value),
            Err(poisoned) => *poisoned.into_inner() = Some(value),
        }
    }

    /// Keep `lease` of pipeline `name` from now on; `fence` is set if it is lost.
    pub async fn hold(&self, name: &str, lease: Lease, fence: Arc<AtomicBool>) {
        self.held
            .lock()
            .await
            .insert(name.to_owned(), Held { lease, fence });
    }

    /// Stop keeping pipeline `name`'s lease and hand it over (to release it).
    pub async fn take(&self, name: &str) -> Option<Lease> {
        self.held.lock().await.remove(name).map(|h| h.lease)
    }

    /// Leases lost since the last call: pipeline and why.
    pub fn lost(&self) -> Vec<(String, String)> {
        match self.lost.lock() {
            Ok(mut lost) => std::mem::take(&mut *lost),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    async fn beat(&self, nodes: &kv::Store, node: &str) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let value = match self.heartbeat.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(value) = value
            && let Err(e) = nodes.put(node, value).await
        {
            tracing::warn!("heartbeat not published: {e}");
        }
    }

    async fn renew(&self, leases: &kv::Store) {
        let mut held = self.held.lock().await;
        let mut lost = Vec::new();
        for (name, h) in held.iter_mut() {
            if let Err(why) = h.lease.renew(leases).await {
                h.fence.store(true, Ordering::Relaxed);
                lost.push((name.clone(), why));
            }
        }
        for (name, _) in &lost {
            held.remove(name);
        }
        drop(held);
        if !lost.is_empty() {
            match self.lost.lock() {
                Ok(mut l) => l.extend(lost),
                Err(poisoned) => poisoned.into_inner().extend(lost),
            }
        }
    }
}
