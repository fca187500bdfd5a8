//! `process`: a command resmon supervises itself, where there is no service manager (and in
//! tests).
//!
//! - online spawns `command` as the leader of its own process group (so one signal reaches
//!   everything it forks, and a terminal's Ctrl-C does not), writes a pid file, and returns once
//!   it is ready: `ready_tcp` accepts a connection or `ready_command` exits 0 (or at once when
//!   neither is set). If the process exits first, online fails.
//! - every process it starts stays in the resource's own cgroup ([`crate::cgroup`]), one that
//!   calls `setsid` too; offline sends `SIGTERM` to the group and the cgroup and waits until
//!   both are empty; terminate kills both. A starter that exits 0 leaving processes in the
//!   cgroup has daemonized: the resource runs until the last of them exits.
//! - looks_alive: the leader is running; is_alive: it is running and the readiness check passes.
//! - failure signal: the leader's exit, reported the moment it happens.
//! - adoption: the pid file holds the pid and the process's start time (field 22 of
//!   `/proc/<pid>/stat`); after an agent restart a process whose pid *and* start time match is
//!   the same process (a recycled pid has another start time), and it is watched through a
//!   pidfd, which reports the exit of a process that is not our child.
//!
//! The readiness connection is closed politely (FIN): it is rare, and a naive server that
//! writes to a reset socket may die of SIGPIPE.

#![allow(unsafe_code)] // system calls no safe crate wraps; a SAFETY note at each site

mod unit;

use crate::cgroup::Cgroup;
use crate::command::RunAs;
use crate::health::{Checker, HealthCheck};
use crate::launch::Children;
use crate::resource::{BuildContext, ConfigError, TypeConfig};
use crate::resource::{Failure, Progress, Resource};
use crate::values::{AccountName, Argv, HostPort, HumanDuration};
use async_trait::async_trait;
use resmon_policies::FailureReason;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// Private properties of a `process` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// Program and arguments, e.g. `["nginx", "-c", "/etc/nginx.conf"]`. It must stay in the
    /// foreground: the process resmon starts is the one it watches.
    pub command: Argv,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secrets, read from files at each start:
    /// `env_files = { DB_PASSWORD = "/etc/resmon/db-password" }`.
    #[serde(default)]
    pub env_files: BTreeMap<String, PathBuf>,
    /// Working directory (default: the agent's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Ready once this address accepts a TCP connection.
    #[serde(default)]
    pub ready_tcp: Option<HostPort>,
    /// Ready once this command exits 0.
    #[serde(default)]
    pub ready_command: Option<Argv>,
    /// A protocol check (`check.imap = { address = "..." }`) that is both its readiness and
    /// part of its is_alive: a hung server whose port still accepts fails it.
    #[serde(default)]
    pub check: Option<HealthCheck>,
    /// Limits on what its process tree uses (`memory`, `cpu`, `threads`, `fds`, `for_checks`).
    #[serde(default)]
    pub limits: Option<crate::usage::UsageLimits>,
    /// How often readiness is tried while coming online.
    #[serde(default = "default_ready_interval")]
    pub ready_interval: HumanDuration,
    /// Pid file (default `<state_dir>/<group>/<resource>.pid`).
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// Where stdout and stderr go, appended (default `<state_dir>/<group>/<resource>.log`).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// Past this size, the log's content moves to `<log_file>.1` (the one older file kept)
    /// and the log starts over.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Runs as this user (with its groups), not as root.
    #[serde(default)]
    pub user: Option<AccountName>,
    /// Primary group in place of the user's.
    #[serde(default)]
    pub group: Option<AccountName>,
    /// Groups added to the user's.
    #[serde(default)]
    pub supplementary_groups: Vec<AccountName>,
}

impl ProcessConfig {
    /// Who its commands run as.
    pub fn run_as(&self) -> RunAs {
        RunAs {
            user: self.user.clone(),
            group: self.group.clone(),
            supplementary_groups: self.supplementary_groups.clone(),
        }
    }
}

fn default_log_max_bytes() -> u64 {
    10 * 1024 * 1024
}

fn default_ready_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}

