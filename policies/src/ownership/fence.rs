//! The fence: at the deadline every group is told to terminate, and no group is told to run
//! past it, whatever else the machine would decide.

use super::{Action, Directive, Ownership};
use crate::time::Time;
use std::time::Duration;

impl Ownership {
    /// Fences every group once the deadline has passed.
    pub(super) fn check_deadline(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.fenced {
            return;
        }
        let Some(deadline) = self.deadline() else {
            return;
        };
        if now < deadline {
            return;
        }
        if !self.ever_connected {
            // Never reached etcd: what was adopted may be owned elsewhere by now; stopped once.
            self.startup_fenced = true;
            self.fence_all(Duration::ZERO, out);
            return;
        }
        let since = self
            .renewed
            .take()
            .map(|r| now.elapsed().saturating_sub(r.elapsed()))
            .unwrap_or_default();
        self.fenced = true;
        self.fence_all(since, out);
    }

    pub(super) fn fence_all(&mut self, since_renewal: Duration, out: &mut Vec<Action>) {
        let mut running = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            if g.directive == Directive::Run {
                running.push(name.clone());
            }
            if g.directive != Directive::Fence {
                g.directive = Directive::Fence;
                out.push(Action::Direct {
                    group: name.clone(),
                    directive: Directive::Fence,
                });
            }
        }
        out.push(Action::Fenced {
            groups: running,
            since_renewal,
        });
    }

    pub(super) fn direct(
        &mut self,
        group: &str,
        directive: Directive,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let directive = if directive == Directive::Run && !self.may_run(now) {
            Directive::Stop
        } else {
            directive
        };
        if let Some(g) = self.groups.get_mut(group) {
            // A fenced group stays fenced until it runs again: its terminate is under way.
            if g.directive == Directive::Fence && directive == Directive::Stop {
                return;
            }
            if g.directive != directive {
                g.directive = directive;
                out.push(Action::Direct {
                    group: group.to_string(),
                    directive,
                });
            }
        }
    }
}
