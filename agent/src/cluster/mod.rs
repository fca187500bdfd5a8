//! Who owns each group: the coordinator boundary between the groups and the cluster.
//!
//! A group task never decides on its own that it may run: it follows a [`Directive`] from the
//! coordinator (`run` only while this node holds the group, `stop` otherwise) and hands it
//! failover requests and the news that it is offline. Two implementations:
//!
//! - the embedded single-node default ([`Coordinator::embedded`]): this node owns every group,
//!   and a failover has nowhere to go;
//! - [`etcd`]: ownership keys under this node's lease in etcd, changed only by transactions on
//!   revisions, with self-fencing when the lease cannot be renewed in time;
//! - `clock`: the fence's clock, CLOCK_BOOTTIME; `watchdog`: the device that resets a node
//!   whose agent stopped confirming its lease;
//! - [`providers`]: the state of resources that other groups' resources depend on, here and,
//!   under etcd, on every node;
//! - [`skew`]: the versions and config fingerprints the nodes publish, compared.
//!
//! Where a group goes, and whether it may run here, is decided by the pure
//! [`resmon_policies::ownership`] state machine and its [`resmon_policies::placement`] rules;
//! [`etcd`] only carries its actions out.

mod clock;
pub mod etcd;
pub mod providers;
pub mod skew;
mod watchdog;

use crate::config::ClusterConfig;
use resmon_policies::placement::Placement;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

/// What a group is told to do on this node (decided by [`resmon_policies::ownership`]).
pub use resmon_policies::ownership::Directive;

/// The answer to a failover request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverAnswer {
    /// Another node will take the group.
    pub moved: bool,
    /// Where it goes, or why it does not.
    pub detail: String,
}

/// Requests from groups and the control API to the coordinator's task.
pub(crate) enum Request {
    Register {
        group: String,
        placement: Placement,
        directive: watch::Sender<Directive>,
    },
    Unregister {
        group: String,
    },
    Failover {
        group: String,
        reply: oneshot::Sender<FailoverAnswer>,
    },
    Released {
        group: String,
    },
    Move {
        group: String,
        to: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// What is in maintenance changed: groups in it are not taken or moved.
    Maintenance,
    /// Pause `node` (this one if `None`) and move its groups away.
    Drain {
        node: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Resume `node` (this one if `None`); with `failback`, the groups it held when it was
    /// paused move back to it.
    Resume {
        node: Option<String>,
        failback: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// A resource other groups depend on came online or went offline here: publish it.
    Provider {
        name: String,
        online: bool,
    },
    /// Whether a resource of this node that depends on `provider` (`group/resource`) is up
    /// changed: publish it, so that the provider's node waits for it.
    Dependents {
        provider: String,
        up: bool,
    },
    /// The config was reloaded: publish its fingerprints.
    Identity(crate::config::identity::Identity),
}

/// A group's line to the coordinator.
pub struct GroupLink {
    group: String,
    /// What the group must do; changes as ownership changes.
    pub directive: watch::Receiver<Directive>,
    requests: mpsc::UnboundedSender<Request>,
}

impl GroupLink {
    /// Asks to fail the group over; the answer comes later on the receiver.
    pub fn request_failover(&self) -> oneshot::Receiver<FailoverAnswer> {
        let (reply, answer) = oneshot::channel();
        let _ = self.requests.send(Request::Failover {
            group: self.group.clone(),
            reply,
        });
        answer
    }

    /// Tells the coordinator that the group is offline after a [`Directive::Stop`] or a fence: the
    /// ownership key can go.
    pub fn released(&self) {
        let _ = self.requests.send(Request::Released {
            group: self.group.clone(),
        });
    }
}

impl Drop for GroupLink {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Unregister {
            group: self.group.clone(),
        });
    }
}

/// The cluster as this node sees it, for `resmon status` and `/api/v1/status`.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ClusterView {
    /// `embedded` or `etcd`.
    pub coordinator: String,
    /// This node.
    pub node: String,
    /// Whether the coordinator is in touch with the cluster (always for the embedded one).
    pub connected: bool,
    /// Nodes alive (holding a lease).
    pub nodes: Vec<String>,
    /// Paused (drained) nodes: they take no group until resumed.
    #[serde(default)]
    pub paused: Vec<String>,
    /// Owner of every group the cluster knows; `None` while nobody holds it.
    pub owners: BTreeMap<String, Option<String>>,
    /// The alive nodes' versions and the groups they define differently.
    #[serde(default)]
    pub skew: skew::Skew,
    /// Why this node takes no group: the cluster's key schema is newer than its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The coordinator: cheap to clone, shared by the groups and the control API.
#[derive(Clone)]
pub struct Coordinator {
    node: String,
    requests: mpsc::UnboundedSender<Request>,
    view: Arc<Mutex<ClusterView>>,
    providers: Arc<providers::Providers>,
}

impl Coordinator {
    /// The embedded single-node coordinator: this node owns every group.
    pub fn embedded(node: &str, sink: Arc<crate::events::EventSink>) -> Coordinator {
        let (requests, rx) = mpsc::unbounded_channel();
        let view = Arc::new(Mutex::new(ClusterView {
            coordinator: "embedded".into(),
            node: node.to_string(),
            connected: true,
            nodes: vec![node.to_string()],
            owners: BTreeMap::new(),
            paused: Vec::new(),
            skew: Default::default(),
            refused: None,
        }));
        tokio::spawn(embedded(node.to_string(), rx, view.clone(), sink));
        Coordinator {
            node: node.to_string(),
            requests,
            view,
            providers: Arc::new(providers::Providers::new(false)),
        }
    }

