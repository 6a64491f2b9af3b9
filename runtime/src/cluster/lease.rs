//! Leases: slot `SLOT` of pipeline `P` is the key `P.SLOT` of the leases bucket, and the node
//! that created it holds it. Taking one is a KV `create` (succeeds only when the key has no
//! value); keeping it is an `update` expecting the revision the holder last wrote, every
//! [`super::TICK`]. A holder that stops renewing loses it when the bucket's `max_age`
//! ([`super::LEASE_TTL`]) expires the entry, and the next node to try takes it. A holder whose
//! renewal fails (someone else's revision, or no answer for as long as the lease lives) stops
//! the pipeline it holds, so that one slot never runs on two nodes for longer than that.

use std::time::Instant;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{LEASE_TTL, key_of};

/// A lease this node holds.
#[derive(Debug)]
pub struct Lease {
    key: String,
    revision: u64,
    value: Holder,
    renewed: Instant,
    /// The slot, 1-based.
    pub slot: u32,
}

/// What a lease's value says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    /// The node holding it.
    pub node: String,
    /// Slot 1 only: whether the pipeline's source runs alone (it cannot share its work, so no
    /// other slot may run); `None` until the holder has started it and knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alone: Option<bool>,
}

impl Holder {
    fn bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Who holds slot `slot` of `pipeline`, if anyone does.
    pub async fn of(leases: &kv::Store, pipeline: &str, slot: u32) -> Option<Holder> {
        let entry = leases.entry(key(pipeline, slot)).await.ok()??;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        serde_json::from_slice(&entry.value).ok()
    }
}

/// The key of slot `slot` of `pipeline`.
pub fn key(pipeline: &str, slot: u32) -> String {
    format!("{}.{slot}", key_of(pipeline))
}

impl Lease {
    /// Take slot `slot` of `pipeline` for `node`, if nobody holds it.
    pub async fn acquire(
        leases: &kv::Store,
        pipeline: &str,
        slot: u32,
        node: &str,
    ) -> Option<Lease> {
        let key = key(pipeline, slot);
        let value = Holder {
            node: node.to_owned(),
            alone: None,
        };
        match leases.create(&key, value.bytes()).await {
            Ok(revision) => Some(Lease {
                key,
                revision,
                value,
                renewed: Instant::now(),
                slot,
            }),
            Err(e) => {
                if e.kind() != kv::CreateErrorKind::AlreadyExists {
                    tracing::debug!("lease `{key}` not taken: {e}");
                }
                None
            }
        }
    }

    /// Renew it. `Err`: it is lost (another node holds it, or it could not be renewed for as
    /// long as it lives) and what it guards must stop.
    pub async fn renew(&mut self, leases: &kv::Store) -> Result<(), String> {
        match leases
            .update(&self.key, self.value.bytes(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = Instant::now();
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(format!(
                "lease `{}` was taken by another node (this one did not renew it in time)",
                self.key
            )),
            Err(e) => {
                // A lease not renewed for LEASE_TTL may already be someone else's.
                if self.renewed.elapsed() >= LEASE_TTL.saturating_sub(super::TICK) {
                    Err(format!(
                        "lease `{}` could not be renewed for {:.0?}: {e}",
                        self.key,
                        self.renewed.elapsed()
                    ))
                } else {
                    tracing::warn!("lease `{}` not renewed (trying again): {e}", self.key);
                    Ok(())
                }
            }
        }
    }

    /// Say whether the source runs alone (written with the next renewal).
    pub fn set_alone(&mut self, alone: bool) {
        self.value.alone = Some(alone);
    }

    /// Give it up at once (instead of letting it expire), if it is still this node's.
    pub async fn release(self, leases: &kv::Store) {
        if let Err(e) = leases
            .purge_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::debug!("lease `{}` not released (it expires): {e}", self.key);
        }
    }
}
