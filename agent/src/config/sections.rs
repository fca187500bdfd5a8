//! The `[agent]` and `[cluster]` tables, and [`Name`], the validated name of a group or a
//! resource.

use super::diagnostics::{Diagnostics, Seg};
use resmon_policies::placement::Failback;
use resmon_probes::HumanDuration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

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

impl Name {
    /// Checks `s` against the rule every name follows.
    fn parse(s: String) -> Result<Name, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !s.starts_with('.');
        if ok {
            Ok(Name(s))
        } else {
            Err(format!(
                "invalid name {s:?}: use 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Name::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A node's name: a metric label value and part of etcd keys, so it follows the rule of every
/// name (a `/` would change the key it is written under).
pub(super) fn node_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Name::deserialize(d).map(|n| n.0)
}

/// [`node_name`], for an optional one.
fn optional_node_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    node_name(d).map(Some)
}

/// Node names, for owner lists.
pub(super) fn node_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<Name>::deserialize(d).map(|v| v.into_iter().map(|n| n.0).collect())
}

/// Named amounts (`capacity`, `uses`): each name follows the rule of every name.
pub(super) fn amounts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, u64>, D::Error> {
    BTreeMap::<Name, u64>::deserialize(d).map(|m| m.into_iter().map(|(k, v)| (k.0, v)).collect())
}

/// A count from 1 to `MAX`: more would only exhaust the machine (threads, connections).
fn count_up_to<'de, D: serde::Deserializer<'de>, const MAX: usize>(
    d: D,
) -> Result<std::num::NonZeroUsize, D::Error> {
    let n = std::num::NonZeroUsize::deserialize(d)?;
    if n.get() > MAX {
        return Err(serde::de::Error::custom(format!(
            "{n} is more than this agent allows ({MAX})"
        )));
    }
    Ok(n)
}

/// `[agent]`: the agent itself.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/api/v1/status`).
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// This node's name (defaults to the host name).
    #[serde(default = "default_node", deserialize_with = "node_name")]
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
    #[serde(
        default = "default_max_parallel_starts",
        deserialize_with = "count_up_to::<_, 100_000>"
    )]
    pub max_parallel_starts: std::num::NonZeroUsize,
    /// How many threads run the resources' checks, each an event loop of its own; resources
    /// are dealt round them. One runs 10,000 checks a second; more spread a larger load over
    /// more cores. Read when the agent starts.
    #[serde(
        default = "default_check_threads",
        deserialize_with = "count_up_to::<_, 256>"
    )]
    pub check_threads: std::num::NonZeroUsize,
    /// Where a `process`, and the start and stop commands of `exec`, `ocf` and `disk`, run:
    /// `"auto"` (transient units of the system's systemd when the agent is its service, else
    /// forked), `"fork"`, or the bus of a systemd (`"system"`, `"session"`, an address). Read
    /// when the agent starts.
    #[serde(default)]
    pub children: resmon_probes::launch::ChildrenSetting,
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
        keep("children", &self.children, &mut new.children, &mut changed);
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

pub(super) fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/resmon/control.sock")
}

pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9477))
}

pub(super) fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid listen address {s:?}: expected ip:port, such as \"127.0.0.1:9477\" or \"[::1]:9477\""
        ))
    })
}

pub(super) fn default_node() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

pub(super) fn default_state_dir() -> PathBuf {
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
            children: Default::default(),
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
    #[serde(default, deserialize_with = "optional_node_name")]
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
    /// A watchdog device that resets the machine when the agent stops confirming its lease.
    #[serde(default)]
    pub watchdog: Option<WatchdogConfig>,
    /// What this node can hold (`storage_groups = 4`), as Pacemaker's node utilization: no
    /// group is placed here beyond it. Groups say what they use (`uses`).
    #[serde(default, deserialize_with = "amounts")]
    pub capacity: BTreeMap<String, u64>,
}

/// `[cluster.watchdog]`, as Patroni's: the device, and what to do when it cannot be opened.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// The device, such as `/dev/watchdog`.
    pub device: PathBuf,
    /// `off`, `automatic` (use it if it opens, else say so) or `required` (run no group
    /// without it).
    #[serde(default = "default_watchdog_mode")]
    pub mode: WatchdogMode,
}

/// See [`WatchdogConfig::mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchdogMode {
    /// Not used.
    Off,
    /// Used when the device opens; without it the node runs its groups all the same.
    Automatic,
    /// The node runs no group unless the device is open.
    Required,
}

fn default_watchdog_mode() -> WatchdogMode {
    WatchdogMode::Automatic
}

pub(super) fn default_lease_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}

pub(super) fn default_prefix() -> String {
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

    pub(super) fn check(&self, cx: &mut Diagnostics) {
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
        for (key, file) in [
            ("key_file", &self.key_file),
            ("password_file", &self.password_file),
        ] {
            use std::os::unix::fs::PermissionsExt;
            let Some(file) = file else { continue };
            let mode = std::fs::metadata(file).map(|m| m.permissions().mode());
            if mode.is_ok_and(|m| m & 0o004 != 0) {
                cx.warning(
                    &at(key),
                    format!(
                        "{} is readable by every user of this machine: chmod o-r it",
                        file.display()
                    ),
                );
            }
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

pub(super) fn default_failover_period() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(6 * 3600))
}

pub(super) fn default_failback() -> FailbackSetting {
    FailbackSetting(Failback::Never)
}

/// `failback = "never"`, `"immediate"`, or a window of local hours such as `"22-06"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FailbackSetting(pub(super) Failback);

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
