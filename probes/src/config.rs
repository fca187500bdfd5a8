//! Resource configuration shared by every type: durations, targets, the enum over each type's
//! private properties, and what a resource needs to know about where it runs.
//!
//! Each type's private-properties struct lives beside its code (`process.rs`, `tcp.rs`) and
//! rejects unknown keys; validating newtypes ([`HumanDuration`], [`HostPort`], [`Argv`]) reject
//! bad values while the file is parsed, so the error carries the key's line.

use crate::banner::BannerPreset;
use crate::resource::Resource;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Every resource type name the agent knows.
pub const RESOURCE_TYPES: &[&str] = &[
    "process",
    "tcp",
    "smtp",
    "pop3",
    "imap",
    "http",
    "exec",
    "ocf",
    "disk",
    "network_name",
    "ip",
    "service",
];

/// A duration written for humans: `"500ms"`, `"5s"`, `"1m30s"`, `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like \"500ms\", \"5s\", \"1m30s\" or \"1h\""))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        resmon_policies::time::fmt_duration(self.0, f)
    }
}

/// A `host:port` target (`127.0.0.1:25`, `[::1]:443`, `mail.example:25`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host part, without IPv6 brackets.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The host when it is an IP address, parsed once: checks connect to it thousands of
    /// times a second. Private, so that it always agrees with `host` ([`HostPort::new`]).
    ip: Option<std::net::IpAddr>,
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid address {s:?}: expected host:port, such as \"127.0.0.1:8080\" or \"[::1]:25\"")
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || (host.contains(':') && !s.starts_with('[')) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(format!(
                "invalid address {s:?}: port 0 cannot be connected to"
            ));
        }
        Ok(HostPort::new(host.to_string(), port))
    }
}

impl HostPort {
    /// A target from its host (no brackets) and port.
    pub fn new(host: String, port: u16) -> Self {
        HostPort {
            ip: host.parse().ok(),
            host,
            port,
        }
    }

    /// The host when it is an IP address, so that connecting needs no parse (or lookup).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.ip
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A command line as a list: program first, then its arguments. Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.first().is_none_or(|p| p.is_empty()) {
            return Err(serde::de::Error::custom(
                "a command must name a program: write it as a list, such as [\"sleep\", \"60\"]",
            ));
        }
        Ok(Argv(v))
    }
}

/// Where a resource runs: what it may need besides its own properties.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The agent's state directory (pid files, logs of supervised processes).
    pub state_dir: PathBuf,
    /// The group's name.
    pub group: String,
    /// The resource's name.
    pub resource: String,
    /// Trust material shared by the TLS resources of one config.
    pub trust: crate::tls::TrustCache,
}

impl BuildContext {
    /// A file of this resource's under the state directory: `<state_dir>/<group>/<resource>.<ext>`.
    pub fn state_file(&self, extension: &str) -> PathBuf {
        self.state_dir
            .join(&self.group)
            .join(format!("{}.{extension}", self.resource))
    }
}

/// A problem in a type's private properties that only shows once they are all read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key the problem is about, relative to the resource.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The private properties of one resource, by type.
#[derive(Clone, Debug, PartialEq)]
pub enum ResourceConfig {
    /// See [`crate::process`].
    Process(crate::process::ProcessConfig),
    /// See [`crate::tcp`].
    Tcp(crate::tcp::TcpConfig),
    /// See [`crate::smtp`].
    Smtp(crate::smtp::SmtpConfig),
    /// See [`crate::pop3`].
    Pop3(crate::pop3::Pop3Config),
    /// See [`crate::imap`].
    Imap(crate::imap::ImapConfig),
    /// See [`crate::http`].
    Http(crate::http::HttpConfig),
    /// See [`crate::exec`].
    Exec(crate::exec::ExecConfig),
    /// See [`crate::ocf`].
    Ocf(crate::ocf::OcfConfig),
    /// See [`crate::disk`].
    Disk(crate::disk::DiskConfig),
    /// See [`crate::network_name`].
    NetworkName(crate::network_name::NetworkNameConfig),
    /// See [`crate::ip`].
    Ip(crate::ip::IpConfig),
    /// See [`crate::service`].
    Service(crate::service::ServiceConfig),
}

impl ResourceConfig {
    /// Reads the private properties of a resource of type `type_name`; `Ok(None)` when the type
    /// is unknown (the caller names the valid ones).
    pub fn deserialize<'de, D: Deserializer<'de>>(
        type_name: &str,
        d: D,
    ) -> Result<Option<Self>, D::Error> {
        Ok(Some(match type_name {
            "process" => ResourceConfig::Process(Deserialize::deserialize(d)?),
            "tcp" => ResourceConfig::Tcp(Deserialize::deserialize(d)?),
            "smtp" => ResourceConfig::Smtp(Deserialize::deserialize(d)?),
            "pop3" => ResourceConfig::Pop3(Deserialize::deserialize(d)?),
            "imap" => ResourceConfig::Imap(Deserialize::deserialize(d)?),
            "http" => ResourceConfig::Http(Deserialize::deserialize(d)?),
            "exec" => ResourceConfig::Exec(Deserialize::deserialize(d)?),
            "ocf" => ResourceConfig::Ocf(Deserialize::deserialize(d)?),
            "disk" => ResourceConfig::Disk(Deserialize::deserialize(d)?),
            "network_name" => ResourceConfig::NetworkName(Deserialize::deserialize(d)?),
            "ip" => ResourceConfig::Ip(Deserialize::deserialize(d)?),
            "service" => ResourceConfig::Service(Deserialize::deserialize(d)?),
            _ => return Ok(None),
        }))
    }

