//! A `process` as a transient service unit of systemd (see [`crate::launch`]): systemd starts
//! it outside the agent's sandbox, in its own cgroup, and keeps track of it across agent
//! restarts; the agent starts, watches, stops and kills the unit.

use super::ProcessConfig;
use crate::resource::Failure;
use crate::systemd::{Bus, Kind, Output, TransientCommand, UnitDriver};
use resmon_policies::FailureReason;
use std::path::{Path, PathBuf};

/// The unit side of one `process` resource.
pub(super) struct ProcessUnit {
    unit: UnitDriver,
}

impl ProcessUnit {
    /// The unit `<stem>.service` on `bus`.
    pub(super) fn new(stem: &str, bus: Bus) -> Self {
        ProcessUnit {
            unit: UnitDriver::transient(format!("{stem}.service"), bus),
        }
    }

    /// Starts the unit, or finds it already running (started by this agent before a restart).
    pub(super) async fn start(&self, config: &ProcessConfig, log: &Path) -> Result<(), Failure> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Failure::new(
                    FailureReason::Spawn,
                    format!("create {}: {e}", dir.display()),
                )
            })?;
        }
        let secret = crate::secret::read_all(&config.env_files).map_err(|(name, why)| {
            Failure::new(FailureReason::Spawn, format!("env_files {name}: {why}"))
        })?;
        let mut env = config.env.clone();
        env.extend(secret);
        let command = TransientCommand {
            argv: config.command.0.clone(),
            env: crate::command::child_env(&env),
            cwd: config.cwd.clone(),
            user: config.user.as_ref().map(|u| u.0.clone()),
            group: config.group.as_ref().map(|g| g.0.clone()),
            supplementary_groups: config
                .supplementary_groups
                .iter()
                .map(|g| g.0.clone())
                .collect(),
            output: Output::Append(PathBuf::from(log)),
            kind: Kind::Service,
        };
        self.unit.start(Some(&command)).await
    }

    /// Whether systemd has it up (`thorough`: and not in a transition).
    pub(super) async fn check(&self, thorough: bool) -> Result<(), Failure> {
        self.unit.check(thorough).await
    }

    /// [`ProcessUnit::check`], and the unit's main process (0: none).
    pub(super) async fn check_pid(&self, thorough: bool) -> Result<u32, Failure> {
        self.unit.check_pid(thorough).await
    }

    /// Stops it: SIGTERM to every process of the unit, and waits until none is left.
    pub(super) async fn stop(&self) -> Result<(), Failure> {
        self.unit.stop().await
    }

    /// Kills every process of the unit.
    pub(super) async fn kill(&self) -> Result<(), Failure> {
        self.unit.kill().await
    }

    /// Resolves when the unit stops being up, with why.
    pub(super) async fn failure(&self) -> Failure {
        self.unit.failure().await
    }
}

#[cfg(test)]
mod tests {
    use crate::launch::Children;
    use crate::process::{ProcessConfig, ProcessResource};
    use crate::resource::{BuildContext, Progress, Resource};
    use crate::testing::UserManager;
    use resmon_policies::FailureReason;
    use std::path::Path;
    use std::time::{Duration, Instant};

    fn resource(manager: &UserManager, dir: &Path, name: &str, script: &str) -> ProcessResource {
        let config: ProcessConfig =
            toml::from_str(&format!("command = [\"sh\", \"-c\", {script:?}]\n")).unwrap();
        ProcessResource::new(
            config,
            &BuildContext {
                state_dir: dir.to_path_buf(),
                group: "g".into(),
                resource: name.into(),
                trust: Default::default(),
                check_timeout: Duration::from_secs(5),
                children: Children::Units(manager.bus.parse().unwrap()),
                addresses: Default::default(),
            },
        )
    }

