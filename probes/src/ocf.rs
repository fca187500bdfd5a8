//! `ocf`: an existing OCF resource agent (Debian's `resource-agents`: `heartbeat/Dummy`,
//! `heartbeat/IPaddr2`, `heartbeat/Filesystem`...) run with its `OCF_RESKEY_*` parameters, so
//! the hundreds of agents that already exist work here unchanged.
//!
//! - online = `start`, offline = `stop` (terminate runs `stop` again: OCF has nothing stronger);
//! - `looks_alive` = `monitor` with `OCF_CHECK_LEVEL=0`, `is_alive` = `monitor` with
//!   `OCF_CHECK_LEVEL=<is_alive_depth>` (default 10);
//! - exit codes: 0 `OCF_SUCCESS` (running), 7 `OCF_NOT_RUNNING`; the others fail with their OCF
//!   name in the detail (1 generic error, 2 invalid argument, 3 unimplemented, 4 insufficient
//!   privileges, 5 not installed, 6 not configured, 8/9 promoted states).

use crate::command::RunAs;
use crate::launch::{Launcher, Role};
use crate::resource::{BuildContext, TypeConfig};
use crate::resource::{Failure, Progress, Resource};
use crate::secret::Secrets;
use crate::values::AccountName;
use async_trait::async_trait;
use resmon_policies::FailureReason;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

fn default_ocf_root() -> PathBuf {
    PathBuf::from("/usr/lib/ocf")
}

fn default_depth() -> u32 {
    10
}

/// Private properties of an `ocf` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcfConfig {
    /// `provider/agent`, e.g. `heartbeat/Dummy`.
    pub agent: String,
    /// The agent's parameters, passed as `OCF_RESKEY_<name>`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Parameters whose values are secrets, read from files at each action:
    /// `params_files = { password = "/etc/resmon/db-password" }`.
    #[serde(default)]
    pub params_files: BTreeMap<String, PathBuf>,
    /// Where the agents live (`<ocf_root>/resource.d/<provider>/<agent>`).
    #[serde(default = "default_ocf_root")]
    pub ocf_root: PathBuf,
    /// `OCF_CHECK_LEVEL` of the `monitor` that is_alive runs.
    #[serde(default = "default_depth")]
    pub is_alive_depth: u32,
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

impl OcfConfig {
    /// Who its commands run as.
    pub fn run_as(&self) -> RunAs {
        RunAs {
            user: self.user.clone(),
            group: self.group.clone(),
            supplementary_groups: self.supplementary_groups.clone(),
        }
    }
}

impl OcfConfig {
    /// The agent's path, or why it is not usable.
    fn script(&self) -> Result<PathBuf, String> {
        let (provider, agent) = self
            .agent
            .split_once('/')
            .filter(|(p, a)| !p.is_empty() && !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| {
                format!(
                    "agent {:?}: write it as provider/agent, e.g. \"heartbeat/Dummy\"",
                    self.agent
                )
            })?;
        Ok(self.ocf_root.join("resource.d").join(provider).join(agent))
    }

    /// Checks visible before running: the agent exists and is executable.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = match self.script() {
            Err(e) => vec![("agent", e)],
            Ok(path) => match std::fs::metadata(&path) {
                Ok(_) => Vec::new(),
                Err(e) => vec![(
                    "agent",
                    format!(
                        "{}: {e} (is the agent installed? Debian: resource-agents)",
                        path.display()
                    ),
                )],
            },
        };
        errors.extend(self.run_as().check());
        errors.extend(crate::secret::check_files(
            "params_files",
            &self.params_files,
        ));
        errors
    }
}

/// A resource kept by an OCF resource agent.
pub struct OcfResource {
    config: OcfConfig,
    name: String,
    /// Runs `start` and `stop` outside the agent's sandbox where systemd can.
    launcher: Launcher,
}

