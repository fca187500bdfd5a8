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

/// Runs `argv` with `env` added; waits for it.
pub async fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
) -> Result<Finished, Failure> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env)
        .stdin(Stdio::null())
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
