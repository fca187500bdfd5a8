//! Harness for the end-to-end tests and the benchmark: runs the real `resmon` binary on a
//! config written to a temporary directory, reads its JSON event log (stderr) and its HTTP
//! endpoint, and cleans up every process it started (supervised processes outlive the agent by
//! design, so the harness kills them through their pid files).
//!
//! - [`cluster`]: several hosts on one machine (network namespaces on a bridge, a real etcd),
//!   an observer of who holds the VIP, and keepalived's config for the failover benchmark.
//! - [`servers`]: dovecot, postfix and nginx on loopback with a test CA.
//! - [`procfs`]: CPU and memory of a process, read from /proc.
//! - [`nemesis`]: the fault-injection run: three agents, three etcd members, random faults from
//!   a seed, an observer that counts the time two nodes held one VIP.

pub mod cluster;
pub mod nemesis;
pub mod procfs;
pub mod servers;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The directory holding the workspace's built binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary; `RESMON_BIN` overrides `resmon`'s.
pub fn binary(name: &str) -> PathBuf {
    if name == "resmon" {
        if let Some(p) = std::env::var_os("RESMON_BIN") {
            return PathBuf::from(p);
        }
    }
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (the test script does)",
        path.display()
    );
    path
}

/// A count of at least one, for the tools' command lines (clap's `value_parser`): zero
/// resources, rounds or check threads would measure nothing and divide by zero.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count: {e}")),
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released), never one this process was given
/// before: the kernel may hand a released port out again at once, and two servers of one test
/// (dovecot's IMAP and postfix's SMTP) were once given the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Parses the `ts` of an event (RFC 3339 UTC with milliseconds) into Unix seconds.
pub fn event_time(event: &Value) -> f64 {
    let ts = event["ts"].as_str().expect("event has ts");
    // 2026-11-22T02:45:50.342Z
    let (date, time) = ts.trim_end_matches('Z').split_once('T').expect("ts");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let days = days_from_civil(d[0], d[1], d[2]);
    let secs = days * 86400 + t[0] * 3600 + t[1] * 60 + t[2];
    secs as f64 + format!("0.{frac}").parse::<f64>().unwrap()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    /// Temporary directory: config, state dir, event log.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The HTTP endpoint.
    pub address: String,
    log: PathBuf,
    env: Vec<(String, String)>,
    netns: Option<String>,
    /// The agent's binary when not this build's (a rolling upgrade runs two).
    bin: Option<PathBuf>,
}

/// What [`Agent::measure`] saw.
pub struct Measurement {
    /// The exposition at the start.
    pub before: String,
    /// The exposition at the end.
    pub after: String,
    /// The agent's CPU time in between; its user-space part is steadier than the kernel's,
    /// which pays for waking the servers and so swings with their timing.
    pub cpu: procfs::CpuTimes,
    /// The time in between.
    pub elapsed_seconds: f64,
}

impl Agent {
    /// Writes `body` (the config without `[agent]`) and starts the agent on it. The `[agent]`
    /// section is added here: a free port and a state dir inside the temp dir.
    pub fn start(body: &str) -> Agent {
        Self::start_with(body, "")
    }

    /// Like [`Agent::start`], with extra `[agent]` keys.
    pub fn start_with(body: &str, agent_extra: &str) -> Agent {
        Self::start_env(body, agent_extra, &[])
    }

    /// Like [`Agent::start_with`], with extra environment variables for the agent.
    pub fn start_env(body: &str, agent_extra: &str, env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("resmon-e2e")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("resmon.toml");
        let state = dir.path().join("state");
        std::fs::write(
            &config,
            format!(
                "[agent]\nlisten = \"{address}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n{agent_extra}\n{body}",
                state.display(),
                dir.path().join("control.sock").display()
            ),
        )
        .unwrap();
        let mut agent = Agent {
            child: None,
            log: dir.path().join("events-0.log"),
            dir,
            config,
            address,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            netns: None,
            bin: None,
        };
        agent.spawn();
        agent
    }

    /// Starts the agent inside the network namespace `netns` on a whole config file of the
    /// caller's (its `[agent]` section included); `listen` is its `agent.listen`, reached from
    /// inside the namespace.
    pub fn start_in_netns(text: &str, listen: &str, netns: &str) -> Agent {
        Self::netns_agent(text, listen, netns, None)
    }

