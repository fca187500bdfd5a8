//! Notify hooks with the real agent: each hook runs on its events, in order, with the event in
//! its environment and a sequence number; a hook that hangs is killed at its timeout and one
//! that fails is counted, and neither holds back the agent or the other hooks.

use resmon_e2e::{free_port, write_file, Agent};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

#[test]
fn hooks_run_in_event_order_under_a_timeout_without_holding_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hook.log");
    let record = write_file(
        dir.path(),
        "record.sh",
        &format!(
            "#!/bin/sh\necho \"$RESMON_SEQUENCE $RESMON_EVENT $RESMON_GROUP $RESMON_RESOURCE $RESMON_TARGET\" >> {}\n",
            log.display()
        ),
    );
    // A duration no other process here sleeps, to find it by.
    let hang = write_file(dir.path(), "hang.sh", "#!/bin/sh\nexec sleep 61.7\n");
    for script in [&record, &hang] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let closed = free_port();
    let agent = Agent::start(&format!(
        r#"
[[notify]]
name = "record"
command = ["{record}"]
events = ["resource_failed", "gave_up", "maintenance_changed"]

[[notify]]
name = "hang"
command = ["{hang}"]
events = ["resource_failed", "maintenance_changed"]
timeout = "300ms"

[[notify]]
name = "fails"
command = ["/bin/false"]
events = ["maintenance_changed"]

[[groups]]
name = "app"

[[groups.resources]]
name = "port"
type = "tcp"
address = "127.0.0.1:{closed}"
pending_timeout = "500ms"
restart_action = "no_restart"
"#,
        record = record.display(),
        hang = hang.display(),
    ));
    agent.wait_state("app", "port", "failed", LONG);
    for on in ["on", "off"] {
        let (code, _, err) = agent.cli(&["maintenance", on, "app"]);
        assert_eq!(code, 0, "{err}");
    }
    agent.wait_for("four lines from the record hook", LONG, |_| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 4
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            "1 resource_failed app port ",
            "2 gave_up app port ",
            "3 maintenance_changed   app",
            "4 maintenance_changed   app",
        ],
        "in event order, numbered"
    );
    // The hanging hook was killed at each timeout; the failing one counted; the agent went on.
    agent.wait_for("the hang hook's three timeouts", LONG, |a| {
        a.metrics()
            .contains("resmon_notify_runs_total{hook=\"hang\",result=\"timeout\"} 3")
    });
    let metrics = agent.metrics();
    assert!(
        metrics.contains("resmon_notify_runs_total{hook=\"fails\",result=\"failed\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("resmon_notify_runs_total{hook=\"record\",result=\"ok\"} 4"));
    let sleeping = std::process::Command::new("pgrep")
        .args(["-f", "sleep 61.7"])
        .output()
        .unwrap();
    assert!(
        sleeping.stdout.is_empty(),
        "a timed-out hook is killed: {}",
        String::from_utf8_lossy(&sleeping.stdout)
    );
}
