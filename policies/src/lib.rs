//! `resmon-policies`: the pure lifecycle, restart and failover state machine of resmon.
//!
//! Nothing in this crate performs I/O, spawns a task or reads a clock. Like raft-rs's
//! `RawNode`, a [`GroupController`] takes inputs (check results, failure signals, operation
//! outcomes and timeouts, administrator commands) together with the current time *as a value*
//! and returns [`Effect`]s: state transitions to record and actions for the runtime to carry out.
//! The runtime (crate `resmon`) owns sockets, processes, timers and deadlines.
//!
//! # Layout
//!
//! - [`time`]: [`Time`], a monotonic instant given by the caller.
//! - [`reason`]: the fixed vocabularies shared by every crate: [`FailureReason`] (a metric
//!   label, so a closed enum), [`CheckKind`] and [`Operation`].
//! - [`spec`]: what the controller is told about a group: resources, dependencies (a DAG,
//!   validated here) and each resource's [`RestartPolicy`].
//! - [`restart`]: [`RestartWindow`], the sliding count of restarts within `restart_period`.
//! - [`controller`]: [`GroupController`], the state machine of one group: the WSFC resource
//!   failure rules, dependency ordering, escalation to failover and the retry period.
//! - [`placement`]: where a group runs across nodes: possible and preferred owners, the
//!   failover target, the failover threshold, failback.
//! - [`ownership`]: who runs a group across nodes, the etcd coordinator's rules as a state
//!   machine: take, release, move, failover, failback, and the fence deadline.

#![forbid(unsafe_code)]

pub mod controller;
pub mod ownership;
pub mod placement;
pub mod reason;
pub mod restart;
pub mod spec;
pub mod time;

pub use controller::{AdminCommand, Cause, Effect, GroupController, GroupMode, Input, State};
pub use reason::{CheckKind, FailureReason, Operation};
pub use restart::RestartWindow;
pub use spec::{
    FlapDamping, GroupSpec, ResourceId, ResourceSpec, RestartAction, RestartPolicy, SpecError,
};
pub use time::Time;