impl ProcessConfig {
    /// Checks that need more than one key.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let readiness = [
            self.ready_tcp.is_some(),
            self.ready_command.is_some(),
            self.check.is_some(),
        ];
        if readiness.iter().filter(|set| **set).count() > 1 {
            errors.push(ConfigError {
                key: if self.check.is_some() {
                    "check"
                } else {
                    "ready_command"
                },
                message: "set one of ready_tcp, ready_command or check, not several".into(),
            });
        }
        if let Some(check) = &self.check {
            errors.extend(
                check
                    .validate()
                    .into_iter()
                    .map(|(key, message)| ConfigError { key, message }),
            );
        }
        if self.ready_interval.0.is_zero() {
            errors.push(ConfigError {
                key: "ready_interval",
                message: "must be longer than zero".into(),
            });
        }
        errors.extend(
            self.run_as()
                .check()
                .into_iter()
                .chain(crate::secret::check_files("env_files", &self.env_files))
                .chain(self.limits.iter().flat_map(|l| l.validate()))
                .map(|(key, message)| ConfigError { key, message }),
        );
        errors
    }
}

/// The running instance: its pid (also its process group) and a channel that receives its exit.
struct Instance {
    pid: i32,
    exit: watch::Receiver<Option<Failure>>,
    /// The leader's pidfd: it names that process whatever becomes of its pid, so signals to
    /// the leader go through it.
    pidfd: Option<Arc<OwnedFd>>,
}

impl Instance {
    fn exited(&self) -> Option<Failure> {
        self.exit.borrow().clone()
    }
}

/// A supervised command.
pub struct ProcessResource {
    config: ProcessConfig,
    pid_file: PathBuf,
    log_file: PathBuf,
    /// The instance started or adopted last; `None` when nothing is known to run.
    current: Mutex<Option<Instance>>,
    /// Names its cgroup (unique per agent, group and resource).
    cgroup_key: PathBuf,
    /// Its cgroup, made at first use; `None` where cgroups cannot be used here.
    cgroup: std::sync::OnceLock<Option<Cgroup>>,
    /// Whether creating the cgroup failed once already (said once, tried at every start).
    cgroup_refused: std::sync::atomic::AtomicBool,
    /// Its protocol check, if configured.
    check: Option<Checker>,
    /// Set where processes run as transient units of systemd: new instances start there; one
    /// found forked (started before the agent ran under systemd) is still supervised here
    /// until it ends.
    unit: Option<unit::ProcessUnit>,
    /// What its process tree uses, read at each is_alive, and its limits.
    usage: crate::usage::UsageWatch,
}

impl ProcessResource {
    /// Builds it from its config; touches nothing.
    pub fn new(config: ProcessConfig, cx: &BuildContext) -> Self {
        let pid_file = config
            .pid_file
            .clone()
            .unwrap_or_else(|| cx.state_file("pid"));
        let log_file = config
            .log_file
            .clone()
            .unwrap_or_else(|| cx.state_file("log"));
        ProcessResource {
            pid_file,
            log_file,
            current: Mutex::new(None),
            cgroup_key: cx.state_file("cgroup"),
            cgroup: std::sync::OnceLock::new(),
            cgroup_refused: std::sync::atomic::AtomicBool::new(false),
            check: config.check.as_ref().map(|c| c.build(cx)),
            usage: crate::usage::UsageWatch::new(config.limits.clone()),
            unit: match &cx.children {
                Children::Units(bus) => Some(unit::ProcessUnit::new(&cx.unit_stem(), bus.clone())),
                Children::Fork => None,
            },
            config,
        }
    }

    /// The unit, unless a forked instance is the one supervised.
    fn unit(&self) -> Option<&unit::ProcessUnit> {
        self.unit.as_ref().filter(|_| self.lock().is_none())
    }