    /// The type's name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ResourceConfig::Process(_) => "process",
            ResourceConfig::Tcp(_) => "tcp",
            ResourceConfig::Smtp(_) => "smtp",
            ResourceConfig::Pop3(_) => "pop3",
            ResourceConfig::Imap(_) => "imap",
            ResourceConfig::Http(_) => "http",
            ResourceConfig::Exec(_) => "exec",
            ResourceConfig::Ocf(_) => "ocf",
            ResourceConfig::Disk(_) => "disk",
            ResourceConfig::NetworkName(_) => "network_name",
            ResourceConfig::Ip(_) => "ip",
            ResourceConfig::Service(_) => "service",
        }
    }

    /// Checks that need several keys at once.
    pub fn validate(&self) -> Vec<ConfigError> {
        let pairs = match self {
            ResourceConfig::Process(c) => return c.validate(),
            ResourceConfig::Tcp(_) => Vec::new(),
            ResourceConfig::Smtp(c) => c.validate(),
            ResourceConfig::Pop3(c) => c.validate(),
            ResourceConfig::Imap(c) => c.validate(),
            ResourceConfig::Http(c) => c.validate(),
            ResourceConfig::Exec(_) => Vec::new(),
            ResourceConfig::Ocf(c) => c.validate(),
            ResourceConfig::Disk(_) => Vec::new(),
            ResourceConfig::NetworkName(c) => c.validate(),
            ResourceConfig::Ip(c) => c.validate(),
            ResourceConfig::Service(c) => c.validate(),
        };
        pairs
            .into_iter()
            .map(|(key, message)| ConfigError { key, message })
            .collect()
    }

    /// Whether resources of this config report failures between polls.
    pub fn provides_failure_signal(&self) -> bool {
        matches!(
            self,
            ResourceConfig::Process(_) | ResourceConfig::Ip(_) | ResourceConfig::Service(_)
        )
    }

    /// Builds the runnable resource (WSFC's Open: no side effect on the service).
    pub fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        match self {
            ResourceConfig::Process(c) => {
                Arc::new(crate::process::ProcessResource::new(c.clone(), cx))
            }
            ResourceConfig::Tcp(c) => Arc::new(crate::tcp::TcpResource::new(c.clone())),
            ResourceConfig::Smtp(c) => Arc::new(c.build(&cx.trust)),
            ResourceConfig::Pop3(c) => Arc::new(c.build(&cx.trust)),
            ResourceConfig::Imap(c) => Arc::new(c.build(&cx.trust)),
            ResourceConfig::Http(c) => {
                Arc::new(crate::http::HttpResource::new(c.clone(), &cx.trust))
            }
            ResourceConfig::Exec(c) => Arc::new(crate::exec::ExecResource::new(c.clone())),
            ResourceConfig::Ocf(c) => {
                Arc::new(crate::ocf::OcfResource::new(c.clone(), &cx.resource))
            }
            ResourceConfig::Disk(c) => {
                Arc::new(crate::disk::DiskResource::new(c.clone(), &cx.resource))
            }
            ResourceConfig::NetworkName(c) => {
                Arc::new(crate::network_name::NetworkNameResource::new(c.clone()))
            }
            ResourceConfig::Ip(c) => Arc::new(crate::ip::IpResource::new(c.clone())),
            ResourceConfig::Service(c) => Arc::new(crate::service::ServiceResource::new(c.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_targets_parse_or_explain() {
        assert_eq!(
            "1m30s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(90)
        );
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert!("5 parsecs"
            .parse::<HumanDuration>()
            .unwrap_err()
            .contains("invalid duration"));
        assert_eq!(
            "[::1]:25".parse::<HostPort>().unwrap(),
            HostPort {
                host: "::1".into(),
                port: 25,
                ip: Some(std::net::Ipv6Addr::LOCALHOST.into()),
            }
        );
        assert_eq!("mail.test:25".parse::<HostPort>().unwrap().ip(), None);
        assert_eq!(
            "[::1]:25".parse::<HostPort>().unwrap().to_string(),
            "[::1]:25"
        );
        assert!("::1:25".parse::<HostPort>().is_err());
        assert!("localhost".parse::<HostPort>().is_err());
        assert!("localhost:0"
            .parse::<HostPort>()
            .unwrap_err()
            .contains("port 0"));
    }
}
