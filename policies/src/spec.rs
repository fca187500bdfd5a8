//! What a [`GroupController`](crate::GroupController) is told about its group: the resources,
//! their dependencies and each one's restart policy. Building a [`GroupSpec`] checks that the
//! dependencies form a DAG and computes the order in which resources come online.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// Index of a resource inside its group (position in [`GroupSpec::resources`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceId(pub usize);

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What happens once a resource has failed more than `restart_threshold` times in
/// `restart_period` (WSFC's RestartAction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartAction {
    /// Never restart: a failure stays failed until an administrator acts.
    NoRestart,
    /// Restart on this node; past the threshold wait `retry_period_on_failure`, never fail over.
    RestartNoFailover,
    /// Restart on this node; past the threshold fail the group over to another node.
    RestartThenFailover,
}

impl RestartAction {
    /// The config and label spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            RestartAction::NoRestart => "no_restart",
            RestartAction::RestartNoFailover => "restart_no_failover",
            RestartAction::RestartThenFailover => "restart_then_failover",
        }
    }
}

/// Flap damping, as BGP route flap damping (RFC 2439; no failover peer has it): each failure
/// adds `penalty`, the penalty halves every `half_life`, and once it is above `suppress` the
/// resource's restarts wait until it has decayed below `reuse`. A resource that keeps going up
/// and down is held back; one that fails now and then is restarted as usual.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlapDamping {
    /// Added at each failure.
    pub penalty: u32,
    /// Above this, restarts are held back.
    pub suppress: u32,
    /// Held back until the penalty has fallen below this.
    pub reuse: u32,
    /// The time the penalty takes to halve.
    pub half_life: Duration,
}

impl FlapDamping {
    /// The most a penalty can be: a resource that failed for a long time is not held back for
    /// ever once it stops failing (RFC 2439's maximum suppress limit).
    pub fn ceiling(&self) -> f64 {
        f64::from(self.suppress) * 4.0
    }

    /// A penalty `p` after `elapsed` more time.
    pub fn decayed(&self, p: f64, elapsed: Duration) -> f64 {
        let halves = elapsed.as_secs_f64() / self.half_life.as_secs_f64().max(1e-9);
        p * 0.5f64.powf(halves)
    }

    /// How long a penalty `p` takes to fall below `reuse`.
    pub fn until_reuse(&self, p: f64) -> Duration {
        let reuse = f64::from(self.reuse.max(1));
        if p <= reuse {
            return Duration::ZERO;
        }
        self.half_life.mul_f64((p / reuse).log2())
    }
}

/// The restart and failure-detection properties of one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestartPolicy {
    /// What to do past the threshold.
    pub restart_action: RestartAction,
    /// How many restarts are allowed within `restart_period`.
    pub restart_threshold: u32,
    /// The window the threshold counts restarts in.
    pub restart_period: Duration,
    /// How long a resource that could not be restarted or failed over stays failed before its
    /// one final attempt.
    pub retry_period_on_failure: Duration,
    /// How long a failed resource waits, once terminated, before it is restarted (WSFC's
    /// `RestartDelay`): a service that fails at once is not restarted in a tight loop.
    pub restart_delay: Duration,
    /// With a value, the delay doubles with each restart counted within `restart_period`, up to
    /// this.
    pub restart_delay_max: Option<Duration>,
    /// Consecutive failed `is_alive` checks that make a failure (Kubernetes' failureThreshold,
    /// HAProxy's fall). 1, the WSFC-faithful default: the first one does. A failure signal is
    /// never counted: it is a failure at once.
    pub failure_threshold: u32,
    /// Consecutive `is_alive` checks that find a usage limit exceeded (reason `resource_limit`)
    /// that make a failure (monit's `for N cycles`): `limits.for_checks`. Counted apart from
    /// `failure_threshold`; a check that finds no limit exceeded starts the count over.
    pub limit_checks: u32,
    /// The resource type reports failures the moment they happen (child exit, netlink event).
    pub provides_failure_signal: bool,
    /// Explicit choice to poll `looks_alive`; `None` lets the policy decide: a resource that
    /// provides a failure signal is not polled (as the resource monitor stops calling
    /// LooksAlive for a resource DLL that returned an event handle).
    pub poll_looks_alive: Option<bool>,
    /// Flap damping; `None` (the WSFC-faithful default): every failure is restarted as the
    /// threshold allows.
    pub flap_damping: Option<FlapDamping>,
}