    /// Like [`Agent::start_in_netns`], running the agent binary `bin`.
    pub fn start_in_netns_with(text: &str, listen: &str, netns: &str, bin: &Path) -> Agent {
        Self::netns_agent(text, listen, netns, Some(bin.to_path_buf()))
    }

    fn netns_agent(text: &str, listen: &str, netns: &str, bin: Option<PathBuf>) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("resmon-e2e")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("resmon.toml");
        std::fs::write(&config, text).unwrap();
        let mut agent = Agent {
            child: None,
            log: dir.path().join("events-0.log"),
            dir,
            config,
            address: listen.to_string(),
            env: Vec::new(),
            netns: Some(netns.to_string()),
            bin,
        };
        agent.spawn();
        agent
    }

    /// The binary this agent runs, and its command line uses.
    pub fn bin(&self) -> PathBuf {
        self.bin.clone().unwrap_or_else(|| binary("resmon"))
    }

    /// Stops the agent (SIGTERM: what it keeps goes on running) and starts `bin` in its place
    /// on the same config and state, as a package upgrade does.
    pub fn upgrade(&mut self, bin: &Path) {
        self.signal(libc::SIGTERM);
        assert!(
            self.wait_exit(Duration::from_secs(20)).is_some(),
            "the agent did not exit on SIGTERM"
        );
        self.bin = Some(bin.to_path_buf());
        self.spawn();
    }

    /// Starts (or restarts) the agent process on the same config and state.
    pub fn spawn(&mut self) {
        let n = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("events-")
            })
            .count();
        self.log = self.dir.path().join(format!("events-{n}.log"));
        let log = std::fs::File::create(&self.log).unwrap();
        let mut command = match &self.netns {
            Some(netns) => {
                // `ip netns exec` mounts a sysfs of the namespace's own, without the cgroup2
                // hierarchy under it: mounted again, as on any host, so that a process that
                // leaves its session (postfix's master) is tracked in its cgroup there too.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, "sh", "-c"])
                    .arg(
                        "mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup; \
                         exec \"$0\" \"$@\"",
                    )
                    .arg(self.bin());
                c
            }
            None => Command::new(self.bin()),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start resmon");
        self.child = Some(child);
        self.wait_for("the HTTP endpoint", Duration::from_secs(20), |a| {
            a.get("/healthz")
                .map(|(code, _)| code == 200)
                .unwrap_or(false)
        });
    }

    /// The agent's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Measures the agent over `measure`: one scrape at each end, then its CPU and the clock
    /// read together. A scrape of 10,000 resources takes a second or more when the agent is
    /// saturated; reading the CPU before it (or scraping twice) counted that second in the CPU
    /// but not in the elapsed time.
    pub fn measure(&self, measure: Duration) -> Measurement {
        let pid = self.pid();
        let before = self.metrics();
        let (cpu0, t0) = (procfs::cpu_times(pid), Instant::now());
        std::thread::sleep(measure);
        let after = self.metrics();
        let (cpu1, elapsed) = (procfs::cpu_times(pid), t0.elapsed());
        Measurement {
            before,
            after,
            cpu: cpu1.since(cpu0),
            elapsed_seconds: elapsed.as_secs_f64(),
        }
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we started.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the agent to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `resmon ARGS --config <this agent's config>`: exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut command = match &self.netns {
            // Inside the node's namespace, where etcd's address is reachable.
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(self.bin());
                c
            }
            None => Command::new(self.bin()),
        };
        let out = command
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run resmon");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Whether the agent process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Replaces the config body (keeping `[agent]`).
    pub fn rewrite_config(&self, body: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let agent_part = text.split("\n\n").next().unwrap().to_string();
        std::fs::write(&self.config, format!("{agent_part}\n\n{body}")).unwrap();
    }

    /// How many check threads (`resmon-checks-N`) the agent runs.
    pub fn check_threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with("resmon-checks-"))
            .count()
    }

    /// Adds a line to `[agent]`, keeping the rest of the file.
    pub fn add_agent_key(&self, line: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let (agent_part, rest) = text.split_once("\n\n").unwrap();
        std::fs::write(&self.config, format!("{agent_part}\n{line}\n\n{rest}")).unwrap();
    }

    /// Writes the config file verbatim.
    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// A GET on the agent's endpoint: status code and body.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        match &self.netns {
            Some(netns) => in_netns(netns, || http_get(&self.address, path)),
            None => http_get(&self.address, path),
        }
    }

    /// `/api/v1/status` as JSON.
    pub fn status(&self) -> Value {
        let (code, body) = self.get("/api/v1/status").expect("status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status json")
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        self.get("/metrics").expect("metrics").1
    }

    /// A resource's state from the status API.
    pub fn state(&self, group: &str, resource: &str) -> String {
        self.resource(group, resource)["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A resource's status object.
    pub fn resource(&self, group: &str, resource: &str) -> Value {
        self.find_resource(group, resource)
            .unwrap_or_else(|| panic!("no resource {group}/{resource} in the status"))
    }

    /// A resource's status object, if the agent runs it.
    pub fn find_resource(&self, group: &str, resource: &str) -> Option<Value> {
        let status = self.status();
        let g = status["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == group)?;
        g["resources"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == resource)
            .cloned()
    }

    /// Every event line the current agent process logged so far.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect()
    }

    /// The events named `name` about `resource` (any resource when empty).
    pub fn events_of(&self, name: &str, resource: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name && (resource.is_empty() || e["resource"] == resource))
            .collect()
    }

    /// The `state_changed` events of one resource as `from->to(cause)` strings.
    pub fn transitions(&self, resource: &str) -> Vec<String> {
        self.events_of("state_changed", resource)
            .iter()
            .map(|e| {
                format!(
                    "{}->{}({})",
                    e["from"].as_str().unwrap(),
                    e["to"].as_str().unwrap(),
                    e["cause"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// Polls `cond` every 20 ms until it holds; panics with `what` and the event log after
    /// `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, cond: impl FnMut(&Agent) -> bool) {
        if self.try_wait_for(timeout, cond) {
            return;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("timed out after {timeout:?} waiting for {what}; event log:\n{log}");
    }

    /// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false).
    pub fn try_wait_for(&self, timeout: Duration, mut cond: impl FnMut(&Agent) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits until a resource is in `state`.
    pub fn wait_state(&self, group: &str, resource: &str, state: &str, timeout: Duration) {
        self.wait_for(&format!("{group}/{resource} to be {state}"), timeout, |a| {
            a.get("/api/v1/status").is_ok()
                && a.find_resource(group, resource)
                    .is_some_and(|r| r["state"] == state)
        });
    }

    /// The pid in a process resource's pid file.
    pub fn pid_of(&self, group: &str, resource: &str) -> Option<i32> {
        let path = self
            .dir
            .path()
            .join("state")
            .join(group)
            .join(format!("{resource}.pid"));
        std::fs::read_to_string(path)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Kills every process group named in a pid file under the state dir.
    pub fn kill_supervised(&self) {
        let state = self.dir.path().join("state");
        for group in std::fs::read_dir(&state).into_iter().flatten().flatten() {
            for file in std::fs::read_dir(group.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if file.path().extension().is_some_and(|e| e == "pid") {
                    if let Some(pid) = std::fs::read_to_string(file.path())
                        .ok()
                        .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok())
                    {
                        // SAFETY: signalling a process group we started.
                        unsafe {
                            libc::kill(-pid, libc::SIGKILL);
                        }
                    }
                    // And what left the group: the resource's cgroup.
                    if let Ok(cgroup) = resmon_probes::cgroup::Cgroup::for_resource(
                        &file.path().with_extension("cgroup"),
                    ) {
                        cgroup.kill();
                        for _ in 0..50 {
                            if !cgroup.populated() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        cgroup.remove();
                    }
                }
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the agent said last, for a failure seen only in CI.
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of the agent at {} ({}):",
                self.address,
                self.netns.as_deref().unwrap_or("host")
            );
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_supervised();
    }
}

/// Whether a process is alive (and not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
        Err(_) => false,
    }
}

/// Runs `f` on a thread that entered the network namespace `netns` (`/run/netns/<netns>`): a
/// socket made there stays in it.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let file = std::fs::File::open(&path).expect("open the namespace");
                // SAFETY: setns on a valid descriptor; it changes only this thread's namespace.
                let entered = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                };
                assert_eq!(
                    entered,
                    0,
                    "setns {path}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A GET over a fresh connection: status code and body.
pub fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(address)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The sum of every sample of a metric whose line starts with `prefix` in a `/metrics` text.
pub fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How many resources are `online` in a `/metrics` text.
pub fn online_resources(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("resmon_resource_state{state=\"online\"") && l.ends_with(" 1"))
        .count()
}

/// Path of the test daemon, for `command` arrays.
pub fn testd() -> String {
    binary("resmon-testd").display().to_string()
}

/// Writes `text` as a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
