//! Closed vocabularies shared by the policy, the probes and the metrics.
//!
//! [`FailureReason`] is used as a Prometheus label value, so it is a fixed enum: a probe maps
//! whatever went wrong onto one of these, and keeps the details for the log.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a check, an operation or a failure signal reported failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The runtime's deadline for the call elapsed before it returned.
    Timeout,
    /// The peer refused the TCP connection.
    Refused,
    /// The TCP connection was not established before the deadline.
    ConnectTimeout,
    /// Connected, but the server's greeting did not come before the deadline.
    BannerTimeout,
    /// The greeting (or another answer) was not the one expected.
    UnexpectedBanner,
    /// The TLS handshake failed or did not finish (certificate not trusted, wrong name...).
    TlsHandshake,
    /// The peer's certificate has expired, is not valid yet, or expires within the configured
    /// window.
    TlsExpired,
    /// The HTTP status was not one of the expected ones.
    HttpStatus,
    /// The HTTP body did not hold what was expected.
    HttpBody,
    /// The name does not exist.
    Nxdomain,
    /// The name server failed to answer.
    Servfail,
    /// The name resolves, but not to the expected address.
    WrongAddress,
    /// The network or host is unreachable.
    Unreachable,
    /// The peer reset or closed the connection too early.
    Reset,
    /// The peer answered, but not what was expected.
    UnexpectedResponse,
    /// A TLS handshake or certificate problem.
    Tls,
    /// A name could not be resolved.
    Dns,
    /// Another I/O error.
    Io,
    /// A supervised process exited by itself.
    Exited,
    /// A supervised process was killed by a signal.
    Killed,
    /// The thing the resource keeps is not running (no process, unit inactive).
    NotRunning,
    /// A readiness check did not pass while the resource came online.
    NotReady,
    /// A process could not be started at all.
    Spawn,
    /// The resource type's code panicked: only this resource is affected.
    Panic,
    /// The check was not started because the previous one is still stuck.
    Stuck,
    /// An address the resource keeps is not on its interface.
    AddressMissing,
    /// The network interface is down, has no carrier, or is gone.
    LinkDown,
    /// The service manager reports the unit failed (its process crashed or exited non-zero).
    UnitFailed,
    /// The process tree used more than a `limits` allows, for as many checks in a row as it says.
    ResourceLimit,
}

impl FailureReason {
    /// Every reason, for tests and for pre-declaring label values.
    pub const ALL: [FailureReason; 29] = [
        FailureReason::Timeout,
        FailureReason::Refused,
        FailureReason::ConnectTimeout,
        FailureReason::BannerTimeout,
        FailureReason::UnexpectedBanner,
        FailureReason::TlsHandshake,
        FailureReason::TlsExpired,
        FailureReason::HttpStatus,
        FailureReason::HttpBody,
        FailureReason::Nxdomain,
        FailureReason::Servfail,
        FailureReason::WrongAddress,
        FailureReason::Unreachable,
        FailureReason::Reset,
        FailureReason::UnexpectedResponse,
        FailureReason::Tls,
        FailureReason::Dns,
        FailureReason::Io,
        FailureReason::Exited,
        FailureReason::Killed,
        FailureReason::NotRunning,
        FailureReason::NotReady,
        FailureReason::Spawn,
        FailureReason::Panic,
        FailureReason::Stuck,
        FailureReason::AddressMissing,
        FailureReason::LinkDown,
        FailureReason::UnitFailed,
        FailureReason::ResourceLimit,
    ];

    /// The label value, as it appears on `/metrics` and in the event log.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::Refused => "refused",
            FailureReason::ConnectTimeout => "connect_timeout",
            FailureReason::BannerTimeout => "banner_timeout",
            FailureReason::UnexpectedBanner => "unexpected_banner",
            FailureReason::TlsHandshake => "tls_handshake",
            FailureReason::TlsExpired => "tls_expired",
            FailureReason::HttpStatus => "http_status",
            FailureReason::HttpBody => "http_body",
            FailureReason::Nxdomain => "nxdomain",
            FailureReason::Servfail => "servfail",
            FailureReason::WrongAddress => "wrong_address",
            FailureReason::Unreachable => "unreachable",
            FailureReason::Reset => "reset",
            FailureReason::UnexpectedResponse => "unexpected_response",
            FailureReason::Tls => "tls",
            FailureReason::Dns => "dns",
            FailureReason::Io => "io",
            FailureReason::Exited => "exited",
            FailureReason::ResourceLimit => "resource_limit",
            FailureReason::Killed => "killed",
            FailureReason::NotRunning => "not_running",
            FailureReason::NotReady => "not_ready",
            FailureReason::Spawn => "spawn",
            FailureReason::Panic => "panic",
            FailureReason::Stuck => "stuck",
            FailureReason::AddressMissing => "address_missing",
            FailureReason::LinkDown => "link_down",
            FailureReason::UnitFailed => "unit_failed",
        }
    }

    /// Parses a label value back (transcripts and the CLI use this).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two health checks of the resource contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// The cheap check (process present, socket listening).
    LooksAlive,
    /// The thorough check (banner read, file written and read back).
    IsAlive,
}

impl CheckKind {
    /// Both kinds.
    pub const ALL: [CheckKind; 2] = [CheckKind::LooksAlive, CheckKind::IsAlive];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckKind::LooksAlive => "looks_alive",
            CheckKind::IsAlive => "is_alive",
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operations that change a resource, each run under `pending_timeout` by the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Bring the resource online.
    Online,
    /// Take it offline in an orderly way.
    Offline,
    /// Stop it forcefully; must not hang.
    Terminate,
}

impl Operation {
    /// All operations.
    pub const ALL: [Operation; 3] = [Operation::Online, Operation::Offline, Operation::Terminate];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Online => "online",
            Operation::Offline => "offline",
            Operation::Terminate => "terminate",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
