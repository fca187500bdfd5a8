//! The agent confined by the packaged unit's own directives (`packaging/resmon.service`, only
//! its paths changed), run by a real systemd user manager: what the agent starts runs as
//! transient units outside that sandbox, a check that breaks the sandbox's rules fails that
//! resource only, and `validate` refuses children forked into the sandbox.

use resmon_e2e::{binary, free_port, http_get};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

/// The agent's endpoint, for what a failed wait shows.
static ADDRESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A systemd user manager for this test (`scripts/user-systemd`), stopped on drop.
struct Manager {
    dir: tempfile::TempDir,
    bus: String,
}

impl Manager {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/user-systemd")
    }

    fn start(units: &[(&str, String)]) -> Manager {
        let dir = tempfile::Builder::new()
            .prefix("resmon-sandbox")
            .tempdir()
            .unwrap();
        let unit_dir = dir.path().join("run/systemd/user");
        std::fs::create_dir_all(&unit_dir).unwrap();
        for (name, text) in units {
            std::fs::write(unit_dir.join(name), text).unwrap();
        }
        let out = Command::new(Self::script())
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd --user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bus = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Manager { dir, bus }
    }

    fn systemctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.systemctl(&["show", "-P", property, unit]).1
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// The packaged unit with this test's binary, config and writable paths; its hardening as
/// shipped. `ExecStart` runs `args` (`run` or `validate`).
fn packaged_unit(config: &Path, writable: &[&Path], oneshot_output: Option<&Path>) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/resmon.service"),
    )
    .unwrap();
    let bin = binary("resmon").display().to_string();
    let writable: Vec<String> = writable.iter().map(|p| p.display().to_string()).collect();
    let mut unit = String::new();
    for line in shipped.lines() {
        let line = line
            .replace("/usr/bin/resmon", &bin)
            .replace("/etc/resmon/resmon.toml", &config.display().to_string());
        let key = line.split('=').next().unwrap_or_default();
        match key {
            // The machine's own directories stay untouched.
            "StateDirectory" | "RuntimeDirectory" | "RuntimeDirectoryPreserve" => continue,
            "ReadWritePaths" => unit.push_str(&format!("ReadWritePaths={}\n", writable.join(" "))),
            "Type" if oneshot_output.is_some() => unit.push_str("Type=oneshot\n"),
            "ExecStartPre" | "ExecReload" | "WatchdogSec" | "Restart"
                if oneshot_output.is_some() =>
            {
                continue
            }
            "ExecStart" if oneshot_output.is_some() => {
                unit.push_str(&line.replace(" run ", " validate "));
                unit.push('\n');
                let out = oneshot_output.unwrap().display();
                unit.push_str(&format!(
                    "StandardOutput=file:{out}\nStandardError=file:{out}\n"
                ));
            }
            _ => {
                unit.push_str(&line);
                unit.push('\n');
            }
        }
    }
    unit
}

