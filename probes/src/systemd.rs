//! Talking to systemd over D-Bus (zbus): one [`UnitDriver`] per unit, shared by the `service`
//! type (a unit the administrator wrote) and by children that run outside the agent's sandbox
//! (a transient unit the agent creates for a `process`, see [`TransientCommand`], and the
//! one-shot commands of [`crate::launch`]).
//!
//! - start: `StartTransientUnit` (transient) or `StartUnit`, then the job's end; stop:
//!   `StopUnit` and its job; kill: `KillUnit(unit, "all", SIGKILL)` and a stop job, so that a
//!   unit's own `Restart=` does not bring back what resmon terminated.
//! - state: `ActiveState`, `SubState`, `MainPID`, `Result`, read fresh, never from a cache.
//! - failure signal: the unit's `PropertiesChanged`: a unit that leaves `active` is reported the
//!   moment systemd says so.
//!
//! One connection per driver, made on first use and made again after the bus goes away;
//! systemd sends unit signals only to subscribed clients, so every connection subscribes.

use crate::resource::Failure;
use futures::StreamExt;
use resmon_policies::FailureReason;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    fn unref(&self) -> zbus::Result<()>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait ServiceUnit {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
}

/// Which D-Bus the service manager is on.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Bus {
    /// The system bus: the system's systemd.
    #[default]
    System,
    /// The session bus of the agent's environment: a user's systemd.
    Session,
    /// A bus address, such as `unix:path=/run/user/1000/bus`.
    Address(String),
}

impl std::str::FromStr for Bus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "system" => Ok(Bus::System),
            "session" => Ok(Bus::Session),
            a if a.contains(':') && a.contains('=') => Ok(Bus::Address(a.to_string())),
            _ => Err(format!(
                "invalid bus {s:?}: \"system\", \"session\" or a D-Bus address such as \"unix:path=/run/user/1000/bus\""
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Bus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bus::System => f.write_str("system"),
            Bus::Session => f.write_str("session"),
            Bus::Address(a) => f.write_str(a),
        }
    }
}

impl Bus {
    async fn connect(&self) -> zbus::Result<Connection> {
        match self {
            Bus::System => Connection::system().await,
            Bus::Session => Connection::session().await,
            Bus::Address(a) => {
                zbus::connection::Builder::address(a.as_str())?
                    .build()
                    .await
            }
        }
    }
}

/// A D-Bus error as a failure: a unit systemd does not know is not running; anything else is
/// the bus's trouble.
pub fn bus_failure(context: &str, err: zbus::Error) -> Failure {
    let reason = match &err {
        zbus::Error::MethodError(name, _, _) if name.as_str().ends_with("NoSuchUnit") => {
            FailureReason::NotRunning
        }
        _ => FailureReason::Io,
    };
    Failure::new(reason, format!("{context}: {err}"))
}

/// States the unit passes through on its way somewhere: not a verdict yet.
fn in_transition(sub_state: &str) -> bool {
    matches!(
        sub_state,
        "start-pre" | "start" | "start-post" | "auto-restart" | "reload" | "condition"
    )
}

/// A command run as a transient service unit: what `StartTransientUnit` is given.
#[derive(Debug)]
pub struct TransientCommand {
    /// The command; the first word is resolved against the child's `PATH` here, since systemd
    /// wants an absolute path.
    pub argv: Vec<String>,
    /// The child's whole environment (the agent's own never reaches it).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// `User=`, `Group=`, `SupplementaryGroups=`.
    pub user: Option<String>,
    /// See `user`.
    pub group: Option<String>,
    /// See `user`.
    pub supplementary_groups: Vec<String>,
    /// Where its output goes.
    pub output: Output,
    /// A service that stays up, or a command that runs to its end.
    pub kind: Kind,
}

/// Where a transient unit's stdout and stderr go.
#[derive(Debug)]
pub enum Output {
    /// Appended to this file.
    Append(PathBuf),
    /// Written to this descriptor (the write end of the agent's pipe).
    Fd(std::os::fd::OwnedFd),
}

/// How systemd sees the transient unit's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A long-running service (`Type=exec`): up once its command is exec'd, and up for as long
    /// as any of its processes is (`ExitType=cgroup`), so that one that daemonizes is kept.
    Service,
    /// A command that runs to its end (`Type=oneshot`): the start job ends when it exits. With
    /// `keep`, what it leaves running stays in the unit (`RemainAfterExit=yes`) until the unit
    /// is stopped: the daemon an `exec` or OCF `start` launches.
    Command {
        /// `RemainAfterExit=`.
        keep: bool,
    },
}

