//! `resmon validate`: every error and warning of a config file with its file, line and key, and
//! what each resource's settings mean (how fast a failure is seen, what a fence costs).
//!
//! With `--cluster`, as WSFC's cluster validation, the file against the live nodes. Each node
//! publishes its version, the key schema it speaks and its config's fingerprints;
//! this reads them once (it writes nothing) and lists what differs. Versions that differ are a
//! warning (a rolling upgrade is under way); a group defined differently on two nodes, or
//! defined on one and not another, is an error, as is a key schema a node cannot act under.

use super::{build_runtime, plural};
use crate::cluster::etcd::{survey, NodeRecord, KEY_SCHEMA};
use crate::cluster::skew::Skew;
use crate::config::{self, Config};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

/// How long etcd may take to answer all the reads.
const LIMIT: Duration = Duration::from_secs(10);

pub(super) fn validate(path: &std::path::Path, cluster: bool) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("{w}");
            }
            let c = &loaded.config;
            for g in &c.groups {
                for r in &g.resources {
                    println!("{}/{}: {}", g.name, r.name, budget(r));
                }
                if let Some(cluster) = &c.cluster {
                    println!("{}: {}", g.name, fence_time(g, cluster.fence_margin()));
                }
            }
            let resources: usize = c.groups.iter().map(|g| g.resources.len()).sum();
            println!(
                "{}: ok ({}, {}, {})",
                path.display(),
                plural(c.groups.len(), "group"),
                plural(resources, "resource"),
                plural(loaded.warnings.len(), "warning")
            );
            if cluster {
                return compare_with_cluster(c);
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {}", path.display(), plural(errors.0.len(), "error"));
            ExitCode::FAILURE
        }
    }
}

/// The worst case of a fence of `g`: its slowest terminate that waits on a service's own stop
/// (validation already refused one that does not fit in the margin).
fn fence_time(g: &crate::config::GroupConfig, margin: std::time::Duration) -> String {
    let d = |x: std::time::Duration| resmon_probes::HumanDuration(x).to_string();
    let slowest = g
        .resources
        .iter()
        .filter(|r| r.private.terminate_waits())
        .filter_map(|r| Some((r.props.terminate_timeout.duration()?, r)))
        .max_by_key(|(t, _)| *t);
    match slowest {
        Some((t, r)) => format!(
            "a fence ends within {} (terminate_timeout of {}), inside fence_margin {}",
            d(t),
            r.name,
            d(margin)
        ),
        None => format!(
            "a fence only signals processes and removes addresses, inside fence_margin {}",
            d(margin)
        ),
    }
}

/// What `validate` says of a resource: how fast a failure is seen, and what happens then.
fn budget(r: &crate::config::ResourceConfig) -> String {
    use resmon_policies::RestartAction;
    let d = |x: std::time::Duration| resmon_probes::HumanDuration(x).to_string();
    let p = &r.props;
    let policy = p.restart_policy(&r.private);
    let mut detection = format!(
        "a failure is seen within {} (is_alive_interval {} + check_timeout {})",
        d(p.is_alive_interval + p.check_timeout),
        d(p.is_alive_interval),
        d(p.check_timeout)
    );
    if policy.polls_looks_alive() && p.looks_alive_interval < p.is_alive_interval {
        detection = format!(
            "a failure is seen within {} (looks_alive_interval {} + check_timeout {}, then is_alive at once)",
            d(p.looks_alive_interval + p.check_timeout * 2),
            d(p.looks_alive_interval),
            d(p.check_timeout)
        );
    }
    if policy.provides_failure_signal {
        detection = format!("{detection}, at once through its failure signal");
    }
    let next = match p.restart_action {
        RestartAction::NoRestart => {
            "no restart: a failure stays failed until an administrator acts".to_string()
        }
        action => format!(
            "{} restarts per {}, then {}, retry after {}",
            p.restart_threshold,
            d(p.restart_period),
            if action == RestartAction::RestartThenFailover {
                "failover"
            } else {
                "no failover"
            },
            d(p.retry_period_on_failure)
        ),
    };
    format!("{detection}; {next}")
}

