//! The shipped `examples/virtual-server.toml`, run by the real agent inside a network namespace
//! on what `examples/virtual-server.sh setup` builds (veth pair, tmpfs, dnsmasq, a systemd user
//! manager), with three faults made behind the agent's back: the address removed, the unit
//! stopped from the command line, the disk filled.

use resmon_e2e::{event_time, Agent};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/virtual-server.sh")
}

/// What the script set up, torn down on drop (also when the test fails).
struct Setup {
    dir: tempfile::TempDir,
    netns: String,
}

impl Setup {
    fn new() -> Setup {
        let setup = Setup {
            dir: tempfile::Builder::new()
                .prefix("resmon-vs")
                .tempdir()
                .unwrap(),
            netns: format!("resmon-vs-{}", std::process::id()),
        };
        let out = Command::new(script())
            .arg("setup")
            .arg(setup.dir.path())
            .arg(&setup.netns)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "virtual-server.sh setup (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        setup
    }

    fn sh(&self, command: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}/systemd/run/bus", self.dir.path().display()),
            )
            .env("XDG_RUNTIME_DIR", self.dir.path().join("systemd/run"))
            .status()
            .unwrap();
        assert!(status.success(), "{command}");
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("teardown")
            .arg(self.dir.path())
            .arg(&self.netns)
            .status();
    }
}

fn first_after(
    agent: &Agent,
    event: &str,
    resource: &str,
    since: f64,
) -> Option<serde_json::Value> {
    agent
        .events_of(event, resource)
        .into_iter()
        .find(|e| event_time(e) >= since)
}

#[test]
fn the_virtual_server_survives_an_address_removed_a_unit_stopped_and_a_full_disk() {
    let setup = Setup::new();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/virtual-server.toml"),
    )
    .unwrap();
    let dir = setup.dir.path().display().to_string();
    let config = example.replace("/run/resmon-vs", &dir);
    let agent = Agent::start_in_netns(&config, "127.0.0.1:9477", &setup.netns);
    for resource in ["ip", "name", "data", "store", "routing"] {
        agent.wait_state("vs1", resource, "online", LONG);
    }
    let shown = Command::new("ip")
        .args(["-n", &setup.netns, "-4", "addr", "show", "dev", "vs0"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(
        shown.contains("192.0.2.10/24") && shown.contains("vs0:vs1"),
        "{shown}"
    );

    // 1. The address removed behind the agent's back: netlink tells at once (the polls are 30 s
    //    and 60 s apart), the ip is restarted, and the name that depends on it comes back too.
    let removed_at = resmon_e2e::unix_now();
    setup.sh(&format!(
        "ip -n {} addr del 192.0.2.10/24 dev vs0",
        setup.netns
    ));
    agent.wait_for("the ip's restart", LONG, |a| {
        first_after(a, "restart_requested", "ip", removed_at).is_some()
    });
    let signal = first_after(&agent, "failure_signalled", "ip", removed_at).expect("signalled");
    assert_eq!(signal["reason"], "address_missing", "{signal}");
    let seen_after = event_time(&signal) - removed_at;
    assert!(
        seen_after < 2.0,
        "seen {seen_after:.3}s after the removal: not by a poll"
    );
    agent.wait_for("the address back and every resource online", LONG, |a| {
        ["ip", "name", "routing"]
            .iter()
            .all(|r| a.state("vs1", r) == "online")
            && first_after(a, "state_changed", "ip", removed_at).is_some()
    });
    let shown = Command::new("ip")
        .args(["-n", &setup.netns, "-4", "addr", "show", "dev", "vs0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains("192.0.2.10/24"));

    // 2. The unit stopped from the command line: a failure (services are stopped through the
    //    agent), seen through PropertiesChanged, then a restart that starts it again.
    let stopped_at = resmon_e2e::unix_now();
    setup.sh("systemctl --user stop vs-store.service");
    agent.wait_for("the store's restart", LONG, |a| {
        first_after(a, "restart_requested", "store", stopped_at).is_some()
    });
    let signal = first_after(&agent, "failure_signalled", "store", stopped_at).expect("signalled");
    assert_eq!(signal["reason"], "not_running", "{signal}");
    assert!(event_time(&signal) - stopped_at < 2.0, "{signal}");
    agent.wait_for("the store running again", LONG, |a| {
        a.state("vs1", "store") == "online" && a.state("vs1", "routing") == "online"
    });
    setup.sh("systemctl --user is-active --quiet vs-store.service");

    // 3. The disk filled: the disk resource fails, and what depends on it goes offline.
    let filled_at = resmon_e2e::unix_now();
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={dir}/data/fill"))
        .stderr(std::process::Stdio::null())
        .status();
    agent.wait_for("the disk to fail", LONG, |a| {
        first_after(a, "probe_failed", "data", filled_at).is_some_and(|e| {
            e["detail"]
                .as_str()
                .unwrap_or("")
                .contains("below min_free")
        })
    });
    agent.wait_for("the store and routing to go offline", LONG, |a| {
        ["store", "routing"]
            .iter()
            .all(|r| a.state("vs1", r) != "online")
    });
    // An offline that the agent asked for is not a failure of the unit.
    assert!(
        first_after(&agent, "restart_requested", "store", filled_at).is_none(),
        "{:?}",
        agent.events_of("restart_requested", "store")
    );

    // Room again, and the operator brings the group back.
    std::fs::remove_file(format!("{dir}/data/fill")).unwrap();
    agent.wait_for("the group to settle", LONG, |a| {
        let data = a.state("vs1", "data");
        data == "online" || data == "failed"
    });
    let (code, out, err) = agent.cli(&["online", "vs1"]);
    assert!(
        code == 0 || agent.state("vs1", "data") == "online",
        "{out}{err}"
    );
    for resource in ["data", "store", "routing"] {
        agent.wait_state("vs1", resource, "online", LONG);
    }
}
