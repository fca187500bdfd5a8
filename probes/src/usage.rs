//! Resource-usage conditions for `process` and `service` resources, as monit users write
//! `if totalmem > 200 MB for 5 cycles then restart`: at each `is_alive`, the CPU, memory,
//! threads and open descriptors of the process tree (the main process and every descendant,
//! read from `/proc`) are read, exported, and compared with the resource's `limits`; a limit
//! exceeded fails the check with the reason `resource_limit`, which the controller counts:
//! `for_checks` of them in a row are a failure.

use crate::resource::{Failure, Progress};
use resmon_policies::FailureReason;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// A size in bytes, written `"200MB"`, `"1.5GiB"`, `"512kB"` or a plain number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("invalid size {s:?}: write it like \"200MB\" or \"1GiB\""))?;
        let factor: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "kB" | "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {other:?} (B, kB, MB, GB, KiB, MiB, GiB)"
                ))
            }
        };
        Ok(ByteSize((number * factor).round() as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `limits = { max_memory = "200MB", max_cpu = 0.9, max_threads = 500, max_fds = 1000, for_checks = 5 }`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageLimits {
    /// Resident memory of the whole tree.
    pub max_memory: Option<ByteSize>,
    /// CPU time per second of wall time since the previous check, in cores (0.9: 90% of one).
    pub max_cpu: Option<f64>,
    /// Threads of the whole tree.
    pub max_threads: Option<u64>,
    /// Open file descriptors of the whole tree.
    pub max_fds: Option<u64>,
    /// Checks in a row a limit must be exceeded at before it is a failure.
    #[serde(default = "one")]
    pub for_checks: u32,
}

fn one() -> u32 {
    1
}

impl UsageLimits {
    /// The controller's count for a resource with `limits`: `for_checks`, or 1 without limits.
    pub fn checks(limits: Option<&UsageLimits>) -> u32 {
        limits.map_or(1, |l| l.for_checks)
    }

    /// A limit that could never be met, or limits that say nothing, are config errors.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.max_memory.is_none()
            && self.max_cpu.is_none()
            && self.max_threads.is_none()
            && self.max_fds.is_none()
        {
            errors.push((
                "limits",
                "names no limit: set max_memory, max_cpu, max_threads or max_fds".into(),
            ));
        }
        if let Some(cpu) = self.max_cpu {
            if !(cpu.is_finite() && cpu > 0.0) {
                errors.push((
                    "limits",
                    format!("max_cpu {cpu} must be a number of cores above 0"),
                ));
            }
        }
        if self.for_checks == 0 {
            errors.push(("limits", "for_checks must be at least 1".into()));
        }
        errors
    }
}

/// What a process tree uses now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Resident bytes.
    pub memory_bytes: u64,
    /// CPU seconds used so far (user and system), by the processes alive now.
    pub cpu_seconds: f64,
    /// Threads.
    pub threads: u64,
    /// Open descriptors.
    pub fds: u64,
    /// Processes counted.
    pub processes: u64,
}

/// The usage of `root` and every process descended from it, from `/proc`.
pub fn tree_usage(root: i32) -> std::io::Result<Usage> {
    let ticks = tick_rate();
    let page = page_size();
    // Every process's parent, then the descendants of `root`.
    let mut parents: BTreeMap<i32, i32> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(ppid) = stat_fields(&stat).and_then(|f| f.get(1)?.parse().ok()) {
                parents.insert(pid, ppid);
            }
        }
    }
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for (child, parent) in parents {
        children.entry(parent).or_default().push(child);
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(c) = children.get(&tree[i]) {
            tree.extend(c);
        }
        i += 1;
    }
    let mut usage = Usage::default();
    for pid in tree {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        let Some(f) = stat_fields(&stat) else {
            continue;
        };
        // After the command: state(0) ppid(1) ... utime(11) stime(12) ... num_threads(17) ...
        // rss(21), in pages.
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        usage.cpu_seconds += (num(11) + num(12)) as f64 / ticks;
        usage.threads += num(17);
        usage.memory_bytes += num(21) * page;
        usage.fds += std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        usage.processes += 1;
    }
    Ok(usage)
}

