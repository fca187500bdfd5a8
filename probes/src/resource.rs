//! The resource contract: what every resource type implements.

use async_trait::async_trait;
use resmon_policies::FailureReason;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Why a call failed: a reason from the fixed enum (a metric label) and a detail for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The reason, from a closed set.
    pub reason: FailureReason,
    /// What exactly happened, for the event log (never a metric label).
    pub detail: String,
}

impl Failure {
    /// A failure with a reason and a detail.
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> Self {
        Failure {
            reason,
            detail: detail.into(),
        }
    }

    /// Maps an I/O error onto the reason enum, keeping the error text as the detail.
    pub fn from_io(context: &str, err: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        // A TLS alert after the handshake (TLS 1.3 sends "certificate required" there).
        if err
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return Failure::new(FailureReason::TlsHandshake, format!("{context}: {err}"));
        }
        let reason = match err.kind() {
            ConnectionRefused => FailureReason::Refused,
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                FailureReason::Reset
            }
            HostUnreachable | NetworkUnreachable | AddrNotAvailable => FailureReason::Unreachable,
            TimedOut => FailureReason::Timeout,
            _ => FailureReason::Io,
        };
        Failure::new(reason, format!("{context}: {err}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Failure {}

/// How far a check has got: the runtime reads it when the check's deadline passes, to tell a
/// connect that hung from a banner that never came (probes own no deadlines, so they cannot
/// tell themselves), and when the check ends, to export what it learnt on the way (the TLS
/// peer certificate's validity), also when the check failed.
#[derive(Debug, Default)]
pub struct Progress {
    inner: Mutex<ProgressState>,
    /// Made by the first blocking call. Most resource types never make one, and made up front
    /// it is one more allocation that every check reads from cold memory to learn it is zero.
    blocking: std::sync::OnceLock<std::sync::Arc<BlockingCount>>,
}

/// The stages a check goes through; the one it is in when its deadline passes names the reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// Nothing started yet, or a stage with no reason of its own.
    #[default]
    Other,
    /// Resolving the target's host name.
    Resolve,
    /// Opening the TCP connection.
    Connect,
    /// The TLS handshake.
    TlsHandshake,
    /// Waiting for the server's greeting.
    Banner,
    /// A later exchange (a command's answer, an HTTP response).
    Exchange,
}

/// A certificate's validity period, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CertValidity {
    /// NotBefore.
    pub not_before: f64,
    /// NotAfter.
    pub not_after: f64,
}

#[derive(Debug)]
struct ProgressState {
    stage: Stage,
    /// The first bytes received, in place rather than in a buffer of their own (one cache
    /// line fewer to fetch per check, at ten thousand checks a second).
    received: [u8; KEPT_BYTES],
    received_len: usize,
    peer_certificate: Option<CertValidity>,
    disk_space: Option<(u64, u64)>,
    /// A process tree's usage, and its CPU rate in cores since the previous reading.
    usage: Option<(crate::usage::Usage, Option<f64>)>,
}

impl Default for ProgressState {
    fn default() -> Self {
        ProgressState {
            stage: Stage::Other,
            received: [0; KEPT_BYTES],
            received_len: 0,
            peer_certificate: None,
            disk_space: None,
            usage: None,
        }
    }
}

impl ProgressState {
    fn received(&self) -> &[u8] {
        &self.received[..self.received_len]
    }
}

/// Blocking threads of a call still running, and a bell rung as each returns.
#[derive(Debug, Default)]
struct BlockingCount {
    running: std::sync::atomic::AtomicUsize,
    returned: tokio::sync::Notify,
}

/// Counts a blocking call while its thread runs; see [`Progress::blocking_guard`].
#[derive(Debug)]
pub struct BlockingGuard(std::sync::Arc<BlockingCount>);

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.returned.notify_waiters();
    }
}

/// How many received bytes are kept to explain a failure.
pub const KEPT_BYTES: usize = 128;

