//! `exec`: scripts whose exit code is the answer. `check` is both checks (exit 0: alive);
//! `start` and `stop` are online and offline when given (without them the resource only
//! watches). Terminate runs `stop` too: there is nothing more forceful to know about.

use crate::command::RunAs;
use crate::launch::{Launcher, Role};
use crate::resource::{BuildContext, TypeConfig};
use crate::resource::{Failure, Progress, Resource};
use crate::secret::Secrets;
use crate::values::{AccountName, Argv};
use async_trait::async_trait;
use resmon_policies::FailureReason;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Private properties of an `exec` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Exits 0 while the resource is alive.
    pub check: Argv,
    /// Brings it online (exit 0: done).
    #[serde(default)]
    pub start: Option<Argv>,
    /// Takes it offline (exit 0: done).
    #[serde(default)]
    pub stop: Option<Argv>,
    /// Extra environment variables for all three.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secrets, read from files at each run:
    /// `env_files = { DB_PASSWORD = "/etc/resmon/db-password" }`.
    #[serde(default)]
    pub env_files: BTreeMap<String, PathBuf>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
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

impl ExecConfig {
    /// Who its commands run as.
    pub fn run_as(&self) -> RunAs {
        RunAs {
            user: self.user.clone(),
            group: self.group.clone(),
            supplementary_groups: self.supplementary_groups.clone(),
        }
    }
}

/// A resource run by scripts.
pub struct ExecResource {
    config: ExecConfig,
    /// Runs `start` and `stop` outside the agent's sandbox where systemd can.
    launcher: Launcher,
}

impl ExecResource {
    /// Builds it from its config.
    pub fn new(config: ExecConfig, launcher: Launcher) -> Self {
        ExecResource { config, launcher }
    }

    async fn script(&self, role: Role, argv: &Argv, failure: FailureReason) -> Result<(), Failure> {
        let what = match role {
            Role::Start => "start",
            Role::Stop => "stop",
            Role::Check => "check",
        };
        let secret = crate::secret::read_all(&self.config.env_files).map_err(|(name, why)| {
            Failure::new(FailureReason::Spawn, format!("env_files {name}: {why}"))
        })?;
        // A script that prints its environment must not print the secrets into an event.
        let secrets = Secrets::new(secret.values().cloned());
        let mut env = self.config.env.clone();
        env.extend(secret);
        let done = self
            .launcher
            .run(
                role,
                &argv.0,
                &env,
                self.config.cwd.as_deref(),
                &self.config.run_as(),
            )
            .await?;
        match done.code {
            Some(0) => Ok(()),
            code => Err(secrets.failure(Failure::new(
                failure,
                format!(
                    "{what} `{}` {} {}",
                    argv.0.join(" "),
                    code.map_or("was killed by a signal".to_string(), |c| format!(
                        "exited {c}"
                    )),
                    done.output
                )
                .trim_end()
                .to_string(),
            ))),
        }
    }
}

#[async_trait]
impl Resource for ExecResource {
    async fn online(&self, _: &Progress) -> Result<(), Failure> {
        if let Some(start) = &self.config.start {
            self.script(Role::Start, start, FailureReason::Exited)
                .await?;
        }
        self.script(Role::Check, &self.config.check, FailureReason::NotReady)
            .await
    }

    async fn offline(&self) -> Result<(), Failure> {
        if let Some(stop) = &self.config.stop {
            self.script(Role::Stop, stop, FailureReason::Exited).await?;
        }
        // What the start left running goes with it.
        self.launcher.release().await
    }

    async fn terminate(&self) -> Result<(), Failure> {
        // The start's processes first, so a stop script cannot hang on them.
        let released = self.launcher.release().await;
        if let Some(stop) = &self.config.stop {
            self.script(Role::Stop, stop, FailureReason::Exited).await?;
        }
        released
    }

    async fn looks_alive(&self, _: &Progress) -> Result<(), Failure> {
        self.script(Role::Check, &self.config.check, FailureReason::NotRunning)
            .await
    }

    async fn is_alive(&self, _: &Progress) -> Result<(), Failure> {
        self.script(Role::Check, &self.config.check, FailureReason::NotRunning)
            .await
    }
}

impl TypeConfig for ExecConfig {
    const NAME: &'static str = "exec";

    fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = self.run_as().check();
        errors.extend(crate::secret::check_files("env_files", &self.env_files));
        errors
    }

    fn warnings(&self) -> Vec<(&'static str, String)> {
        crate::secret::world_readable("env_files", &self.env_files)
    }

    fn terminate_waits(&self) -> bool {
        self.stop.is_some()
    }

    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(ExecResource::new(self.clone(), cx.launcher()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::Children;

    #[tokio::test]
    async fn the_exit_code_is_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("up");
        let c: ExecConfig = toml::from_str(&format!(
            "check = [\"test\", \"-e\", {f:?}]\nstart = [\"touch\", {f:?}]\nstop = [\"rm\", \"-f\", {f:?}]",
            f = flag.display().to_string()
        ))
        .unwrap();
        let r = ExecResource::new(c, Launcher::new(Children::Fork, "t".into()));
        let f = r.is_alive(&Progress::default()).await.unwrap_err();
        assert_eq!(f.reason, FailureReason::NotRunning);
        assert!(f.detail.contains("exited 1"), "{f}");
        r.online(&Progress::default()).await.unwrap();
        r.is_alive(&Progress::default()).await.unwrap();
        r.offline().await.unwrap();
        assert!(r.looks_alive(&Progress::default()).await.is_err());
    }

    #[tokio::test]
    async fn a_secret_from_a_file_reaches_the_script_but_never_its_failure() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "hunter2-long\n").unwrap();
        let c: ExecConfig = toml::from_str(&format!(
            "check = [\"sh\", \"-c\", \"echo password is $DB_PASSWORD; exit 3\"]\nenv_files = {{ DB_PASSWORD = {:?} }}",
            file.display().to_string()
        ))
        .unwrap();
        assert!(TypeConfig::validate(&c).is_empty());
        let f = ExecResource::new(c, Launcher::new(Children::Fork, "t".into()))
            .is_alive(&Progress::default())
            .await
            .unwrap_err();
        assert!(f.detail.contains("password is <secret>"), "{f}");
        assert!(!f.detail.contains("hunter2"), "{f}");
    }

    #[tokio::test]
    async fn output_explains_a_failure() {
        let c: ExecConfig =
            toml::from_str("check = [\"sh\", \"-c\", \"echo disk is full >&2; exit 3\"]").unwrap();
        let f = ExecResource::new(c, Launcher::new(Children::Fork, "t".into()))
            .is_alive(&Progress::default())
            .await
            .unwrap_err();
        assert!(
            f.detail.contains("exited 3") && f.detail.contains("disk is full"),
            "{f}"
        );
    }
}