    /// The etcd coordinator for `config`; its session task starts at once.
    pub fn etcd(
        node: &str,
        config: ClusterConfig,
        state_dir: &std::path::Path,
        sink: Arc<crate::events::EventSink>,
        maintenance: Arc<crate::maintenance::Maintenance>,
        identity: crate::config::identity::Identity,
    ) -> Coordinator {
        let (requests, rx) = mpsc::unbounded_channel();
        let view = Arc::new(Mutex::new(ClusterView {
            coordinator: "etcd".into(),
            node: node.to_string(),
            ..ClusterView::default()
        }));
        let providers = Arc::new(providers::Providers::new(true));
        etcd::spawn(
            node.to_string(),
            config,
            state_dir.to_path_buf(),
            rx,
            view.clone(),
            sink,
            etcd::Local {
                providers: providers.clone(),
                maintenance,
                identity,
            },
        );
        Coordinator {
            node: node.to_string(),
            requests,
            view,
            providers,
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Registers a group; its directive starts at [`Directive::Wait`].
    pub fn register(&self, group: &str, placement: Placement) -> GroupLink {
        let (tx, rx) = watch::channel(Directive::Wait);
        let _ = self.requests.send(Request::Register {
            group: group.to_string(),
            placement,
            directive: tx,
        });
        GroupLink {
            group: group.to_string(),
            directive: rx,
            requests: self.requests.clone(),
        }
    }

    /// Asks that `group` move to `to` (or the best other node); returns where it goes.
    pub async fn move_group(&self, group: &str, to: Option<String>) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Move {
                group: group.to_string(),
                to,
                reply,
            })
            .map_err(|_| "the coordinator has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the coordinator has stopped".to_string())?
    }

    /// The states of resources that other groups' resources depend on.
    pub fn providers(&self) -> &Arc<providers::Providers> {
        &self.providers
    }

    /// A resource that other groups depend on came online or went offline here.
    pub fn provider_state(&self, name: &str, online: bool) {
        self.providers.set_here(name, online);
        let _ = self.requests.send(Request::Provider {
            name: name.to_string(),
            online,
        });
    }

    /// `dependent` (`group/resource`), which depends on `provider`, is up here or no longer.
    pub fn dependent_state(&self, provider: &str, dependent: &str, up: bool) {
        if let Some(up) = self.providers.set_dependent(provider, dependent, up) {
            let _ = self.requests.send(Request::Dependents {
                provider: provider.to_string(),
                up,
            });
        }
    }

    /// `group`'s task is gone: its resources hold no provider up any more.
    pub fn forget_dependents_in(&self, group: &str) {
        for provider in self.providers.forget_dependents_in(group) {
            let _ = self.requests.send(Request::Dependents {
                provider,
                up: false,
            });
        }
    }

    /// Pauses `node` (this one if `None`): it takes no group and its groups move to others.
    pub async fn drain(&self, node: Option<String>) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Drain { node, reply })
            .map_err(|_| "the coordinator has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the coordinator has stopped".to_string())?
    }

    /// Resumes `node` (this one if `None`); with `failback`, what it held comes back.
    pub async fn resume(&self, node: Option<String>, failback: bool) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Resume {
                node,
                failback,
                reply,
            })
            .map_err(|_| "the coordinator has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the coordinator has stopped".to_string())?
    }

    /// What is in maintenance changed.
    pub fn maintenance_changed(&self) {
        let _ = self.requests.send(Request::Maintenance);
    }

    /// The config was reloaded: the other nodes are told its new fingerprints.
    pub fn config_changed(&self, identity: crate::config::identity::Identity) {
        let _ = self.requests.send(Request::Identity(identity));
    }

    /// The cluster as this node sees it.
    pub fn view(&self) -> ClusterView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The embedded coordinator's task: every registered group runs here.
async fn embedded(
    node: String,
    mut rx: mpsc::UnboundedReceiver<Request>,
    view: Arc<Mutex<ClusterView>>,
    sink: Arc<crate::events::EventSink>,
) {
    // Always in touch with its one-node cluster.
    sink.metrics().coordinator_up(true);
    let mut groups: BTreeMap<String, watch::Sender<Directive>> = BTreeMap::new();
    while let Some(request) = rx.recv().await {
        match request {
            Request::Register {
                group, directive, ..
            } => {
                directive.send_replace(Directive::Run);
                sink.metrics().group_owner(&group, &node, true);
                view.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .owners
                    .insert(group.clone(), Some(node.clone()));
                groups.insert(group, directive);
            }
            Request::Unregister { group } => {
                // A reload registers the new group before the old link is dropped.
                if groups.get(&group).is_some_and(|d| d.is_closed()) {
                    groups.remove(&group);
                    sink.metrics().group_owner(&group, &node, false);
                    view.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .owners
                        .remove(&group);
                }
            }
            Request::Failover { reply, .. } => {
                let _ = reply.send(FailoverAnswer {
                    moved: false,
                    detail: "no other node can own the group (single-node coordinator)".into(),
                });
            }
            Request::Released { .. }
            | Request::Provider { .. }
            | Request::Dependents { .. }
            | Request::Maintenance
            | Request::Identity(_) => {}
            Request::Drain { reply, .. } | Request::Resume { reply, .. } => {
                let _ = reply.send(Err(
                    "this agent runs the single-node coordinator: there is no other node to drain to"
                        .into(),
                ));
            }
            Request::Move { reply, .. } => {
                let _ = reply.send(Err(
                    "this agent runs the single-node coordinator: configure [cluster] to move groups between nodes"
                        .into(),
                ));
            }
        }
    }
}
