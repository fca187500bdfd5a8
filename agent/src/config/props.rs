//! The common resource properties: set in `[resource_types.<type>]` as defaults, overridden on
//! each resource, and resolved against built-in defaults taken from WSFC.

use super::diagnostics::{show, Diagnostics, Seg};
use resmon_policies::{FlapDamping, RestartAction, RestartPolicy};
use resmon_probes::HumanDuration;
use serde::Deserialize;
use std::time::Duration;

/// `pending_timeout`: a duration, or `"never"` for operations that must not be timed out (the
/// seeds' store mount and upgrades).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingTimeout {
    /// Fail the operation after this long.
    After(Duration),
    /// Wait as long as it takes.
    Never,
}

impl<'de> Deserialize<'de> for PendingTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "never" {
            return Ok(PendingTimeout::Never);
        }
        s.parse::<HumanDuration>()
            .map(|h| PendingTimeout::After(h.0))
            .map_err(|e| serde::de::Error::custom(format!("{e}, or \"never\"")))
    }
}

impl PendingTimeout {
    /// The deadline, if any.
    pub fn duration(self) -> Option<Duration> {
        match self {
            PendingTimeout::After(d) => Some(d),
            PendingTimeout::Never => None,
        }
    }
}

/// `flap_damping = { ... }`, as written: RFC 2439's usual figures by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlapDampingConfig {
    /// Added at each failure.
    #[serde(default = "default_damping_penalty")]
    pub penalty: u32,
    /// Above this, restarts are held back.
    #[serde(default = "default_damping_suppress")]
    pub suppress: u32,
    /// Held back until the penalty falls below this.
    #[serde(default = "default_damping_reuse")]
    pub reuse: u32,
    /// The time the penalty takes to halve.
    #[serde(default = "default_damping_half_life")]
    pub half_life: HumanDuration,
}

fn default_damping_penalty() -> u32 {
    1000
}
fn default_damping_suppress() -> u32 {
    2000
}
fn default_damping_reuse() -> u32 {
    750
}
fn default_damping_half_life() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}

impl FlapDampingConfig {
    fn policy(&self) -> FlapDamping {
        FlapDamping {
            penalty: self.penalty,
            suppress: self.suppress,
            reuse: self.reuse,
            half_life: self.half_life.0,
        }
    }
}

/// Common properties as written: every key optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonProps {
    /// How often the cheap check runs.
    pub looks_alive_interval: Option<HumanDuration>,
    /// How often the thorough check runs.
    pub is_alive_interval: Option<HumanDuration>,
    /// How long one check may take before it counts as failed (`timeout`).
    pub check_timeout: Option<HumanDuration>,
    /// How long online and offline may take.
    pub pending_timeout: Option<PendingTimeout>,
    /// How long terminate may take (default: `pending_timeout`). In a cluster, a fence runs
    /// terminate, and it must end within `fence_margin`.
    pub terminate_timeout: Option<PendingTimeout>,
    /// What to do past the restart threshold.
    pub restart_action: Option<RestartAction>,
    /// Restarts allowed within `restart_period`.
    pub restart_threshold: Option<u32>,
    /// The window restarts are counted in.
    pub restart_period: Option<HumanDuration>,
    /// How long a resource that could not be restarted or failed over waits for its final try.
    pub retry_period_on_failure: Option<HumanDuration>,
    /// Waited between a failed resource's terminate and its restart (WSFC's `RestartDelay`).
    pub restart_delay: Option<HumanDuration>,
    /// With a value, the delay doubles with each restart within `restart_period`, up to this.
    pub restart_delay_max: Option<HumanDuration>,
    /// Failed is_alive checks in a row that make a failure (HAProxy's fall).
    pub failure_threshold: Option<u32>,
    /// Passing attempts in a row that bring a check-only resource online (HAProxy's rise).
    pub success_threshold: Option<u32>,
    /// Poll looks_alive even though the type provides a failure signal (or never poll it).
    pub poll_looks_alive: Option<bool>,
    /// Hold back the restarts of a resource that keeps going up and down (RFC 2439).
    pub flap_damping: Option<FlapDampingConfig>,
}

