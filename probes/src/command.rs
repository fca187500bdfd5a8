//! Running a short command for a check or an operation (the `exec` and `ocf` types): its exit
//! code is the answer. The child is killed if the runtime cancels the call at its deadline, and
//! its output is kept (capped) to explain a failure.

use crate::cgroup::Cgroup;
use crate::resource::{escape_bytes, Failure};
use crate::values::AccountName;
use nix::unistd::{Gid, Group, Uid, User};
use resmon_policies::FailureReason;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

/// Output kept from a command, to explain a failure.
const KEPT_OUTPUT: usize = 512;

/// How long output is still read once the command has exited: what it wrote is in the pipe by
/// then; a daemon it started may hold the pipe open for ever.
pub(crate) const AFTER_EXIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads `pipe` to its end, keeping its first [`KEPT_OUTPUT`] bytes in `kept`.
pub(crate) async fn keep_start(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    kept: &mut Vec<u8>,
) {
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

/// The `PATH` every child gets: the agent's own may be anything its caller had.
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who a child runs as: the `user`, `group` and `supplementary_groups` keys of `process`,
/// `exec` and `ocf`. Unset, the child runs as the agent (root).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunAs {
    /// Runs as this user, with its primary group and every group the group database gives it
    /// (as `initgroups` and systemd's `User=` do).
    pub user: Option<AccountName>,
    /// Primary group in place of the user's.
    pub group: Option<AccountName>,
    /// Groups added to those.
    pub supplementary_groups: Vec<AccountName>,
}

/// A [`RunAs`] looked up in the user and group databases.
#[derive(Clone, Debug)]
struct Credentials {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    /// `USER`, `LOGNAME` and `HOME` for the child, when `user` is set.
    account: Option<(String, String)>,
}

impl RunAs {
    /// Looks the names up; `None` when nothing is set. The error names the key.
    fn resolve(&self) -> Result<Option<Credentials>, (&'static str, String)> {
        if self.user.is_none() && self.group.is_none() && self.supplementary_groups.is_empty() {
            return Ok(None);
        }
        let user = match &self.user {
            None => None,
            Some(name) => Some(
                User::from_name(&name.0)
                    .map_err(|e| ("user", format!("cannot look up user {:?}: {e}", name.0)))?
                    .ok_or_else(|| ("user", format!("no user {:?} on this machine", name.0)))?,
            ),
        };
        let group = |key: &'static str, name: &AccountName| {
            Group::from_name(&name.0)
                .map_err(|e| (key, format!("cannot look up group {:?}: {e}", name.0)))?
                .map(|g| g.gid)
                .ok_or_else(|| (key, format!("no group {:?} on this machine", name.0)))
        };
        let gid = match (&self.group, &user) {
            (Some(name), _) => group("group", name)?,
            (None, Some(user)) => user.gid,
            (None, None) => nix::unistd::getgid(),
        };
        let mut groups = match &user {
            Some(user) => {
                let name = std::ffi::CString::new(user.name.clone())
                    .map_err(|_| ("user", format!("user name {:?} holds a NUL", user.name)))?;
                nix::unistd::getgrouplist(&name, user.gid).map_err(|e| {
                    (
                        "user",
                        format!("cannot list the groups of {:?}: {e}", user.name),
                    )
                })?
            }
            None => Vec::new(),
        };
        groups.push(gid);
        for name in &self.supplementary_groups {
            groups.push(group("supplementary_groups", name)?);
        }
        groups.sort_unstable_by_key(|g| g.as_raw());
        groups.dedup();
        Ok(Some(Credentials {
            uid: user.as_ref().map_or_else(nix::unistd::getuid, |u| u.uid),
            gid,
            groups,
            account: user.map(|u| (u.name, u.dir.display().to_string())),
        }))
    }

    /// What `validate` says: a name this machine does not know.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        self.resolve().err().into_iter().collect()
    }
}

