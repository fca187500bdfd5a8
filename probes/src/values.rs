//! The value types of resource configuration, shared by every type and by the agent's own
//! config: each one validates while the file is parsed, so an error carries its key's line.
//! They depend on nothing else in the crate.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

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

/// A user or group name in the config: the portable POSIX set that `useradd` accepts (a
/// lower-case letter or `_` first, then letters, digits, `_`, `-`, at most 32 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountName(pub String);

impl<'de> Deserialize<'de> for AccountName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut bytes = s.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        let rest_ok =
            bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !first_ok || !rest_ok || s.len() > 32 {
            return Err(serde::de::Error::custom(format!(
                "invalid user or group name {s:?}: a lower-case letter or _ first, then \
                 lower-case letters, digits, _ or -, at most 32 characters"
            )));
        }
        Ok(AccountName(s))
    }
}

/// A regular expression in the config, checked while the file is read.
#[derive(Clone, Debug)]
pub struct ConfigRegex(pub regex::Regex);

impl PartialEq for ConfigRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for ConfigRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s)
            .map(ConfigRegex)
            .map_err(|e| serde::de::Error::custom(format!("invalid regular expression: {e}")))
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

/// `source_address` of a network check: where its connections come from. An IP address, or the
/// name of an `ip` resource of the same group, whose address the check then binds to wherever
/// the group runs (an Exchange protocol server must accept connections from its own virtual
/// server's address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceAddress {
    /// This address.
    Ip(std::net::IpAddr),
    /// The address of this `ip` resource of the group.
    Resource(String),
}

impl<'de> Deserialize<'de> for SourceAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(ip) = s.parse() {
            return Ok(SourceAddress::Ip(ip));
        }
        // Digits and dots, or a colon, were meant as an address.
        let address_like = s.contains(':') || s.chars().all(|c| c.is_ascii_digit() || c == '.');
        let name_like = !address_like
            && !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !name_like {
            return Err(serde::de::Error::custom(format!(
                "invalid source_address {s:?}: an IP address (\"192.0.2.10\") or the name of an ip resource of the group (\"vip\")"
            )));
        }
        Ok(SourceAddress::Resource(s))
    }
}