impl Progress {
    fn state(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes it new again for the next call, keeping its buffer: a check a second for 10,000
    /// resources should not allocate what the last one already had.
    pub fn reset(&self) {
        let mut s = self.state();
        s.stage = Stage::Other;
        s.received_len = 0;
        s.peer_certificate = None;
        s.disk_space = None;
        s.usage = None;
    }

    /// Enters a stage.
    pub fn stage(&self, stage: Stage) {
        self.state().stage = stage;
    }

    /// Keeps the first bytes received, for the failure's detail.
    pub fn received(&self, bytes: &[u8]) {
        let mut s = self.state();
        let at = s.received_len;
        let n = bytes.len().min(KEPT_BYTES - at);
        s.received[at..at + n].copy_from_slice(&bytes[..n]);
        s.received_len += n;
    }

    /// Records the TLS peer certificate's validity.
    pub fn peer_certificate(&self, validity: CertValidity) {
        self.state().peer_certificate = Some(validity);
    }

    /// A guard to move into a blocking thread: while it lives, [`Progress::blocking_in_flight`]
    /// counts the thread, so the runtime knows a timed-out check is still stuck in the kernel.
    pub fn blocking_guard(&self) -> BlockingGuard {
        let count = self.blocking.get_or_init(Default::default);
        count
            .running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        BlockingGuard(count.clone())
    }

    /// Blocking threads of this call still running.
    pub fn blocking_in_flight(&self) -> usize {
        self.blocking.get().map_or(0, |count| {
            count.running.load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// Resolves once no blocking thread of this call runs any more: how the runtime learns
    /// that a stuck check's thread came back from the kernel.
    pub async fn blocking_returned(&self) {
        let Some(count) = self.blocking.get() else {
            return;
        };
        loop {
            let returned = count.returned.notified();
            tokio::pin!(returned);
            // Registered before the count is read, so a return in between is not missed.
            returned.as_mut().enable();
            if self.blocking_in_flight() == 0 {
                return;
            }
            returned.await;
        }
    }

    /// Records a filesystem's free and total bytes.
    pub fn disk_space(&self, free: u64, size: u64) {
        self.state().disk_space = Some((free, size));
    }

    /// Records what a process tree uses, and its CPU rate in cores, when known.
    pub fn usage(&self, usage: crate::usage::Usage, cores: Option<f64>) {
        self.state().usage = Some((usage, cores));
    }

    /// The usage recorded, if any.
    pub fn tree_usage(&self) -> Option<(crate::usage::Usage, Option<f64>)> {
        self.state().usage
    }

    /// The free and total bytes recorded, if any.
    pub fn space(&self) -> Option<(u64, u64)> {
        self.state().disk_space
    }

    /// The certificate seen, if any.
    pub fn certificate(&self) -> Option<CertValidity> {
        self.state().peer_certificate
    }

    /// The failure a deadline means at the current stage.
    pub fn timed_out(&self, limit: &str) -> Failure {
        let s = self.state();
        let (reason, doing) = match s.stage {
            Stage::Resolve => (FailureReason::Dns, "resolving the name"),
            Stage::Connect => (FailureReason::ConnectTimeout, "connecting"),
            Stage::TlsHandshake => (FailureReason::TlsHandshake, "in the TLS handshake"),
            Stage::Banner => (FailureReason::BannerTimeout, "waiting for the banner"),
            Stage::Exchange => (FailureReason::Timeout, "waiting for an answer"),
            Stage::Other => (FailureReason::Timeout, "running"),
        };
        let mut detail = format!("still {doing} when {limit} passed");
        if s.received_len > 0 {
            detail += &format!("; received {}", escape_bytes(s.received()));
        }
        Failure::new(reason, detail)
    }
}

/// Bytes as an escaped, quoted string for a log line: `"220-mail\r\n"`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes.iter().take(KEPT_BYTES) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    if bytes.len() > KEPT_BYTES {
        out.push_str("...");
    }
    out
}

/// Runs blocking work (filesystem calls, reading trust files) on a blocking thread. The runtime may stop waiting at its
/// deadline; the thread is counted in `progress` until it returns, so a check stuck in the
/// kernel is seen as stuck, and not started again, for as long as it lasts.
pub async fn blocking<T, F>(progress: &Progress, f: F) -> Result<T, Failure>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Failure> + Send + 'static,
{
    let guard = progress.blocking_guard();
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        f()
    })
    .await
    .map_err(|e| Failure::new(FailureReason::Panic, format!("blocking call: {e}")))?
}

