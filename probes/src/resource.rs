//! The resource contract: what every resource type implements.

use async_trait::async_trait;
use resmon_policies::FailureReason;
use std::fmt;

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
        Ok(self.is_alive().await.is_ok())
    }

    /// Brings the resource online; returns once it is ready.
    async fn online(&self) -> Result<(), Failure>;

    /// Takes it offline in an orderly way; returns once it is down.
    async fn offline(&self) -> Result<(), Failure>;

    /// Stops it forcefully; must not hang.
    async fn terminate(&self) -> Result<(), Failure>;

    /// The cheap check.
    async fn looks_alive(&self) -> Result<(), Failure>;

    /// The thorough check.
    async fn is_alive(&self) -> Result<(), Failure>;

    /// Whether [`Resource::failure`] ever resolves.
    fn provides_failure_signal(&self) -> bool {
        false
    }

    /// Resolves when the resource sees itself fail between polls (a child's exit, an address
    /// removed). The runtime awaits it only while the resource is online; the default never
    /// resolves.
    async fn failure(&self) -> Failure {
        std::future::pending().await
    }
}
