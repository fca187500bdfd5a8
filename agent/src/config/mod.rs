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

mod locate;
mod props;

pub use props::{CommonProps, PendingTimeout, ResourceProps};

use resmon_policies::placement::{Failback, Placement};
use resmon_policies::{GroupSpec, ResourceId, ResourceSpec, SpecError};
use resmon_probes::tls::TrustCache;
use resmon_probes::{BuildContext, HumanDuration, ResourceConfig as PrivateConfig, RESOURCE_TYPES};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/resmon/resmon.toml";

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The config is rejected.
    Error,
    /// The config is accepted, but something in it is probably not what was meant.
    Warning,
}

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when the key could be found in the file.
    pub position: Option<(usize, usize)>,
    /// Dotted key path, e.g. `groups[0].resources[2].depends_on[1]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The config could not be used; every error found is listed.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A name used in metrics labels, file names and the API: letters, digits, `_`, `-`, `.`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !s.starts_with('.');
        if ok {
            Ok(Name(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "invalid name {s:?}: use 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'"
            )))
        }
    }
}

/// `[agent]`: the agent itself.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/api/v1/status`).
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// This node's name (defaults to the host name).
    #[serde(default = "default_node")]
    pub node: String,
    /// Pid files and logs of supervised processes; what re-adoption after a restart needs.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// On SIGTERM, stop every group (dependents first) before exiting. Off by default: an agent
    /// restart or upgrade must not stop the services it keeps.
    #[serde(default)]
    pub stop_on_exit: bool,
    /// Unix socket of the control API (online, offline, clear), mode 0660.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// How many starts (adoptions and `online` operations) run at once; the others wait their
    /// turn, as Pacemaker's `node-action-limit` makes them. Read when the agent starts.
    #[serde(default = "default_max_parallel_starts")]
    pub max_parallel_starts: std::num::NonZeroUsize,
    /// How many threads run the resources' checks, each an event loop of its own; resources
    /// are dealt round them. One runs 10,000 checks a second; more spread a larger load over
    /// more cores. Read when the agent starts.
    #[serde(default = "default_check_threads")]
    pub check_threads: std::num::NonZeroUsize,
}

impl AgentConfig {
    /// Gives `new` the running values of the keys read only when the agent starts, and names
    /// those whose value `new` changed: their new value waits for the next start.
    pub(crate) fn keep_start_only_keys(&self, new: &mut AgentConfig) -> Vec<&'static str> {
        fn keep<T: PartialEq + Clone>(
            key: &'static str,
            running: &T,
            new: &mut T,
            changed: &mut Vec<&'static str>,
        ) {
            if running != new {
                changed.push(key);
                new.clone_from(running);
            }
        }
        let mut changed = Vec::new();
        keep("listen", &self.listen, &mut new.listen, &mut changed);
        keep(
            "control_socket",
            &self.control_socket,
            &mut new.control_socket,
            &mut changed,
        );
        keep(
            "max_parallel_starts",
            &self.max_parallel_starts,
            &mut new.max_parallel_starts,
            &mut changed,
        );
        keep(
            "check_threads",
            &self.check_threads,
            &mut new.check_threads,
            &mut changed,
        );
        changed
    }
}

pub(crate) fn default_max_parallel_starts() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(64).expect("64 is not zero")
}

pub(crate) fn default_check_threads() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::MIN
}

fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/resmon/control.sock")
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9477))
}

fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid listen address {s:?}: expected ip:port, such as \"127.0.0.1:9477\" or \"[::1]:9477\""
        ))
    })
}

fn default_node() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/resmon")
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: default_listen(),
            node: default_node(),
            state_dir: default_state_dir(),
            stop_on_exit: false,
            control_socket: default_control_socket(),
            max_parallel_starts: default_max_parallel_starts(),
            check_threads: default_check_threads(),
        }
    }
}

/// The file's top level, as read.
/// `[cluster]`: groups across machines, with ownership in etcd. Without it the embedded
/// single-node coordinator owns every group here.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name in the cluster (defaults to `agent.node`, the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// etcd endpoints, e.g. `["http://10.0.0.1:2379"]` (`https://` with TLS).
    pub endpoints: Vec<String>,
    /// The lease every ownership key of this node is held under: another node takes a dead
    /// node's groups once it expires.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: HumanDuration,
    /// Time kept to take the groups offline before the lease can expire: the node fences itself
    /// once it has not renewed for `lease_ttl - fence_margin` (default: half the TTL).
    #[serde(default)]
    pub fence_margin: Option<HumanDuration>,
    /// Prefix of every key resmon writes.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// CA certificate (PEM) that signed etcd's, for `https://` endpoints.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd user, with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the etcd user's password (one line), kept out of the config.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_lease_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}