    /// Cuts the log of a process that runs as a unit (a forked one's is watched by a task).
    async fn cut_unit_log(&self) {
        let (path, max) = (self.log_file.clone(), self.config.log_max_bytes);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || cut_log(&path, max)).await {
            tracing::warn!("cannot cut {}: {e}", self.log_file.display());
        }
    }

    /// Online as a unit: started (or found running), then ready before the unit fails.
    async fn online_unit(&self, unit: &unit::ProcessUnit) -> Result<(), Failure> {
        // A forked instance left behind by an agent that did not use units: never run two.
        if let Some(cgroup) = self.populated_cgroup() {
            cgroup.kill();
            cgroup.wait_empty().await;
        }
        unit.start(&self.config, &self.log_file).await?;
        let failed = unit.failure();
        tokio::pin!(failed);
        let mut tick = tokio::time::interval(self.config.ready_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                failure = &mut failed => {
                    return Err(Failure::new(failure.reason, format!("{} before it was ready", failure.detail)));
                }
                _ = tick.tick() => {
                    if self.ready().await.is_ok() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Its cgroup (which may not exist yet); `None` where this host has none to give, said
    /// once: the process group alone then reaches what it starts.
    fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup
            .get_or_init(|| match Cgroup::for_resource(&self.cgroup_key) {
                Ok(cgroup) => Some(cgroup),
                Err(why) => {
                    tracing::warn!("{why}: a process that leaves its process group is not tracked");
                    None
                }
            })
            .as_ref()
    }

    /// Its cgroup, created for a start; `None` (said once) where it cannot be created.
    fn created_cgroup(&self) -> Option<&Cgroup> {
        let cgroup = self.cgroup()?;
        match cgroup.create() {
            Ok(()) => Some(cgroup),
            Err(why) => {
                if !self
                    .cgroup_refused
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!("{why}: a process that leaves its process group is not tracked");
                }
                None
            }
        }
    }

    /// Its cgroup if something runs in it.
    fn populated_cgroup(&self) -> Option<&Cgroup> {
        self.cgroup().filter(|c| c.populated())
    }

    /// The pid of the running instance, if any.
    pub fn pid(&self) -> Option<i32> {
        self.lock()
            .as_ref()
            .filter(|i| i.exited().is_none())
            .map(|i| i.pid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instance>> {
        // A panic elsewhere while holding this lock leaves plain data behind: keep going.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> Result<(i32, watch::Receiver<Option<Failure>>), Failure> {
        let guard = self.lock();
        let Some(instance) = guard.as_ref() else {
            return Err(Failure::new(
                FailureReason::NotRunning,
                "no process started",
            ));
        };
        if let Some(exit) = instance.exited() {
            return Err(exit);
        }
        Ok((instance.pid, instance.exit.clone()))
    }

    fn spawn(&self) -> Result<Instance, Failure> {
        let cgroup = self.created_cgroup();
        let argv = &self.config.command.0;
        for dir in [self.pid_file.parent(), self.log_file.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Failure::new(
                    FailureReason::Spawn,
                    format!("create {}: {e}", dir.display()),
                )
            })?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(|e| {
                Failure::new(
                    FailureReason::Spawn,
                    format!("open {}: {e}", self.log_file.display()),
                )
            })?;
        let log_err = log
            .try_clone()
            .map_err(|e| Failure::new(FailureReason::Spawn, format!("dup log: {e}")))?;
        let secret = crate::secret::read_all(&self.config.env_files).map_err(|(name, why)| {
            Failure::new(FailureReason::Spawn, format!("env_files {name}: {why}"))
        })?;
        let mut env = self.config.env.clone();
        env.extend(secret);
        let mut cmd = crate::command::child_command(argv, &env, &self.config.run_as(), cgroup)?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &self.config.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Failure::new(FailureReason::Spawn, format!("spawn {}: {e}", argv[0])))?;
        let pid = child
            .id()
            .ok_or_else(|| Failure::new(FailureReason::Exited, "exited at once"))?
            as i32;
        // Read before anything can reap the child, so the start time and the pidfd are the
        // child's own.
        let start_time = process_start_time(pid);
        let pidfd = pidfd_open(pid).ok().map(Arc::new);
        if let Some(start_time) = start_time {
            write_pid_file(&self.pid_file, pid, start_time).map_err(|e| {
                Failure::new(
                    FailureReason::Spawn,
                    format!("write {}: {e}", self.pid_file.display()),
                )
            })?;
        }
        let (tx, rx) = watch::channel(None);
        let cgroup = cgroup.cloned();
        tokio::spawn(async move {
            let failure = match child.wait().await {
                // A leader that exits 0 leaving processes in its cgroup has daemonized: it
                // runs until the last of them exits.
                Ok(status)
                    if status.success() && cgroup.as_ref().is_some_and(Cgroup::populated) =>
                {
                    last_one_out(cgroup.as_ref().expect("checked")).await
                }
                Ok(status) => describe_exit(status),
                Err(e) => Failure::new(FailureReason::Io, format!("wait: {e}")),
            };
            let _ = tx.send(Some(failure));
        });
        self.keep_log_small(rx.clone());
        Ok(Instance {
            pid,
            exit: rx,
            pidfd,
        })
    }

    /// While the instance runs, cuts its log when it passes `log_max_bytes`: the process holds
    /// the file open in append mode, so the agent copies it to `<log>.1` and truncates it in
    /// place (logrotate's `copytruncate`; a line written between the two is lost).
    fn keep_log_small(&self, mut exit: watch::Receiver<Option<Failure>>) {
        let (log, max) = (self.log_file.clone(), self.config.log_max_bytes);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(LOG_CHECK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while exit.borrow().is_none() {
                tokio::select! {
                    _ = exit.changed() => {}
                    _ = every.tick() => {
                        let path = log.clone();
                        let cut = tokio::task::spawn_blocking(move || cut_log(&path, max)).await;
                        if let Ok(Err(e)) = cut {
                            tracing::warn!("cannot cut {}: {e}", log.display());
                        }
                    }
                }
            }
        });
    }

    /// What runs in its cgroup when no leader is known (an agent restarted after its process
    /// daemonized, or with its pid file lost): watched until the cgroup empties.
    fn find_in_cgroup(&self) -> Option<Instance> {
        let cgroup = self.populated_cgroup()?.clone();
        let pid = *cgroup.pids().first()?;
        let pidfd = pidfd_open(pid).ok().map(Arc::new);
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let _ = tx.send(Some(last_one_out(&cgroup).await));
        });
        self.keep_log_small(rx.clone());
        Some(Instance {
            pid,
            exit: rx,
            pidfd,
        })
    }

    /// What is known to run: the pid file's process, or else what is in the cgroup.
    fn find(&self) -> Option<Instance> {
        self.find_from_pid_file().or_else(|| self.find_in_cgroup())
    }

    /// Finds the process named in the pid file if it is still the same process.
    fn find_from_pid_file(&self) -> Option<Instance> {
        let text = std::fs::read_to_string(&self.pid_file).ok()?;
        let mut words = text.split_whitespace();
        let pid: i32 = words.next()?.parse().ok()?;
        let recorded: u64 = words.next()?.parse().ok()?;
        // Written by an agent of this boot; a file from before the boot id was recorded is
        // judged by the start time alone, as it was written to be.
        if words
            .next()
            .is_some_and(|boot| Some(boot) != boot_id().as_deref())
        {
            return None;
        }
        if pid <= 1 {
            return None;
        }
        // Opened before the process is checked: once the start time matches, the descriptor
        // names that process, whatever becomes of its pid.
        let fd = pidfd_open(pid).ok()?;
        if process_start_time(pid) != Some(recorded) {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        let pidfd = fd.try_clone().ok().map(Arc::new);
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged until it drops.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()?;
        tokio::spawn(async move {
            // A pidfd becomes readable when the process exits.
            let _ = fd.readable().await;
            let _ = tx.send(Some(Failure::new(
                FailureReason::Exited,
                format!("adopted process {pid} exited"),
            )));
        });
        self.keep_log_small(rx.clone());
        Some(Instance {
            pid,
            exit: rx,
            pidfd,
        })
    }

    async fn ready(&self) -> Result<(), Failure> {
        if let Some(check) = &self.check {
            check.ready().await
        } else if let Some(target) = &self.config.ready_tcp {
            crate::net::connect(target, &Progress::default())
                .await
                .map(drop)
                .map_err(|f| {
                    Failure::new(FailureReason::NotReady, format!("ready_tcp {}", f.detail))
                })
        } else if let Some(argv) = &self.config.ready_command {
            let status = crate::command::child_command(
                &argv.0,
                &Default::default(),
                &self.config.run_as(),
                None,
            )
            .map_err(|f| Failure::new(FailureReason::NotReady, f.detail))?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| {
                Failure::new(
                    FailureReason::NotReady,
                    format!("ready_command {}: {e}", argv.0[0]),
                )
            })?;
            if status.success() {
                Ok(())
            } else {
                Err(Failure::new(
                    FailureReason::NotReady,
                    format!("ready_command {}: {status}", argv.0[0]),
                ))
            }
        } else {
            Ok(())
        }
    }

    /// Signals the group, and everything in the cgroup, and waits until the leader and every
    /// process of the cgroup are gone.
    async fn signal_and_wait(&self, signal: nix::sys::signal::Signal) -> Result<(), Failure> {
        let found = {
            let mut guard = self.lock();
            if guard.as_ref().is_none_or(|i| i.exited().is_some()) {
                *guard = self.find();
            }
            guard
                .as_ref()
                .map(|i| (i.pid, i.exit.clone(), i.pidfd.clone()))
        };
        if let Some((pid, mut exit, pidfd)) = found {
            if exit.borrow().is_none() {
                // The leader through its pidfd: that very process, or nothing if it is gone.
                // While it lives its group id is its own, so the group's signal cannot reach
                // another group that took the number.
                let leader_alive = match &pidfd {
                    Some(fd) => pidfd_send_signal(fd, signal),
                    None => true,
                };
                if leader_alive {
                    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal) {
                        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                        Err(e) => {
                            return Err(Failure::new(
                                FailureReason::Io,
                                format!("kill -{signal} -{pid}: {e}"),
                            ))
                        }
                    }
                }
                self.signal_cgroup(signal);
                wait_exit(&mut exit).await;
            }
            // The leader is gone: nothing it left in its group survives. Where a cgroup holds
            // them it is the one to ask (below); a group id whose leader is gone may name
            // another group by now.
            if self.cgroup().is_none() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // What left the process group (postfix's master calls setsid) is still in the cgroup:
        // offline is done only when none is left.
        if let Some(cgroup) = self.populated_cgroup() {
            self.signal_cgroup(signal);
            cgroup.wait_empty().await;
        }
        if let Some(cgroup) = self.cgroup() {
            cgroup.remove();
        }
        let _ = std::fs::remove_file(&self.pid_file);
        *self.lock() = None;
        Ok(())
    }

    fn signal_cgroup(&self, signal: nix::sys::signal::Signal) {
        match self.cgroup() {
            Some(cgroup) if signal == nix::sys::signal::Signal::SIGKILL => cgroup.kill(),
            Some(cgroup) => cgroup.signal_all(signal),
            None => {}
        }
    }
}

