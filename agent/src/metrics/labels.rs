//! The label sets of the agent's series, each value from a closed set or a name in the config,
//! and the histograms' buckets.

use prometheus_client::encoding::EncodeLabelSet;

/// `group`, `resource`, `type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// The group's name.
    pub group: String,
    /// The resource's name.
    pub resource: String,
    /// The resource type.
    #[prometheus(flatten)]
    pub kind: TypeLabel,
}

/// The `type` label alone (a struct because `type` is a keyword).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The resource type.
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TypeCheckLabels {
    pub(super) r#type: &'static str,
    pub(super) check: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FailureLabels {
    pub(super) check: &'static str,
    pub(super) reason: &'static str,
    #[prometheus(flatten)]
    pub(super) resource: ResourceLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OperationLabels {
    pub(super) op: &'static str,
    #[prometheus(flatten)]
    pub(super) resource: ResourceLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TypeOperationLabels {
    pub(super) r#type: &'static str,
    pub(super) op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ListenerLabels {
    pub(super) listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ListenerClosedLabels {
    pub(super) listener: &'static str,
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GroupLabels {
    pub(super) group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TimerLabels {
    pub(super) timer: &'static str,
    #[prometheus(flatten)]
    pub(super) resource: ResourceLabels,
}

/// A resource's timers, the `timer` label's values.
pub const TIMERS: [&str; 4] = ["restart", "retry", "damped_until", "restart_window_frees"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct NotifyLabels {
    pub(super) hook: String,
    pub(super) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OwnerLabels {
    pub(super) group: String,
    pub(super) node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EventLabels {
    pub(super) event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub(super) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BuildLabels {
    pub(super) version: &'static str,
}

pub(super) fn check_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

pub(super) fn lateness_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
    ]
    .into_iter()
}

pub(super) fn operation_buckets() -> impl Iterator<Item = f64> {
    [
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0,
    ]
    .into_iter()
}