/// One kept thing, as a resource DLL keeps it for the cluster's resource monitor.
///
/// Every method may be slow or hang: the runtime runs each under its own deadline on a task of
/// its own and never calls the same check twice at once. A method that must block the thread
/// (statvfs on a dead NFS mount, a synchronous D-Bus call) uses `spawn_blocking` itself.
/// Construction from config is WSFC's Open and `Drop` its Close: neither touches the service.
#[async_trait]
pub trait Resource: Send + Sync + 'static {
    /// Looks for an instance that survived an agent restart and attaches to it. Returns
    /// `Ok(true)` when it is there and alive: the runtime then marks it online without starting
    /// it again. The default asks `is_alive`.
    async fn adopt(&self) -> Result<bool, Failure> {
        Ok(self.is_alive(&Progress::default()).await.is_ok())
    }

    /// Brings the resource online; returns once it is ready. `progress` plays the same part as
    /// for the checks.
    async fn online(&self, progress: &Progress) -> Result<(), Failure>;

    /// Takes it offline in an orderly way; returns once it is down.
    async fn offline(&self) -> Result<(), Failure>;

    /// Stops it forcefully; must not hang.
    async fn terminate(&self) -> Result<(), Failure>;

    /// The cheap check; `progress` tells the runtime how far it got.
    async fn looks_alive(&self, progress: &Progress) -> Result<(), Failure>;

    /// The thorough check; `progress` tells the runtime how far it got.
    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure>;

    /// Whether [`Resource::failure`] ever resolves.
    fn provides_failure_signal(&self) -> bool {
        false
    }

    /// Whether online only checks something this agent does not start (a server's port, its
    /// banner, a URL, a name): the runtime then repeats it, each attempt under `check_timeout`,
    /// until one passes or `pending_timeout` passes, rather than waiting `pending_timeout` on
    /// a server that accepted and stays silent.
    fn online_is_a_check(&self) -> bool {
        false
    }

    /// Resolves when the resource sees itself fail between polls (a child's exit, an address
    /// removed). The runtime awaits it only while the resource is online; the default never
    /// resolves.
    async fn failure(&self) -> Failure {
        std::future::pending().await
    }
}

/// Where a resource runs: what it may need besides its own properties.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The agent's state directory (pid files, logs of supervised processes).
    pub state_dir: PathBuf,
    /// The group's name.
    pub group: String,
    /// The resource's name.
    pub resource: String,
    /// Trust material shared by the TLS resources of one config.
    pub trust: crate::tls::TrustCache,
    /// The resource's `check_timeout`: it also bounds the checks a type runs inside an
    /// operation (a readiness check while coming online).
    pub check_timeout: std::time::Duration,
    /// Where the children that change the system run (`[agent] children`, resolved).
    pub children: crate::launch::Children,
    /// The addresses of the group's `ip` resources, by name: what a `source_address` naming
    /// one binds to.
    pub addresses: std::collections::BTreeMap<String, std::net::IpAddr>,
}

impl BuildContext {
    /// The stem of this resource's transient unit names.
    pub fn unit_stem(&self) -> String {
        crate::launch::unit_stem(&self.state_file("unit"))
    }

    /// The address a check's `source_address` stands for (validate made sure that a name
    /// names an `ip` resource of the group).
    pub fn source(
        &self,
        source: &Option<crate::values::SourceAddress>,
    ) -> Option<std::net::IpAddr> {
        match source.as_ref()? {
            crate::values::SourceAddress::Ip(ip) => Some(*ip),
            crate::values::SourceAddress::Resource(name) => self.addresses.get(name).copied(),
        }
    }

    /// Where this resource's start and stop commands run.
    pub fn launcher(&self) -> crate::launch::Launcher {
        crate::launch::Launcher::new(self.children.clone(), self.unit_stem())
    }

    /// A file of this resource's under the state directory: `<state_dir>/<group>/<resource>.<ext>`.
    pub fn state_file(&self, extension: &str) -> PathBuf {
        self.state_dir
            .join(&self.group)
            .join(format!("{}.{extension}", self.resource))
    }
}

/// A problem in a type's private properties that only shows once they are all read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key the problem is about, relative to the resource.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// What a resource type's config says about its type: its name in the config, whether it
/// reports failures between polls, its cross-key checks and how it builds. Every type lists
/// its config once in [`crate::registry`].
pub trait TypeConfig {
    /// The `type = "..."` value.
    const NAME: &'static str;
    /// Whether its resources report failures between polls ([`Resource::failure`]).
    const FAILURE_SIGNAL: bool = false;

    /// Checks that need several keys at once: `(key, message)` pairs.
    fn validate(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// What `validate` warns about without refusing the config: `(key, message)` pairs (a
    /// secret file every user can read).
    fn warnings(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Whether its terminate waits on the service's own stop (a systemd unit, an OCF agent, a
    /// stop script), so that only `terminate_timeout` bounds it. A terminate that is a signal,
    /// a netlink request, a lazy unmount or nothing at all does not.
    fn terminate_waits(&self) -> bool {
        false
    }

    /// Its `source_address`, for the network checks that have one.
    fn source_address(&self) -> Option<&crate::values::SourceAddress> {
        None
    }

    /// How many checks in a row must find a usage limit exceeded before it is a failure
    /// (`limits.for_checks`, for the types that have `limits`); the controller counts them.
    fn limit_checks(&self) -> u32 {
        1
    }

    /// The runnable resource (WSFC's Open: no side effect on the service).
    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource>;
}