/// Common properties resolved: resource value, else type default, else built-in default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceProps {
    /// See [`CommonProps::looks_alive_interval`].
    pub looks_alive_interval: Duration,
    /// See [`CommonProps::is_alive_interval`].
    pub is_alive_interval: Duration,
    /// See [`CommonProps::check_timeout`].
    pub check_timeout: Duration,
    /// See [`CommonProps::pending_timeout`].
    pub pending_timeout: PendingTimeout,
    /// See [`CommonProps::terminate_timeout`].
    pub terminate_timeout: PendingTimeout,
    /// See [`CommonProps::restart_action`].
    pub restart_action: RestartAction,
    /// See [`CommonProps::restart_threshold`].
    pub restart_threshold: u32,
    /// See [`CommonProps::restart_period`].
    pub restart_period: Duration,
    /// See [`CommonProps::retry_period_on_failure`].
    pub retry_period_on_failure: Duration,
    /// See [`CommonProps::restart_delay`].
    pub restart_delay: Duration,
    /// See [`CommonProps::restart_delay_max`].
    pub restart_delay_max: Option<Duration>,
    /// See [`CommonProps::failure_threshold`].
    pub failure_threshold: u32,
    /// See [`CommonProps::success_threshold`].
    pub success_threshold: u32,
    /// See [`CommonProps::poll_looks_alive`].
    pub poll_looks_alive: Option<bool>,
    /// See [`CommonProps::flap_damping`].
    pub flap_damping: Option<FlapDamping>,
}

fn default_looks_alive_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_is_alive_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_pending_timeout() -> PendingTimeout {
    PendingTimeout::After(Duration::from_secs(180))
}
fn default_restart_action() -> RestartAction {
    RestartAction::RestartThenFailover
}
fn default_restart_threshold() -> u32 {
    3
}
fn default_restart_period() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_retry_period_on_failure() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_restart_delay() -> Duration {
    Duration::from_millis(500)
}

impl CommonProps {
    /// Checks values that are wrong on their own.
    pub(super) fn check(&self, base: &[Seg], cx: &mut Diagnostics) {
        let zero = |d: Option<HumanDuration>| d.is_some_and(|d| d.0.is_zero());
        for (key, value) in [
            ("looks_alive_interval", self.looks_alive_interval),
            ("is_alive_interval", self.is_alive_interval),
            ("check_timeout", self.check_timeout),
            ("restart_period", self.restart_period),
        ] {
            if zero(value) {
                let mut p = base.to_vec();
                p.push(Seg::Key(key.into()));
                cx.error(&p, "must be longer than zero");
            }
        }
        for (key, value) in [
            ("failure_threshold", self.failure_threshold),
            ("success_threshold", self.success_threshold),
        ] {
            if value == Some(0) {
                let mut p = base.to_vec();
                p.push(Seg::Key(key.into()));
                cx.error(&p, "must be at least 1 (1: the first result decides)");
            }
        }
        for (key, value) in [
            ("pending_timeout", self.pending_timeout),
            ("terminate_timeout", self.terminate_timeout),
        ] {
            if value == Some(PendingTimeout::After(Duration::ZERO)) {
                let mut p = base.to_vec();
                p.push(Seg::Key(key.into()));
                cx.error(&p, "must be longer than zero (or \"never\")");
            }
        }
        if let Some(d) = self.flap_damping {
            let mut p = base.to_vec();
            p.push(Seg::Key("flap_damping".into()));
            if d.half_life.0.is_zero() || d.penalty == 0 || d.reuse == 0 || d.reuse >= d.suppress {
                cx.error(
                    &p,
                    format!(
                        "needs 0 < reuse < suppress, a penalty and a half_life above zero \
                         (here penalty {}, suppress {}, reuse {}, half_life {})",
                        d.penalty,
                        d.suppress,
                        d.reuse,
                        show(d.half_life.0)
                    ),
                );
            }
        }
    }

    /// Resolves against the type's defaults, then the built-in ones.
    pub fn resolve(&self, type_default: Option<&CommonProps>) -> ResourceProps {
        let t = type_default.cloned().unwrap_or_default();
        let dur =
            |own: Option<HumanDuration>, ty: Option<HumanDuration>, builtin: fn() -> Duration| {
                own.or(ty).map(|h| h.0).unwrap_or_else(builtin)
            };
        let pending_timeout = self
            .pending_timeout
            .or(t.pending_timeout)
            .unwrap_or_else(default_pending_timeout);
        ResourceProps {
            looks_alive_interval: dur(
                self.looks_alive_interval,
                t.looks_alive_interval,
                default_looks_alive_interval,
            ),
            is_alive_interval: dur(
                self.is_alive_interval,
                t.is_alive_interval,
                default_is_alive_interval,
            ),
            check_timeout: dur(self.check_timeout, t.check_timeout, default_check_timeout),
            pending_timeout,
            terminate_timeout: self
                .terminate_timeout
                .or(t.terminate_timeout)
                .unwrap_or(pending_timeout),
            restart_action: self
                .restart_action
                .or(t.restart_action)
                .unwrap_or_else(default_restart_action),
            restart_threshold: self
                .restart_threshold
                .or(t.restart_threshold)
                .unwrap_or_else(default_restart_threshold),
            restart_period: dur(
                self.restart_period,
                t.restart_period,
                default_restart_period,
            ),
            retry_period_on_failure: dur(
                self.retry_period_on_failure,
                t.retry_period_on_failure,
                default_retry_period_on_failure,
            ),
            restart_delay: dur(self.restart_delay, t.restart_delay, default_restart_delay),
            restart_delay_max: self.restart_delay_max.or(t.restart_delay_max).map(|h| h.0),
            failure_threshold: self.failure_threshold.or(t.failure_threshold).unwrap_or(1),
            success_threshold: self.success_threshold.or(t.success_threshold).unwrap_or(1),
            poll_looks_alive: self.poll_looks_alive.or(t.poll_looks_alive),
            flap_damping: self.flap_damping.or(t.flap_damping).map(|d| d.policy()),
        }
    }
}