/// A command for a child of a resource: `argv` as `run_as`, with a clean environment (`PATH`,
/// `LANG`, `USER`/`LOGNAME`/`HOME` of `run_as.user`, then `env`). The agent's own variables
/// never reach a child: systemd's notify socket and watchdog (a child could tell systemd the
/// agent is ready, stopping or alive, and keep a hung agent from being restarted), socket
/// activation, the journal stream, and whatever the agent's caller had set.
///
/// With `cgroup`, the child moves itself into it before anything else, so that everything it
/// starts stays there.
pub fn child_command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    run_as: &RunAs,
    cgroup: Option<&Cgroup>,
) -> Result<tokio::process::Command, Failure> {
    let credentials = run_as.resolve().map_err(|(key, why)| {
        Failure::new(
            FailureReason::Spawn,
            format!("cannot run {}: {key}: {why}", argv[0]),
        )
    })?;
    let join = cgroup
        .map(|c| {
            c.procs_for_join().map_err(|e| {
                Failure::new(
                    FailureReason::Spawn,
                    format!("cannot join cgroup {}: {e}", c.dir().display()),
                )
            })
        })
        .transpose()?;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env_clear();
    cmd.env("PATH", CHILD_PATH);
    cmd.env(
        "LANG",
        std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".to_string()),
    );
    if let Some((name, home)) = credentials.as_ref().and_then(|c| c.account.as_ref()) {
        cmd.env("USER", name).env("LOGNAME", name).env("HOME", home);
    }
    cmd.envs(env);
    if join.is_some() || credentials.is_some() {
        between_fork_and_exec(&mut cmd, join, credentials);
    }
    Ok(cmd)
}

/// What the child does between fork and exec: moves into its cgroup (while it is still root),
/// then takes its groups, its group and its user (after `setuid` it could no longer change the
/// others).
#[allow(unsafe_code)]
fn between_fork_and_exec(
    cmd: &mut tokio::process::Command,
    join: Option<std::fs::File>,
    credentials: Option<Credentials>,
) {
    // SAFETY: the closure runs in the forked child before exec. It calls only write, setgroups,
    // setgid and setuid, which are async-signal-safe system calls, on descriptors and values
    // made before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &join {
                // `0` is the writer itself.
                nix::unistd::write(procs, b"0")?;
            }
            if let Some(Credentials {
                uid, gid, groups, ..
            }) = &credentials
            {
                nix::unistd::setgroups(groups)?;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
            }
            Ok(())
        });
    }
}

/// Runs `argv` with `env` added; waits for it.
pub async fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    run_as: &RunAs,
) -> Result<Finished, Failure> {
    let mut cmd = child_command(argv, env, run_as, None)?;
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
    Ok(finished(status.code(), text))
}

/// A [`Finished`] from an exit code and the output kept.
pub(crate) fn finished(code: Option<i32>, mut output: Vec<u8>) -> Finished {
    output.truncate(KEPT_OUTPUT);
    Finished {
        code,
        output: if output.is_empty() {
            String::new()
        } else {
            escape_bytes(&output)
        },
    }
}