impl Drop for ProcessResource {
    /// An empty cgroup goes with its resource (a reload that removes it, tests); one that still
    /// holds processes stays, found again by the next agent.
    fn drop(&mut self) {
        if let Some(Some(cgroup)) = self.cgroup.get() {
            cgroup.remove();
        }
    }
}

#[async_trait]
impl Resource for ProcessResource {
    async fn adopt(&self) -> Result<bool, Failure> {
        if let Some(unit) = &self.unit {
            if unit.check(false).await.is_ok() {
                return Ok(self.is_alive(&Progress::default()).await.is_ok());
            }
        }
        let Some(instance) = self.find() else {
            let _ = std::fs::remove_file(&self.pid_file);
            return Ok(false);
        };
        *self.lock() = Some(instance);
        Ok(self.is_alive(&Progress::default()).await.is_ok())
    }

    async fn online(&self, _progress: &Progress) -> Result<(), Failure> {
        if let Some(unit) = self.unit() {
            return self.online_unit(unit).await;
        }
        let known = self.lock().as_ref().is_some_and(|i| i.exited().is_none());
        if !known {
            // Left over from an instance that is no longer watched: never run two.
            if let Some(cgroup) = self.populated_cgroup() {
                cgroup.kill();
                cgroup.wait_empty().await;
            }
        }
        let (pid, mut exit) = {
            let mut guard = self.lock();
            if guard.as_ref().is_none_or(|i| i.exited().is_some()) {
                *guard = Some(self.spawn()?);
            }
            let i = guard.as_ref().expect("an instance was just stored");
            (i.pid, i.exit.clone())
        };
        let mut tick = tokio::time::interval(self.config.ready_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                failure = wait_exit(&mut exit) => {
                    return Err(Failure::new(failure.reason, format!("process {pid} {} before it was ready", failure.detail)));
                }
                _ = tick.tick() => {
                    if self.ready().await.is_ok() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn offline(&self) -> Result<(), Failure> {
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .await?;
        match &self.unit {
            Some(unit) => unit.stop().await,
            None => Ok(()),
        }
    }

    async fn terminate(&self) -> Result<(), Failure> {
        self.signal_and_wait(nix::sys::signal::Signal::SIGKILL)
            .await?;
        match &self.unit {
            Some(unit) => unit.kill().await,
            None => Ok(()),
        }
    }

    async fn looks_alive(&self, _progress: &Progress) -> Result<(), Failure> {
        if let Some(unit) = self.unit() {
            self.cut_unit_log().await;
            return unit.check(false).await;
        }
        self.running().map(|_| ())
    }

    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        let pid = match self.unit() {
            Some(unit) => unit.check_pid(true).await? as i32,
            None => self.running()?.0,
        };
        if pid > 0 {
            self.usage.check(pid, progress).await?;
        }
        match &self.check {
            // Its own reason (`banner_timeout`), under the runtime's check_timeout.
            Some(check) => check.is_alive(progress).await,
            None => self.ready().await,
        }
    }

    fn provides_failure_signal(&self) -> bool {
        true
    }

    async fn failure(&self) -> Failure {
        if let Some(unit) = self.unit() {
            return unit.failure().await;
        }
        let mut exit = match self.running() {
            Ok((_, exit)) => exit,
            Err(failure) => return failure,
        };
        wait_exit(&mut exit).await
    }
}

/// How often a running instance's log size is looked at.
const LOG_CHECK: Duration = Duration::from_secs(2);

/// Moves the log's content to `<log>.1` and empties it, when it is over `max` bytes.
fn cut_log(log: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(log) {
        Ok(meta) => meta.len(),
        // Removed by an administrator: nothing to cut.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let mut older = log.as_os_str().to_owned();
    older.push(".1");
    std::fs::copy(log, &older)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)?
        .set_len(0)?;
    Ok(true)
}

/// How often a daemonized instance's cgroup is looked at: rare, and cheap at this pace.
const DAEMON_POLL: Duration = Duration::from_millis(250);

/// Waits until the last process of a daemonized instance's cgroup has exited.
async fn last_one_out(cgroup: &Cgroup) -> Failure {
    while cgroup.populated() {
        tokio::time::sleep(DAEMON_POLL).await;
    }
    Failure::new(
        FailureReason::Exited,
        "the last process of its cgroup exited",
    )
}

/// Waits for the instance's exit and returns how it ended.
async fn wait_exit(exit: &mut watch::Receiver<Option<Failure>>) -> Failure {
    let seen = exit.wait_for(|e| e.is_some()).await.map(|e| e.clone());
    match seen {
        Ok(Some(failure)) => failure,
        _ => Failure::new(FailureReason::NotRunning, "exit watcher ended"),
    }
}

fn describe_exit(status: std::process::ExitStatus) -> Failure {
    match (status.code(), status.signal()) {
        (_, Some(sig)) => Failure::new(
            FailureReason::Killed,
            format!(
                "killed by {}",
                nix::sys::signal::Signal::try_from(sig)
                    .map_or_else(|_| sig.to_string(), |s| s.to_string())
            ),
        ),
        (Some(code), _) => {
            Failure::new(FailureReason::Exited, format!("exited with status {code}"))
        }
        _ => Failure::new(FailureReason::Exited, "exited"),
    }
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// `pid start_time boot_id`: the three together name one process for ever (a pid comes back
/// with another start time; start times start over at a reboot, with another boot id).
fn write_pid_file(path: &Path, pid: i32, start_time: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    let boot = boot_id().unwrap_or_default();
    std::fs::write(&tmp, format!("{pid} {start_time} {boot}\n"))?;
    std::fs::rename(tmp, path)
}

/// This boot's id.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Sends `signal` through a pidfd: `false` when the process is gone.
fn pidfd_send_signal(fd: &OwnedFd, signal: nix::sys::signal::Signal) -> bool {
    rustix::process::Signal::from_named_raw(signal as i32)
        .is_some_and(|sig| rustix::process::pidfd_send_signal(fd, sig).is_ok())
}

/// A pidfd for `pid` (non-blocking: it is polled for the exit).
fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::NONBLOCK,
    )?)
}

