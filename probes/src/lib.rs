//! `resmon-probes`: the resource contract and one module per resource type.
//!
//! A resource type does I/O and reports what it saw; it decides nothing (the policy does) and
//! owns no deadline (the runtime wraps every call in its timeout and turns an elapsed deadline
//! into [`FailureReason::Timeout`](resmon_policies::FailureReason::Timeout)).
//!
//! # Layout
//!
//! - [`resource`]: the [`Resource`] trait (the resource DLL's entry points: online, offline,
//!   terminate, looks_alive, is_alive, the failure signal, adoption after an agent restart) and
//!   [`Failure`], a typed reason plus a detail for the log.
//!   [`TypeConfig`] is what each type's config declares about its type; [`BuildContext`] what
//!   a resource is built with.
//! - [`registry`]: every type listed once; from that list, the [`ResourceConfig`] enum and
//!   [`RESOURCE_TYPES`].
//! - [`values`]: the validating value types of every config: [`HumanDuration`], `HostPort`,
//!   `Argv`, `ConfigRegex`.
//! - [`process`]: a command resmon supervises itself (its exit is the failure signal);
//!   [`cgroup`]: its own cgroup, which holds every process it starts; [`health`]: a protocol
//!   check that a `process` or `service` uses as its readiness and is_alive.
//! - [`tcp`]: a TCP connect.
//! - [`banner`]: the expect/send engine of the mail protocols; [`mail`]: the `smtp`, `pop3` and
//!   `imap` types, one config and a table of presets over the engine.
//! - [`http`]: an HTTP GET or HEAD, plain or TLS.
//! - [`ip`]: an address on an interface (rtnetlink), announced by gratuitous ARP or
//!   unsolicited neighbour advertisement, with a netlink failure signal.
//! - [`service`]: a systemd unit over D-Bus, with its PropertiesChanged as the failure signal;
//!   [`systemd`]: the D-Bus driver of a unit, shared with transient units.
//! - [`launch`]: where children run: transient units of systemd (outside the agent's sandbox)
//!   or forked by the agent.
//! - [`network_name`]: a name that must resolve to the group's address (hickory).
//! - [`disk`]: a mounted filesystem with room to work (blocking calls on blocking threads).
//! - [`exec`]: scripts whose exit code is the answer; [`ocf`]: existing OCF resource agents;
//!   [`command`]: how every child is started (clean environment, its user, its cgroup).
//! - [`secret`]: secrets read from `*_file` keys and credential headers, hidden in what the
//!   agent shows.
//! - [`tls`]: TLS clients (roots, SNI, client certificates) that record the peer certificate.
//! - [`usage`]: what a `process` or `service` tree uses (CPU, memory, threads, descriptors),
//!   and its `limits`.
//! - [`net`]: connection helpers shared by the network types, and `Conn`, a check's plain or
//!   TLS connection (the banner engine's and the `http` type's).

// Unsafe only for system calls that no safe crate wraps (raw packet sockets, pidfd_open),
// allowed per module with a SAFETY note at each site.
#![deny(unsafe_code)]

pub mod banner;
pub mod cgroup;
pub mod command;
pub mod disk;
pub mod exec;
pub mod health;
pub mod http;
pub mod ip;
pub mod launch;
pub mod mail;
pub mod net;
pub mod network_name;
pub mod ocf;
pub mod process;
pub mod registry;
pub mod resource;
pub mod secret;
pub mod service;
pub mod systemd;
pub mod tcp;
pub mod tls;
pub mod usage;
pub mod values;

#[cfg(test)]
mod testing;

pub use registry::{ResourceConfig, RESOURCE_TYPES};
pub use resource::{
    escape_bytes, BuildContext, CertValidity, ConfigError, Failure, Progress, Resource, Stage,
    TypeConfig,
};
pub use values::HumanDuration;
