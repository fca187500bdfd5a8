//! `[[notify]]`: commands run on chosen events, for those without Alertmanager (Pacemaker's
//! alert agents, keepalived's `notify_master`). What runs them is [`crate::notify`].

use super::diagnostics::{Diagnostics, Seg};
use super::Name;
use resmon_probes::HumanDuration;
use serde::Deserialize;

/// The events a hook may be run on.
pub const HOOK_EVENTS: [&str; 10] = [
    "ownership_acquired",
    "ownership_released",
    "resource_failed",
    "gave_up",
    "self_fenced",
    "maintenance_changed",
    "node_paused",
    "node_resumed",
    "drain_blocked",
    "restart_damped",
];

/// One hook, as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Its name: a metric label and part of its unit's name.
    pub name: Name,
    /// Program and arguments, run once per event with the event in its environment.
    pub command: Vec<String>,
    /// The events it runs on ([`HOOK_EVENTS`]).
    pub events: Vec<String>,
    /// How long one run may take before it is killed.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

/// Checks every hook: a program, known events, a timeout, unique names.
pub(super) fn check(hooks: &[HookConfig], cx: &mut Diagnostics) {
    for (i, hook) in hooks.iter().enumerate() {
        let at = |key: &str| {
            vec![
                Seg::Key("notify".into()),
                Seg::Index(i),
                Seg::Key(key.into()),
            ]
        };
        if hooks[..i].iter().any(|h| h.name == hook.name) {
            cx.error(
                &at("name"),
                format!("duplicate hook name {:?}", hook.name.as_str()),
            );
        }
        if hook.command.first().is_none_or(|p| p.is_empty()) {
            cx.error(
                &at("command"),
                "a command must name a program: write it as a list, such as [\"/usr/local/bin/page\", \"ops\"]",
            );
        }
        if hook.events.is_empty() {
            cx.error(
                &at("events"),
                format!("name the events it runs on: {}", HOOK_EVENTS.join(", ")),
            );
        }
        for (j, event) in hook.events.iter().enumerate() {
            if !HOOK_EVENTS.contains(&event.as_str()) {
                let mut path = at("events");
                path.push(Seg::Index(j));
                cx.error(
                    &path,
                    format!(
                        "unknown event {event:?}; hooks run on {}",
                        HOOK_EVENTS.join(", ")
                    ),
                );
            }
        }
        if hook.timeout.0.is_zero() {
            cx.error(&at("timeout"), "must be longer than zero");
        }
    }
}
