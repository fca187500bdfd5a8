//! `service`: a unit of the service manager (systemd), driven over D-Bus with zbus.
//!
//! - online: `StartUnit(unit, "replace")`, then waits for the start job to finish and the unit to
//!   be `active`; a unit that ends `failed` fails online with its `Result` (`exit-code`,
//!   `signal`, `timeout`...), one that ends inactive fails as not running.
//! - offline: `StopUnit` and waits for its job; a unit that is not loaded is already offline.
//! - terminate: `KillUnit(unit, "all", SIGKILL)`, then a stop job, so that systemd's own
//!   `Restart=` does not bring back what resmon terminated.
//! - looks_alive: `ActiveState` is `active`; is_alive: also a `SubState` that is not a transition
//!   and, for a running service, a `MainPID`.
//! - failure signal: the unit's `PropertiesChanged`: a unit that leaves `active` (stopped from
//!   the command line, crashed, killed) is reported the moment systemd says so. `resmon offline`
//!   is not a failure: the runtime stops listening before it stops the unit.
//! - adoption: a unit already active when the agent starts is adopted, not restarted.
//!
//! The bus is the system bus by default, or `bus = "session"` (the agent's
//! `DBUS_SESSION_BUS_ADDRESS`), or an explicit address (`"unix:path=/run/user/1000/bus"`).
//! One connection per resource, made on first use and made again after the bus goes away;
//! systemd sends unit signals only to subscribed clients, so every connection subscribes.

use crate::health::{Checker, HealthCheck};
use crate::resource::{BuildContext, TypeConfig};
use crate::resource::{Failure, Progress, Resource, Stage};
use async_trait::async_trait;
use futures::StreamExt;
use resmon_policies::FailureReason;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;
use zbus::Connection;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
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

/// Private properties of a `service` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The unit's full name, e.g. `"postfix.service"`.
    pub unit: String,
    /// The bus: `"system"` (default), `"session"`, or an address.
    #[serde(default)]
    pub bus: Bus,
    /// A protocol check (`check.imap = { address = "..." }`): online waits until it passes
    /// too, and it is part of is_alive, so that a unit whose process is hung is restarted.
    #[serde(default)]
    pub check: Option<HealthCheck>,
}

impl ServiceConfig {
    /// A unit name has a type suffix: systemd would otherwise guess one.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        const SUFFIXES: &[&str] = &[
            ".service", ".socket", ".target", ".mount", ".timer", ".path", ".scope", ".slice",
        ];
        let mut errors = self
            .check
            .as_ref()
            .map(HealthCheck::validate)
            .unwrap_or_default();
        if !SUFFIXES.iter().any(|s| self.unit.ends_with(s)) || self.unit.contains('/') {
            errors.push((
                "unit",
                format!(
                    "{:?} is not a unit name: write it in full, such as \"postfix.service\"",
                    self.unit
                ),
            ));
        }
        errors
    }
}

/// A systemd unit.
pub struct ServiceResource {
    config: ServiceConfig,
    connection: Mutex<Option<Connection>>,
    /// Its protocol check, if configured.
    check: Option<Checker>,
}

fn bus_failure(context: &str, err: zbus::Error) -> Failure {
    let reason = match &err {
        zbus::Error::MethodError(name, _, _) if name.as_str().ends_with("NoSuchUnit") => {
            FailureReason::NotRunning
        }
        zbus::Error::InputOutput(_) => FailureReason::Io,
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

impl ServiceResource {
    /// Builds it from its config; touches nothing (the bus is joined on first use).
    pub fn new(config: ServiceConfig, cx: &BuildContext) -> Self {
        ServiceResource {
            check: config.check.as_ref().map(|c| c.build(cx)),
            config,
            connection: Mutex::new(None),
        }
    }

    /// Its protocol check while coming online: tried every 100 ms, each under check_timeout,
    /// until it passes (the runtime bounds the whole online by pending_timeout).
    async fn wait_ready(&self) -> Result<(), Failure> {
        let Some(check) = &self.check else {
            return Ok(());
        };
        loop {
            match check.ready().await {
                Ok(()) => return Ok(()),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    fn unit(&self) -> &str {
        &self.config.unit
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
        let connecting = match &self.config.bus {
            Bus::System => Connection::system().await,
            Bus::Session => Connection::session().await,
            Bus::Address(a) => match zbus::connection::Builder::address(a.as_str()) {
                Ok(b) => b.build().await,
                Err(e) => Err(e),
            },
        };
        let connection = connecting
            .map_err(|e| bus_failure(&format!("connect to the {} bus", self.config.bus), e))?;
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
            .load_unit(self.unit())
            .await
            .map_err(|e| self.forget(bus_failure(&format!("load {}", self.unit()), e)))
    }

    /// The unit's state, read fresh (never from a cache).
    async fn state(&self, path: &OwnedObjectPath) -> Result<UnitState, Failure> {
        let connection = self.connection().await?;
        let read = async {
            let unit = UnitProxy::builder(&connection)
                .path(path.clone())?
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            let service = ServiceUnitProxy::builder(&connection)
                .path(path.clone())?
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            let load = unit.load_state().await?;
            let active = unit.active_state().await?;
            let sub = unit.sub_state().await?;
            let is_service = self.unit().ends_with(".service");
            let (main_pid, result) = if is_service {
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
                is_service,
            })
        };
        read.await
            .map_err(|e| self.forget(bus_failure(&format!("read {}", self.unit()), e)))
    }

    /// Runs a job (start or stop) and waits for systemd to remove it; returns its result.
    async fn run_job(&self, start: bool) -> Result<String, Failure> {
        let manager = self.manager().await?;
        // Listening before the job exists: a quick job cannot finish unseen.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| self.forget(bus_failure("listen for systemd's jobs", e)))?;
        let verb = if start { "start" } else { "stop" };
        let job = if start {
            manager.start_unit(self.unit(), "replace").await
        } else {
            manager.stop_unit(self.unit(), "replace").await
        }
        .map_err(|e| self.forget(bus_failure(&format!("{verb} {}", self.unit()), e)))?;
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
                self.unit()
            ),
        )))
    }

    async fn check(&self, thorough: bool) -> Result<(), Failure> {
        let manager = self.manager().await?;
        let path = self.unit_path(&manager).await?;
        let state = self.state(&path).await?;
        state.verdict(self.unit(), thorough)
    }
}

