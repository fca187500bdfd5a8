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

/// How long output is still read once the command has exited: what it wrote is in the pipe by
/// then; a daemon it started may hold the pipe open for ever.
const AFTER_EXIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads `pipe` to its end, keeping its first [`KEPT_OUTPUT`] bytes in `kept`.
async fn keep_start(pipe: Option<impl tokio::io::AsyncRead + Unpin>, kept: &mut Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let room = KEPT_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

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
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::new(FailureReason::Spawn, format!("cannot run {}: {e}", argv[0])))?;
    // Read while it runs, keeping the start and draining the rest (a script that prints
    // forever keeps the agent's memory flat and never blocks on a full pipe); once it has
    // exited, what a daemon it left behind still holds open is not waited for.
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let status = {
        let reading =
            futures::future::join(keep_start(stdout, &mut out), keep_start(stderr, &mut err));
        tokio::pin!(reading);
        let mut read_all = false;
        let status = tokio::select! {
            status = child.wait() => status,
            _ = &mut reading => {
                read_all = true;
                child.wait().await
            }
        };
        if !read_all {
            let _ = tokio::time::timeout(AFTER_EXIT, &mut reading).await;
        }
        status
    }
    .map_err(|e| Failure::new(FailureReason::Spawn, format!("wait for {}: {e}", argv[0])))?;
    let mut text = out;
    text.extend_from_slice(&err);
    text.truncate(KEPT_OUTPUT);
    Ok(Finished {
        code: status.code(),
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

    #[tokio::test]
    async fn output_is_capped_while_read_and_a_daemon_holding_the_pipe_is_not_waited_for() {
        let argv = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let none = BTreeMap::new();
        // 50 MB of output: kept to the cap, drained so the writer never blocks.
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            run(&argv("yes | head -c 50000000; exit 3"), &none, None),
        )
        .await
        .expect("a chatty command ends")
        .unwrap();
        assert_eq!(done.code, Some(3));
        assert!(done.output.len() < 4 * KEPT_OUTPUT, "{}", done.output.len());
        // A start that leaves a daemon holding stdout returns when the command exits.
        let started = std::time::Instant::now();
        let done = run(&argv("sleep 30 & echo started"), &none, None)
            .await
            .unwrap();
        assert_eq!(done.code, Some(0));
        assert!(done.output.contains("started"), "{}", done.output);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "waited {:?} for the daemon's pipe",
            started.elapsed()
        );
    }
}