impl ResourceProps {
    /// The policy's view of these properties, and of what the resource's type says (its
    /// failure signal, its `limits.for_checks`).
    pub fn restart_policy(&self, private: &resmon_probes::ResourceConfig) -> RestartPolicy {
        RestartPolicy {
            restart_action: self.restart_action,
            restart_threshold: self.restart_threshold,
            restart_period: self.restart_period,
            retry_period_on_failure: self.retry_period_on_failure,
            restart_delay: self.restart_delay,
            restart_delay_max: self.restart_delay_max,
            failure_threshold: self.failure_threshold,
            limit_checks: private.limit_checks(),
            provides_failure_signal: private.provides_failure_signal(),
            poll_looks_alive: self.poll_looks_alive,
            flap_damping: self.flap_damping,
        }
    }

    /// Warns about settings that defeat each other, each where its values were set.
    pub(super) fn warn(&self, own: &CommonProps, place: &WarningPlace, cx: &mut Diagnostics) {
        for (key, interval, own_interval) in [
            (
                "looks_alive_interval",
                self.looks_alive_interval,
                own.looks_alive_interval,
            ),
            (
                "is_alive_interval",
                self.is_alive_interval,
                own.is_alive_interval,
            ),
        ] {
            if self.check_timeout > interval {
                cx.warning(
                    &place.key(
                        own.check_timeout.is_some() || own_interval.is_some(),
                        "check_timeout",
                    ),
                    format!(
                        "check_timeout {} is longer than {key} {}: a slow check delays the next one",
                        show(self.check_timeout),
                        show(interval)
                    ),
                );
            }
        }
        if self.restart_threshold == 0 && self.restart_action != RestartAction::NoRestart {
            cx.warning(
                &place.key(
                    own.restart_threshold.is_some() || own.restart_action.is_some(),
                    "restart_threshold",
                ),
                format!(
                    "restart_threshold = 0 never restarts on this node; restart_action = \"{}\" goes straight to its next step",
                    self.restart_action.as_str()
                ),
            );
        }
    }
}

/// Where a warning about a resource's resolved values belongs: at the resource when it sets one
/// of the values involved itself, else at `[resource_types.<type>]`, where they came from (and
/// where the warning is given once for all the type's resources, not ten thousand times).
pub(super) struct WarningPlace<'a> {
    /// The resource's table.
    pub resource: &'a [Seg],
    /// Its type's defaults table.
    pub type_table: &'a [Seg],
}

impl WarningPlace<'_> {
    /// The path of `key` in the resource's table or in its type's.
    pub(super) fn key(&self, set_by_resource: bool, key: &str) -> Vec<Seg> {
        let mut path = if set_by_resource {
            self.resource
        } else {
            self.type_table
        }
        .to_vec();
        path.push(Seg::Key(key.into()));
        path
    }
}

/// The field names a derived `Deserialize` struct accepts, read from what serde passes to
/// `deserialize_struct`, so the lists used to split a resource table never drift from the
/// structs.
pub(super) fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Capture<'a>(&'a mut &'static [&'static str]);

    #[derive(Debug)]
    struct Captured;
    impl std::fmt::Display for Captured {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("captured")
        }
    }
    impl std::error::Error for Captured {}
    impl serde::de::Error for Captured {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Captured
        }
    }

    impl<'de> serde::Deserializer<'de> for Capture<'_> {
        type Error = Captured;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
            Err(Captured)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Captured> {
            *self.0 = fields;
            Err(Captured)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Capture(&mut fields));
    fields
}
