//! Version and config skew between nodes, from what each publishes in `nodes/<node>`: which
//! versions run where, and which groups are defined differently. `resmon status` shows it for
//! the alive nodes; `resmon validate --cluster` adds the file being validated.

use super::etcd::NodeRecord;
use std::collections::{BTreeMap, BTreeSet};

/// What differs between the nodes compared.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skew {
    /// Each version and the nodes that run it.
    pub versions: BTreeMap<String, Vec<String>>,
    /// One line per group defined differently (or not at all) on some node.
    pub differences: Vec<String>,
    /// Nodes that publish no fingerprints (versions from before them): left out of the
    /// comparison of groups.
    pub unknown: Vec<String>,
}

/// The parts of `group` (a key, a resource, a type's defaults) that differ between the records
/// that define it, when two or more define it and all of them say.
fn where_they_differ(group: &str, definers: &[&NodeRecord]) -> Option<String> {
    let parts: Vec<&BTreeMap<String, String>> = definers
        .iter()
        .map(|r| r.parts.get(group))
        .collect::<Option<_>>()?;
    if parts.len() < 2 {
        return None;
    }
    let names: BTreeSet<&String> = parts.iter().flat_map(|p| p.keys()).collect();
    let differ: Vec<&str> = names
        .into_iter()
        .filter(|name| {
            let first = parts[0].get(*name);
            parts.iter().any(|p| p.get(*name) != first)
        })
        .map(String::as_str)
        .collect();
    (!differ.is_empty()).then(|| differ.join(", "))
}

impl Skew {
    /// Compares the records of `nodes` (by the name each is shown with).
    pub fn of(nodes: &BTreeMap<String, NodeRecord>) -> Skew {
        let mut skew = Skew::default();
        for (name, record) in nodes {
            skew.versions
                .entry(record.version.clone())
                .or_default()
                .push(name.clone());
        }
        let (known, unknown): (Vec<_>, Vec<_>) =
            nodes.iter().partition(|(_, r)| !r.config.is_empty());
        skew.unknown = unknown.into_iter().map(|(n, _)| n.clone()).collect();
        let groups: BTreeSet<&String> = known.iter().flat_map(|(_, r)| r.groups.keys()).collect();
        for group in groups {
            let mut by: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
            for (name, record) in &known {
                by.entry(record.groups.get(group).map(String::as_str))
                    .or_default()
                    .push(name.as_str());
            }
            if by.len() < 2 {
                continue;
            }
            let parts: Vec<String> = by
                .iter()
                .map(|(fingerprint, names)| {
                    let verb = if names.len() == 1 { "has" } else { "have" };
                    match fingerprint {
                        Some(f) => format!("{} {verb} {f}", names.join(", ")),
                        None => format!(
                            "{} {} not define it",
                            names.join(", "),
                            if names.len() == 1 { "does" } else { "do" }
                        ),
                    }
                })
                .collect();
            let mut line = format!(
                "group {group:?} is defined differently: {}",
                parts.join("; ")
            );
            let definers: Vec<&NodeRecord> = known
                .iter()
                .map(|(_, r)| *r)
                .filter(|r| r.groups.contains_key(group))
                .collect();
            if let Some(names) = where_they_differ(group, &definers) {
                line.push_str(&format!(" (in {names})"));
            }
            skew.differences.push(line);
        }
        skew
    }

    /// More than one version runs.
    pub fn versions_differ(&self) -> bool {
        self.versions.len() > 1
    }

    /// `0.1.0 on n1, n2; 0.2.0 on n3`.
    pub fn versions_text(&self) -> String {
        self.versions
            .iter()
            .map(|(v, nodes)| {
                let v = if v.is_empty() { "unknown" } else { v };
                format!("{v} on {}", nodes.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: &str, groups: &[(&str, &str)]) -> NodeRecord {
        NodeRecord {
            version: version.into(),
            config: "c".into(),
            groups: groups
                .iter()
                .map(|(g, f)| (g.to_string(), f.to_string()))
                .collect(),
            ..NodeRecord::default()
        }
    }

    #[test]
    fn versions_and_groups_defined_differently_are_named_with_their_nodes() {
        let nodes = BTreeMap::from([
            (
                "n1".to_string(),
                record("0.2.0", &[("web", "aa"), ("db", "11")]),
            ),
            (
                "n2".to_string(),
                record("0.1.0", &[("web", "bb"), ("db", "11")]),
            ),
            ("n3".to_string(), record("0.2.0", &[("web", "aa")])),
            ("n4".to_string(), NodeRecord::default()),
        ]);
        let skew = Skew::of(&nodes);
        assert!(skew.versions_differ());
        assert_eq!(
            skew.versions_text(),
            "unknown on n4; 0.1.0 on n2; 0.2.0 on n1, n3"
        );
        assert_eq!(
            skew.differences,
            [
                "group \"db\" is defined differently: n3 does not define it; n1, n2 have 11",
                "group \"web\" is defined differently: n1, n3 have aa; n2 has bb",
            ]
        );
        assert_eq!(skew.unknown, ["n4"]);
    }

    #[test]
    fn the_parts_that_differ_are_named_when_every_definer_says() {
        let with_parts = |web: &str, parts: &[(&str, &str)]| NodeRecord {
            parts: BTreeMap::from([(
                "web".to_string(),
                parts
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )]),
            ..record("0.2.0", &[("web", web)])
        };
        let mut nodes = BTreeMap::from([
            (
                "n1".to_string(),
                with_parts("aa", &[("failback", "1"), ("resource \"check\"", "2")]),
            ),
            (
                "n2".to_string(),
                with_parts(
                    "bb",
                    &[
                        ("failback", "1"),
                        ("resource \"check\"", "3"),
                        ("resource_types.http", "4"),
                    ],
                ),
            ),
            ("n3".to_string(), record("0.2.0", &[])),
        ]);
        assert_eq!(
            Skew::of(&nodes).differences,
            ["group \"web\" is defined differently: n3 does not define it; n1 has aa; n2 has bb (in resource \"check\", resource_types.http)"]
        );
        // A node of a build that does not say: where is not known.
        nodes.insert("n4".to_string(), record("0.1.0", &[("web", "cc")]));
        assert!(!Skew::of(&nodes).differences[0].contains("(in "));
    }

    #[test]
    fn the_same_everywhere_is_no_skew() {
        let nodes = BTreeMap::from([
            ("n1".to_string(), record("0.2.0", &[("web", "aa")])),
            ("n2".to_string(), record("0.2.0", &[("web", "aa")])),
        ]);
        let skew = Skew::of(&nodes);
        assert!(!skew.versions_differ() && skew.differences.is_empty());
    }
}