fn default_prefix() -> String {
    "/resmon".into()
}

impl ClusterConfig {
    /// The node name this agent uses in the cluster.
    pub fn node_name(&self, agent: &AgentConfig) -> String {
        self.node.clone().unwrap_or_else(|| agent.node.clone())
    }

    /// How long before the lease's expiry the node fences itself.
    pub fn fence_margin(&self) -> std::time::Duration {
        self.fence_margin
            .map(|m| m.0)
            .unwrap_or(self.lease_ttl.0 / 2)
    }

    fn check(&self, cx: &mut Diagnostics) {
        let at = |key: &str| vec![Seg::Key("cluster".into()), Seg::Key(key.into())];
        if self.endpoints.is_empty() {
            cx.error(
                &at("endpoints"),
                "name at least one etcd endpoint, such as \"http://10.0.0.1:2379\"",
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                let mut path = at("endpoints");
                path.push(Seg::Index(i));
                cx.error(
                    &path,
                    format!("{e:?}: write an endpoint as http://host:port or https://host:port"),
                );
            }
        }
        let ttl = self.lease_ttl.0;
        if ttl.as_secs() < 2 || ttl.subsec_nanos() != 0 {
            cx.error(
                &at("lease_ttl"),
                "etcd leases are whole seconds, at least \"2s\"",
            );
        }
        if self.fence_margin() >= ttl || self.fence_margin().is_zero() {
            cx.error(
                &at("fence_margin"),
                "must be shorter than lease_ttl and longer than zero",
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            cx.error(&at("key_file"), "set cert_file and key_file together");
        }
        if self.username.is_some() != self.password_file.is_some() {
            cx.error(
                &at("password_file"),
                "set username and password_file together",
            );
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 {
            cx.error(
                &at("prefix"),
                "a key prefix starts with '/', such as \"/resmon\"",
            );
        }
    }
}

fn default_failover_period() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(6 * 3600))
}

fn default_failback() -> FailbackSetting {
    FailbackSetting(Failback::Never)
}

/// `failback = "never"`, `"immediate"`, or a window of local hours such as `"22-06"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FailbackSetting(Failback);

impl Default for FailbackSetting {
    fn default() -> Self {
        default_failback()
    }
}

impl<'de> Deserialize<'de> for FailbackSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(format!(
                "invalid failback {s:?}: \"never\", \"immediate\", or a window of hours such as \"22-06\""
            ))
        };
        match s.as_str() {
            "never" => Ok(FailbackSetting(Failback::Never)),
            "immediate" => Ok(FailbackSetting(Failback::Immediate)),
            window => {
                let (a, b) = window.split_once('-').ok_or_else(bad)?;
                let start: u8 = a.trim().parse().map_err(|_| bad())?;
                let end: u8 = b.trim().parse().map_err(|_| bad())?;
                if start > 23 || end > 23 || start == end {
                    return Err(bad());
                }
                Ok(FailbackSetting(Failback::Window { start, end }))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: AgentConfig,
    #[serde(default)]
    cluster: Option<ClusterConfig>,
    #[serde(default)]
    resource_types: BTreeMap<String, toml::Value>,
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Name,
    #[serde(default)]
    resources: Vec<toml::Table>,
    /// Nodes that may own the group (empty: every node).
    #[serde(default)]
    possible_owners: Vec<String>,
    /// Nodes in order of preference.
    #[serde(default)]
    preferred_owners: Vec<String>,
    /// Failovers allowed within `failover_period` (WSFC's default: the number of nodes - 1).
    #[serde(default)]
    failover_threshold: Option<u32>,
    #[serde(default = "default_failover_period")]
    failover_period: HumanDuration,
    #[serde(default = "default_failback")]
    failback: FailbackSetting,
}

/// The keys of a resource table that say what it is and where it sits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceHeader {
    name: Name,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    depends_on: Vec<String>,
}

