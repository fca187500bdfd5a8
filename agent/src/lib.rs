//! `resmon`: a high-availability agent for Linux with the semantics of a failover-cluster
//! resource monitor. This crate is the runtime and the wiring; the decisions are in
//! `resmon-policies` and the resource types in `resmon-probes`.
//!
//! # Layout
//!
//! - [`config`]: the TOML file: parsing, type defaults, validation with `file:line: key`
//!   diagnostics (`resmon validate` and reloads run the same code).
//! - [`cluster`]: who owns each group: the embedded single-node coordinator or etcd leases.
//! - [`runtime`]: groups and workers on tokio, reload, shutdown.
//! - [`server`]: the composition root, [`server::run`] is `resmon run`.
//! - [`events`]: one struct per event; `emit()` logs a JSON line and counts it.
//! - [`output`]: the thread that writes event and log lines (stderr or journald), behind a
//!   bounded queue.
//! - [`metrics`]: every metric, Prometheus text format.
//! - [`simulate`]: `resmon simulate`, the policy replayed on a scripted series of failures.
//! - [`status`]: what `/api/v1/status` serves.
//! - [`http`]: the read-only HTTP endpoint.
//! - [`listen`]: what both listeners share: a connection cap, timeouts, bounded buffers.
//! - [`memory`]: the heap's freed pages given back to the kernel every few seconds.
//! - [`control`]: the control API on a Unix socket (online, offline, clear, maintenance,
//!   events).
//! - [`maintenance`]: what is in maintenance (unmanaged), kept in the state directory.
//! - [`notify`]: the notify hooks, commands run on chosen events.
//! - [`watchdog`]: systemd readiness and watchdog.
//! - [`cli`]: the `resmon` command line.
//! - [`client`]: the command line's HTTP client, to the TCP endpoint and the control socket.

// Unsafe only for FFI that no safe crate wraps, each site allowed by name with its SAFETY note.
#![deny(unsafe_code)]

/// This build's version: `RESMON_VERSION` at build time when the packager stamps one, else the
/// crate's. Published to the other nodes, which compare versions during a rolling upgrade.
pub const VERSION: &str = match option_env!("RESMON_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod control;
pub mod events;
pub mod http;
pub mod listen;
pub mod maintenance;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod runtime;
pub mod server;
pub mod simulate;
pub mod status;
pub mod watchdog;