fn status(address: &str) -> serde_json::Value {
    let (code, body) = http_get(address, "/api/v1/status").expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn resource(status: &serde_json::Value, group: &str, name: &str) -> serde_json::Value {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == group)
        .and_then(|g| {
            g["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
        })
        .unwrap_or_else(|| panic!("{group}/{name} in {status}"))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + LONG;
    while Instant::now() < until {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "timed out waiting for {what}; the agent's status: {}",
        http_get(ADDRESS.get().unwrap(), "/api/v1/status")
            .map(|(_, body)| body)
            .unwrap_or_default()
    );
}

#[test]
fn the_packaged_sandbox_confines_the_agent_and_not_what_it_starts() {
    let top = tempfile::Builder::new()
        .prefix("resmon-sandbox-paths")
        .tempdir()
        .unwrap();
    let (state, run, forbidden) = (
        top.path().join("state"),
        top.path().join("run"),
        top.path().join("forbidden"),
    );
    for dir in [&state, &run, &forbidden] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    ADDRESS.set(address.clone()).unwrap();
    let config = top.path().join("resmon.toml");
    let forbidden_s = forbidden.display();
    let body = format!(
        r#"
[[groups]]
name = "g"

[[groups.resources]]
name = "writer"
type = "process"
command = ["sh", "-c", "echo ok > {forbidden_s}/written && exec sleep 1000"]

[[groups.resources]]
name = "starter"
type = "exec"
start = ["sh", "-c", "echo started > {forbidden_s}/started"]
check = ["test", "-f", "{forbidden_s}/started"]
stop = ["rm", "-f", "{forbidden_s}/started"]

[[groups.resources]]
name = "data"
type = "disk"
path = "{forbidden_s}/mnt"
canary = false
mount = {{ source = "tmpfs", fstype = "tmpfs" }}

[[groups]]
name = "h"

[[groups.resources]]
name = "forbidden_syscall"
type = "exec"
check = ["swapoff", "{forbidden_s}/no-swap"]

[[groups.resources]]
name = "sandboxed_check"
type = "exec"
check = ["touch", "{forbidden_s}/from-a-check"]
"#
    );
    let agent_section = |children: &str| {
        format!(
            "[agent]\nlisten = \"{address}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}/resmon.sock\"\nchildren = \"{children}\"\n",
            state.display(),
            run.display()
        )
    };
    // The bus is known once the manager runs; the unit reads the config at start.
    let manager = Manager::start(&[
        (
            "resmon.service",
            packaged_unit(&config, &[&state, &run], None),
        ),
        (
            "resmon-validate.service",
            packaged_unit(
                &top.path().join("forked.toml"),
                &[&state, &run],
                Some(&run.join("validate.out")),
            ),
        ),
    ]);
    std::fs::write(&config, format!("{}{body}", agent_section(&manager.bus))).unwrap();
    let started = Instant::now();
    let (ok, _) = manager.systemctl(&["start", "resmon.service"]);
    assert!(
        ok,
        "the packaged unit starts: {}; the manager's log:\n{}",
        manager.show("resmon.service", "Result"),
        std::fs::read_to_string(manager.dir.path().join("systemd.log")).unwrap_or_default()
    );
    let agent_pid = manager.show("resmon.service", "MainPID");

    // What the agent starts writes where the agent itself may not, and mounts.
    wait_for("writer, starter and data online", || {
        let Ok((200, _)) = http_get(&address, "/healthz") else {
            return false;
        };
        let s = status(&address);
        ["writer", "starter", "data"]
            .iter()
            .all(|r| resource(&s, "g", r)["state"] == "online")
    });
    println!(
        "writer, starter and data online {:?} after the unit's start",
        started.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(forbidden.join("written")).unwrap(),
        "ok\n"
    );
    assert!(forbidden.join("started").exists());

    // The agent is confined: a check (forked by the agent) cannot write there, and one that
    // makes a forbidden system call is killed, failing that resource only.
    wait_for("both confined checks failed", || {
        let s = status(&address);
        ["forbidden_syscall", "sandboxed_check"]
            .iter()
            .all(|r| resource(&s, "h", r)["state"] != "online")
    });
    let (_, events) = http_get(&address, "/api/v1/events").unwrap();
    let failures = |resource: &str| -> String {
        serde_json::from_str::<Vec<serde_json::Value>>(&events)
            .unwrap()
            .into_iter()
            .filter(|e| e["event"] == "operation_failed" && e["resource"] == resource)
            .map(|e| e["detail"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let syscall = failures("forbidden_syscall");
    assert!(syscall.contains("killed by a signal"), "{syscall}");
    let check = failures("sandboxed_check");
    assert!(check.contains("Read-only file system"), "{check}");
    let s = status(&address);
    assert!(!forbidden.join("from-a-check").exists());
    for r in ["writer", "starter", "data"] {
        assert_eq!(resource(&s, "g", r)["state"], "online", "{r}: {s}");
    }
    assert_eq!(
        manager.show("resmon.service", "MainPID"),
        agent_pid,
        "never restarted"
    );
    assert_eq!(manager.show("resmon.service", "NRestarts"), "0");

    // The process is a unit of its own, which outlives an agent restart and is adopted.
    let writer_unit = manager
        .systemctl(&["list-units", "--plain", "--no-legend", "resmon-writer-*"])
        .1
        .split_whitespace()
        .next()
        .expect("the writer's transient unit")
        .to_string();
    let writer_pid = manager.show(&writer_unit, "MainPID");
    assert_ne!(writer_pid, "0");
    assert!(manager.systemctl(&["restart", "resmon.service"]).0);
    wait_for("writer online again", || {
        matches!(http_get(&address, "/healthz"), Ok((200, _)))
            && resource(&status(&address), "g", "writer")["state"] == "online"
    });
    assert_eq!(
        manager.show(&writer_unit, "MainPID"),
        writer_pid,
        "adopted, not restarted"
    );

    // Children forked into this sandbox: validate, run under the same unit, refuses them.
    std::fs::write(
        top.path().join("forked.toml"),
        format!("{}{body}", agent_section("fork")),
    )
    .unwrap();
    let (ok, _) = manager.systemctl(&["start", "resmon-validate.service"]);
    assert!(!ok, "validate refuses");
    let said = std::fs::read_to_string(run.join("validate.out")).unwrap();
    assert!(
        said.contains("groups[0].resources[0].command: would run inside the agent's own sandbox"),
        "{said}"
    );
    assert!(
        said.contains("groups[0].resources[2].mount: would run inside"),
        "{said}"
    );
    assert!(!said.contains("resources[3]"), "a check is fine: {said}");

    // Offline through the control API: the unit and its process are gone.
    let out = Command::new(binary("resmon"))
        .args(["offline", "g", "--socket"])
        .arg(run.join("resmon.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the writer's unit gone", || {
        manager.show(&writer_unit, "ActiveState") != "active"
    });
    assert!(!Path::new(&format!("/proc/{writer_pid}")).exists());
}
