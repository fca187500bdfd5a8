//! Reading a parsed file into a [`Config`](super::Config): the raw serde shapes, then every
//! check that needs the whole file (names, dependencies, cycles, placement, type defaults).

use super::diagnostics::{show, Diagnostics, Seg};
use super::props;
use super::sections::{
    amounts, default_failback, default_failover_period, node_names, AgentConfig, ClusterConfig,
    FailbackSetting, Name,
};
use super::{CommonProps, Config, GroupConfig, ResourceConfig};
use resmon_policies::placement::AntiAffinity;
use resmon_policies::placement::Placement;
use resmon_policies::{GroupSpec, ResourceId, ResourceSpec, SpecError};
use resmon_probes::values::SourceAddress;
use resmon_probes::{HumanDuration, ResourceConfig as PrivateConfig, RESOURCE_TYPES};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) agent: AgentConfig,
    #[serde(default)]
    pub(super) cluster: Option<ClusterConfig>,
    #[serde(default)]
    pub(super) resource_types: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(super) groups: Vec<RawGroup>,
    #[serde(default)]
    pub(super) notify: Vec<super::notify::HookConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) name: Name,
    #[serde(default)]
    pub(super) resources: Vec<toml::Table>,
    /// Nodes that may own the group (empty: every node).
    #[serde(default)]
    #[serde(deserialize_with = "node_names")]
    pub(super) possible_owners: Vec<String>,
    /// Nodes in order of preference.
    #[serde(default)]
    #[serde(deserialize_with = "node_names")]
    pub(super) preferred_owners: Vec<String>,
    /// Failovers allowed within `failover_period` (WSFC's default: the number of nodes - 1).
    #[serde(default)]
    pub(super) failover_threshold: Option<u32>,
    #[serde(default = "default_failover_period")]
    pub(super) failover_period: HumanDuration,
    #[serde(default = "default_failback")]
    pub(super) failback: FailbackSetting,
    /// Groups of one class avoid sharing a node (WSFC's `AntiAffinityClassNames`).
    #[serde(default)]
    pub(super) anti_affinity_class: Option<Name>,
    /// `"soft"` (default): share a node only when no other possible owner is alive; `"hard"`:
    /// never.
    #[serde(default)]
    pub(super) anti_affinity: Option<AntiAffinityMode>,
    /// What it takes of a node's `capacity` (`storage_groups = 1`).
    #[serde(default, deserialize_with = "amounts")]
    pub(super) uses: BTreeMap<String, u64>,
}

/// `anti_affinity = "soft" | "hard"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum AntiAffinityMode {
    /// Apart when another possible owner can take it.
    Soft,
    /// Never on one node.
    Hard,
}

/// The keys of a resource table that say what it is and where it sits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResourceHeader {
    pub(super) name: Name,
    #[serde(rename = "type")]
    pub(super) type_name: String,
    #[serde(default)]
    pub(super) depends_on: Vec<String>,
    #[serde(default)]
    pub(super) depends_on_anywhere: Vec<String>,
}

impl RawConfig {
    pub(super) fn validate(self, source: &Path, cx: &mut Diagnostics) -> Option<Config> {
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
        ok &= super::links::link_groups(&mut groups, cx);
        check_pid_files(&groups, &self.agent.state_dir, cx);
        check_source_addresses(&groups, cx);
        for (path, message) in super::sandbox::impossible(
            &groups,
            &self.agent.children.resolve(),
            &self.agent.state_dir,
            &super::sandbox::Sandbox::current(),
        ) {
            cx.error(&path, message);
            ok = false;
        }
        if !self.agent.listen.ip().is_loopback() {
            cx.warning(
                &[Seg::Key("agent".into()), Seg::Key("listen".into())],
                format!(
                    "{} is reachable beyond this machine, without TLS or authentication: \
                     anyone who reaches it reads the status, events and metrics; \
                     keep it on loopback or behind a TLS proxy",
                    self.agent.listen
                ),
            );
        }
        if let Some(cluster) = &self.cluster {
            let errors = cx.error_count();
            cluster.check(cx);
            check_fence_time(&groups, cluster.fence_margin(), cx);
            ok &= cx.error_count() == errors;
        }
        let errors = cx.error_count();
        super::notify::check(&self.notify, cx);
        ok &= cx.error_count() == errors;
        ok.then(|| Config {
            source: source.to_path_buf(),
            agent: self.agent,
            cluster: self.cluster,
            groups,
            notify: self.notify,
            identity: Default::default(),
        })
    }
}

