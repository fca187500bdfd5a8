//! A supervised process's own cgroup (v2), below the agent's: every process it starts stays in
//! it, one that calls `setsid` or daemonizes too, so an offline or a terminate reaches all of
//! them, and an agent that restarts finds what is left. Where the agent cannot create cgroups
//! (no cgroup v2, not root, a read-only `/sys/fs/cgroup`), [`Cgroup::for_resource`] says why and
//! the `process` type falls back to its process group alone.
//!
//! The agent's packaged unit has `Delegate=yes`, which gives it its cgroup subtree to manage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often an emptying cgroup is looked at.
const POLL: Duration = Duration::from_millis(20);

/// One resource's cgroup.
#[derive(Clone, Debug)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// The cgroup of the resource whose state file is `key` (unique per agent, group and
    /// resource, and the same after an agent restart), below the agent's own. Not created
    /// yet: see [`Cgroup::create`].
    pub fn for_resource(key: &Path) -> Result<Cgroup, String> {
        // Where the agent's own cgroup is does not change while it runs: found once, not by each
        // of thousands of resources at start.
        static OWN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
        let own = OWN.get_or_init(own_cgroup).clone()?;
        // A hash keeps two agents on one machine (tests run many) apart; the file name keeps it
        // readable in `systemd-cgls`.
        let hash = key_hash(key);
        let stem = key
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Cgroup {
            dir: own.join(format!("resmon-{stem}-{hash:016x}")),
        })
    }

    /// Creates it if it is not there.
    pub fn create(&self) -> Result<(), String> {
        match std::fs::create_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(format!("cannot create cgroup {}: {e}", self.dir.display())),
        }
    }

    /// Removes it once empty, so that resources gone leave nothing behind (the kernel refuses
    /// while a process is in it).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs`, opened for a child to move itself in (writing `0`) between fork and exec.
    pub fn procs_for_join(&self) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
    }

    /// The processes in it now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether any process is in it.
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|events| events.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// Sends `signal` to every process in it.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Kills everything in it: `cgroup.kill` (which also catches a process forking meanwhile),
    /// or SIGKILL to each process on kernels before 5.14.
    pub fn kill(&self) {
        let killed = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"));
        if killed.is_err() {
            self.signal_all(nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Waits until it is empty.
    pub async fn wait_empty(&self) {
        while self.populated() {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A stable hash of a resource's key (FNV-1a): the same in every agent and after restarts.
pub(crate) fn key_hash(key: &Path) -> u64 {
    key.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The agent's own cgroup directory in the cgroup v2 hierarchy.
fn own_cgroup() -> Result<PathBuf, String> {
    let membership = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = membership
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 membership in /proc/self/cgroup")?;
    let mount = cgroup2_mount()?;
    let dir = mount.join(path.trim_start_matches('/'));
    if !dir.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup", dir.display()));
    }
    Ok(dir)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// a hybrid host).
fn cgroup2_mount() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    mounts
        .lines()
        .find_map(|line| {
            // The fields after " - " are the type, the source and the options.
            let (fields, rest) = line.split_once(" - ")?;
            (rest.split_whitespace().next()? == "cgroup2")
                .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_that_leaves_its_session_is_still_found_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = match Cgroup::for_resource(&dir.path().join("g").join("r.cgroup")) {
            Ok(c) => c,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        cgroup.create().unwrap();
        assert!(!cgroup.populated());
        let argv = ["sh", "-c", "setsid sleep 600 & exit 0"].map(String::from);
        let mut cmd = crate::command::child_command(
            &argv,
            &Default::default(),
            &Default::default(),
            Some(&cgroup),
        )
        .unwrap();
        let status = cmd.status().await.unwrap();
        assert!(status.success());
        // The shell is gone; its grandchild in a session of its own is in the cgroup.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(cgroup.populated());
        assert_eq!(cgroup.pids().len(), 1, "{:?}", cgroup.pids());
        cgroup.kill();
        tokio::time::timeout(Duration::from_secs(2), cgroup.wait_empty())
            .await
            .expect("emptied");
        cgroup.remove();
        assert!(!cgroup.dir().exists());
    }
}
