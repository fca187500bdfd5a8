//! `disk`: a mounted filesystem with room to work. `looks_alive`: the mount point is mounted
//! (optionally from a given device, with a given filesystem type); `is_alive`: that, free space
//! and free inodes above their thresholds, and a canary file written, fsynced, read back and
//! removed. Optional online/offline mount and unmount it.
//!
//! Every filesystem call runs on a blocking thread through [`blocking`]: a hung filesystem (a
//! dead NFS server) makes the check time out instead of hanging the agent, and the thread that
//! is still stuck in the kernel is counted by the runtime until it returns.

use crate::command::RunAs;
use crate::launch::{Launcher, Role};
use crate::resource::{blocking, Failure, Progress, Resource};
use crate::resource::{BuildContext, TypeConfig};
use async_trait::async_trait;
use resmon_policies::FailureReason;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A size in bytes, written `"512MiB"`, `"2GB"`, `"100k"` or as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?}: write it like \"512MiB\", \"2GB\" or \"100k\""
                ))
            }),
        }
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let unit = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// `mount = { source = "/dev/vdb1", fstype = "ext4", options = "noatime" }`: online mounts it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// What to mount (a device, `tmpfs`...).
    pub source: String,
    /// The filesystem type.
    pub fstype: String,
    /// Mount options, comma-separated.
    #[serde(default)]
    pub options: Option<String>,
}

/// Private properties of a `disk` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The mount point.
    pub path: PathBuf,
    /// It must be mounted from this source.
    #[serde(default)]
    pub device: Option<String>,
    /// It must have this filesystem type.
    #[serde(default)]
    pub fstype: Option<String>,
    /// Fail below this much free space (for unprivileged users).
    #[serde(default)]
    pub min_free: Option<ByteSize>,
    /// Fail below this many free inodes.
    #[serde(default)]
    pub min_free_inodes: Option<u64>,
    /// Write, fsync, read back and remove a canary file in `is_alive`.
    #[serde(default = "default_canary")]
    pub canary: bool,
    /// Mount on online, unmount on offline.
    #[serde(default)]
    pub mount: Option<MountSpec>,
}

fn default_canary() -> bool {
    true
}

/// What `statvfs` says.
struct Space {
    free: u64,
    size: u64,
    free_inodes: u64,
}

fn statvfs(path: &Path) -> Result<Space, Failure> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| {
        Failure::new(
            FailureReason::Io,
            format!("statvfs {}: {e}", path.display()),
        )
    })?;
    let frag = st.fragment_size() as u64;
    Ok(Space {
        free: st.blocks_available() as u64 * frag,
        size: st.blocks() as u64 * frag,
        free_inodes: st.files_available() as u64,
    })
}

/// The mount of `path` in /proc/self/mountinfo: (source, fstype).
fn mounted(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = path.to_str()?.trim_end_matches('/');
    let target = if target.is_empty() { "/" } else { target };
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = fields.get(4)?.replace("\\040", " ");
        if mount_point != target {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        Some((
            fields.get(sep + 2)?.to_string(),
            fields.get(sep + 1)?.to_string(),
        ))
    })
}

/// A mounted filesystem.
pub struct DiskResource {
    config: DiskConfig,
    canary_name: String,
    /// Runs `mount` and `umount`: outside the agent's sandbox where systemd can (the agent's
    /// own mount namespace is private, and its system-call filter refuses mounts).
    launcher: Launcher,
}

impl DiskResource {
    /// Builds it; `name` tells the canary files of several resources apart.
    pub fn new(config: DiskConfig, name: &str, launcher: Launcher) -> Self {
        DiskResource {
            config,
            canary_name: format!(".resmon-canary-{name}"),
            launcher,
        }
    }

    /// Runs `mount` or `umount`; a failure carries what it printed.
    async fn run(&self, role: Role, argv: Vec<String>) -> Result<(), Failure> {
        let done = self
            .launcher
            .run(role, &argv, &BTreeMap::new(), None, &RunAs::default())
            .await?;
        match done.code {
            Some(0) => Ok(()),
            code => Err(Failure::new(
                FailureReason::Io,
                format!(
                    "`{}` {} {}",
                    argv.join(" "),
                    code.map_or("was killed by a signal".to_string(), |c| format!(
                        "exited {c}"
                    )),
                    done.output
                )
                .trim_end()
                .to_string(),
            )),
        }
    }