fn compare_with_cluster(config: &Config) -> ExitCode {
    let Some(cluster) = &config.cluster else {
        eprintln!(
            "error: {}: --cluster needs a [cluster] section: without one this node is alone",
            config.source.display()
        );
        return ExitCode::FAILURE;
    };
    let Ok(runtime) = build_runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let survey = match runtime.block_on(survey(cluster, LIMIT)) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("error: cannot read the cluster: {why}");
            return ExitCode::FAILURE;
        }
    };
    let me = cluster.node_name(&config.agent);
    let file = format!("{me} (this file)");
    let mut nodes = survey.nodes.clone();
    nodes.insert(
        file.clone(),
        NodeRecord::of_this_build(&cluster.capacity, &config.identity),
    );
    let (text, errors, warnings) = report(survey.schema, &nodes);
    print!("{text}");
    println!(
        "cluster: {}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    );
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The table and the findings; the numbers of errors and warnings.
fn report(schema: u32, nodes: &BTreeMap<String, NodeRecord>) -> (String, usize, usize) {
    let mut out = format!(
        "cluster key schema {}; this build speaks {KEY_SCHEMA}; {} alive\n",
        if schema == 0 {
            "not yet written".to_string()
        } else {
            schema.to_string()
        },
        plural(nodes.len() - 1, "node")
    );
    let width = nodes.keys().map(String::len).max().unwrap_or(0).max(4);
    out.push_str(&format!(
        "{:<width$}  {:<16}  {:<6}  config\n",
        "node", "version", "schema"
    ));
    for (name, r) in nodes {
        let config = if r.config.is_empty() {
            "(not published)"
        } else {
            &r.config
        };
        out.push_str(&format!(
            "{name:<width$}  {:<16}  {:<6}  {config}\n",
            r.version, r.schema
        ));
    }
    let (mut errors, mut warnings) = (0, 0);
    for (name, r) in nodes {
        if r.schema < schema {
            errors += 1;
            out.push_str(&format!(
                "error: {name} speaks key schema {}, older than the cluster's {schema}: it takes \
                 no group until it is upgraded\n",
                r.schema
            ));
        }
    }
    let skew = Skew::of(nodes);
    if skew.versions_differ() {
        warnings += 1;
        out.push_str(&format!(
            "warning: versions differ: {} (finish the rolling upgrade: drain, upgrade and resume \
             each node in turn)\n",
            skew.versions_text()
        ));
    }
    for name in &skew.unknown {
        warnings += 1;
        out.push_str(&format!(
            "warning: {name} publishes no config fingerprints (a version before them): its groups \
             are not compared\n"
        ));
    }
    for difference in &skew.differences {
        errors += 1;
        out.push_str(&format!("error: {difference}\n"));
    }
    (out, errors, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: &str, schema: u32, web: &str) -> NodeRecord {
        NodeRecord {
            version: version.into(),
            schema,
            config: format!("c-{web}"),
            groups: BTreeMap::from([("web".to_string(), web.to_string())]),
            ..NodeRecord::default()
        }
    }

    #[test]
    fn differences_are_listed_and_counted() {
        let nodes = BTreeMap::from([
            ("n1".to_string(), record("0.2.0", 1, "aa")),
            ("n2".to_string(), record("0.1.0", 1, "bb")),
            ("n1 (this file)".to_string(), record("0.2.0", 1, "aa")),
        ]);
        let (text, errors, warnings) = report(1, &nodes);
        assert_eq!((errors, warnings), (1, 1), "{text}");
        assert!(
            text.contains("warning: versions differ: 0.1.0 on n2; 0.2.0 on n1, n1 (this file)"),
            "{text}"
        );
        assert!(text.contains("error: group \"web\" is defined differently: n1, n1 (this file) have aa; n2 has bb\n"), "{text}");

        let nodes = BTreeMap::from([
            ("n1".to_string(), record("0.2.0", 1, "aa")),
            ("n1 (this file)".to_string(), record("0.2.0", 1, "aa")),
        ]);
        let (text, errors, warnings) = report(2, &nodes);
        assert_eq!((errors, warnings), (2, 0), "{text}");
        assert!(
            text.contains("error: n1 speaks key schema 1, older than the cluster's 2"),
            "{text}"
        );
    }
}