impl TransientCommand {
    fn properties(&self) -> Result<Vec<(&'static str, Value<'_>)>, Failure> {
        let program = crate::command::resolve_program(&self.argv[0])?;
        // `no-env-expand`: systemd would otherwise expand `$NAME` in the words; the command
        // runs exactly as written, as a forked one does.
        let exec: Vec<(String, Vec<String>, Vec<String>)> = vec![(
            program,
            self.argv.clone(),
            vec!["no-env-expand".to_string()],
        )];
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut p: Vec<(&'static str, Value<'_>)> = vec![
            (
                "Description",
                Value::from(format!("resmon: {}", self.argv.join(" "))),
            ),
            ("ExecStartEx", Value::from(exec)),
            ("Environment", Value::from(env)),
            // The agent decides when to give up on a stop and terminates then.
            ("TimeoutStopUSec", Value::from(u64::MAX)),
            ("KillMode", Value::from("control-group")),
            ("SendSIGKILL", Value::from(true)),
            ("StandardInput", Value::from("null")),
        ];
        match self.kind {
            // A failed service stays loaded, so that its result can be read; the next start
            // resets it.
            Kind::Service => {
                p.push(("Type", Value::from("exec")));
                p.push(("ExitType", Value::from("cgroup")));
            }
            Kind::Command { keep } => {
                p.push(("Type", Value::from("oneshot")));
                p.push(("RemainAfterExit", Value::from(keep)));
                // Kept loaded while the agent reads how the command ended, then collected
                // even when it failed: the next run must not find its name taken.
                p.push(("AddRef", Value::from(true)));
                p.push(("CollectMode", Value::from("inactive-or-failed")));
            }
        }
        match &self.output {
            Output::Append(path) => {
                let path = path.display().to_string();
                p.push(("StandardOutputFileToAppend", Value::from(path.clone())));
                p.push(("StandardErrorFileToAppend", Value::from(path)));
            }
            Output::Fd(fd) => {
                use std::os::fd::AsFd;
                p.push((
                    "StandardOutputFileDescriptor",
                    Value::from(zbus::zvariant::Fd::from(fd.as_fd())),
                ));
                p.push((
                    "StandardErrorFileDescriptor",
                    Value::from(zbus::zvariant::Fd::from(fd.as_fd())),
                ));
            }
        }
        if let Some(cwd) = &self.cwd {
            p.push(("WorkingDirectory", Value::from(cwd.display().to_string())));
        }
        if let Some(user) = &self.user {
            p.push(("User", Value::from(user.clone())));
        }
        if let Some(group) = &self.group {
            p.push(("Group", Value::from(group.clone())));
        }
        if !self.supplementary_groups.is_empty() {
            p.push((
                "SupplementaryGroups",
                Value::from(self.supplementary_groups.clone()),
            ));
        }
        Ok(p)
    }
}

/// What systemd says about a unit.
#[derive(Debug)]
pub struct UnitState {
    /// `LoadState`: `not-found` for a unit systemd does not know.
    pub load: String,
    /// `ActiveState`.
    pub active: String,
    /// `SubState`.
    pub sub: String,
    /// `MainPID` (services only).
    pub main_pid: u32,
    /// `Result` (services only): `success`, `exit-code`, `signal`...
    pub result: String,
    /// A running service must have a main process: not so for a transient one that
    /// daemonized (its first process exited, the others are the service).
    main_required: bool,
}

impl UnitState {
    /// Whether it is up; `thorough` also refuses a transition and a running service without a
    /// main process.
    pub fn verdict(&self, unit: &str, thorough: bool) -> Result<(), Failure> {
        if self.load == "not-found" {
            return Err(Failure::new(
                FailureReason::NotRunning,
                format!("{unit}: no such unit"),
            ));
        }
        match self.active.as_str() {
            "active" | "reloading" => {}
            "failed" => {
                return Err(Failure::new(
                    FailureReason::UnitFailed,
                    format!("{unit} failed (result {})", self.result),
                ))
            }
            other => {
                return Err(Failure::new(
                    FailureReason::NotRunning,
                    format!("{unit} is {other} ({})", self.sub),
                ))
            }
        }
        if thorough {
            if in_transition(&self.sub) {
                return Err(Failure::new(
                    FailureReason::NotRunning,
                    format!("{unit} is active but {}", self.sub),
                ));
            }
            if self.main_required && self.sub == "running" && self.main_pid == 0 {
                return Err(Failure::new(
                    FailureReason::NotRunning,
                    format!("{unit} is running without a main process"),
                ));
            }
        }
        Ok(())
    }
}

/// One unit, driven over one connection.
pub struct UnitDriver {
    unit: String,
    bus: Bus,
    connection: Mutex<Option<Connection>>,
    /// See [`UnitState::main_required`].
    main_required: bool,
}

impl UnitDriver {
    /// A driver for `unit` on `bus`; touches nothing (the bus is joined on first use).
    pub fn new(unit: String, bus: Bus) -> Self {
        UnitDriver {
            unit,
            bus,
            connection: Mutex::new(None),
            main_required: true,
        }
    }

