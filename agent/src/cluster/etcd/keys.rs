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

/// The key schema this build reads and writes: the layout of the keys below and of their
/// values. A change an older build would misread takes a new number; a node never acts under
/// a schema newer than its own (see [`resmon_policies::ownership`]).
pub const KEY_SCHEMA: u32 = 1;

/// The value of `nodes/<node>`: what the node says of itself to the others.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// The agent's version.
    #[serde(default)]
    pub version: String,
    /// What the node can hold (`[cluster] capacity`).
    #[serde(default)]
    pub capacity: BTreeMap<String, u64>,
    /// The key schema it speaks; nodes from before schemas were numbered speak 1.
    #[serde(default = "first_schema")]
    pub schema: u32,
    /// The fingerprint of its shared config (see [`crate::config::identity`]); empty from
    /// nodes that do not say.
    #[serde(default)]
    pub config: String,
    /// The fingerprint of each group it defines.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
    /// The fingerprints of each group's parts, which say where two definitions differ; empty
    /// from nodes that do not say.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, BTreeMap<String, String>>,
}

fn first_schema() -> u32 {
    1
}

impl Default for NodeRecord {
    fn default() -> Self {
        NodeRecord {
            version: String::new(),
            capacity: BTreeMap::new(),
            schema: first_schema(),
            config: String::new(),
            groups: BTreeMap::new(),
            parts: BTreeMap::new(),
        }
    }
}

impl NodeRecord {
    /// What this build says of a node with `capacity` running a config of `identity`.
    pub fn of_this_build(
        capacity: &BTreeMap<String, u64>,
        identity: &crate::config::identity::Identity,
    ) -> NodeRecord {
        NodeRecord {
            version: crate::VERSION.to_string(),
            capacity: capacity.clone(),
            schema: KEY_SCHEMA,
            config: identity.config.clone(),
            groups: identity.groups.clone(),
            parts: identity.parts.clone(),
        }
    }

    /// A value of `nodes/<node>`; one that is not a record (a node of an older version wrote
    /// its name) says nothing beyond the node being alive.
    pub fn parse(value: &[u8]) -> NodeRecord {
        serde_json::from_slice(value).unwrap_or_default()
    }
}

pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    /// The cluster's key schema: written once, by the first node, never under a lease.
    pub(super) fn schema(&self) -> String {
        format!("{}/schema", self.prefix)
    }
    /// Every node's key.
    pub(super) fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
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

    /// `dependents/<group>/<resource>/<node>`: a resource of `node` that depends on the provider
    /// `group/resource` is up. A key of its own prefix, which builds before it ignore.
    pub(super) fn dependents(&self, provider: &str, node: &str) -> Option<String> {
        let (group, resource) = provider.split_once('/')?;
        Some(format!(
            "{}/dependents/{group}/{resource}/{node}",
            self.prefix
        ))
    }

    /// The provider (`group/resource`) and the node a `dependents` key is about.
    pub(super) fn dependent_of(&self, kv: &KeyValue) -> Option<(String, String)> {
        let rest = kv
            .key_str()
            .ok()?
            .strip_prefix(&self.prefix)?
            .strip_prefix("/dependents/")?;
        let (provider, node) = rest.rsplit_once('/')?;
        provider
            .contains('/')
            .then(|| (provider.to_string(), node.to_string()))
    }

    /// The node a `nodes/<node>` key is about.
    pub(super) fn node_of<'a>(&self, kv: &'a KeyValue) -> Option<&'a str> {
        kv.key_str()
            .ok()?
            .strip_prefix(&self.prefix)?
            .strip_prefix("/nodes/")
    }

    /// What a `nodes/<node>` key says to the machine: its `record` as parsed, `None` when the
    /// key was deleted (the node's lease is gone).
    pub(super) fn node_observation(
        node: &str,
        kv: &KeyValue,
        record: Option<&NodeRecord>,
    ) -> Observation {
        let node = node.to_string();
        match record {
            None => Observation::NodeDown { node },
            Some(record) => Observation::NodeUp {
                node,
                new: kv.version() == 1,
                capacity: record.capacity.clone(),
                schema: record.schema,
            },
        }
    }

    /// What a key says, for the machine; `None` for a key of no interest.
    pub(super) fn observe(&self, kv: &KeyValue, deleted: bool) -> Option<Observation> {
        let rest = kv
            .key_str()
            .ok()?
            .strip_prefix(&self.prefix)?
            .strip_prefix('/')?;
        if rest.contains("/online/") || rest.starts_with("dependents/") {
            // A provider's state or its dependents': see `provider` and `dependent_of`.
            return None;
        }
        if rest == "schema" {
            // A value this build cannot read is taken as newer than any it knows.
            let schema = if deleted {
                0
            } else {
                kv.value_str()
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(u32::MAX)
            };
            return Some(Observation::Schema { schema });
        }
        if let Some(node) = rest.strip_prefix("paused/") {
            return Some(Observation::Paused {
                node: node.to_string(),
                paused: !deleted,
            });
        }
        if rest.starts_with("nodes/") {
            // The session parses a node's record once, for the skew and for the machine: see
            // `node_observation`.
            return None;
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