impl Default for RestartPolicy {
    /// WSFC's defaults: 3 restarts in 15 minutes, then failover, retry after an hour.
    fn default() -> Self {
        RestartPolicy {
            restart_action: RestartAction::RestartThenFailover,
            restart_threshold: 3,
            restart_period: Duration::from_secs(15 * 60),
            retry_period_on_failure: Duration::from_secs(60 * 60),
            // The config's default is WSFC's 500 ms; a spec states its own.
            restart_delay: Duration::ZERO,
            restart_delay_max: None,
            failure_threshold: 1,
            limit_checks: 1,
            provides_failure_signal: false,
            poll_looks_alive: None,
            flap_damping: None,
        }
    }
}

impl RestartPolicy {
    /// The delay before the restart that is the `nth` within the period (from 1).
    pub fn restart_delay_for(&self, nth: u32) -> Duration {
        match self.restart_delay_max {
            None => self.restart_delay,
            Some(max) => {
                let doublings = nth.saturating_sub(1).min(32);
                self.restart_delay
                    .saturating_mul(1u32 << doublings.min(31))
                    .min(max)
            }
        }
    }

    /// Whether `looks_alive` is polled for this resource.
    pub fn polls_looks_alive(&self) -> bool {
        self.poll_looks_alive
            .unwrap_or(!self.provides_failure_signal)
    }
}

/// One resource as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceSpec {
    /// Unique within the group; used in effects' display only.
    pub name: String,
    /// The resources this one needs online first (its providers).
    pub depends_on: Vec<ResourceId>,
    /// Providers in other groups it needs online first, as indexes into the group's
    /// external providers (fed by [`crate::Input::External`]).
    pub external: Vec<usize>,
    /// Restart and failure-detection properties.
    pub policy: RestartPolicy,
    /// Terminated before the others when the node fences itself: an address, so that clients
    /// stop arriving before the services behind it are killed.
    pub fence_first: bool,
}

/// Why a group's resource list is not a valid dependency DAG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// A dependency names a resource index that does not exist.
    UnknownDependency {
        /// The resource whose `depends_on` is wrong.
        resource: ResourceId,
        /// Position in that resource's `depends_on`.
        position: usize,
    },
    /// A resource depends on itself, directly or through others.
    Cycle {
        /// The resources on the cycle, in dependency order, the first repeated at the end.
        path: Vec<ResourceId>,
    },
    /// The same dependency is listed twice.
    DuplicateDependency {
        /// The resource whose `depends_on` repeats itself.
        resource: ResourceId,
        /// Position of the repeat.
        position: usize,
    },
}

/// A validated group: resources plus a topological order (providers before dependents).
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// The group's name.
    pub name: String,
    resources: Vec<ResourceSpec>,
    order: Vec<ResourceId>,
    dependents: Vec<Vec<ResourceId>>,
}

