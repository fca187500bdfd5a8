//! What is asked of the cluster from outside the ownership machine's own decisions: a group's
//! failover, a node's drain and resume, and the state of resources other groups depend on.

use super::{bounded, keys, list_or_none, Broken, EtcdCoordinator};
use crate::cluster::FailoverAnswer;
use crate::events::{Event, MoveStarted, NodePaused, NodeResumed};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use resmon_policies::ownership::{Action, Input};

impl EtcdCoordinator {
    /// Pauses `node` (this one if `None`): `paused/<node>`, created only if absent, names the
    /// groups it holds now; every node's machine then keeps groups off it, and its own moves
    /// them away.
    pub(super) async fn pause(
        &mut self,
        client: &mut Client,
        node: Option<String>,
    ) -> Result<Result<String, String>, Broken> {
        let node = node.unwrap_or_else(|| self.node.clone());
        let held: Vec<String> = self
            .shared
            .machine()
            .owners()
            .into_iter()
            .filter(|(_, owner)| owner.as_deref() == Some(node.as_str()))
            .map(|(g, _)| g)
            .collect();
        let record = keys::PausedRecord {
            by: self.node.clone(),
            held: held.clone(),
        };
        let key = self.keys.paused(&node);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                serde_json::to_string(&record).unwrap_or_default(),
                None,
            )]);
        let response = bounded(self.op_timeout(), "pause a node", client.txn(txn)).await?;
        if !response.succeeded() {
            return Ok(Err(format!("{node} is paused already")));
        }
        NodePaused {
            node: &node,
            by: &self.node,
            groups: &held,
        }
        .emit(&self.sink);
        Ok(Ok(format!(
            "{node} paused; it moves its {} groups to other nodes",
            held.len()
        )))
    }

    /// Resumes `node` (this one if `None`); with `failback`, asks the groups it held when it
    /// was paused to move back, each where the placement rules allow it.
    pub(super) async fn resume(
        &mut self,
        client: &mut Client,
        node: Option<String>,
        failback: bool,
    ) -> Result<(Result<String, String>, Vec<Action>), Broken> {
        let node = node.unwrap_or_else(|| self.node.clone());
        let key = self.keys.paused(&node);
        let limit = self.op_timeout();
        let deleted = bounded(
            limit,
            "resume a node",
            client.delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key())),
        )
        .await?;
        let Some(previous) = deleted.prev_kvs().first() else {
            return Ok((Err(format!("{node} is not paused")), Vec::new()));
        };
        let record: keys::PausedRecord =
            serde_json::from_slice(previous.value()).unwrap_or_default();
        // Known here at once: the moves below may go to it.
        let actions = self.shared.step(Input::Observed {
            change: resmon_policies::ownership::Observation::Paused {
                node: node.clone(),
                paused: false,
            },
            live: true,
        });
        let mut back = Vec::new();
        let mut stays = Vec::new();
        if failback {
            for group in &record.held {
                let asked = self
                    .shared
                    .machine()
                    .move_request(group, Some(node.clone()));
                match asked {
                    Ok(mut target) => {
                        target.reason = "failback".into();
                        self.request_move(client, group, &target).await?;
                        back.push(group.clone());
                    }
                    Err(why) => stays.push(format!("{group} ({why})")),
                }
            }
        }
        NodeResumed {
            node: &node,
            failback: &back,
        }
        .emit(&self.sink);
        let mut text = format!("{node} resumed");
        if failback {
            text.push_str(&format!("; moving back: {}", list_or_none(&back)));
            if !stays.is_empty() {
                text.push_str(&format!("; staying: {}", stays.join(", ")));
            }
        }
        Ok((Ok(text), actions))
    }

    /// Publishes a provider's state on this node: its key under this node's lease while it is
    /// online, deleted (only if it is this node's) when it is not.
    pub(super) async fn publish_provider(
        &self,
        client: &mut Client,
        name: &str,
        online: bool,
    ) -> Result<(), Broken> {
        let key = self.keys.online(name);
        self.put_while(client, key, online, "publish a provider")
            .await
    }

    /// Publishes whether a resource of this node that depends on `provider` is up.
    pub(super) async fn publish_dependents(
        &self,
        client: &mut Client,
        provider: &str,
        up: bool,
    ) -> Result<(), Broken> {
        let key = self.keys.dependents(provider, &self.node);
        self.put_while(client, key, up, "publish dependents").await
    }

    /// `key` under this node's lease while `present`, naming this node; deleted when not,
    /// only if it is this node's (under its lease).
    async fn put_while(
        &self,
        client: &mut Client,
        key: Option<String>,
        present: bool,
        what: &str,
    ) -> Result<(), Broken> {
        let Some(key) = key else {
            return Ok(());
        };
        let lease = self.shared.machine().lease();
        let txn = if present {
            Txn::new().and_then([TxnOp::put(
                key,
                self.node.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
        } else {
            Txn::new()
                .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                .and_then([TxnOp::delete(key, None)])
        };
        bounded(self.op_timeout(), what, client.txn(txn)).await?;
        Ok(())
    }

    /// A failover of a group this node holds: the history and the request in one transaction
    /// on the history's revision.
    pub(super) async fn failover(
        &mut self,
        client: &mut Client,
        group: &str,
    ) -> Result<FailoverAnswer, Broken> {
        let now = self.shared.now();
        let write = match self.shared.machine().failover(group, now) {
            Ok(write) => write,
            Err(detail) => {
                return Ok(FailoverAnswer {
                    moved: false,
                    detail,
                })
            }
        };
        let key = self.keys.failovers(group);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                write.revision,
            )])
            .and_then([
                TxnOp::put(
                    key,
                    serde_json::to_string(&write.history).unwrap_or_default(),
                    None,
                ),
                TxnOp::put(
                    self.keys.target(group),
                    serde_json::to_string(&write.target).unwrap_or_default(),
                    None,
                ),
            ]);
        let response = bounded(self.op_timeout(), "record a failover", client.txn(txn)).await?;
        if !response.succeeded() {
            return Ok(FailoverAnswer {
                moved: false,
                detail: "the failover history changed meanwhile".into(),
            });
        }
        MoveStarted {
            group,
            from: &self.node,
            to: &write.target.to,
            reason: "failover",
        }
        .emit(&self.sink);
        Ok(FailoverAnswer {
            moved: true,
            detail: format!("to {}", write.target.to),
        })
    }
}
