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
//! The D-Bus side is [`crate::systemd`]'s, shared with the transient units of `process`.

use crate::health::{Checker, HealthCheck};
use crate::resource::{BuildContext, TypeConfig};
use crate::resource::{Failure, Progress, Resource, Stage};
use crate::systemd::UnitDriver;
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;

pub use crate::systemd::Bus;

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
    /// Limits on what its process tree uses (`memory`, `cpu`, `threads`, `fds`, `for_checks`).
    #[serde(default)]
    pub limits: Option<crate::usage::UsageLimits>,
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
        errors.extend(self.limits.iter().flat_map(|l| l.validate()));
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
    unit: UnitDriver,
    /// Its protocol check, if configured.
    check: Option<Checker>,
    /// What its process tree uses, read at each is_alive, and its limits.
    usage: crate::usage::UsageWatch,
}

impl ServiceResource {
    /// Builds it from its config; touches nothing (the bus is joined on first use).
    pub fn new(config: ServiceConfig, cx: &BuildContext) -> Self {
        ServiceResource {
            check: config.check.as_ref().map(|c| c.build(cx)),
            usage: crate::usage::UsageWatch::new(config.limits.clone()),
            unit: UnitDriver::new(config.unit, config.bus),
        }
    }
}

/// A protocol check while coming online: tried every 100 ms, each under check_timeout, until
/// it passes (the runtime bounds the whole online by pending_timeout).
pub(crate) async fn wait_ready(check: Option<&Checker>) -> Result<(), Failure> {
    let Some(check) = check else {
        return Ok(());
    };
    loop {
        match check.ready().await {
            Ok(()) => return Ok(()),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

#[async_trait]
impl Resource for ServiceResource {
    async fn online(&self, progress: &Progress) -> Result<(), Failure> {
        progress.stage(Stage::Exchange);
        self.unit.start(None).await?;
        wait_ready(self.check.as_ref()).await
    }

    async fn offline(&self) -> Result<(), Failure> {
        self.unit.stop().await
    }

    async fn terminate(&self) -> Result<(), Failure> {
        self.unit.kill().await
    }

    async fn looks_alive(&self, _progress: &Progress) -> Result<(), Failure> {
        self.unit.check(false).await
    }

    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        let pid = self.unit.check_pid(true).await?;
        if pid > 0 {
            self.usage.check(pid as i32, progress).await?;
        }
        match &self.check {
            Some(check) => check.is_alive(progress).await,
            None => Ok(()),
        }
    }

    fn provides_failure_signal(&self) -> bool {
        true
    }

    async fn failure(&self) -> Failure {
        self.unit.failure().await
    }
}

impl TypeConfig for ServiceConfig {
    const NAME: &'static str = "service";
    const FAILURE_SIGNAL: bool = true;

    fn limit_checks(&self) -> u32 {
        crate::usage::UsageLimits::checks(self.limits.as_ref())
    }

    fn validate(&self) -> Vec<(&'static str, String)> {
        ServiceConfig::validate(self)
    }

    fn terminate_waits(&self) -> bool {
        true
    }

    fn source_address(&self) -> Option<&crate::values::SourceAddress> {
        self.check.as_ref()?.0.source_address()
    }

    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(ServiceResource::new(self.clone(), cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::UserManager;
    use resmon_policies::FailureReason;
    use std::time::Duration;

    fn cx() -> BuildContext {
        BuildContext {
            state_dir: "/nonexistent".into(),
            group: "g".into(),
            resource: "s".into(),
            trust: Default::default(),
            check_timeout: Duration::from_secs(2),
            children: Default::default(),
            addresses: Default::default(),
        }
    }

    fn service(manager: &UserManager, unit: &str) -> ServiceResource {
        ServiceResource::new(
            ServiceConfig {
                unit: unit.into(),
                bus: manager.bus.parse().unwrap(),
                check: None,
                limits: None,
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_units_process_tree_is_measured_and_held_to_its_limits() {
        let manager =
            UserManager::start(&[("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n")]);
        let config: ServiceConfig = toml::from_str(&format!(
            "unit = \"sleeper.service\"\nbus = {:?}\nlimits = {{ max_memory = \"1kB\", for_checks = 2 }}\n",
            manager.bus
        ))
        .unwrap();
        assert!(config.validate().is_empty());
        assert_eq!(config.limit_checks(), 2, "the controller's count");
        let unit = ServiceResource::new(config, &cx());
        let progress = Progress::default();
        unit.online(&progress).await.unwrap();
        let failure = unit.is_alive(&progress).await.unwrap_err();
        let (usage, _) = progress.tree_usage().expect("usage read at is_alive");
        assert!(usage.memory_bytes > 1000 && usage.threads >= 1, "{usage:?}");
        assert_eq!(failure.reason, FailureReason::ResourceLimit, "{failure:?}");
        assert!(failure.detail.starts_with("memory "), "{}", failure.detail);
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
            limits: None,
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
