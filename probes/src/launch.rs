//! Where the children of resources run. The agent's own unit is a sandbox (read-only system,
//! a system-call filter, no new privileges, few capabilities) that suits the agent and not the
//! services it keeps: a child forked by the agent inherits all of it. So on a systemd host the
//! children that *change* the system run as transient units of systemd, each in its own cgroup
//! with systemd's defaults, outside the agent's sandbox:
//!
//! - a `process` is a transient service (`Type=exec`, `ExitType=cgroup`,
//!   `KillMode=control-group`), tracked by systemd across agent restarts;
//! - the `start` and `stop` commands of `exec` and `ocf`, and the `mount` and `umount` of
//!   `disk`, are transient one-shot units ([`Role::Start`], [`Role::Stop`]); what a start
//!   leaves running stays in its unit until the resource goes offline.
//!
//! Check commands (`exec` checks, OCF `monitor`, readiness commands) only look, and run forked
//! inside the agent's sandbox, where thousands a second cost little: a forbidden system call
//! kills that check (the resource fails with the signal), never the agent.
//!
//! Without systemd (`children = "fork"`, or `auto` where the agent is not a systemd service),
//! every child is forked by the agent, a `process` into a cgroup of its own below the agent's.

use crate::command::{Finished, RunAs};
use crate::resource::Failure;
use crate::systemd::{Bus, Kind, Output, TransientCommand, UnitDriver};
use resmon_policies::FailureReason;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// How the agent runs the children that change the system: the `[agent] children` key.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Children {
    /// Forked by the agent, inside whatever sandbox the agent runs in.
    #[default]
    Fork,
    /// Transient units of the systemd on this bus.
    Units(Bus),
}

/// The `[agent] children` key as written: `"auto"`, `"fork"`, or a bus (`"system"`,
/// `"session"`, an address).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ChildrenSetting {
    /// Transient units of the system's systemd when the agent is one of its services, else
    /// forked.
    #[default]
    Auto,
    /// See [`Children`].
    Fixed(Children),
}

impl std::str::FromStr for ChildrenSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ChildrenSetting::Auto),
            "fork" => Ok(ChildrenSetting::Fixed(Children::Fork)),
            bus => bus
                .parse()
                .map(|b| ChildrenSetting::Fixed(Children::Units(b)))
                .map_err(|_| {
                    format!(
                        "invalid children {s:?}: \"auto\", \"fork\", \"system\", \"session\" or a D-Bus address"
                    )
                }),
        }
    }
}

impl<'de> Deserialize<'de> for ChildrenSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ChildrenSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildrenSetting::Auto => f.write_str("auto"),
            ChildrenSetting::Fixed(Children::Fork) => f.write_str("fork"),
            ChildrenSetting::Fixed(Children::Units(bus)) => write!(f, "{bus}"),
        }
    }
}

impl ChildrenSetting {
    /// What `auto` means here: units of the system's systemd only when the agent is the main
    /// process of one of its services (its parent is PID 1, systemd gave it an invocation id,
    /// and systemd runs the system). An agent started by hand, by a test, or inside a network
    /// namespace forks, so its children share what it sees.
    pub fn resolve(&self) -> Children {
        match self {
            ChildrenSetting::Fixed(children) => children.clone(),
            ChildrenSetting::Auto => {
                // What the agent is does not change while it runs: looked at once, not for
                // each of thousands of resources.
                static AUTO: std::sync::OnceLock<Children> = std::sync::OnceLock::new();
                AUTO.get_or_init(|| {
                    let is_service = std::env::var_os("INVOCATION_ID").is_some()
                        && nix::unistd::getppid().as_raw() == 1
                        && Path::new("/run/systemd/system").is_dir();
                    if is_service {
                        Children::Units(Bus::System)
                    } else {
                        Children::Fork
                    }
                })
                .clone()
            }
        }
    }
}

/// What a command does for its resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Looks (a check, a monitor): always forked, inside the agent's sandbox.
    Check,
    /// Starts something; what it leaves running stays in its unit until [`Launcher::release`].
    Start,
    /// Stops it.
    Stop,
}

/// Runs one resource's commands where they belong.
pub struct Launcher {
    children: Children,
    /// The stem of the resource's unit names: `<stem>-start.service`, `<stem>-stop.service`.
    stem: String,
}

impl Launcher {
    /// A launcher for the resource whose unit names start with `stem`.
    pub fn new(children: Children, stem: String) -> Self {
        Launcher { children, stem }
    }

    fn driver(&self, bus: &Bus, role: &str) -> UnitDriver {
        UnitDriver::new(format!("{}-{role}.service", self.stem), bus.clone())
    }