/// The environment of a child that systemd starts: `PATH`, `LANG` and the resource's own
/// (systemd adds `USER`, `LOGNAME` and `HOME` for a `User=`).
pub(crate) fn child_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut all = BTreeMap::from([
        ("PATH".to_string(), CHILD_PATH.to_string()),
        (
            "LANG".to_string(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".to_string()),
        ),
    ]);
    all.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

/// The absolute path of `program` as the child's `PATH` finds it (systemd wants one).
pub(crate) fn resolve_program(program: &str) -> Result<String, Failure> {
    if program.contains('/') {
        return Ok(program.to_string());
    }
    CHILD_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| {
            use std::os::unix::fs::PermissionsExt;
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|path| path.display().to_string())
        .ok_or_else(|| {
            Failure::new(
                FailureReason::Spawn,
                format!("cannot run {program}: not found in {CHILD_PATH}"),
            )
        })
}

#[cfg(test)]
mod child_env_tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".to_string(), "-c".to_string(), script.to_string()]
    }

    /// The lines a command printed, from a failure's escaped output.
    fn lines(done: &Finished) -> Vec<String> {
        done.output
            .trim_matches('"')
            .split("\\n")
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    #[tokio::test]
    async fn a_child_gets_a_clean_environment_and_what_its_resource_sets() {
        // Whatever the agent's caller set (here: cargo's variables, and systemd's notify
        // socket if the tests run under it) stays with the agent.
        let env = BTreeMap::from([("MINE".to_string(), "1".to_string())]);
        // (`sh` sets PWD itself.)
        let done = run(
            &sh("env | cut -d= -f1 | grep -vx PWD | sort"),
            &env,
            None,
            &RunAs::default(),
        )
        .await
        .unwrap();
        assert_eq!(lines(&done), ["LANG", "MINE", "PATH"], "{}", done.output);
        // The resource's own env wins, even for a name the agent keeps for itself.
        let env = BTreeMap::from([("NOTIFY_SOCKET".to_string(), "/mine".to_string())]);
        let done = run(&sh("echo $NOTIFY_SOCKET"), &env, None, &RunAs::default())
            .await
            .unwrap();
        assert_eq!(lines(&done), ["/mine"]);
    }

    #[tokio::test]
    async fn a_child_runs_as_its_user_with_its_groups() {
        if !nix::unistd::getuid().is_root() {
            eprintln!("skipped: changing user needs root");
            return;
        }
        let name = |s: &str| AccountName(s.to_string());
        let nobody = RunAs {
            user: Some(name("nobody")),
            group: None,
            supplementary_groups: vec![name("adm")],
        };
        let id = |what: &str| {
            let group = Group::from_name(what).unwrap().unwrap().gid;
            group.to_string()
        };
        let done = run(
            &sh("id -u; id -g; id -G | tr ' ' '\\n' | sort -n | tr '\\n' ' '; echo; echo $USER $HOME"),
            &BTreeMap::new(),
            None,
            &nobody,
        )
        .await
        .unwrap();
        let user = User::from_name("nobody").unwrap().unwrap();
        let mut groups = vec![
            user.gid.as_raw(),
            Group::from_name("adm").unwrap().unwrap().gid.as_raw(),
        ];
        groups.sort_unstable();
        groups.dedup();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        assert_eq!(
            lines(&done),
            [
                user.uid.to_string(),
                user.gid.to_string(),
                format!("{} ", groups.join(" ")),
                format!("nobody {}", user.dir.display()),
            ],
            "{}",
            done.output
        );
        // A group in place of the user's primary one.
        let done = run(
            &sh("id -g"),
            &BTreeMap::new(),
            None,
            &RunAs {
                group: Some(name("adm")),
                ..nobody.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!(lines(&done), [id("adm")]);
    }

    #[test]
    fn an_unknown_user_or_group_is_named_with_its_key() {
        let name = |s: &str| Some(AccountName(s.to_string()));
        let user = RunAs {
            user: name("no-such-user-here"),
            ..RunAs::default()
        };
        assert_eq!(
            user.check(),
            [(
                "user",
                "no user \"no-such-user-here\" on this machine".to_string()
            )]
        );
        let group = RunAs {
            supplementary_groups: vec![AccountName("no-such-group".into())],
            ..RunAs::default()
        };
        assert_eq!(
            group.check(),
            [(
                "supplementary_groups",
                "no group \"no-such-group\" on this machine".to_string()
            )]
        );
        assert!(RunAs::default().check().is_empty());
    }

    #[tokio::test]
    async fn output_is_capped_while_read_and_a_daemon_holding_the_pipe_is_not_waited_for() {
        let argv = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let none = BTreeMap::new();
        // 50 MB of output: kept to the cap, drained so the writer never blocks.
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            run(
                &argv("yes | head -c 50000000; exit 3"),
                &none,
                None,
                &RunAs::default(),
            ),
        )
        .await
        .expect("a chatty command ends")
        .unwrap();
        assert_eq!(done.code, Some(3));
        assert!(done.output.len() < 4 * KEPT_OUTPUT, "{}", done.output.len());
        // A start that leaves a daemon holding stdout returns when the command exits.
        let started = std::time::Instant::now();
        let done = run(
            &argv("sleep 30 & echo started"),
            &none,
            None,
            &RunAs::default(),
        )
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
