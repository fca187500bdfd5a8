//! `tcp`: a TCP connect to `address`. There is nothing to start or stop: online succeeds once
//! the address accepts a connection, offline and terminate do nothing.
//!
//! The connection is closed with a reset (`SO_LINGER` 0), as HAProxy's health checks do, so that
//! thousands of checks a second leave no `TIME_WAIT` sockets behind to exhaust local ports.

use crate::resource::{BuildContext, TypeConfig};
use crate::resource::{Failure, Progress, Resource};
use crate::values::{HostPort, SourceAddress};
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;

/// Private properties of a `tcp` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// `host:port` to connect to.
    pub address: HostPort,
    /// Connect from this address, or from the address of this `ip` resource of the group.
    #[serde(default)]
    pub source_address: Option<SourceAddress>,
}

/// A resource that is alive while its address accepts TCP connections.
pub struct TcpResource {
    config: TcpConfig,
    /// `source_address`, resolved.
    source: Option<std::net::IpAddr>,
}

impl TcpResource {
    /// Builds it from its config, connecting from `source` when given.
    pub fn new(config: TcpConfig, source: Option<std::net::IpAddr>) -> Self {
        TcpResource { config, source }
    }

    async fn connect(&self, progress: &Progress) -> Result<(), Failure> {
        let stream = crate::net::connect_from(&self.config.address, self.source, progress).await?;
        crate::net::close_with_reset(&stream);
        Ok(())
    }
}

#[async_trait]
impl Resource for TcpResource {
    fn online_is_a_check(&self) -> bool {
        true
    }

    async fn online(&self, progress: &Progress) -> Result<(), Failure> {
        self.connect(progress).await
    }

    async fn offline(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn terminate(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn looks_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.connect(progress).await
    }

    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.connect(progress).await
    }
}

impl TypeConfig for TcpConfig {
    const NAME: &'static str = "tcp";

    fn source_address(&self) -> Option<&SourceAddress> {
        self.source_address.as_ref()
    }

    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(TcpResource::new(
            self.clone(),
            cx.source(&self.source_address),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resmon_policies::FailureReason;
    use std::time::Duration;

    fn resource(address: &str) -> TcpResource {
        TcpResource::new(
            TcpConfig {
                address: address.parse().unwrap(),
                source_address: None,
            },
            None,
        )
    }

    #[tokio::test]
    async fn alive_while_listening_refused_after() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let r = resource(&addr);
        r.is_alive(&Progress::default()).await.unwrap();
        r.online(&Progress::default()).await.unwrap();
        drop(listener);
        let err = r.is_alive(&Progress::default()).await.unwrap_err();
        assert_eq!(err.reason, FailureReason::Refused, "{err}");
        assert!(err.detail.contains(&addr), "{err}");
    }

    #[test]
    fn ipv6_loopback_is_reachable() {
        // In a namespace of its own, whose loopback has ::1 whenever the kernel has IPv6 at
        // all, whatever the host's settings: a host with IPv6 turned off cannot skip the test.
        if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
            eprintln!("skipped: this kernel has no IPv6");
            return;
        }
        let ns = crate::testing::Netns::new("tcp-v6");
        ns.block_on(async {
            let listener = tokio::net::TcpListener::bind("[::1]:0")
                .await
                .expect("::1 on a new namespace's loopback");
            let addr = listener.local_addr().unwrap().to_string();
            resource(&addr)
                .is_alive(&Progress::default())
                .await
                .unwrap();
            drop(listener);
            let err = resource(&addr)
                .is_alive(&Progress::default())
                .await
                .unwrap_err();
            assert_eq!(err.reason, FailureReason::Refused, "{err}");
        });
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_and_each_address_tried() {
        // `localhost` may list ::1 first; the server is on 127.0.0.1 only.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        resource(&format!("localhost:{port}"))
            .is_alive(&Progress::default())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_a_dns_failure_not_a_connect_failure() {
        // `.invalid` never resolves (RFC 2606). Without a name server the lookup may hang
        // instead: the runtime's deadline then names the same reason.
        let progress = Progress::default();
        let unresolvable = resource("nothing-here.invalid:25");
        let check = unresolvable.is_alive(&progress);
        let failure = match tokio::time::timeout(Duration::from_secs(3), check).await {
            Ok(result) => result.unwrap_err(),
            Err(_) => progress.timed_out("3 s"),
        };
        assert_eq!(failure.reason, FailureReason::Dns, "{failure}");
        assert!(failure.detail.contains("nothing-here.invalid"), "{failure}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<TcpConfig>("address = \"127.0.0.1:1\"\nport = 2\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `port`"), "{err}");
    }
}