/// One resource, validated and with its type defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceConfig {
    /// Unique within its group.
    pub name: Name,
    /// Names of the resources it needs online first.
    pub depends_on: Vec<String>,
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
    let raw: RawConfig = match cx.read(value, &[]) {
        Some(raw) => raw,
        None => return Err(ConfigErrors(cx.found)),
    };
    let config = raw.validate(path, &mut cx);
    let (errors, warnings): (Vec<_>, Vec<_>) = cx
        .found
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded { config, warnings }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Collects diagnostics and knows where each key is in the file.
struct Diagnostics<'a> {
    file: PathBuf,
    doc: locate::Document<'a>,
    found: Vec<Diagnostic>,
    /// Warnings already given, by path and message: one about a type's defaults comes from
    /// each of its resources, and is said once.
    warned: std::collections::HashSet<(String, String)>,
}

/// One step of a key path.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

impl Diagnostics<'_> {
    fn push(&mut self, severity: Severity, path: &[Seg], message: impl Into<String>) {
        self.found.push(Diagnostic {
            severity,
            file: self.file.clone(),
            position: self.doc.position(path),
            path: render_path(path),
            message: message.into(),
        });
    }

    fn error_count(&self) -> usize {
        self.found
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        self.push(Severity::Error, path, message)
    }

    fn warning(&mut self, path: &[Seg], message: impl Into<String>) {
        let message = message.into();
        if self.warned.insert((render_path(path), message.clone())) {
            self.push(Severity::Warning, path, message)
        }
    }

    /// Deserializes `value` found at `base`, turning a serde error into a diagnostic at the
    /// exact key.
    fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        value: toml::Value,
        base: &[Seg],
    ) -> Option<T> {
        self.read_with(value, base, |d| T::deserialize(d))
    }

    fn read_with<T>(
        &mut self,
        value: toml::Value,
        base: &[Seg],
        f: impl FnOnce(
            serde_path_to_error::Deserializer<'_, '_, toml::Value>,
        ) -> Result<T, toml::de::Error>,
    ) -> Option<T> {
        let mut track = serde_path_to_error::Track::new();
        let result = f(serde_path_to_error::Deserializer::new(value, &mut track));
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let mut path = base.to_vec();
                for seg in track.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Map { key } => {
                            path.push(Seg::Key(key.clone()))
                        }
                        serde_path_to_error::Segment::Seq { index } => {
                            path.push(Seg::Index(*index))
                        }
                        _ => {}
                    }
                }
                self.error(&path, e.message().to_string());
                None
            }
        }
    }
}

impl RawConfig {
    fn validate(self, source: &Path, cx: &mut Diagnostics) -> Option<Config> {
        let mut type_defaults: HashMap<String, CommonProps> = HashMap::new();
        for (type_name, value) in self.resource_types {
            let path = [
                Seg::Key("resource_types".into()),
                Seg::Key(type_name.clone()),
            ];
            if !RESOURCE_TYPES.contains(&type_name.as_str()) {
                cx.error(
                    &path,
                    format!(
                        "unknown resource type {type_name:?}; known types: {}",
                        RESOURCE_TYPES.join(", ")
                    ),
                );
                continue;
            }
            if let Some(props) = cx.read::<CommonProps>(value, &path) {
                props.check(&path, cx);
                type_defaults.insert(type_name, props);
            }
        }

        let mut groups = Vec::new();
        let mut group_names: HashMap<Name, usize> = HashMap::new();
        let mut ok = true;
        for (gi, group) in self.groups.into_iter().enumerate() {
            let gpath = vec![Seg::Key("groups".into()), Seg::Index(gi)];
            if let Some(first) = group_names.insert(group.name.clone(), gi) {
                let mut p = gpath.clone();
                p.push(Seg::Key("name".into()));
                cx.error(
                    &p,
                    format!(
                        "duplicate group name {:?} (first used by groups[{first}])",
                        group.name.as_str()
                    ),
                );
                ok = false;
            }
            match read_group(group, &gpath, &type_defaults, cx) {
                Some(g) => groups.push(g),
                None => ok = false,
            }
        }
        if let Some(cluster) = &self.cluster {
            let errors = cx.error_count();
            cluster.check(cx);
            ok &= cx.error_count() == errors;
        }
        ok.then(|| Config {
            source: source.to_path_buf(),
            agent: self.agent,
            cluster: self.cluster,
            groups,
        })
    }
}