impl GroupSpec {
    /// Validates the dependencies and computes the online order.
    pub fn new(name: impl Into<String>, resources: Vec<ResourceSpec>) -> Result<Self, SpecError> {
        let n = resources.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, r) in resources.iter().enumerate() {
            for (pos, dep) in r.depends_on.iter().enumerate() {
                if dep.0 >= n {
                    return Err(SpecError::UnknownDependency {
                        resource: ResourceId(i),
                        position: pos,
                    });
                }
                if r.depends_on[..pos].contains(dep) {
                    return Err(SpecError::DuplicateDependency {
                        resource: ResourceId(i),
                        position: pos,
                    });
                }
                dependents[dep.0].push(ResourceId(i));
            }
        }
        let order = topological_order(&resources)?;
        Ok(GroupSpec {
            name: name.into(),
            resources,
            order,
            dependents,
        })
    }

    /// How many external providers (resources of other groups) the group's resources name.
    pub fn externals(&self) -> usize {
        self.resources
            .iter()
            .flat_map(|r| r.external.iter())
            .map(|e| e + 1)
            .max()
            .unwrap_or(0)
    }

    /// The resources, indexed by [`ResourceId`].
    pub fn resources(&self) -> &[ResourceSpec] {
        &self.resources
    }

    /// One resource.
    pub fn resource(&self, id: ResourceId) -> &ResourceSpec {
        &self.resources[id.0]
    }

    /// Providers before dependents.
    pub fn online_order(&self) -> &[ResourceId] {
        &self.order
    }

    /// The resources that depend directly on `id`.
    pub fn dependents(&self, id: ResourceId) -> &[ResourceId] {
        &self.dependents[id.0]
    }

    /// Looks a resource up by name.
    pub fn find(&self, name: &str) -> Option<ResourceId> {
        self.resources
            .iter()
            .position(|r| r.name == name)
            .map(ResourceId)
    }

    /// `id` and every resource it depends on, directly or not.
    pub fn with_providers(&self, id: ResourceId) -> Vec<ResourceId> {
        let mut seen = vec![false; self.resources.len()];
        let mut stack = vec![id];
        let mut out = Vec::new();
        while let Some(r) = stack.pop() {
            if std::mem::replace(&mut seen[r.0], true) {
                continue;
            }
            out.push(r);
            stack.extend(self.resources[r.0].depends_on.iter().copied());
        }
        out
    }
}

/// Depth-first topological sort that reports the first cycle it meets as a path.
fn topological_order(resources: &[ResourceSpec]) -> Result<Vec<ResourceId>, SpecError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; resources.len()];
    let mut order = Vec::with_capacity(resources.len());
    let mut path: Vec<ResourceId> = Vec::new();

    fn visit(
        i: usize,
        resources: &[ResourceSpec],
        marks: &mut [Mark],
        path: &mut Vec<ResourceId>,
        order: &mut Vec<ResourceId>,
    ) -> Result<(), SpecError> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::OnPath => {
                let start = path.iter().position(|r| r.0 == i).unwrap_or(0);
                let mut cycle: Vec<ResourceId> = path[start..].to_vec();
                cycle.push(ResourceId(i));
                return Err(SpecError::Cycle { path: cycle });
            }
            Mark::New => {}
        }
        marks[i] = Mark::OnPath;
        path.push(ResourceId(i));
        for dep in &resources[i].depends_on {
            visit(dep.0, resources, marks, path, order)?;
        }
        path.pop();
        marks[i] = Mark::Done;
        order.push(ResourceId(i));
        Ok(())
    }

    for i in 0..resources.len() {
        visit(i, resources, &mut marks, &mut path, &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(name: &str, deps: &[usize]) -> ResourceSpec {
        ResourceSpec {
            name: name.into(),
            depends_on: deps.iter().map(|&d| ResourceId(d)).collect(),
            external: Vec::new(),
            policy: RestartPolicy::default(),
            fence_first: false,
        }
    }

    #[test]
    fn providers_come_before_dependents() {
        let g = GroupSpec::new(
            "g",
            vec![
                res("smtp", &[1]),
                res("sa", &[2, 3]),
                res("name", &[3]),
                res("ip", &[]),
            ],
        )
        .unwrap();
        let pos = |i: usize| g.online_order().iter().position(|r| r.0 == i).unwrap();
        assert!(pos(3) < pos(2) && pos(2) < pos(1) && pos(1) < pos(0));
    }

    #[test]
    fn a_cycle_is_reported_as_a_path() {
        let err =
            GroupSpec::new("g", vec![res("a", &[1]), res("b", &[2]), res("c", &[0])]).unwrap_err();
        assert_eq!(
            err,
            SpecError::Cycle {
                path: vec![ResourceId(0), ResourceId(1), ResourceId(2), ResourceId(0)]
            }
        );
    }

    #[test]
    fn unknown_and_repeated_dependencies_are_rejected() {
        assert!(matches!(
            GroupSpec::new("g", vec![res("a", &[5])]),
            Err(SpecError::UnknownDependency { position: 0, .. })
        ));
        assert!(matches!(
            GroupSpec::new("g", vec![res("a", &[1, 1]), res("b", &[])]),
            Err(SpecError::DuplicateDependency { position: 1, .. })
        ));
    }
}
