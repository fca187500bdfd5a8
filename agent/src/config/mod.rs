//! The configuration file: TOML, read in three steps.
//!
//! 1. *Parse*: TOML syntax, reported with the line and column `toml` gives.
//! 2. *Shape*: serde structs that deny unknown keys, with named default functions and validating
//!    newtypes. Each resource table is split into its header (`name`, `type`, `depends_on`), the
//!    common properties shared with `[resource_types.<type>]`, and the type's private
//!    properties, each read on its own (serde's `flatten` would lose unknown-key checks).
//! 3. [`validate`](RawConfig::validate): what needs the whole file: duplicate names, unknown
//!    dependencies, cycles, settings that defeat each other.
//!
//! Every problem becomes a [`Diagnostic`] naming the file, line, key path and what is wrong; the
//! key path is mapped back to a line through the span-preserving `toml_edit` document
//! ([`locate`]). `resmon validate` and a reload run exactly this code.
//!
//! # Layout
//!
//! - this module: what a loaded config is ([`Config`], [`GroupConfig`], [`ResourceConfig`]) and
//!   [`load`] / [`parse`];
//! - [`diagnostics`]: errors and warnings with file, line and key;
//! - [`sections`]: `[agent]`, `[cluster]` and names;
//! - `read`: the raw file shapes and the whole-file checks; `links`: dependencies between
//!   groups (existence, cycles, colocations that cannot hold); [`notify`]: `[[notify]]` hooks;
//! - [`props`]: the common properties and their type defaults; `locate`: key paths to lines;
//! - [`identity`]: the fingerprints a node publishes so that nodes can compare configs.

pub mod diagnostics;
pub mod identity;
mod links;
mod locate;
pub mod notify;
mod props;
mod read;
mod sandbox;
pub mod sections;

use diagnostics::Diagnostics;
pub use diagnostics::{ConfigErrors, Diagnostic, Severity, DEFAULT_CONFIG_PATH};
pub use props::{CommonProps, PendingTimeout, ResourceProps};
use read::RawConfig;
use resmon_policies::placement::Placement;
use resmon_policies::GroupSpec;
use resmon_probes::tls::TrustCache;
use resmon_probes::values::SourceAddress;
use resmon_probes::{BuildContext, ResourceConfig as PrivateConfig};
pub(crate) use sections::default_max_parallel_starts;
pub use sections::{AgentConfig, ClusterConfig, Name, WatchdogConfig, WatchdogMode};
use std::path::{Path, PathBuf};

/// One resource, validated and with its type defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceConfig {
    /// Unique within its group.
    pub name: Name,
    /// Names of the resources it needs online first: of its group, or `group/resource` of
    /// another group that must then run on the same node (colocation).
    pub depends_on: Vec<String>,
    /// `group/resource` of other groups it needs online first, wherever they run (ordering
    /// only).
    pub depends_on_anywhere: Vec<String>,
    /// Intervals, timeouts and restart policy, resolved.
    pub props: ResourceProps,
    /// The type's private properties.
    pub private: PrivateConfig,
}

impl ResourceConfig {
    /// The type's name (a metric label).
    pub fn type_name(&self) -> &'static str {
        self.private.type_name()
    }
}

/// One group, validated.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// The group's name.
    pub name: Name,
    /// Its resources, in file order.
    pub resources: Vec<ResourceConfig>,
    /// The dependency DAG the policy runs on.
    pub spec: GroupSpec,
    /// Where it may run and where it goes on failover.
    pub placement: Placement,
    /// The resources of other groups its resources depend on, in the order of the policy's
    /// external provider indexes.
    pub externals: Vec<External>,
    /// Its resources that resources of other groups depend on: their state is published.
    pub published: Vec<resmon_policies::ResourceId>,
}

/// A resource of another group that a resource of this group depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct External {
    /// `group/resource`.
    pub name: String,
    /// On this node (`depends_on`), or anywhere in the cluster (`depends_on_anywhere`).
    pub colocated: bool,
}

impl GroupConfig {
    /// A hash of everything the group runs with: a reload compares fingerprints, so that the
    /// agent need not keep a second copy of every resource's config (megabytes at 10,000
    /// resources) only to find out what changed. `Debug` shows every field, in a fixed order
    /// (configs hold no hash maps).
    pub fn fingerprint(&self) -> u64 {
        use std::fmt::Write;
        use std::hash::Hasher;
        struct Feed(std::collections::hash_map::DefaultHasher);
        impl Write for Feed {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0.write(s.as_bytes());
                Ok(())
            }
        }
        let mut feed = Feed(Default::default());
        let _ = write!(feed, "{self:?}");
        feed.0.finish()
    }

    /// What a resource of this group needs to be built; `trust` is shared by the resources of
    /// one config.
    pub fn build_context(
        &self,
        agent: &AgentConfig,
        resource: &ResourceConfig,
        trust: &TrustCache,
    ) -> BuildContext {
        BuildContext {
            state_dir: agent.state_dir.clone(),
            group: self.name.to_string(),
            resource: resource.name.to_string(),
            trust: trust.clone(),
            check_timeout: resource.props.check_timeout,
            children: agent.children.resolve(),
            // Only the address a `source_address` names: looking through the group for every
            // resource would cost a group of thousands millions of steps at start.
            addresses: match resource.private.source_address() {
                Some(SourceAddress::Resource(name)) => self
                    .resources
                    .iter()
                    .filter(|r| r.name.as_str() == name)
                    .filter_map(|r| match &r.private {
                        PrivateConfig::Ip(ip) => Some((r.name.to_string(), ip.address.address)),
                        _ => None,
                    })
                    .collect(),
                _ => Default::default(),
            },
        }
    }
}

/// A validated config.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[cluster]`, when groups are shared with other nodes through etcd.
    pub cluster: Option<ClusterConfig>,
    /// `[[groups]]`.
    pub groups: Vec<GroupConfig>,
    /// `[[notify]]`: commands run on chosen events.
    pub notify: Vec<notify::HookConfig>,
    /// Its fingerprints, published to the other nodes.
    pub identity: identity::Identity,
}

/// A config that passed validation, and its warnings.
#[derive(Debug)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Things that are allowed but probably wrong.
    pub warnings: Vec<Diagnostic>,
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            position: None,
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// Validates config text; `path` names it in diagnostics.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigErrors> {
    let mut cx = Diagnostics {
        file: path.to_path_buf(),
        doc: locate::Document::parse(text),
        found: Vec::new(),
        warned: Default::default(),
    };
    let value: toml::Value = match toml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let position = e.span().map(|s| locate::line_column(text, s.start));
            cx.found.push(Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                position,
                path: String::new(),
                message: format!("invalid TOML: {}", e.message()),
            });
            return Err(ConfigErrors(cx.found));
        }
    };
    let identity = identity::of(&value);
    let raw: RawConfig = match cx.read(value, &[]) {
        Some(raw) => raw,
        None => return Err(ConfigErrors(cx.found)),
    };
    let config = raw.validate(path, &mut cx).map(|mut c| {
        c.identity = identity;
        c
    });
    let (errors, warnings): (Vec<_>, Vec<_>) = cx
        .found
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded { config, warnings }),
        _ => Err(ConfigErrors(errors)),
    }
}

#[cfg(test)]
mod tests;