/// The OCF name of an exit code.
pub fn ocf_meaning(code: i32) -> &'static str {
    match code {
        0 => "OCF_SUCCESS",
        1 => "OCF_ERR_GENERIC",
        2 => "OCF_ERR_ARGS",
        3 => "OCF_ERR_UNIMPLEMENTED",
        4 => "OCF_ERR_PERM",
        5 => "OCF_ERR_INSTALLED",
        6 => "OCF_ERR_CONFIGURED",
        7 => "OCF_NOT_RUNNING",
        8 => "OCF_RUNNING_MASTER",
        9 => "OCF_FAILED_MASTER",
        _ => "unknown OCF exit code",
    }
}

impl OcfResource {
    /// Builds it; `name` becomes `OCF_RESOURCE_INSTANCE`.
    pub fn new(config: OcfConfig, name: &str, launcher: Launcher) -> Self {
        OcfResource {
            config,
            name: name.to_string(),
            launcher,
        }
    }

    /// Runs `action`; returns the exit code, or a failure when the agent could not run.
    async fn action(&self, action: &str, depth: Option<u32>) -> Result<(i32, String), Failure> {
        let script = self
            .config
            .script()
            .map_err(|e| Failure::new(FailureReason::Spawn, e))?;
        let (provider, agent) = self.config.agent.split_once('/').unwrap_or_default();
        let secret =
            crate::secret::read_all(&self.config.params_files).map_err(|(name, why)| {
                Failure::new(FailureReason::Spawn, format!("params_files {name}: {why}"))
            })?;
        let secrets = Secrets::new(secret.values().cloned());
        let mut env: BTreeMap<String, String> = self
            .config
            .params
            .iter()
            .chain(secret.iter())
            .map(|(k, v)| (format!("OCF_RESKEY_{k}"), v.clone()))
            .collect();
        env.insert(
            "OCF_ROOT".into(),
            self.config.ocf_root.display().to_string(),
        );
        env.insert("OCF_RESOURCE_INSTANCE".into(), self.name.clone());
        env.insert("OCF_RESOURCE_TYPE".into(), agent.into());
        env.insert("OCF_RESOURCE_PROVIDER".into(), provider.into());
        env.insert(
            "OCF_FUNCTIONS_DIR".into(),
            self.config
                .ocf_root
                .join("lib/heartbeat")
                .display()
                .to_string(),
        );
        if let Some(depth) = depth {
            env.insert("OCF_CHECK_LEVEL".into(), depth.to_string());
        }
        let argv = vec![script.display().to_string(), action.to_string()];
        let role = match action {
            "start" => Role::Start,
            "stop" => Role::Stop,
            _ => Role::Check,
        };
        let done = self
            .launcher
            .run(role, &argv, &env, None, &self.config.run_as())
            .await?;
        let code = done.code.ok_or_else(|| {
            Failure::new(
                FailureReason::Killed,
                format!("{} {action} was killed by a signal", self.config.agent),
            )
        })?;
        // An agent that prints its parameters must not print the secrets into an event.
        Ok((code, secrets.redact(&done.output)))
    }

    fn failed(&self, action: &str, code: i32, output: &str, reason: FailureReason) -> Failure {
        Failure::new(
            reason,
            format!(
                "{} {action}: {} ({code}) {output}",
                self.config.agent,
                ocf_meaning(code)
            )
            .trim_end()
            .to_string(),
        )
    }

    async fn monitor(&self, depth: u32) -> Result<(), Failure> {
        match self.action("monitor", Some(depth)).await? {
            (0, _) => Ok(()),
            (7, out) => Err(self.failed("monitor", 7, &out, FailureReason::NotRunning)),
            (code, out) => {
                Err(self.failed("monitor", code, &out, FailureReason::UnexpectedResponse))
            }
        }
    }
}

#[async_trait]
impl Resource for OcfResource {
    async fn adopt(&self) -> Result<bool, Failure> {
        Ok(self.monitor(0).await.is_ok())
    }

    async fn online(&self, _: &Progress) -> Result<(), Failure> {
        match self.action("start", None).await? {
            (0, _) => Ok(()),
            (code, out) => Err(self.failed("start", code, &out, FailureReason::Exited)),
        }
    }