    /// Runs `argv` for `role` and waits for it; its exit code and the start of its output.
    pub async fn run(
        &self,
        role: Role,
        argv: &[String],
        env: &BTreeMap<String, String>,
        cwd: Option<&Path>,
        run_as: &RunAs,
    ) -> Result<Finished, Failure> {
        let bus = match (&self.children, role) {
            (Children::Units(bus), Role::Start | Role::Stop) => bus,
            _ => return crate::command::run(argv, env, cwd, run_as).await,
        };
        let (role_name, keep) = match role {
            Role::Start => ("start", true),
            _ => ("stop", false),
        };
        let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Failure::new(FailureReason::Spawn, format!("pipe: {e}")))?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader)
            .map_err(|e| Failure::new(FailureReason::Spawn, format!("pipe: {e}")))?;
        let command = TransientCommand {
            argv: argv.to_vec(),
            env: crate::command::child_env(env),
            cwd: cwd.map(Path::to_path_buf),
            user: run_as.user.as_ref().map(|u| u.0.clone()),
            group: run_as.group.as_ref().map(|g| g.0.clone()),
            supplementary_groups: run_as
                .supplementary_groups
                .iter()
                .map(|g| g.0.clone())
                .collect(),
            output: Output::Fd(writer),
            kind: Kind::Command { keep },
        };
        let unit = self.driver(bus, role_name);
        let mut kept = Vec::new();
        let mut read_all = false;
        let code = {
            let reading = crate::command::keep_start(Some(reader), &mut kept);
            tokio::pin!(reading);
            let code = {
                let ran = unit.run_command(&command);
                tokio::pin!(ran);
                tokio::select! {
                    code = &mut ran => code,
                    _ = &mut reading => { read_all = true; ran.await }
                }
            };
            // Our copy of the write end goes, so the reader sees the end once the command's copies
            // are gone (a daemon it started may keep one for ever).
            drop(command);
            if !read_all {
                let _ = tokio::time::timeout(crate::command::AFTER_EXIT, &mut reading).await;
            }
            code?
        };
        Ok(crate::command::finished(code, kept))
    }

    /// Kills what a [`Role::Stop`] command still runs (it outlived its caller's timeout).
    /// Forked, it was killed with its future.
    pub async fn kill_stop(&self) -> Result<(), Failure> {
        match &self.children {
            Children::Units(bus) => self.driver(bus, "stop").kill().await,
            Children::Fork => Ok(()),
        }
    }

    /// Stops what the last start left running (its unit, and every process in it). Forked
    /// children are the start's business.
    pub async fn release(&self) -> Result<(), Failure> {
        match &self.children {
            Children::Units(bus) => self.driver(bus, "start").kill().await,
            Children::Fork => Ok(()),
        }
    }
}

/// A name for a resource's units, unique per agent, group and resource and the same after a
/// restart: `resmon-<resource>-<hash of key>`, with what a unit name cannot hold replaced.
pub fn unit_stem(key: &Path) -> String {
    let stem: String = key
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("resmon-{stem}-{:016x}", crate::cgroup::key_hash(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::UserManager;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".to_string(), "-c".to_string(), script.to_string()]
    }

    #[test]
    fn the_setting_parses_or_explains() {
        assert_eq!("auto".parse(), Ok(ChildrenSetting::Auto));
        assert_eq!("fork".parse(), Ok(ChildrenSetting::Fixed(Children::Fork)));
        assert_eq!(
            "system".parse(),
            Ok(ChildrenSetting::Fixed(Children::Units(Bus::System)))
        );
        let e = "forks".parse::<ChildrenSetting>().unwrap_err();
        assert!(e.contains("invalid children \"forks\""), "{e}");
        // A test run by hand is no systemd service: its children are forked.
        assert_eq!(ChildrenSetting::Auto.resolve(), Children::Fork);
        assert!(unit_stem(Path::new("/s/g/a b.unit")).starts_with("resmon-a_b-"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_and_stop_commands_run_as_units_and_what_a_start_leaves_is_released() {
        let manager = UserManager::start(&[]);
        let launcher = Launcher::new(
            Children::Units(manager.bus.parse().unwrap()),
            "resmon-t-0".into(),
        );
        let env = BTreeMap::from([("MINE".to_string(), "1".to_string())]);
        let run_as = RunAs::default();
        // A start that launches a daemon holding its stdout: answered when the start exits.
        let started = std::time::Instant::now();
        let done = launcher
            .run(
                Role::Start,
                &sh("sleep 1000 & echo launched $MINE 100% '$HOME'; env | grep -c NOTIFY_SOCKET; exit 0"),
                &env,
                None,
                &run_as,
            )
            .await
            .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(done.code, Some(0));
        assert_eq!(
            done.output, "\"launched 1 100% $HOME\\n0\\n\"",
            "{}",
            done.output
        );
        let pids = manager.systemctl_output(&["show", "-P", "MainPID", "resmon-t-0-start.service"]);
        let state =
            manager.systemctl_output(&["show", "-P", "ActiveState", "resmon-t-0-start.service"]);
        assert_eq!(
            state.trim(),
            "active",
            "the daemon stays in its unit ({pids})"
        );

        // A failing stop: its code and output; a signal: no code.
        let done = launcher
            .run(
                Role::Stop,
                &sh("echo nope >&2; exit 3"),
                &env,
                None,
                &run_as,
            )
            .await
            .unwrap();
        assert_eq!(done.code, Some(3));
        assert!(done.output.contains("nope"), "{}", done.output);
        let done = launcher
            .run(
                Role::Stop,
                &sh("echo pid $$; kill -9 $$"),
                &env,
                None,
                &run_as,
            )
            .await
            .unwrap();
        assert_eq!(done.code, None, "{}", done.output);
        // Run again under the same name: a failed run does not hold it.
        let done = launcher
            .run(Role::Stop, &sh("exit 0"), &env, None, &run_as)
            .await
            .unwrap();
        assert_eq!(done.code, Some(0));

        launcher.release().await.unwrap();
        let state =
            manager.systemctl_output(&["show", "-P", "ActiveState", "resmon-t-0-start.service"]);
        assert_eq!(state.trim(), "inactive", "released with its daemon");
        // Checks are forked by the agent.
        let done = launcher
            .run(Role::Check, &sh("echo $MINE"), &env, None, &run_as)
            .await
            .unwrap();
        assert_eq!(done.code, Some(0));
    }
}
