//! What a node tells the others about its config, so that a group defined differently on two
//! nodes is found before a failover starts the other definition: a fingerprint of the whole
//! shared config and one per group.
//!
//! A fingerprint is SHA-256 over a canonical form of the file's own TOML (tables in key order,
//! as JSON), not over the parsed structs: two builds of different versions read the same
//! file to the same fingerprint, which is what a rolling upgrade compares. `[agent]` and
//! `[cluster]` are left out of the whole-config fingerprint: they differ between nodes by
//! design (the node's name, its capacities). A group's fingerprint covers its table and the
//! `[resource_types.<type>]` defaults of the types it uses; beside it, a short fingerprint of
//! each of its parts (each key of the group, each resource, each type's defaults) says where
//! two definitions differ.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The fingerprints of one config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Everything but `[agent]` and `[cluster]`.
    pub config: String,
    /// Each group's definition, by name.
    pub groups: BTreeMap<String, String>,
    /// Each group's parts, by name: `failback`, `resource check`, `resource_types.http`.
    pub parts: BTreeMap<String, BTreeMap<String, String>>,
}

/// How many hex digits a fingerprint keeps: 64 bits, far beyond any chance collision between
/// the configs of one cluster, and short enough to read in a table.
const DIGITS: usize = 16;

/// A part's fingerprint only names where two groups whose fingerprints differ differ: 32 bits.
const PART_DIGITS: usize = 8;

fn fingerprint(parts: &[&toml::Value]) -> String {
    let mut f = digest(parts);
    f.truncate(DIGITS);
    f
}

fn digest(parts: &[&toml::Value]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        // toml's tables are ordered maps: the JSON text is the same for the same content.
        hash.update(serde_json::to_vec(part).unwrap_or_default());
        hash.update([0]);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn part(value: &toml::Value) -> String {
    let mut f = digest(&[value]);
    f.truncate(PART_DIGITS);
    f
}

/// The parts of `group` (its table) with the defaults of the types it uses.
fn parts_of(group: &toml::Value, used: &BTreeMap<&str, &toml::Value>) -> BTreeMap<String, String> {
    let mut parts = BTreeMap::new();
    for (key, value) in group.as_table().into_iter().flatten() {
        if key != "resources" {
            parts.insert(key.clone(), part(value));
        }
    }
    let resources = group.get("resources").and_then(|r| r.as_array());
    for (i, resource) in resources.into_iter().flatten().enumerate() {
        let name = match resource.get("name").and_then(|n| n.as_str()) {
            Some(name) => format!("resource {name:?}"),
            None => format!("resource #{}", i + 1),
        };
        parts.insert(name, part(resource));
    }
    for (t, defaults) in used {
        parts.insert(format!("resource_types.{t}"), part(defaults));
    }
    parts
}

/// The fingerprints of a parsed (not yet validated) document.
pub fn of(doc: &toml::Value) -> Identity {
    let empty = toml::Value::Table(Default::default());
    let mut shared = doc.as_table().cloned().unwrap_or_default();
    shared.remove("agent");
    shared.remove("cluster");
    let types = doc.get("resource_types").unwrap_or(&empty);
    let mut groups = BTreeMap::new();
    let mut parts = BTreeMap::new();
    for group in doc
        .get("groups")
        .and_then(|g| g.as_array())
        .into_iter()
        .flatten()
    {
        let Some(name) = group.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let used: BTreeMap<&str, &toml::Value> = group
            .get("resources")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("type")?.as_str())
            .filter_map(|t| Some((t, types.get(t)?)))
            .collect();
        parts.insert(name.to_string(), parts_of(group, &used));
        let used = toml::Value::try_from(used).unwrap_or_else(|_| empty.clone());
        groups.insert(name.to_string(), fingerprint(&[group, &used]));
    }
    Identity {
        config: fingerprint(&[&toml::Value::Table(shared)]),
        groups,
        parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(text: &str) -> Identity {
        of(&toml::from_str(text).unwrap())
    }

    #[test]
    fn the_same_definition_has_the_same_fingerprint_however_it_is_written() {
        let a = identity(
            "[agent]\nnode = \"n1\"\n[[groups]]\nname = \"g\"\n[[groups.resources]]\nname = \"r\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\n",
        );
        // Another node, keys in another order, a comment: the same group.
        let b = identity(
            "# n2\n[agent]\nnode = \"n2\"\n[[groups]]\nname = \"g\"\nresources = [{ type = \"tcp\", address = \"127.0.0.1:1\", name = \"r\" }]\n",
        );
        assert_eq!(a, b);
        assert_eq!(a.config.len(), DIGITS);
        let c = identity(
            "[[groups]]\nname = \"g\"\n[[groups.resources]]\nname = \"r\"\ntype = \"tcp\"\naddress = \"127.0.0.1:2\"\n",
        );
        assert_ne!(a.groups["g"], c.groups["g"]);
        assert_ne!(a.config, c.config);
        assert_ne!(
            a.parts["g"]["resource \"r\""],
            c.parts["g"]["resource \"r\""]
        );
        assert_eq!(a.parts["g"]["name"], c.parts["g"]["name"]);
        assert_eq!(a.parts["g"]["resource \"r\""].len(), PART_DIGITS);
    }

    #[test]
    fn a_groups_fingerprint_follows_the_defaults_of_the_types_it_uses() {
        let group = "[[groups]]\nname = \"g\"\n[[groups.resources]]\nname = \"r\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\n";
        let plain = identity(group);
        let tcp = identity(&format!(
            "[resource_types.tcp]\nis_alive_interval = \"5s\"\n{group}"
        ));
        let http = identity(&format!(
            "[resource_types.http]\nis_alive_interval = \"5s\"\n{group}"
        ));
        assert_ne!(plain.groups["g"], tcp.groups["g"]);
        assert_eq!(plain.groups["g"], http.groups["g"]);
        assert!(tcp.parts["g"].contains_key("resource_types.tcp"));
        assert!(!http.parts["g"].contains_key("resource_types.http"));
    }
}