    fn check_mounted(config: &DiskConfig) -> Result<(), Failure> {
        let Some((source, fstype)) = mounted(&config.path) else {
            return Err(Failure::new(
                FailureReason::NotRunning,
                format!("{} is not a mount point", config.path.display()),
            ));
        };
        if config.device.as_ref().is_some_and(|d| *d != source) {
            return Err(Failure::new(
                FailureReason::UnexpectedResponse,
                format!(
                    "{} is mounted from {source}, not {}",
                    config.path.display(),
                    config.device.as_deref().unwrap_or("")
                ),
            ));
        }
        if config.fstype.as_ref().is_some_and(|t| *t != fstype) {
            return Err(Failure::new(
                FailureReason::UnexpectedResponse,
                format!(
                    "{} is {fstype}, not {}",
                    config.path.display(),
                    config.fstype.as_deref().unwrap_or("")
                ),
            ));
        }
        Ok(())
    }

    fn full_check(config: &DiskConfig, canary: &Path) -> Result<Space, Failure> {
        Self::check_mounted(config)?;
        let space = statvfs(&config.path)?;
        if let Some(min) = config.min_free {
            if space.free < min.0 {
                return Err(Failure::new(
                    FailureReason::UnexpectedResponse,
                    format!(
                        "{} has {} bytes free, below min_free {}",
                        config.path.display(),
                        space.free,
                        min.0
                    ),
                ));
            }
        }
        if let Some(min) = config.min_free_inodes {
            if space.free_inodes < min {
                return Err(Failure::new(
                    FailureReason::UnexpectedResponse,
                    format!(
                        "{} has {} inodes free, below min_free_inodes {min}",
                        config.path.display(),
                        space.free_inodes
                    ),
                ));
            }
        }
        if config.canary {
            Self::write_canary(canary)?;
        }
        Ok(space)
    }

