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
            skew.differences.push(format!(
                "group {group:?} is defined differently: {}",
                parts.join("; ")
            ));
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
    fn the_same_everywhere_is_no_skew() {
        let nodes = BTreeMap::from([
            ("n1".to_string(), record("0.2.0", &[("web", "aa")])),
            ("n2".to_string(), record("0.2.0", &[("web", "aa")])),
        ]);
        let skew = Skew::of(&nodes);
        assert!(!skew.versions_differ() && skew.differences.is_empty());
    }
}
