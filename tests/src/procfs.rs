//! What the benchmarks read from /proc about the processes they measure, and about the
//! loopback network their servers share.

/// Raises the open-files limit (inherited by the agent) for 10,000 resources: to 65,536, or,
/// where the process may not raise its hard limit (no `CAP_SYS_RESOURCE`, as in some VMs and
/// containers), to the hard limit. Returns the limit it got.
pub fn raise_fd_limit() -> u64 {
    let wanted = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit and getrlimit with valid structs.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0
            && libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// User plus system CPU seconds of a process.
pub fn cpu_seconds(pid: i32) -> f64 {
    cpu_times(pid).total()
}

/// A process's CPU seconds, in user space and in the kernel, read together.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// User-space seconds.
    pub user: f64,
    /// Kernel seconds.
    pub system: f64,
}

impl CpuTimes {
    /// User plus system.
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// What was spent between the reading `earlier` and this one.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// A process's CPU seconds now.
pub fn cpu_times(pid: i32) -> CpuTimes {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let seconds = |i: usize| fields[i].parse::<f64>().unwrap() / hz;
    CpuTimes {
        user: seconds(11),
        system: seconds(12),
    }
}

/// Peak resident set size of a process, in KiB.
pub fn peak_rss_kib(pid: i32) -> f64 {
    status_kib(pid, "VmHWM:")
}

/// Resident set size of a process now, in KiB.
pub fn rss_kib(pid: i32) -> f64 {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: i32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The kernel's count of connects that found a listen queue full (`TcpExt: ListenOverflows` in
/// /proc/net/netstat): each is a SYN dropped and a connect that waits a second to try again,
/// a fault of the benchmark's servers that a window must not measure unseen.
pub fn listen_overflows() -> u64 {
    let Ok(netstat) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (tcp_ext.next(), tcp_ext.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}