    async fn offline(&self) -> Result<(), Failure> {
        match self.action("stop", None).await? {
            // Stopping what is not running is a success in OCF; what the start left running
            // goes with it.
            (0 | 7, _) => self.launcher.release().await,
            (code, out) => Err(self.failed("stop", code, &out, FailureReason::Exited)),
        }
    }

    async fn terminate(&self) -> Result<(), Failure> {
        // The start's processes first, so the stop action cannot hang on them.
        let released = self.launcher.release().await;
        self.offline().await?;
        released
    }

    async fn looks_alive(&self, _: &Progress) -> Result<(), Failure> {
        self.monitor(0).await
    }

    async fn is_alive(&self, _: &Progress) -> Result<(), Failure> {
        self.monitor(self.config.is_alive_depth).await
    }
}

impl TypeConfig for OcfConfig {
    const NAME: &'static str = "ocf";

    fn validate(&self) -> Vec<(&'static str, String)> {
        OcfConfig::validate(self)
    }

    fn warnings(&self) -> Vec<(&'static str, String)> {
        crate::secret::world_readable("params_files", &self.params_files)
    }

    fn terminate_waits(&self) -> bool {
        true
    }

    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(OcfResource::new(self.clone(), &cx.resource, cx.launcher()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OCF agent of our own, written to a temporary OCF root: a `state` file is the service.
    fn fake_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let agents = dir.path().join("resource.d/test");
        std::fs::create_dir_all(&agents).unwrap();
        let script = agents.join("Flag");
        std::fs::write(
            &script,
            r#"#!/bin/sh
case "$1" in
  start) touch "$OCF_RESKEY_state"; exit 0 ;;
  stop) rm -f "$OCF_RESKEY_state"; exit 0 ;;
  monitor)
    [ -e "$OCF_RESKEY_state" ] || exit 7
    [ "$OCF_CHECK_LEVEL" -ge 10 ] && [ -s "$OCF_RESKEY_state" ] && { echo "deep check failed"; exit 1; }
    exit 0 ;;
  *) exit 3 ;;
esac
"#,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[tokio::test]
    async fn exit_codes_map_to_states_and_depth_reaches_the_agent() {
        let root = fake_root();
        let state = root.path().join("state");
        let c: OcfConfig = toml::from_str(&format!(
            "agent = \"test/Flag\"\nocf_root = {:?}\nparams = {{ state = {:?} }}",
            root.path().display().to_string(),
            state.display().to_string()
        ))
        .unwrap();
        assert!(c.validate().is_empty());
        let r = OcfResource::new(
            c,
            "flag",
            Launcher::new(crate::launch::Children::Fork, "t".into()),
        );
        let f = r.is_alive(&Progress::default()).await.unwrap_err();
        assert_eq!(f.reason, FailureReason::NotRunning);
        assert!(f.detail.contains("OCF_NOT_RUNNING (7)"), "{f}");
        assert!(!r.adopt().await.unwrap());
        r.online(&Progress::default()).await.unwrap();
        r.is_alive(&Progress::default()).await.unwrap();
        // Only the deep monitor sees this problem.
        std::fs::write(&state, "corrupt").unwrap();
        r.looks_alive(&Progress::default()).await.unwrap();
        let f = r.is_alive(&Progress::default()).await.unwrap_err();
        assert_eq!(f.reason, FailureReason::UnexpectedResponse);
        assert!(
            f.detail.contains("OCF_ERR_GENERIC (1)") && f.detail.contains("deep check failed"),
            "{f}"
        );
        r.offline().await.unwrap();
        r.offline().await.unwrap();
        assert!(!state.exists());
    }

    #[test]
    fn a_missing_agent_is_a_config_error() {
        let c: OcfConfig =
            toml::from_str("agent = \"heartbeat/NoSuchAgent\"\nocf_root = \"/nonexistent\"")
                .unwrap();
        assert!(c.validate()[0].1.contains("resource-agents"));
        let c: OcfConfig = toml::from_str("agent = \"Dummy\"").unwrap();
        assert!(c.validate()[0].1.contains("provider/agent"));
    }
}
