//! `network_name`: the group's name resolves, and to the group's address. `is_alive` resolves
//! `hostname` (A and AAAA) through the configured name servers, or the system's, with the hickory
//! resolver and no cache (a health check must ask every time); the answer must hold every
//! `expect_address`. Online and offline do nothing: a dynamic DNS registration (RFC 2136) is not
//! done yet. `looks_alive` is the same lookup.
//!
//! Failure reasons: `nxdomain`, `servfail`, `wrong_address` (no address, or not the expected
//! one), `timeout`, `dns` (another resolver error).

use crate::resource::{BuildContext, TypeConfig};
use crate::resource::{Failure, Progress, Resource, Stage};
use crate::values::HostPort;
use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;
use resmon_policies::FailureReason;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

/// Private properties of a `network_name` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkNameConfig {
    /// The name, e.g. `"mail.example.test"` (`name` is the resource's own).
    pub hostname: String,
    /// Name servers to ask (`"127.0.0.1:53"`); the system's (`/etc/resolv.conf`) when empty.
    #[serde(default)]
    pub nameservers: Vec<HostPort>,
    /// Addresses the answer must hold (the group's address).
    #[serde(default)]
    pub expect_address: Vec<IpAddr>,
}

impl NetworkNameConfig {
    /// Name servers must be IP addresses: resolving the resolver would be circular.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        for ns in &self.nameservers {
            if ns.host.parse::<IpAddr>().is_err() {
                errors.push((
                    "nameservers",
                    format!("{ns}: a name server is given by its IP address"),
                ));
            }
        }
        if self.hostname.trim().is_empty() {
            errors.push(("hostname", "the hostname is empty".to_string()));
        }
        errors
    }
}

/// A name that must resolve to the group's address.
pub struct NetworkNameResource {
    config: NetworkNameConfig,
    resolver: OnceLock<Result<TokioAsyncResolver, String>>,
}

impl NetworkNameResource {
    /// Builds it from its config; the resolver is made on first use.
    pub fn new(config: NetworkNameConfig) -> Self {
        NetworkNameResource {
            config,
            resolver: OnceLock::new(),
        }
    }

    fn resolver(&self) -> Result<&TokioAsyncResolver, Failure> {
        self.resolver
            .get_or_init(|| {
                let mut opts = ResolverOpts::default();
                // Ask every time, once: the runtime owns the deadline and the retries.
                opts.cache_size = 0;
                opts.attempts = 1;
                opts.timeout = Duration::from_secs(3600);
                opts.use_hosts_file = false;
                let config = if self.config.nameservers.is_empty() {
                    let (config, _) =
                        hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                            format!("cannot read the system's resolver configuration: {e}")
                        })?;
                    config
                } else {
                    let mut group = NameServerConfigGroup::new();
                    for ns in &self.config.nameservers {
                        let ip: IpAddr = ns
                            .host
                            .parse()
                            .map_err(|_| format!("{ns} is not an IP address"))?;
                        group.merge(NameServerConfigGroup::from_ips_clear(&[ip], ns.port, true));
                    }
                    ResolverConfig::from_parts(None, vec![], group)
                };
                Ok(TokioAsyncResolver::tokio(config, opts))
            })
            .as_ref()
            .map_err(|e| Failure::new(FailureReason::Dns, e.clone()))
    }

    async fn resolve(&self, progress: &Progress) -> Result<(), Failure> {
        let resolver = self.resolver()?;
        let name = &self.config.hostname;
        progress.stage(Stage::Exchange);
        let answer = resolver.lookup_ip(name.as_str()).await.map_err(|e| {
            let reason = match e.kind() {
                ResolveErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
                    ResponseCode::NXDomain => FailureReason::Nxdomain,
                    ResponseCode::ServFail => FailureReason::Servfail,
                    ResponseCode::NoError => FailureReason::WrongAddress,
                    _ => FailureReason::Dns,
                },
                ResolveErrorKind::Timeout => FailureReason::Timeout,
                _ => FailureReason::Dns,
            };
            Failure::new(reason, format!("{name}: {e}"))
        })?;
        let found: Vec<IpAddr> = answer.iter().collect();
        let missing: Vec<&IpAddr> = self
            .config
            .expect_address
            .iter()
            .filter(|a| !found.contains(a))
            .collect();
        if found.is_empty() || !missing.is_empty() {
            let found: Vec<String> = found.iter().map(|a| a.to_string()).collect();
            let expected: Vec<String> = self
                .config
                .expect_address
                .iter()
                .map(|a| a.to_string())
                .collect();
            return Err(Failure::new(
                FailureReason::WrongAddress,
                format!(
                    "{name} resolves to [{}], expected [{}]",
                    found.join(", "),
                    expected.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Resource for NetworkNameResource {
    fn online_is_a_check(&self) -> bool {
        true
    }

    async fn online(&self, progress: &Progress) -> Result<(), Failure> {
        self.resolve(progress).await
    }

    async fn offline(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn terminate(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn looks_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.resolve(progress).await
    }

    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.resolve(progress).await
    }
}

impl TypeConfig for NetworkNameConfig {
    const NAME: &'static str = "network_name";

    fn validate(&self) -> Vec<(&'static str, String)> {
        NetworkNameConfig::validate(self)
    }

    fn build(&self, _cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(NetworkNameResource::new(self.clone()))
    }
}