/// What systemd says about a unit.
#[derive(Debug)]
struct UnitState {
    load: String,
    active: String,
    sub: String,
    main_pid: u32,
    result: String,
    is_service: bool,
}

impl UnitState {
    fn verdict(&self, unit: &str, thorough: bool) -> Result<(), Failure> {
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
            if self.is_service && self.sub == "running" && self.main_pid == 0 {
                return Err(Failure::new(
                    FailureReason::NotRunning,
                    format!("{unit} is running without a main process"),
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Resource for ServiceResource {
    async fn online(&self, progress: &Progress) -> Result<(), Failure> {
        progress.stage(Stage::Exchange);
        let result = self.run_job(true).await?;
        let manager = self.manager().await?;
        let path = self.unit_path(&manager).await?;
        let state = self.state(&path).await?;
        if result != "done" && state.active != "active" {
            return Err(Failure::new(
                if state.active == "failed" {
                    FailureReason::UnitFailed
                } else {
                    FailureReason::NotRunning
                },
                format!(
                    "start job of {} ended {result}; the unit is {} (result {})",
                    self.unit(),
                    state.active,
                    state.result
                ),
            ));
        }
        state.verdict(self.unit(), false)?;
        self.wait_ready().await
    }

    async fn offline(&self) -> Result<(), Failure> {
        match self.run_job(false).await {
            Ok(_) => Ok(()),
            Err(f) if f.reason == FailureReason::NotRunning => Ok(()),
            Err(f) => Err(f),
        }
    }

    async fn terminate(&self) -> Result<(), Failure> {
        let manager = self.manager().await?;
        match manager.kill_unit(self.unit(), "all", libc::SIGKILL).await {
            Ok(()) => {}
            Err(e) => {
                let failure = bus_failure(&format!("kill {}", self.unit()), e);
                // Nothing running is nothing to kill.
                if failure.reason != FailureReason::NotRunning && !failure.detail.contains("not") {
                    return Err(self.forget(failure));
                }
            }
        }
        self.offline().await
    }

    async fn looks_alive(&self, _progress: &Progress) -> Result<(), Failure> {
        self.check(false).await
    }

    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.check(true).await?;
        match &self.check {
            Some(check) => check.is_alive(progress).await,
            None => Ok(()),
        }
    }

    fn provides_failure_signal(&self) -> bool {
        true
    }

    async fn failure(&self) -> Failure {
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
                let state = self.state(&path).await?;
                match state.active.as_str() {
                    "active" | "reloading" | "activating" => {}
                    "failed" => {
                        return Ok(Failure::new(
                            FailureReason::UnitFailed,
                            format!("{} failed (result {})", self.unit(), state.result),
                        ))
                    }
                    other => {
                        return Ok(Failure::new(
                            FailureReason::NotRunning,
                            format!(
                                "{} went {other} ({}) outside resmon",
                                self.unit(),
                                state.sub
                            ),
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

impl TypeConfig for ServiceConfig {
    const NAME: &'static str = "service";
    const FAILURE_SIGNAL: bool = true;

    fn validate(&self) -> Vec<(&'static str, String)> {
        ServiceConfig::validate(self)
    }

    fn terminate_waits(&self) -> bool {
        true
    }

    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(ServiceResource::new(self.clone(), cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::UserManager;
    use std::time::Duration;

    fn cx() -> BuildContext {
        BuildContext {
            state_dir: "/nonexistent".into(),
            group: "g".into(),
            resource: "s".into(),
            trust: Default::default(),
            check_timeout: Duration::from_secs(2),
        }
    }

    fn service(manager: &UserManager, unit: &str) -> ServiceResource {
        ServiceResource::new(
            ServiceConfig {
                unit: unit.into(),
                bus: manager.bus.parse().unwrap(),
                check: None,
            },
            &cx(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_units_protocol_check_is_its_readiness_and_part_of_is_alive() {
        let manager =
            UserManager::start(&[("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n")]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config: ServiceConfig = toml::from_str(&format!(
            "unit = \"sleeper.service\"\nbus = {:?}\ncheck.tcp = {{ address = \"127.0.0.1:{port}\" }}\n",
            manager.bus
        ))
        .unwrap();
        assert!(config.validate().is_empty());
        let unit = ServiceResource::new(config, &cx());
        let progress = Progress::default();
        unit.online(&progress).await.unwrap();
        unit.is_alive(&progress).await.unwrap();
        // The server goes; the unit's process still runs: is_alive fails with the check's
        // reason, looks_alive (the unit's state) still passes.
        drop(listener);
        let failure = unit.is_alive(&progress).await.unwrap_err();
        assert_eq!(failure.reason, FailureReason::Refused, "{failure:?}");
        unit.looks_alive(&progress).await.unwrap();
        unit.terminate().await.unwrap();
    }

    #[test]
    fn names_and_buses_parse_or_explain() {
        assert_eq!("system".parse::<Bus>().unwrap(), Bus::System);
        assert!("sytem".parse::<Bus>().unwrap_err().contains("invalid bus"));
        let c = ServiceConfig {
            unit: "postfix".into(),
            bus: Bus::System,
            check: None,
        };
        assert!(c.validate()[0].1.contains("postfix.service"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_check_stop_terminate_against_a_real_systemd() {
        let manager = UserManager::start(&[
            ("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n"),
            ("broken.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n"),
            (
                "stubborn.service",
                "[Service]\nExecStart=/bin/sh -c 'trap \"\" TERM; while :; do sleep 1; done'\nTimeoutStopSec=60\n",
            ),
        ]);
        let p = Progress::default();
        let sleeper = service(&manager, "sleeper.service");
        let failure = sleeper.looks_alive(&p).await.unwrap_err();
        assert_eq!(failure.reason, FailureReason::NotRunning, "{failure}");
        assert!(!sleeper.adopt().await.unwrap(), "nothing to adopt yet");
        sleeper.online(&p).await.unwrap();
        sleeper.is_alive(&p).await.unwrap();
        assert!(
            service(&manager, "sleeper.service").adopt().await.unwrap(),
            "a second agent adopts the running unit"
        );
        sleeper.offline().await.unwrap();
        assert_eq!(
            sleeper.is_alive(&p).await.unwrap_err().reason,
            FailureReason::NotRunning
        );

        let broken = service(&manager, "broken.service");
        let failure = broken.online(&p).await.unwrap_err();
        assert_eq!(failure.reason, FailureReason::UnitFailed, "{failure}");
        assert!(failure.detail.contains("exit-code"), "{failure}");

        let missing = service(&manager, "nothere.service");
        assert_eq!(
            missing.online(&p).await.unwrap_err().reason,
            FailureReason::NotRunning
        );

        let stubborn = service(&manager, "stubborn.service");
        stubborn.online(&p).await.unwrap();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), stubborn.terminate())
            .await
            .expect("terminate does not wait for a TERM-ignoring service")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(stubborn.looks_alive(&p).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unit_stopped_or_killed_outside_is_signalled_at_once() {
        let manager =
            UserManager::start(&[("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n")]);
        let p = Progress::default();
        let sleeper = std::sync::Arc::new(service(&manager, "sleeper.service"));
        sleeper.online(&p).await.unwrap();
        let waiting = tokio::spawn({
            let s = sleeper.clone();
            async move { s.failure().await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "no failure while the unit runs");
        manager.systemctl(&["stop", "sleeper.service"]);
        let failure = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("signalled without a poll")
            .unwrap();
        assert_eq!(failure.reason, FailureReason::NotRunning, "{failure}");
        assert!(failure.detail.contains("outside resmon"), "{failure}");

        sleeper.online(&p).await.unwrap();
        let waiting = tokio::spawn({
            let s = sleeper.clone();
            async move { s.failure().await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        manager.systemctl(&["kill", "--signal=KILL", "sleeper.service"]);
        let failure = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("signalled without a poll")
            .unwrap();
        assert_eq!(failure.reason, FailureReason::UnitFailed, "{failure}");
        assert!(failure.detail.contains("signal"), "{failure}");
    }
}
