//! Running a short command for a check or an operation (the `exec` and `ocf` types): its exit
//! code is the answer. The child is killed if the runtime cancels the call at its deadline, and
//! its output is kept (capped) to explain a failure.

use crate::resource::{escape_bytes, Failure};
use resmon_policies::FailureReason;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

/// Output kept from a command, to explain a failure.
const KEPT_OUTPUT: usize = 512;

/// What a command did.
#[derive(Debug)]
pub struct Finished {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// The start of its stdout and stderr, escaped, for a failure's detail.
    pub output: String,
}

/// The agent's own supervision variables: systemd's notify socket and watchdog (a child that
/// inherited them could tell systemd the agent is ready, stopping or alive, and keep a hung
/// agent from being restarted), socket activation, and the journal stream (a child writes to
/// its own log, not the agent's journal).
pub const AGENT_ONLY_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
];

/// A command for a child of a resource: `argv`, without the agent's own variables
/// ([`AGENT_ONLY_ENV`]), with `env` added.
pub fn child_command(argv: &[String], env: &BTreeMap<String, String>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    for key in AGENT_ONLY_ENV {
        cmd.env_remove(key);
    }
    cmd.envs(env);
    cmd
}

/// Runs `argv` with `env` added; waits for it.
pub async fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
) -> Result<Finished, Failure> {
    let mut cmd = child_command(argv, env);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| Failure::new(FailureReason::Spawn, format!("cannot run {}: {e}", argv[0])))?;
    let mut text = out.stdout;
    text.extend_from_slice(&out.stderr);
    text.truncate(KEPT_OUTPUT);
    Ok(Finished {
        code: out.status.code(),
        output: if text.is_empty() {
            String::new()
        } else {
            escape_bytes(&text)
        },
    })
}

#[cfg(test)]
mod child_env_tests {
    use super::*;

    #[test]
    fn a_child_never_gets_the_agents_notify_or_watchdog_variables() {
        let env = BTreeMap::from([("NOTIFY_SOCKET".to_string(), "/mine".to_string())]);
        let cmd = child_command(&["true".to_string()], &BTreeMap::new());
        let set: Vec<_> = cmd.as_std().get_envs().collect();
        for key in AGENT_ONLY_ENV {
            assert!(
                set.contains(&(std::ffi::OsStr::new(key), None)),
                "{key} is not removed: {set:?}"
            );
        }
        // What the resource's own env sets still wins.
        let cmd = child_command(&["true".to_string()], &env);
        assert!(cmd
            .as_std()
            .get_envs()
            .any(|(k, v)| k == "NOTIFY_SOCKET" && v == Some(std::ffi::OsStr::new("/mine"))));
    }
}
