//! A protocol check that a `process` or a `service` uses as its readiness and its `is_alive`:
//! `check.imap = { address = "127.0.0.1:143" }`. It is a resource of a check-only type, built
//! and run by that type's own code, so that a server whose port still accepts while it is hung
//! (a stopped dovecot: the kernel answers the handshake) fails its service's `is_alive` with the
//! protocol's reason (`banner_timeout`), and the service is restarted.

use crate::registry::ResourceConfig;
use crate::resource::{BuildContext, Failure, Progress, Resource};
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The types a check may be: those whose online is only a check, and `exec`.
pub const CHECK_TYPES: &[&str] = &["tcp", "smtp", "pop3", "imap", "http", "exec"];

/// `check.<type> = { ... }`: the type's own keys.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck(pub Box<ResourceConfig>);

impl<'de> Deserialize<'de> for HealthCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OneType)
    }
}

/// Reads the map `{ <type> = { ... } }`: one key, the type, whose value is its config.
struct OneType;

impl<'de> Visitor<'de> for OneType {
    type Value = HealthCheck;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "one check, keyed by its type, such as check.imap = {{ address = \"127.0.0.1:143\" }} ({})",
            CHECK_TYPES.join(", ")
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HealthCheck, A::Error> {
        let Some(type_name) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format!(
                "name the check's type, such as check.imap = {{ address = \"127.0.0.1:143\" }} ({})",
                CHECK_TYPES.join(", ")
            )));
        };
        if !CHECK_TYPES.contains(&type_name.as_str()) {
            return Err(A::Error::custom(format!(
                "a {type_name:?} cannot be a check; one of {}",
                CHECK_TYPES.join(", ")
            )));
        }
        let config = map.next_value_seed(TypeSeed(&type_name))?;
        if map.next_key::<String>()?.is_some() {
            return Err(A::Error::custom("one check only"));
        }
        Ok(HealthCheck(Box::new(config)))
    }
}

/// Reads a config of the named type.
struct TypeSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for TypeSeed<'_> {
    type Value = ResourceConfig;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ResourceConfig, D::Error> {
        ResourceConfig::deserialize(self.0, d)?
            .ok_or_else(|| D::Error::custom(format!("unknown type {:?}", self.0)))
    }
}

impl HealthCheck {
    /// Its own cross-key checks, reported at the `check` key.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        self.0
            .validate()
            .into_iter()
            .map(|e| ("check", format!("{}: {}", e.key, e.message)))
            .collect()
    }

    /// The runnable check.
    pub fn build(&self, cx: &BuildContext) -> Checker {
        Checker {
            resource: self.0.build(cx),
            timeout: cx.check_timeout,
        }
    }
}

/// A built check.
pub struct Checker {
    resource: Arc<dyn Resource>,
    /// An attempt inside an operation (readiness while coming online) is bounded by the
    /// resource's `check_timeout`, as the runtime bounds the checks themselves.
    timeout: Duration,
}

impl Checker {
    /// Within a check: the runtime bounds it.
    pub async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.resource.is_alive(progress).await
    }

    /// One readiness attempt while coming online, under `check_timeout`.
    pub async fn ready(&self) -> Result<(), Failure> {
        let progress = Progress::default();
        match tokio::time::timeout(self.timeout, self.resource.is_alive(&progress)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(progress.timed_out(&format!(
                "check_timeout {}",
                crate::HumanDuration(self.timeout)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<HealthCheck, String> {
        #[derive(Deserialize)]
        struct Holder {
            check: HealthCheck,
        }
        toml::from_str::<Holder>(text)
            .map(|h| h.check)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn a_check_is_a_config_of_a_check_type() {
        let check = read("check.imap = { address = \"127.0.0.1:143\" }\n").unwrap();
        assert_eq!(check.0.type_name(), "imap");
        let check = read("[check.exec]\ncheck = [\"true\"]\n").unwrap();
        assert_eq!(check.0.type_name(), "exec");
        assert_eq!(
            read("check.process = { command = [\"true\"] }\n").unwrap_err(),
            "a \"process\" cannot be a check; one of tcp, smtp, pop3, imap, http, exec"
        );
        assert!(read("check.imap = { adress = \"x:1\" }\n")
            .unwrap_err()
            .contains("unknown field `adress`"));
        assert!(read("check = {}\n")
            .unwrap_err()
            .starts_with("name the check's type"));
    }
}