/// A `network_name` with no `expect_address` of its own expects the addresses of the `ip`
/// resources it depends on: the name must resolve to where the group is.
fn inherit_group_addresses(resources: &mut [ResourceConfig]) {
    let addresses: HashMap<Name, std::net::IpAddr> = resources
        .iter()
        .filter_map(|r| match &r.private {
            PrivateConfig::Ip(ip) => Some((r.name.clone(), ip.address.address)),
            _ => None,
        })
        .collect();
    for r in resources.iter_mut() {
        let depends_on = r.depends_on.clone();
        if let PrivateConfig::NetworkName(name) = &mut r.private {
            if name.expect_address.is_empty() {
                name.expect_address = depends_on
                    .iter()
                    .filter_map(|d| addresses.iter().find(|(n, _)| n.as_str() == d))
                    .map(|(_, a)| *a)
                    .collect();
            }
        }
    }
}

fn read_placement(group: &RawGroup, gpath: &[Seg], cx: &mut Diagnostics) -> Option<Placement> {
    let mut ok = true;
    for (i, p) in group.preferred_owners.iter().enumerate() {
        if !group.possible_owners.is_empty() && !group.possible_owners.contains(p) {
            let mut path = gpath.to_vec();
            path.extend([Seg::Key("preferred_owners".into()), Seg::Index(i)]);
            cx.error(&path, format!("{p:?} is not one of possible_owners"));
            ok = false;
        }
    }
    if group.failover_period.0.is_zero() {
        let mut path = gpath.to_vec();
        path.push(Seg::Key("failover_period".into()));
        cx.error(&path, "must be longer than zero");
        ok = false;
    }
    let nodes = group
        .possible_owners
        .len()
        .max(group.preferred_owners.len()) as u32;
    ok.then(|| Placement {
        possible_owners: group.possible_owners.clone(),
        preferred_owners: group.preferred_owners.clone(),
        failover_threshold: group
            .failover_threshold
            .unwrap_or(nodes.saturating_sub(1).max(1)),
        failover_period: group.failover_period.0,
        failback: group.failback.0,
    })
}

