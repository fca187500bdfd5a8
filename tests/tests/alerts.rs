//! The shipped Prometheus alerting rules (`packaging/alerts.yml`): they load, their unit tests
//! (`packaging/alerts.test.yml`) pass under `promtool test rules`, and every metric they read is
//! one the agent exports (as the manual's metric table lists them), so that a renamed metric
//! cannot leave an alert that never fires.

use std::path::Path;
use std::process::Command;

fn packaging() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(packaging())
        .output()
        .expect("promtool (Debian package prometheus) is installed by the test script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn the_alert_rules_load_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    promtool(&["test", "rules", "alerts.test.yml"]);
}

#[test]
fn every_metric_an_alert_reads_is_exported() {
    let rules = std::fs::read_to_string(packaging().join("alerts.yml")).unwrap();
    let manual = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/observability.md"),
    )
    .unwrap();
    let mut names: Vec<&str> = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("resmon_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let base = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            manual.contains(&format!("`{base}`")),
            "{name}: not in the manual's metric table (docs/src/observability.md)"
        );
    }
}