/// A pid file names what the agent signals and adopts: only the agent may write it, so it lives
/// under `state_dir` (a pid file in a directory another user can write could make the agent
/// adopt, and later kill, any process).
fn check_pid_files(groups: &[GroupConfig], state_dir: &Path, cx: &mut Diagnostics) {
    for (gi, group) in groups.iter().enumerate() {
        for (ri, resource) in group.resources.iter().enumerate() {
            let PrivateConfig::Process(process) = &resource.private else {
                continue;
            };
            let Some(pid_file) = &process.pid_file else {
                continue;
            };
            let inside = pid_file.is_absolute()
                && !pid_file
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                && pid_file.starts_with(state_dir);
            if !inside {
                cx.error(
                    &[
                        Seg::Key("groups".into()),
                        Seg::Index(gi),
                        Seg::Key("resources".into()),
                        Seg::Index(ri),
                        Seg::Key("pid_file".into()),
                    ],
                    format!(
                        "{} is not under agent.state_dir ({}): pid files name what the agent \
                         adopts and signals, so only the agent may write them",
                        pid_file.display(),
                        state_dir.display()
                    ),
                );
            }
        }
    }
}

/// A `source_address` that names a resource names an `ip` resource of the same group, which
/// the check depends on (directly or not): the check then runs only where the address is.
fn check_source_addresses(groups: &[GroupConfig], cx: &mut Diagnostics) {
    for (gi, group) in groups.iter().enumerate() {
        for (ri, resource) in group.resources.iter().enumerate() {
            let Some(SourceAddress::Resource(name)) = resource.private.source_address() else {
                continue;
            };
            // In a process's or service's `check.<type>`, the key is under `check`.
            let key = match resource.private {
                PrivateConfig::Process(_) | PrivateConfig::Service(_) => "check",
                _ => "source_address",
            };
            let path = [
                Seg::Key("groups".into()),
                Seg::Index(gi),
                Seg::Key("resources".into()),
                Seg::Index(ri),
                Seg::Key(key.into()),
            ];
            let named = group.resources.iter().find(|r| r.name.as_str() == name);
            if !named.is_some_and(|r| matches!(r.private, PrivateConfig::Ip(_))) {
                cx.error(
                    &path,
                    format!(
                        "source_address {name:?} is not an ip resource of group {:?}: name one \
                         (the check then connects from its address, wherever the group runs) \
                         or write an address",
                        group.name.as_str()
                    ),
                );
                continue;
            }
            // Depends on it, directly or through others.
            let mut seen = vec![resource.name.as_str()];
            let mut i = 0;
            let mut found = false;
            while i < seen.len() && !found {
                let current = seen[i];
                i += 1;
                let Some(r) = group.resources.iter().find(|r| r.name.as_str() == current) else {
                    continue;
                };
                for d in &r.depends_on {
                    found |= d == name;
                    if !seen.contains(&d.as_str()) {
                        seen.push(d);
                    }
                }
            }
            if !found {
                cx.error(
                    &path,
                    format!(
                        "source_address {name:?}: {:?} must depend on {name:?} (depends_on), so \
                         that it is checked only where the address is",
                        resource.name.as_str()
                    ),
                );
            }
        }
    }
}