fn read_group(
    mut group: RawGroup,
    gpath: &[Seg],
    type_defaults: &HashMap<String, CommonProps>,
    cx: &mut Diagnostics,
) -> Option<GroupConfig> {
    let placement = read_placement(&group, gpath, cx);
    let mut resources = Vec::with_capacity(group.resources.len());
    let mut ok = true;
    let mut names: HashMap<Name, usize> = HashMap::new();
    for (ri, table) in std::mem::take(&mut group.resources).into_iter().enumerate() {
        let mut rpath = gpath.to_vec();
        rpath.extend([Seg::Key("resources".into()), Seg::Index(ri)]);
        match read_resource(table, &rpath, type_defaults, cx) {
            Some(r) => {
                if let Some(first) = names.insert(r.name.clone(), ri) {
                    let mut p = rpath.clone();
                    p.push(Seg::Key("name".into()));
                    cx.error(
                        &p,
                        format!(
                            "duplicate resource name {:?} in group {:?} (first used by resources[{first}])",
                            r.name.as_str(),
                            group.name.as_str()
                        ),
                    );
                    ok = false;
                }
                resources.push(r);
            }
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    inherit_group_addresses(&mut resources);

    // Dependencies by name, then the DAG check the policy itself relies on.
    let mut specs = Vec::new();
    for (ri, r) in resources.iter().enumerate() {
        let mut depends_on = Vec::new();
        for (di, dep) in r.depends_on.iter().enumerate() {
            match resources.iter().position(|o| o.name.as_str() == dep) {
                Some(i) => depends_on.push(ResourceId(i)),
                None => {
                    let mut p = gpath.to_vec();
                    p.extend([
                        Seg::Key("resources".into()),
                        Seg::Index(ri),
                        Seg::Key("depends_on".into()),
                        Seg::Index(di),
                    ]);
                    let known: Vec<&str> = resources.iter().map(|o| o.name.as_str()).collect();
                    cx.error(
                        &p,
                        format!(
                            "unknown resource {dep:?}: group {:?} has {}",
                            group.name.as_str(),
                            known.join(", ")
                        ),
                    );
                    ok = false;
                }
            }
        }
        specs.push(ResourceSpec {
            name: r.name.to_string(),
            depends_on,
            policy: r.props.restart_policy(r.private.provides_failure_signal()),
        });
    }
    if !ok {
        return None;
    }
    let placement = placement?;
    match GroupSpec::new(group.name.to_string(), specs) {
        Ok(spec) => Some(GroupConfig {
            name: group.name,
            resources,
            spec,
            placement,
        }),
        Err(e) => {
            let at = |ri: usize, key: &str, di: Option<usize>| {
                let mut p = gpath.to_vec();
                p.extend([
                    Seg::Key("resources".into()),
                    Seg::Index(ri),
                    Seg::Key(key.into()),
                ]);
                p.extend(di.map(Seg::Index));
                p
            };
            match e {
                SpecError::Cycle { path } => {
                    let names: Vec<&str> =
                        path.iter().map(|r| resources[r.0].name.as_str()).collect();
                    let first = path[0].0;
                    let message = if path.len() == 2 {
                        format!("resource {:?} depends on itself", names[0])
                    } else {
                        format!("dependency cycle: {}", names.join(" -> "))
                    };
                    cx.error(&at(first, "depends_on", None), message);
                }
                SpecError::DuplicateDependency { resource, position } => {
                    cx.error(
                        &at(resource.0, "depends_on", Some(position)),
                        format!(
                            "{:?} is listed twice",
                            resources[resource.0].depends_on[position]
                        ),
                    );
                }
                SpecError::UnknownDependency { resource, position } => {
                    cx.error(
                        &at(resource.0, "depends_on", Some(position)),
                        "unknown resource",
                    );
                }
            }
            None
        }
    }
}

fn read_resource(
    table: toml::Table,
    rpath: &[Seg],
    type_defaults: &HashMap<String, CommonProps>,
    cx: &mut Diagnostics,
) -> Option<ResourceConfig> {
    let header_keys = props::struct_fields::<ResourceHeader>();
    let common_keys = props::struct_fields::<CommonProps>();
    let (mut header, mut common, mut private) =
        (toml::Table::new(), toml::Table::new(), toml::Table::new());
    for (k, v) in table {
        if header_keys.contains(&k.as_str()) {
            header.insert(k, v);
        } else if common_keys.contains(&k.as_str()) {
            common.insert(k, v);
        } else {
            private.insert(k, v);
        }
    }
    let header: ResourceHeader = cx.read(toml::Value::Table(header), rpath)?;
    if !RESOURCE_TYPES.contains(&header.type_name.as_str()) {
        let mut p = rpath.to_vec();
        p.push(Seg::Key("type".into()));
        cx.error(
            &p,
            format!(
                "unknown resource type {:?}; known types: {}",
                header.type_name,
                RESOURCE_TYPES.join(", ")
            ),
        );
        return None;
    }
    let own: CommonProps = cx.read(toml::Value::Table(common), rpath)?;
    own.check(rpath, cx);
    let type_name = header.type_name.clone();
    let before = cx.found.len();
    let private = cx.read_with(toml::Value::Table(private), rpath, |d| {
        PrivateConfig::deserialize(&type_name, d).map(|c| c.expect("type name checked above"))
    });
    if let Some(d) = cx.found.get_mut(before) {
        if d.message.starts_with("unknown field") {
            d.message = format!(
                "{} in a {type_name} resource (or a common key: {})",
                d.message,
                header_keys
                    .iter()
                    .chain(common_keys)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let private = private?;
    let mut ok = true;
    for problem in private.validate() {
        let mut p = rpath.to_vec();
        p.push(Seg::Key(problem.key.into()));
        cx.error(&p, problem.message);
        ok = false;
    }
    let props = own.resolve(type_defaults.get(&type_name));
    let type_table = [
        Seg::Key("resource_types".into()),
        Seg::Key(type_name.clone()),
    ];
    let place = props::WarningPlace {
        resource: rpath,
        type_table: &type_table,
    };
    props.warn(&own, &place, cx);
    if props.poll_looks_alive == Some(false) && !private.provides_failure_signal() {
        cx.warning(
            &place.key(own.poll_looks_alive.is_some(), "poll_looks_alive"),
            format!(
                "a {type_name} resource reports no failure by itself: with looks_alive off, a failure waits for is_alive (every {})",
                show(props.is_alive_interval)
            ),
        );
    }
    ok.then_some(ResourceConfig {
        name: header.name,
        depends_on: header.depends_on,
        props,
        private,
    })
}

/// Shorthand used by `props` for durations in messages.
fn show(d: std::time::Duration) -> String {
    HumanDuration(d).to_string()
}

#[cfg(test)]
mod tests;