impl TypeConfig for ProcessConfig {
    const NAME: &'static str = "process";
    const FAILURE_SIGNAL: bool = true;

    fn warnings(&self) -> Vec<(&'static str, String)> {
        crate::secret::world_readable("env_files", &self.env_files)
    }

    fn limit_checks(&self) -> u32 {
        crate::usage::UsageLimits::checks(self.limits.as_ref())
    }

    fn validate(&self) -> Vec<(&'static str, String)> {
        self.validate()
            .into_iter()
            .map(|e| (e.key, e.message))
            .collect()
    }

    fn source_address(&self) -> Option<&crate::values::SourceAddress> {
        self.check.as_ref()?.0.source_address()
    }

    fn build(&self, cx: &BuildContext) -> std::sync::Arc<dyn crate::Resource> {
        std::sync::Arc::new(ProcessResource::new(self.clone(), cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn resource(dir: &Path, command: &[&str], extra: &str) -> ProcessResource {
        let list = command
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config: ProcessConfig =
            toml::from_str(&format!("command = [{list}]\n{extra}")).unwrap();
        assert!(config.validate().is_empty());
        ProcessResource::new(
            config,
            &BuildContext {
                state_dir: dir.to_path_buf(),
                group: "g".into(),
                resource: "p".into(),
                trust: Default::default(),
                check_timeout: Duration::from_secs(5),
                children: Children::Fork,
                addresses: Default::default(),
            },
        )
    }

    fn alive(pid: i32) -> bool {
        process_start_time(pid).is_some()
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
    }

    #[test]
    fn a_signal_through_a_pidfd_reaches_that_process_and_no_other() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        assert!(pidfd_send_signal(&fd, nix::sys::signal::Signal::SIGTERM));
        child.wait().unwrap();
        // Gone and reaped, its pid free for anyone: the pidfd still names it, so nothing is
        // signalled (a pid would name whoever takes the number next).
        assert!(!pidfd_send_signal(&fd, nix::sys::signal::Signal::SIGTERM));
    }

    #[tokio::test]
    async fn online_offline_and_the_exit_signal() {
        let dir = tempfile::tempdir().unwrap();
        let r = resource(dir.path(), &["sleep", "30"], "");
        assert_eq!(
            r.looks_alive(&Progress::default())
                .await
                .unwrap_err()
                .reason,
            FailureReason::NotRunning
        );
        r.online(&Progress::default()).await.unwrap();
        let pid = r.pid().unwrap();
        assert_eq!(
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
                .unwrap()
                .as_raw(),
            pid
        );
        r.looks_alive(&Progress::default()).await.unwrap();
        r.is_alive(&Progress::default()).await.unwrap();
        assert!(std::fs::read_to_string(dir.path().join("g/p.pid"))
            .unwrap()
            .starts_with(&pid.to_string()));

        let killed_at = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let failure = r.failure().await;
        assert_eq!(failure.reason, FailureReason::Killed, "{failure}");
        assert!(killed_at.elapsed() < Duration::from_secs(1));
        assert_eq!(
            r.looks_alive(&Progress::default())
                .await
                .unwrap_err()
                .reason,
            FailureReason::Killed
        );

        r.online(&Progress::default()).await.unwrap();
        let pid = r.pid().unwrap();
        r.offline().await.unwrap();
        assert!(!alive(pid));
        assert!(!dir.path().join("g/p.pid").exists());
        r.offline().await.unwrap(); // nothing left to stop: still fine
    }

    #[tokio::test]
    async fn readiness_waits_for_the_port_and_fails_when_the_process_dies() {
        let dir = tempfile::tempdir().unwrap();
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let r = resource(
            dir.path(),
            &["sh", "-c", "sleep 30"],
            &format!("ready_tcp = \"{addr}\""),
        );
        let online = tokio::spawn(async move {
            let result = r.online(&Progress::default()).await;
            (r, result)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !online.is_finished(),
            "online returned before the port accepted"
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (r, result) = online.await.unwrap();
        result.unwrap();
        r.is_alive(&Progress::default()).await.unwrap();
        drop(listener);
        assert_eq!(
            r.is_alive(&Progress::default()).await.unwrap_err().reason,
            FailureReason::NotReady
        );
        r.terminate().await.unwrap();

        let quitter = resource(
            dir.path(),
            &["sh", "-c", "exit 3"],
            "ready_command = [\"false\"]",
        );
        let err = quitter.online(&Progress::default()).await.unwrap_err();
        assert_eq!(err.reason, FailureReason::Exited, "{err}");
        assert!(err.detail.contains("status 3"), "{err}");
    }

    #[tokio::test]
    async fn terminate_kills_a_group_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("trap-set");
        let script = format!("trap '' TERM; touch {}; sleep 30 & wait", flag.display());
        let r = resource(
            dir.path(),
            &["sh", "-c", &script],
            &format!(
                "ready_command = [\"test\", \"-e\", {:?}]",
                flag.display().to_string()
            ),
        );
        r.online(&Progress::default()).await.unwrap();
        let pid = r.pid().unwrap();
        let offline = tokio::time::timeout(Duration::from_millis(500), r.offline()).await;
        assert!(
            offline.is_err(),
            "a process that ignores SIGTERM should not stop"
        );
        assert!(alive(pid));
        r.terminate().await.unwrap();
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn a_new_agent_adopts_a_running_process_and_sees_its_exit() {
        let dir = tempfile::tempdir().unwrap();
        let first = resource(dir.path(), &["sleep", "30"], "");
        first.online(&Progress::default()).await.unwrap();
        let pid = first.pid().unwrap();
        drop(first); // the agent went away; the process did not

        let second = resource(dir.path(), &["sleep", "30"], "");
        assert!(second.adopt().await.unwrap());
        assert_eq!(second.pid(), Some(pid));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let failure = tokio::time::timeout(Duration::from_secs(5), second.failure())
            .await
            .unwrap();
        assert_eq!(failure.reason, FailureReason::Exited, "{failure}");

        // A pid file whose start time does not match is someone else's pid: not adopted.
        std::fs::write(
            dir.path().join("g/p.pid"),
            format!("{} 1\n", std::process::id()),
        )
        .unwrap();
        let third = resource(dir.path(), &["sleep", "30"], "");
        assert!(!third.adopt().await.unwrap());

        // Pid and start time of a live process, but another boot's id: a process of that boot,
        // which a reboot ended. Not adopted; with this boot's id, adopted.
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live_pid = live.id() as i32;
        let start = process_start_time(live_pid).unwrap();
        let pid_file = dir.path().join("g/p.pid");
        std::fs::write(
            &pid_file,
            format!("{live_pid} {start} 00000000-0000-0000-0000-000000000000\n"),
        )
        .unwrap();
        let fourth = resource(dir.path(), &["sleep", "30"], "");
        assert!(!fourth.adopt().await.unwrap());
        std::fs::write(
            &pid_file,
            format!("{live_pid} {start} {}\n", boot_id().unwrap()),
        )
        .unwrap();
        let fifth = resource(dir.path(), &["sleep", "30"], "");
        assert!(fifth.adopt().await.unwrap());
        assert_eq!(fifth.pid(), Some(live_pid));
        live.kill().unwrap();
        live.wait().unwrap();
    }

    #[tokio::test]
    async fn a_chatty_process_log_is_cut_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let chatty = resource(
            dir.path(),
            &[
                "sh",
                "-c",
                "head -c 3000000 /dev/zero | tr '\\0' x; exec sleep 30",
            ],
            "log_max_bytes = 1000000",
        );
        chatty.online(&Progress::default()).await.unwrap();
        let (log, older) = (dir.path().join("g/p.log"), dir.path().join("g/p.log.1"));
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        // The writer is done once the shell has become `sleep`; a loaded machine may take
        // longer than a look at the log to write 3 MB, so the cut may come in the middle.
        let pid = chatty.pid().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n"
        {
            assert!(std::time::Instant::now() < deadline, "still writing");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then the next look cuts whatever is over the cap into the older file.
        let deadline = std::time::Instant::now() + LOG_CHECK * 3;
        while !(size(&log) <= 1_000_000 && size(&older) > 1_000_000) {
            assert!(
                std::time::Instant::now() < deadline,
                "log {} bytes, older {} bytes",
                size(&log),
                size(&older)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        chatty.terminate().await.unwrap();
    }

    #[test]
    fn config_errors_are_explained() {
        let err = toml::from_str::<ProcessConfig>("command = []").unwrap_err();
        assert!(
            err.to_string().contains("a command must name a program"),
            "{err}"
        );
        let both: ProcessConfig = toml::from_str(
            "command = [\"x\"]\nready_tcp = \"127.0.0.1:1\"\nready_command = [\"true\"]",
        )
        .unwrap();
        assert_eq!(both.validate()[0].key, "ready_command");
    }
}
