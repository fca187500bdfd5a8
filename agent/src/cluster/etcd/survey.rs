//! What `resmon validate --cluster` reads: the cluster's key schema and each alive node's
//! record, once, without a lease and without writing anything.

use super::keys::{Keys, NodeRecord};
use super::session::connect_options;
use crate::config::ClusterConfig;
use etcd_client::{Client, GetOptions};
use std::collections::BTreeMap;
use std::time::Duration;

/// The cluster as its keys say.
#[derive(Debug)]
pub struct Survey {
    /// The key schema (0 while no node has written it).
    pub schema: u32,
    /// Each alive node's record.
    pub nodes: BTreeMap<String, NodeRecord>,
}

/// Reads the cluster `config` names, within `limit`.
pub async fn survey(config: &ClusterConfig, limit: Duration) -> Result<Survey, String> {
    let keys = Keys {
        prefix: config.prefix.trim_end_matches('/').to_string(),
    };
    let read = async {
        let options = connect_options(config, limit)?;
        let mut client = Client::connect(config.endpoints.clone(), Some(options))
            .await
            .map_err(|e| format!("connect to etcd: {e}"))?;
        let schema = client
            .get(keys.schema(), None)
            .await
            .map_err(|e| format!("read the key schema: {e}"))?;
        let nodes = client
            .get(keys.nodes(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("read the nodes: {e}"))?;
        Ok::<_, String>(Survey {
            schema: schema
                .kvs()
                .first()
                .map(|kv| {
                    kv.value_str()
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(u32::MAX)
                })
                .unwrap_or(0),
            nodes: nodes
                .kvs()
                .iter()
                .filter_map(|kv| {
                    Some((keys.node_of(kv)?.to_string(), NodeRecord::parse(kv.value())))
                })
                .collect(),
        })
    };
    tokio::time::timeout(limit, read).await.map_err(|_| {
        format!(
            "etcd at {} did not answer within {limit:?}",
            config.endpoints.join(", ")
        )
    })?
}
