//! `resmon status`: the running agent's groups and resources, as a table or JSON.

use super::{build_runtime, Output};
use crate::config;
use crate::status::{AgentStatus, CheckStatus};
use std::process::ExitCode;

pub(super) fn status(path: &std::path::Path, address: Option<String>, output: Output) -> ExitCode {
    let address = match address {
        Some(a) => a,
        None => match config::load(path) {
            Ok(loaded) => loaded.config.agent.listen.to_string(),
            Err(errors) => {
                eprintln!(
                    "{errors}\n(pass --address to reach the agent without reading the config)"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match build_runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let body = match runtime.block_on(crate::client::get(&address, "/api/v1/status")) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("error: cannot reach the agent at {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if output == Output::Json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<AgentStatus>(&body) {
        Ok(status) => {
            print!("{}", render_table(&status, crate::events::unix_now()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: the agent at {address} answered something that is not its status: {e}"
            );
            ExitCode::FAILURE
        }
    }
}

fn ago(now: f64, t: f64) -> String {
    human((now - t).max(0.0))
}

fn human(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

fn last_check(name: &str, c: &CheckStatus, now: f64) -> Option<String> {
    let at = c.last_at?;
    let result = match (c.last_ok, c.last_reason) {
        (Some(true), _) => "ok".to_string(),
        (_, Some(reason)) => reason.to_string(),
        _ => "?".into(),
    };
    let ms = c.last_duration_seconds.unwrap_or(0.0) * 1000.0;
    Some(format!("{name} {result} {ms:.0}ms {} ago", ago(now, at)))
}

/// The table `resmon status` prints.
pub fn render_table(status: &AgentStatus, now: f64) -> String {
    let mut rows = vec![[
        "GROUP",
        "RESOURCE",
        "TYPE",
        "STATE",
        "SINCE",
        "RESTARTS",
        "LAST CHECK",
        "NEXT CHECK",
    ]
    .map(String::from)
    .to_vec()];
    for g in &status.groups {
        for r in &g.resources {
            let last = [("is_alive", &r.is_alive), ("looks_alive", &r.looks_alive)]
                .into_iter()
                .filter(|(_, c)| c.last_at.is_some())
                .max_by(|a, b| {
                    a.1.last_at
                        .partial_cmp(&b.1.last_at)
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .and_then(|(name, c)| last_check(name, c, now))
                .unwrap_or_else(|| "-".into());
            // Coming online by checking: the last failed attempt says why it is not yet.
            let last = r.online_attempt.as_ref().map_or(last, |a| {
                format!(
                    "online attempt {} {} {} ago",
                    a.attempt,
                    a.reason,
                    ago(now, a.at)
                )
            });
            let next = [r.looks_alive.next_at, r.is_alive.next_at]
                .into_iter()
                .flatten()
                .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
                .map_or("-".into(), |t| format!("in {}", human((t - now).max(0.0))));
            let mut state = r.state.to_string();
            if let Some(p) = r.pending {
                state = format!("{state} ({p})");
            }
            if r.needs_admin {
                state.push_str(" (needs admin)");
            }
            if r.unmanaged {
                state.push_str(" (maintenance)");
            }
            if r.damped_until.is_some_and(|at| at > now) {
                state.push_str(&format!(" (damped, penalty {})", r.damping_penalty));
            }
            // Waiting out its restart delay, or its retry period.
            if let Some(at) = r.restart_at {
                state.push_str(&format!(" (restart in {})", human((at - now).max(0.0))));
            } else if let Some(at) = r.retry_at {
                state.push_str(&format!(" (retry in {})", human((at - now).max(0.0))));
            }
            rows.push(vec![
                g.name.clone(),
                r.name.clone(),
                r.r#type.to_string(),
                state,
                ago(now, r.since),
                format!("{}/{}", r.restarts_in_period, r.restart_threshold),
                last,
                next,
            ]);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let c = &status.cluster;
    let connected = if c.connected {
        "connected"
    } else {
        "NOT CONNECTED"
    };
    let nodes = if c.nodes.is_empty() {
        "-".to_string()
    } else {
        c.nodes.join(", ")
    };
    let mut out = format!(
        "node {}, resmon {}, {} coordinator {connected}, nodes: {nodes}\n",
        status.node, status.version, c.coordinator
    );
    if !c.paused.is_empty() {
        out.push_str(&format!("paused (drained): {}\n", c.paused.join(", ")));
    }
    if let Some(why) = &c.refused {
        out.push_str(&format!("REFUSED: {why}\n"));
    }
    if c.skew.versions_differ() {
        out.push_str(&format!(
            "versions differ: {} (finish the rolling upgrade)\n",
            c.skew.versions_text()
        ));
    }
    for difference in &c.skew.differences {
        out.push_str(&format!("config differs: {difference}\n"));
    }
    if status.maintenance.node {
        out.push_str("this node is in maintenance\n");
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    // Owners cluster-wide, also of the groups that run elsewhere.
    for (group, owner) in &c.owners {
        out.push_str(&format!(
            "group {group}: owner {}\n",
            owner.as_deref().unwrap_or("none")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{GroupStatus, ResourceStatus};

    #[test]
    fn the_table_says_when_a_failed_resource_restarts_or_retries() {
        let resource =
            |name: &str, restart_at: Option<f64>, retry_at: Option<f64>| ResourceStatus {
                state: resmon_policies::State::Failed,
                since: 100.0,
                cause: "is_alive_failed:refused".into(),
                restarts_total: 1,
                restarts_in_period: 1,
                retry_at,
                restart_at,
                ..ResourceStatus::new(name.into(), "tcp".into(), Vec::new(), 3, 0.0)
            };
        let status = AgentStatus {
            node: "n1".into(),
            version: "0".into(),
            groups: vec![GroupStatus {
                name: "g".into(),
                mode: resmon_policies::GroupMode::Active,
                owner: Some("n1".into()),
                resources: vec![
                    resource("web", Some(130.0), None),
                    resource("db", None, Some(700.0)),
                ],
            }],
            cluster: Default::default(),
            maintenance: Default::default(),
        };
        let table = render_table(&status, 100.0);
        assert!(table.contains("failed (restart in 30s)"), "{table}");
        assert!(table.contains("failed (retry in 10m)"), "{table}");
        assert!(!table.contains("paused") && !table.contains("maintenance"));

        let mut status = status;
        status.cluster.paused = vec!["n2".into()];
        status.maintenance.node = true;
        let table = render_table(&status, 100.0);
        assert!(table.contains("paused (drained): n2\n"), "{table}");
        assert!(table.contains("this node is in maintenance\n"), "{table}");
        assert!(!table.contains("differ"), "{table}");

        status.cluster.skew.versions = [
            ("0.1.0".to_string(), vec!["n2".to_string()]),
            ("0.2.0".to_string(), vec!["n1".to_string()]),
        ]
        .into();
        status.cluster.skew.differences = vec!["group \"g\" is defined differently: x".into()];
        let table = render_table(&status, 100.0);
        assert!(
            table.contains(
                "versions differ: 0.1.0 on n2; 0.2.0 on n1 (finish the rolling upgrade)\n"
            ),
            "{table}"
        );
        assert!(
            table.contains("config differs: group \"g\" is defined differently: x\n"),
            "{table}"
        );
    }
}
