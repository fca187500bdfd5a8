//! What a group task hears from outside its group: the state of providers in other groups
//! (and what it tells them of its own), and maintenance.

use super::GroupTask;
use resmon_policies::{Input, ResourceId};

impl GroupTask {
    /// Tells other groups that a resource they depend on is online here, or not.
    pub(super) fn publish(&self, resource: ResourceId, online: bool) {
        let name = format!("{}/{}", self.name, self.contexts[resource.0].name());
        self.shared.coordinator.provider_state(&name, online);
    }

    /// Tells the controller what changed about the providers of other groups.
    pub(super) fn feed_externals(&mut self) {
        let providers = self.shared.coordinator.providers().clone();
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

pub(super) async fn provider_changed(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let Some(rx) = changes else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
