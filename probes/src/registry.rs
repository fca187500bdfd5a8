//! The registry of resource types: every type listed once, in [`resource_types!`], which makes
//! the [`ResourceConfig`] enum, the list of names and every dispatch over them, so that a
//! type cannot be half-added. Each type's config declares its name, whether it signals
//! failures, its cross-key checks and how it builds (the [`TypeConfig`] trait, in
//! [`crate::resource`]).

use crate::resource::{BuildContext, ConfigError, Resource, TypeConfig};
use serde::{Deserialize, Deserializer};
use std::sync::Arc;

/// Declares the registry: `Variant(ConfigType)` for each type, in the order `validate`
/// lists them.
macro_rules! resource_types {
    ($($variant:ident($config:ty)),+ $(,)?) => {
        /// Every resource type name the agent knows.
        pub const RESOURCE_TYPES: &[&str] = &[$(<$config as TypeConfig>::NAME),+];

        /// The private properties of one resource, by type.
        #[derive(Clone, Debug, PartialEq)]
        pub enum ResourceConfig {
            $(
                #[doc = concat!("A `", stringify!($variant), "` resource: see [`", stringify!($config), "`].")]
                $variant($config),
            )+
        }

        impl ResourceConfig {
            /// Reads the private properties of a resource of type `type_name`; `Ok(None)` when
            /// the type is unknown (the caller names the valid ones).
            pub fn deserialize<'de, D: Deserializer<'de>>(
                type_name: &str,
                d: D,
            ) -> Result<Option<Self>, D::Error> {
                $(
                    if type_name == <$config as TypeConfig>::NAME {
                        return Ok(Some(ResourceConfig::$variant(Deserialize::deserialize(d)?)));
                    }
                )+
                Ok(None)
            }

            /// The type's name.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(ResourceConfig::$variant(_) => <$config as TypeConfig>::NAME,)+
                }
            }

            /// Checks that need several keys at once.
            pub fn validate(&self) -> Vec<ConfigError> {
                let pairs = match self {
                    $(ResourceConfig::$variant(c) => TypeConfig::validate(c),)+
                };
                pairs
                    .into_iter()
                    .map(|(key, message)| ConfigError { key, message })
                    .collect()
            }

            /// What validate warns about (see [`TypeConfig::warnings`]).
            pub fn warnings(&self) -> Vec<ConfigError> {
                let pairs = match self {
                    $(ResourceConfig::$variant(c) => TypeConfig::warnings(c),)+
                };
                pairs
                    .into_iter()
                    .map(|(key, message)| ConfigError { key, message })
                    .collect()
            }

            /// Whether resources of this config report failures between polls.
            pub fn provides_failure_signal(&self) -> bool {
                match self {
                    $(ResourceConfig::$variant(_) => <$config as TypeConfig>::FAILURE_SIGNAL,)+
                }
            }

            /// Whether its terminate waits on the service's own stop (see
            /// [`TypeConfig::terminate_waits`]).
            pub fn terminate_waits(&self) -> bool {
                match self {
                    $(ResourceConfig::$variant(c) => TypeConfig::terminate_waits(c),)+
                }
            }

            /// Its `source_address`, if its type has one and it is set.
            pub fn source_address(&self) -> Option<&crate::values::SourceAddress> {
                match self {
                    $(ResourceConfig::$variant(c) => TypeConfig::source_address(c),)+
                }
            }

            /// Checks in a row over a usage limit that make a failure (see
            /// [`TypeConfig::limit_checks`]).
            pub fn limit_checks(&self) -> u32 {
                match self {
                    $(ResourceConfig::$variant(c) => TypeConfig::limit_checks(c),)+
                }
            }

            /// Builds the runnable resource (WSFC's Open: no side effect on the service).
            pub fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
                match self {
                    $(ResourceConfig::$variant(c) => TypeConfig::build(c, cx),)+
                }
            }
        }
    };
}

resource_types! {
    Process(crate::process::ProcessConfig),
    Tcp(crate::tcp::TcpConfig),
    Smtp(crate::mail::SmtpConfig),
    Pop3(crate::mail::Pop3Config),
    Imap(crate::mail::ImapConfig),
    Http(crate::http::HttpConfig),
    Exec(crate::exec::ExecConfig),
    Ocf(crate::ocf::OcfConfig),
    Disk(crate::disk::DiskConfig),
    NetworkName(crate::network_name::NetworkNameConfig),
    Ip(crate::ip::IpConfig),
    Service(crate::service::ServiceConfig),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_listed_once_and_reads_back_under_its_own_name() {
        let mut names = RESOURCE_TYPES.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), RESOURCE_TYPES.len(), "a name is listed twice");
        for name in RESOURCE_TYPES {
            // An empty table is either a valid config of the type or a complaint about its
            // own keys, never "unknown type".
            let table = toml::Value::Table(Default::default());
            match ResourceConfig::deserialize(name, table) {
                Ok(Some(c)) => assert_eq!(c.type_name(), *name),
                Ok(None) => panic!("{name} is listed but not deserialized"),
                Err(_) => {}
            }
        }
        let table = toml::Value::Table(Default::default());
        assert!(ResourceConfig::deserialize("gopher", table)
            .unwrap()
            .is_none());
    }
}