/// A fence terminates every resource of a group at once, and must be done within
/// `fence_margin`, before the lease can expire and another node take the group. A resource
/// whose terminate waits on the service's own stop is bounded by its `terminate_timeout`: a
/// bound that does not fit is an error, at the resource.
fn check_fence_time(groups: &[GroupConfig], margin: std::time::Duration, cx: &mut Diagnostics) {
    for (gi, g) in groups.iter().enumerate() {
        for (ri, r) in g.resources.iter().enumerate() {
            if !r.private.terminate_waits() {
                continue;
            }
            let bound = r.props.terminate_timeout.duration();
            if bound.is_some_and(|b| b < margin) {
                continue;
            }
            let path = [
                Seg::Key("groups".into()),
                Seg::Index(gi),
                Seg::Key("resources".into()),
                Seg::Index(ri),
                Seg::Key("terminate_timeout".into()),
            ];
            let bound = bound.map_or_else(|| "never".to_string(), show);
            cx.error(
                &path,
                format!(
                    "a fence terminates this {} resource, which may wait terminate_timeout = {bound} (default: pending_timeout) for its own stop, but the fence must be done within cluster.fence_margin = {}: set terminate_timeout below it, on the resource or in [resource_types.{}]",
                    r.type_name(),
                    show(margin),
                    r.type_name()
                ),
            );
        }
    }
}

/// A `network_name` with no `expect_address` of its own expects the addresses of the `ip`
/// resources it depends on: the name must resolve to where the group is.
pub(super) fn inherit_group_addresses(resources: &mut [ResourceConfig]) {
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

pub(super) fn read_placement(
    group: &RawGroup,
    gpath: &[Seg],
    cx: &mut Diagnostics,
) -> Option<Placement> {
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
    if group.anti_affinity.is_some() && group.anti_affinity_class.is_none() {
        let mut path = gpath.to_vec();
        path.push(Seg::Key("anti_affinity".into()));
        cx.error(
            &path,
            "name the class it applies to: anti_affinity_class = \"...\"",
        );
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
        anti_affinity: group
            .anti_affinity_class
            .as_ref()
            .map(|class| AntiAffinity {
                class: class.to_string(),
                hard: group.anti_affinity == Some(AntiAffinityMode::Hard),
            }),
        uses: group.uses.clone(),
        colocated_with: Vec::new(),
    })
}

pub(super) fn read_group(
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

    // Dependencies by name, then the DAG check the policy itself relies on. A `group/resource`
    // names another group's resource: an external provider, checked once every group is read.
    let mut specs = Vec::new();
    let mut externals: Vec<super::External> = Vec::new();
    for (ri, r) in resources.iter().enumerate() {
        let mut depends_on = Vec::new();
        let mut external = Vec::new();
        let mut index = |name: &str, colocated: bool| {
            let e = super::External {
                name: name.to_string(),
                colocated,
            };
            match externals.iter().position(|x| *x == e) {
                Some(i) => i,
                None => {
                    externals.push(e);
                    externals.len() - 1
                }
            }
        };
        for (di, dep) in r.depends_on_anywhere.iter().enumerate() {
            if dep.contains('/') {
                external.push(index(dep, false));
                continue;
            }
            let mut p = gpath.to_vec();
            p.extend([
                Seg::Key("resources".into()),
                Seg::Index(ri),
                Seg::Key("depends_on_anywhere".into()),
                Seg::Index(di),
            ]);
            cx.error(
                &p,
                format!(
                    "{dep:?}: name a resource of another group as \"group/resource\"; one of \
                     this group goes in depends_on"
                ),
            );
            ok = false;
        }
        for (di, dep) in r.depends_on.iter().enumerate() {
            if dep.contains('/') {
                external.push(index(dep, true));
                continue;
            }
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
            policy: r.props.restart_policy(&r.private),
            fence_first: matches!(r.private, PrivateConfig::Ip(_)),
            external,
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
            externals,
            published: Vec::new(),
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

pub(super) fn read_resource(
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
    for warning in private.warnings() {
        let mut p = rpath.to_vec();
        p.push(Seg::Key(warning.key.into()));
        cx.warning(&p, warning.message);
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
        depends_on_anywhere: header.depends_on_anywhere,
        props,
        private,
    })
}
