//! What a group task hears from outside its group: the state of providers in other groups
//! (and what it tells them of its own), its dependents in other groups on this node (and what
//! it tells their providers of them), and maintenance.

use super::GroupTask;
use resmon_policies::{Input, ResourceId};

/// A resource other groups depend on, and what was said of it last.
pub(super) struct Published {
    pub(super) id: ResourceId,
    /// `group/resource`.
    name: String,
    /// Published last: available to other groups, or not.
    available: Option<bool>,
    /// Told the controller last: one of its dependents in another group here is up.
    dependents_up: bool,
}

impl Published {
    pub(super) fn new(id: ResourceId, name: String) -> Published {
        Published {
            id,
            name,
            available: None,
            dependents_up: false,
        }
    }
}

impl GroupTask {
    /// Tells other groups that the `k`th published resource is available here, or not.
    pub(super) fn publish(&mut self, k: usize, available: bool) {
        let p = &mut self.published[k];
        p.available = Some(available);
        self.shared.coordinator.provider_state(&p.name, available);
    }

    /// Publishes what changed of the resources other groups depend on: a provider is available
    /// while online and not decided to go offline, so its dependents elsewhere leave first.
    pub(super) fn publish_availability(&mut self) {
        for k in 0..self.published.len() {
            let available = self.controller.available(self.published[k].id);
            if self.published[k].available != Some(available) {
                self.publish(k, available);
            }
        }
    }

    /// Tells the providers in other groups that `resource`, which depends on them, is up here,
    /// or no longer.
    pub(super) fn report_dependent(&self, resource: ResourceId, up: bool) {
        let me = format!("{}/{}", self.name, self.contexts[resource.0].name());
        for e in &self.controller.spec().resource(resource).external {
            if let Some((external, _)) = self.externals.get(*e) {
                self.shared
                    .coordinator
                    .dependent_state(&external.name, &me, up);
            }
        }
    }

    /// Tells the controller what changed about the providers of other groups, and about the
    /// dependents in other groups of its own resources.
    pub(super) fn feed_externals(&mut self) {
        let providers = self.shared.coordinator.providers().clone();
        for k in 0..self.published.len() {
            let up = providers.dependents_up(&self.published[k].name);
            if up != self.published[k].dependents_up {
                self.published[k].dependents_up = up;
                let resource = self.published[k].id;
                self.step(Input::DependentsElsewhere { resource, up });
            }
        }
        for i in 0..self.externals.len() {
            let now = providers.state(&self.externals[i].0);
            if now.is_some() && now != self.externals[i].1 {
                self.externals[i].1 = now;
                self.step(Input::External {
                    provider: i,
                    online: now == Some(true),
                });
            }
        }
    }

    /// Tells the controller what changed about maintenance (the node's counts as the group's).
    pub(super) fn feed_maintenance(&mut self) {
        let m = self.shared.maintenance.clone();
        let group = m.group(&self.name);
        if group != self.told_maintenance.0 {
            self.told_maintenance.0 = group;
            self.step(Input::Maintenance {
                resource: None,
                on: group,
            });
        }
        for i in 0..self.contexts.len() {
            let on = m.resource(&self.name, self.contexts[i].name());
            if on != self.told_maintenance.1[i] {
                self.told_maintenance.1[i] = on;
                self.step(Input::Maintenance {
                    resource: Some(ResourceId(i)),
                    on,
                });
            }
        }
        let now = self.now();
        for i in 0..self.contexts.len() {
            self.refresh(ResourceId(i), now);
        }
    }
}

impl Drop for GroupTask {
    fn drop(&mut self) {
        // Gone (a reload replaced or removed it, the agent stops): its resources hold no
        // provider up.
        if !self.externals.is_empty() {
            self.shared.coordinator.forget_dependents_in(&self.name);
        }
    }
}

pub(super) async fn provider_changed(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let Some(rx) = changes else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