    /// The pids in the unit's cgroup, as systemd reports them.
    fn unit_pids(manager: &UserManager, unit: &str) -> Vec<i32> {
        let out = manager.systemctl_output(&["show", "-P", "ControlGroup", unit]);
        let cgroup = out.trim();
        if cgroup.is_empty() {
            return Vec::new();
        }
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .find_map(|root| std::fs::read_to_string(format!("{root}{cgroup}/cgroup.procs")).ok())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_runs_as_a_transient_unit_and_is_watched_stopped_and_adopted() {
        let manager = UserManager::start(&[]);
        let dir = tempfile::tempdir().unwrap();
        let p = Progress::default();
        let r = resource(
            &manager,
            dir.path(),
            "sleeper",
            "echo started; exec sleep 1000",
        );
        let unit = r.unit.as_ref().unwrap().unit.unit().to_string();
        assert!(
            unit.starts_with("resmon-sleeper-") && unit.ends_with(".service"),
            "{unit}"
        );
        assert!(!r.adopt().await.unwrap(), "nothing to adopt yet");
        r.online(&p).await.unwrap();
        r.is_alive(&p).await.unwrap();
        let pids = unit_pids(&manager, &unit);
        assert_eq!(pids.len(), 1, "{pids:?}");
        // Its output goes to its log, as a forked process's does.
        let log = dir.path().join("g/sleeper.log");
        for _ in 0..50 {
            if std::fs::read_to_string(&log).unwrap_or_default() == "started\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "started\n");

        // A second agent (a restart) finds it running and adopts it: one process still.
        let again = resource(
            &manager,
            dir.path(),
            "sleeper",
            "echo started; exec sleep 1000",
        );
        assert!(again.adopt().await.unwrap());
        again.online(&p).await.unwrap();
        assert_eq!(unit_pids(&manager, &unit), pids, "never two");

        // Killed outside: signalled at once.
        let waiting = tokio::spawn(async move { again.failure().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        let killed_at = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let failure = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("signalled without a poll")
            .unwrap();
        assert_eq!(failure.reason, FailureReason::UnitFailed, "{failure}");
        assert!(killed_at.elapsed() < Duration::from_secs(1));
        assert!(r.looks_alive(&p).await.is_err());

        // Back online, then offline: nothing left.
        r.online(&p).await.unwrap();
        let pids = unit_pids(&manager, &unit);
        r.offline().await.unwrap();
        assert!(unit_pids(&manager, &unit).is_empty());
        assert!(pids
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists()));
        assert_eq!(
            r.looks_alive(&p).await.unwrap_err().reason,
            FailureReason::NotRunning
        );
        r.offline().await.unwrap(); // nothing left to stop: still fine
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_daemon_stays_supervised_and_terminate_does_not_wait_for_sigterm() {
        let manager = UserManager::start(&[]);
        let dir = tempfile::tempdir().unwrap();
        let p = Progress::default();
        // Daemonizes: the starter exits 0, its child leaves the session and ignores SIGTERM.
        let r = resource(
            &manager,
            dir.path(),
            "daemon",
            "setsid sh -c 'trap \"\" TERM; while :; do sleep 1; done' </dev/null >/dev/null 2>&1 & exit 0",
        );
        let unit = r.unit.as_ref().unwrap().unit.unit().to_string();
        r.online(&p).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        r.is_alive(&p).await.expect("the daemon is the service");
        assert!(!unit_pids(&manager, &unit).is_empty());
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), r.terminate())
            .await
            .expect("terminate does not wait for a TERM-ignoring daemon")
            .unwrap();
        println!("terminate took {:?}", started.elapsed());
        assert!(unit_pids(&manager, &unit).is_empty());

        // One that exits 1 at once: its online fails, or its failure signal comes at once,
        // with systemd's result.
        let broken = resource(&manager, dir.path(), "broken", "sleep 0.2; exit 1");
        let failure = match broken.online(&p).await {
            Err(failure) => failure,
            Ok(()) => tokio::time::timeout(Duration::from_secs(3), broken.failure())
                .await
                .expect("signalled"),
        };
        assert_eq!(failure.reason, FailureReason::UnitFailed, "{failure}");
        assert!(failure.detail.contains("exit-code"), "{failure}");
        // Started again after that failure: the failed unit does not hold its name.
        let again = resource(&manager, dir.path(), "broken", "exec sleep 1000");
        again.online(&p).await.unwrap();
        again.terminate().await.unwrap();
    }
}
