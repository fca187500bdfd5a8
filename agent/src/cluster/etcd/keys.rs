//! The etcd keys under `prefix`, and what each says to the ownership machine.

use etcd_client::KeyValue;
use resmon_policies::ownership::{MoveTarget, Observation, OwnerKey};
use std::collections::BTreeMap;

/// The value of `paused/<node>`: who paused it, and the groups it held then (for a resume
/// with failback).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct PausedRecord {
    /// The node whose agent was asked.
    #[serde(default)]
    pub(super) by: String,
    /// Groups the paused node held when it was paused.
    #[serde(default)]
    pub(super) held: Vec<String>,
}

/// The value of `nodes/<node>`: what the node says of itself to the others.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct NodeRecord {
    /// The agent's version.
    #[serde(default)]
    pub(super) version: String,
    /// What the node can hold (`[cluster] capacity`).
    #[serde(default)]
    pub(super) capacity: BTreeMap<String, u64>,
}

pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }
    pub(super) fn owner(&self, group: &str) -> String {
        format!("{}/groups/{group}/owner", self.prefix)
    }
    pub(super) fn target(&self, group: &str) -> String {
        format!("{}/groups/{group}/target", self.prefix)
    }
    /// Present while `node` is paused (drained): its value names the groups it held then.
    pub(super) fn paused(&self, node: &str) -> String {
        format!("{}/paused/{node}", self.prefix)
    }
    pub(super) fn failovers(&self, group: &str) -> String {
        format!("{}/groups/{group}/failovers", self.prefix)
    }
    /// `groups/<group>/online/<resource>` for a provider `group/resource`.
    pub(super) fn online(&self, provider: &str) -> Option<String> {
        let (group, resource) = provider.split_once('/')?;
        Some(format!("{}/groups/{group}/online/{resource}", self.prefix))
    }

    /// The provider (`group/resource`) an `online` key is about.
    pub(super) fn provider(&self, kv: &KeyValue) -> Option<String> {
        let rest = kv
            .key_str()
            .ok()?
            .strip_prefix(&self.prefix)?
            .strip_prefix("/groups/")?;
        let (group, resource) = rest.split_once("/online/")?;
        Some(format!("{group}/{resource}"))
    }

    /// What a key says, for the machine; `None` for a key of no interest.
    pub(super) fn observe(&self, kv: &KeyValue, deleted: bool) -> Option<Observation> {
        let rest = kv
            .key_str()
            .ok()?
            .strip_prefix(&self.prefix)?
            .strip_prefix('/')?;
        if rest.contains("/online/") {
            // A provider's state: see `provider`.
            return None;
        }
        if let Some(node) = rest.strip_prefix("paused/") {
            return Some(Observation::Paused {
                node: node.to_string(),
                paused: !deleted,
            });
        }
        if let Some(node) = rest.strip_prefix("nodes/") {
            let node = node.to_string();
            return Some(if deleted {
                Observation::NodeDown { node }
            } else {
                // A value that is not a record (a node of an older version wrote its name)
                // declares no capacity.
                let record: NodeRecord = serde_json::from_slice(kv.value()).unwrap_or_default();
                Observation::NodeUp {
                    node,
                    new: kv.version() == 1,
                    capacity: record.capacity,
                }
            });
        }
        let (group, kind) = rest.strip_prefix("groups/")?.rsplit_once('/')?;
        let group = group.to_string();
        let value = kv.value_str().unwrap_or_default();
        Some(match kind {
            "owner" => Observation::Owner {
                group,
                key: (!deleted).then(|| OwnerKey {
                    node: value.to_string(),
                    lease: kv.lease(),
                    revision: kv.mod_revision(),
                }),
            },
            "target" => Observation::Target {
                group,
                target: if deleted {
                    None
                } else {
                    serde_json::from_str::<MoveTarget>(value)
                        .ok()
                        .map(|t| (t, kv.mod_revision()))
                },
            },
            "failovers" => Observation::Failovers {
                group,
                history: if deleted {
                    Vec::new()
                } else {
                    serde_json::from_str(value).unwrap_or_default()
                },
                revision: if deleted { 0 } else { kv.mod_revision() },
            },
            _ => return None,
        })
    }
}