/// The fields of `/proc/<pid>/stat` after the command (which may hold spaces and parentheses).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

fn tick_rate() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}

/// One resource's limits, and its previous reading for the CPU rate. How many checks in a row
/// found a limit exceeded is the controller's to count (`limits.for_checks`).
pub struct UsageWatch {
    limits: Option<UsageLimits>,
    /// The previous reading's time and CPU seconds, for the CPU rate.
    last_cpu: Mutex<Option<(Instant, f64)>>,
}

impl UsageWatch {
    /// A watch of `limits` (none: usage is read and exported, never judged).
    pub fn new(limits: Option<UsageLimits>) -> UsageWatch {
        UsageWatch {
            limits,
            last_cpu: Mutex::new(None),
        }
    }

    /// Reads the tree of `root`, reports it through `progress`, and judges it.
    pub async fn check(&self, root: i32, progress: &Progress) -> Result<(), Failure> {
        let usage = crate::resource::blocking(progress, move || {
            tree_usage(root).map_err(|e| Failure::from_io("read /proc", &e))
        })
        .await?;
        let now = Instant::now();
        let cores = {
            let mut last = self.last_cpu.lock().unwrap_or_else(|e| e.into_inner());
            let rate = last.and_then(|(at, cpu)| {
                let wall = now.duration_since(at).as_secs_f64();
                (wall > 0.0).then(|| ((usage.cpu_seconds - cpu) / wall).max(0.0))
            });
            *last = Some((now, usage.cpu_seconds));
            rate
        };
        progress.usage(usage, cores);
        self.judge(&usage, cores)
    }

    fn judge(&self, usage: &Usage, cores: Option<f64>) -> Result<(), Failure> {
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        let mut over = Vec::new();
        if let Some(max) = limits.max_memory {
            if usage.memory_bytes > max.0 {
                over.push(format!("memory {} > {} bytes", usage.memory_bytes, max.0));
            }
        }
        if let (Some(max), Some(cores)) = (limits.max_cpu, cores) {
            if cores > max {
                over.push(format!("cpu {cores:.2} > {max} cores"));
            }
        }
        if let Some(max) = limits.max_threads {
            if usage.threads > max {
                over.push(format!("threads {} > {max}", usage.threads));
            }
        }
        if let Some(max) = limits.max_fds {
            if usage.fds > max {
                over.push(format!("open descriptors {} > {max}", usage.fds));
            }
        }
        if over.is_empty() {
            return Ok(());
        }
        Err(Failure::new(
            FailureReason::ResourceLimit,
            format!("{} ({} processes)", over.join(", "), usage.processes),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!("200MB".parse(), Ok(ByteSize(200_000_000)));
        assert_eq!("1.5GiB".parse(), Ok(ByteSize(1_610_612_736)));
        assert_eq!("512".parse(), Ok(ByteSize(512)));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn this_process_tree_is_read_and_judged_at_each_check() {
        let usage = tree_usage(std::process::id() as i32).unwrap();
        assert!(usage.memory_bytes > 1_000_000, "{usage:?}");
        assert!(usage.threads >= 1 && usage.fds >= 3 && usage.processes >= 1);
        let watch = UsageWatch::new(Some(UsageLimits {
            max_memory: Some(ByteSize(1)),
            max_cpu: None,
            max_threads: None,
            max_fds: None,
            for_checks: 2,
        }));
        let e = watch.judge(&usage, None).unwrap_err();
        assert_eq!(e.reason, FailureReason::ResourceLimit);
        assert!(
            e.detail
                .starts_with(&format!("memory {} > 1 bytes (", usage.memory_bytes)),
            "{}",
            e.detail
        );
        assert!(watch.judge(&Usage::default(), None).is_ok());
        assert!(UsageWatch::new(None).judge(&usage, None).is_ok());
    }
}