    /// Writes, fsyncs, reads back and removes the canary at `canary`.
    fn write_canary(canary: &Path) -> Result<(), Failure> {
        let io = |what: &str, e: std::io::Error| {
            Failure::new(
                FailureReason::Io,
                format!("canary {what} {}: {e}", canary.display()),
            )
        };
        // The directory may be writable by other users, and the agent is root: what stands
        // at the canary's name is never opened. A regular file is a canary an interrupted
        // check left (or a link to one): its name is removed. Anything else (a symlink to
        // /etc/shadow, a FIFO that would block, a device) is refused.
        match std::fs::symlink_metadata(canary) {
            Ok(m) if m.file_type().is_file() => {
                std::fs::remove_file(canary).map_err(|e| io("remove a leftover", e))?;
            }
            Ok(m) => {
                return Err(Failure::new(
                    FailureReason::Io,
                    format!(
                        "canary {}: something that is not a regular file ({:?}) is at that name; refused, remove it",
                        canary.display(),
                        m.file_type()
                    ),
                ))
            }
            Err(_) => {}
        }
        let payload = b"resmon canary\n";
        // Created here or not at all (O_EXCL, no symlink followed), and read back through
        // the same descriptor: no second open for anyone to race.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(canary)
            .map_err(|e| io("create", e))?;
        let written = f
            .write_all(payload)
            .and_then(|_| f.sync_all())
            .and_then(|_| f.seek(std::io::SeekFrom::Start(0)).map(drop));
        if let Err(e) = written {
            let _ = std::fs::remove_file(canary);
            return Err(io("write", e));
        }
        let mut back = Vec::new();
        let read = f.read_to_end(&mut back);
        std::fs::remove_file(canary).map_err(|e| io("remove", e))?;
        read.map_err(|e| io("read", e))?;
        if back != payload {
            return Err(Failure::new(
                FailureReason::Io,
                format!("canary {} read back differently", canary.display()),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Resource for DiskResource {
    async fn online(&self, progress: &Progress) -> Result<(), Failure> {
        if let Some(spec) = &self.config.mount {
            let path = self.config.path.clone();
            if mounted(&path).is_none() {
                // Made by a child too: the agent's own view of the system is read-only.
                if !path.exists() {
                    let mkdir = vec![
                        "mkdir".to_string(),
                        "-p".into(),
                        "--".into(),
                        path.display().to_string(),
                    ];
                    self.run(Role::Start, mkdir).await?;
                }
                let mut argv = vec!["mount".to_string(), "-t".into(), spec.fstype.clone()];
                if let Some(options) = &spec.options {
                    argv.extend(["-o".to_string(), options.clone()]);
                }
                argv.extend([
                    "--".to_string(),
                    spec.source.clone(),
                    path.display().to_string(),
                ]);
                self.run(Role::Start, argv).await?;
            }
        }
        self.is_alive(progress).await
    }

    async fn offline(&self) -> Result<(), Failure> {
        if self.config.mount.is_none() || mounted(&self.config.path).is_none() {
            return Ok(());
        }
        self.run(
            Role::Stop,
            vec![
                "umount".to_string(),
                "--".into(),
                self.config.path.display().to_string(),
            ],
        )
        .await?;
        self.launcher.release().await
    }

    async fn terminate(&self) -> Result<(), Failure> {
        if self.config.mount.is_none() {
            return Ok(());
        }
        if mounted(&self.config.path).is_none() {
            return Ok(());
        }
        // A lazy unmount: nothing more forceful exists, and it cannot hang on busy files.
        self.run(
            Role::Stop,
            vec![
                "umount".to_string(),
                "--lazy".into(),
                "--".into(),
                self.config.path.display().to_string(),
            ],
        )
        .await?;
        self.launcher.release().await
    }

    async fn looks_alive(&self, progress: &Progress) -> Result<(), Failure> {
        let config = self.config.clone();
        blocking(progress, move || Self::check_mounted(&config)).await
    }

    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        let config = self.config.clone();
        let canary = self.config.path.join(&self.canary_name);
        let (result, space) = blocking(progress, move || {
            let result = Self::full_check(&config, &canary).map(|_| ());
            // The space is reported also when the check fails (a full disk above all).
            let space = statvfs(&config.path).ok().map(|s| (s.free, s.size));
            Ok((result, space))
        })
        .await?;
        if let Some((free, size)) = space {
            progress.disk_space(free, size);
        }
        result
    }
}

impl TypeConfig for DiskConfig {
    const NAME: &'static str = "disk";

    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(DiskResource::new(self.clone(), &cx.resource, cx.launcher()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_for_humans() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("100 k"), Some(100_000));
        assert_eq!(parse_size("12 parsecs"), None);
    }

    #[tokio::test]
    async fn the_root_filesystem_is_mounted_and_a_plain_directory_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let r = DiskResource::new(
            toml::from_str(&format!("path = {:?}", dir.path().display().to_string())).unwrap(),
            "t",
            Launcher::new(crate::launch::Children::Fork, "t".into()),
        );
        let f = r.looks_alive(&Progress::default()).await.unwrap_err();
        assert_eq!(f.reason, FailureReason::NotRunning, "{f}");
        let root = DiskResource::new(
            toml::from_str("path = \"/\"\ncanary = false").unwrap(),
            "t",
            Launcher::new(crate::launch::Children::Fork, "t".into()),
        );
        let progress = Progress::default();
        root.is_alive(&progress).await.unwrap();
        let (free, size) = progress.space().unwrap();
        assert!(size >= free && size > 0);
    }

    #[test]
    fn the_canary_never_opens_what_another_user_put_at_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join(".resmon-canary-t");
        // A symlink to a file the agent (root) could write: refused, the file untouched.
        let precious = dir.path().join("precious");
        std::fs::write(&precious, "precious\n").unwrap();
        std::os::unix::fs::symlink(&precious, &canary).unwrap();
        let f = DiskResource::write_canary(&canary).err().unwrap();
        assert!(f.detail.contains("refused"), "{f}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious\n");
        std::fs::remove_file(&canary).unwrap();
        // A FIFO: refused at once, not opened (an open would block).
        nix::unistd::mkfifo(&canary, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let f = DiskResource::write_canary(&canary).err().unwrap();
        assert!(f.detail.contains("refused"), "{f}");
        std::fs::remove_file(&canary).unwrap();
        // A leftover canary (a regular file): removed, and the check passes.
        std::fs::write(&canary, "old").unwrap();
        assert!(DiskResource::write_canary(&canary).is_ok());
        assert!(!canary.exists());
    }
}