    /// A driver for a transient unit the agent creates (see [`Kind::Service`]).
    pub fn transient(unit: String, bus: Bus) -> Self {
        UnitDriver {
            main_required: false,
            ..UnitDriver::new(unit, bus)
        }
    }

    /// The unit's name.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    async fn connection(&self) -> Result<Connection, Failure> {
        if let Some(c) = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(c);
        }
        let connection = self
            .bus
            .connect()
            .await
            .map_err(|e| bus_failure(&format!("connect to the {} bus", self.bus), e))?;
        ManagerProxy::new(&connection)
            .await
            .map_err(|e| bus_failure("reach systemd", e))?
            .subscribe()
            .await
            .map_err(|e| bus_failure("subscribe to systemd's signals", e))?;
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets a connection that failed, so that the next call makes a new one.
    fn forget(&self, failure: Failure) -> Failure {
        if failure.reason == FailureReason::Io {
            *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        failure
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, Failure> {
        let connection = self.connection().await?;
        ManagerProxy::new(&connection)
            .await
            .map_err(|e| self.forget(bus_failure("reach systemd", e)))
    }

    async fn unit_path(&self, manager: &ManagerProxy<'_>) -> Result<OwnedObjectPath, Failure> {
        manager
            .load_unit(&self.unit)
            .await
            .map_err(|e| self.forget(bus_failure(&format!("load {}", self.unit), e)))
    }

    /// The unit's state, read fresh.
    pub async fn state(&self) -> Result<UnitState, Failure> {
        let manager = self.manager().await?;
        let path = self.unit_path(&manager).await?;
        self.state_at(&path).await
    }

    async fn state_at(&self, path: &OwnedObjectPath) -> Result<UnitState, Failure> {
        let connection = self.connection().await?;
        let read = async {
            let unit = UnitProxy::builder(&connection)
                .path(path.clone())?
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            let load = unit.load_state().await?;
            let active = unit.active_state().await?;
            let sub = unit.sub_state().await?;
            let is_service = self.unit.ends_with(".service") && load != "not-found";
            let (main_pid, result) = if is_service {
                let service = self.service_proxy(&connection, path).await?;
                (service.main_pid().await?, service.result().await?)
            } else {
                (0, String::new())
            };
            Ok::<_, zbus::Error>(UnitState {
                load,
                active,
                sub,
                main_pid,
                result,
                main_required: is_service && self.main_required,
            })
        };
        read.await
            .map_err(|e| self.forget(bus_failure(&format!("read {}", self.unit), e)))
    }

    async fn service_proxy(
        &self,
        connection: &Connection,
        path: &OwnedObjectPath,
    ) -> zbus::Result<ServiceUnitProxy<'static>> {
        ServiceUnitProxy::builder(connection)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await
    }

    /// Starts a job and waits for systemd to remove it; returns its result (`done`,
    /// `failed`...).
    async fn run_job(
        &self,
        verb: &str,
        transient: Option<&TransientCommand>,
    ) -> Result<String, Failure> {
        let manager = self.manager().await?;
        // Listening before the job exists: a quick job cannot finish unseen.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| self.forget(bus_failure("listen for systemd's jobs", e)))?;
        let job = match (verb, transient) {
            ("start", Some(command)) => {
                let properties = command.properties()?;
                manager
                    .start_transient_unit(&self.unit, "fail", &properties, &[])
                    .await
            }
            ("start", None) => manager.start_unit(&self.unit, "replace").await,
            _ => manager.stop_unit(&self.unit, "replace").await,
        }
        .map_err(|e| self.forget(bus_failure(&format!("{verb} {}", self.unit), e)))?;
        while let Some(signal) = removed.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.job == job {
                return Ok(args.result);
            }
        }
        Err(self.forget(Failure::new(
            FailureReason::Io,
            format!(
                "the bus closed while waiting for the {verb} job of {}",
                self.unit
            ),
        )))
    }

    /// Starts the unit (creating it first when `transient` is given) and returns once systemd
    /// says it is up. A transient unit already up is left as it is: it is the one the agent
    /// started before (an agent restart, or a start after a lost answer).
    pub async fn start(&self, transient: Option<&TransientCommand>) -> Result<(), Failure> {
        if transient.is_some() {
            let state = self.state().await?;
            if state.active == "active" {
                return Ok(());
            }
            if state.active == "failed" {
                let manager = self.manager().await?;
                let _ = manager.reset_failed_unit(&self.unit).await;
            }
        }
        let result = self.run_job("start", transient).await?;
        let state = self.state().await?;
        if result != "done" && state.active != "active" {
            return Err(Failure::new(
                if state.active == "failed" {
                    FailureReason::UnitFailed
                } else {
                    FailureReason::NotRunning
                },
                format!(
                    "start job of {} ended {result}; the unit is {} (result {})",
                    self.unit, state.active, state.result
                ),
            ));
        }
        state.verdict(&self.unit, false)
    }

    /// Runs a transient one-shot command unit to its end: its exit code (`None` when a signal
    /// ended it). The unit stays (with what the command left running) when `keep` was asked.
    pub async fn run_command(&self, command: &TransientCommand) -> Result<Option<i32>, Failure> {
        let state = self.state().await?;
        if state.load != "not-found" && state.active != "inactive" {
            // What the previous run left: a new run starts clean.
            self.kill().await?;
        }
        if state.active == "failed" {
            let manager = self.manager().await?;
            let _ = manager.reset_failed_unit(&self.unit).await;
        }
        self.run_job("start", Some(command)).await?;
        let connection = self.connection().await?;
        let manager = self.manager().await?;
        let path = self.unit_path(&manager).await?;
        let read = async {
            let service = self.service_proxy(&connection, &path).await?;
            let code = service.exec_main_code().await?;
            let status = service.exec_main_status().await?;
            Ok::<_, zbus::Error>((code, status))
        };
        let ended = read
            .await
            .map_err(|e| self.forget(bus_failure(&format!("read {}", self.unit), e)));
        // The reference AddRef took: once dropped, a failed or finished unit is collected.
        if let Ok(unit) = UnitProxy::builder(&connection)
            .path(path.clone())
            .map(|b| b.cache_properties(CacheProperties::No))
        {
            if let Ok(unit) = unit.build().await {
                let _ = unit.unref().await;
            }
        }
        let (code, status) = ended?;
        // si_code: CLD_EXITED (1) carries an exit status; the others a signal.
        Ok((code == 1).then_some(status))
    }

    /// Stops the unit and waits for the stop job; a unit systemd does not know is stopped.
    pub async fn stop(&self) -> Result<(), Failure> {
        match self.run_job("stop", None).await {
            Ok(_) => Ok(()),
            Err(f) if f.reason == FailureReason::NotRunning => Ok(()),
            Err(f) => Err(f),
        }
    }

    /// Kills every process of the unit, then stops it.
    pub async fn kill(&self) -> Result<(), Failure> {
        let manager = self.manager().await?;
        if let Err(e) = manager.kill_unit(&self.unit, "all", libc::SIGKILL).await {
            let failure = bus_failure(&format!("kill {}", self.unit), e);
            // Nothing running is nothing to kill.
            if failure.reason != FailureReason::NotRunning && !failure.detail.contains("not") {
                return Err(self.forget(failure));
            }
        }
        self.stop().await
    }

    /// Whether the unit is up (`thorough`: see [`UnitState::verdict`]).
    pub async fn check(&self, thorough: bool) -> Result<(), Failure> {
        self.state().await?.verdict(&self.unit, thorough)
    }

    /// [`UnitDriver::check`], and its `MainPID` (0: none, as for a unit that daemonized).
    pub async fn check_pid(&self, thorough: bool) -> Result<u32, Failure> {
        let state = self.state().await?;
        state.verdict(&self.unit, thorough)?;
        Ok(state.main_pid)
    }

    /// Resolves when the unit leaves `active` (or the bus goes away), with why.
    pub async fn failure(&self) -> Failure {
        let watch = async {
            let manager = self.manager().await?;
            let path = self.unit_path(&manager).await?;
            let connection = self.connection().await?;
            let properties = zbus::fdo::PropertiesProxy::builder(&connection)
                .destination("org.freedesktop.systemd1")
                .and_then(|b| b.path(path.clone()))
                .map_err(|e| bus_failure("watch the unit", e))?
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(|e| self.forget(bus_failure("watch the unit", e)))?;
            let mut changes = properties
                .receive_properties_changed()
                .await
                .map_err(|e| self.forget(bus_failure("watch the unit", e)))?;
            // Subscribed first, then looked: a change in between is not missed.
            loop {
                let state = self.state_at(&path).await?;
                match state.active.as_str() {
                    "active" | "reloading" | "activating" => {}
                    "failed" => {
                        return Ok(Failure::new(
                            FailureReason::UnitFailed,
                            format!("{} failed (result {})", self.unit, state.result),
                        ))
                    }
                    other => {
                        return Ok(Failure::new(
                            FailureReason::NotRunning,
                            format!("{} went {other} ({}) outside resmon", self.unit, state.sub),
                        ))
                    }
                }
                if changes.next().await.is_none() {
                    return Err(self.forget(Failure::new(
                        FailureReason::Io,
                        "the bus closed while watching the unit",
                    )));
                }
            }
        };
        match watch.await {
            Ok(f) | Err(f) => f,
        }
    }
}
