//! Settings that the agent's own sandbox makes impossible. The packaged unit confines the agent
//! (a system-call filter, no new privileges, a read-only system, a few capabilities); `validate`
//! runs under the same unit (`ExecStartPre`), reads what confines it from `/proc/self/status`,
//! and refuses, at the key, what could then only fail at run time: children forked into that
//! sandbox, an address without `CAP_NET_ADMIN`, a `user` without `CAP_SETUID`, a read-only
//! `state_dir`.

use super::diagnostics::Seg;
use super::GroupConfig;
use resmon_probes::launch::Children;
use resmon_probes::ResourceConfig as PrivateConfig;
use std::path::Path;

/// What confines the running agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// A seccomp filter (`SystemCallFilter=`) or `NoNewPrivileges=`: what a forked child
    /// inherits and cannot shed.
    pub confined: bool,
    /// The effective capabilities (`CapEff`).
    pub capabilities: u64,
}

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_NET_ADMIN: u32 = 12;

impl Sandbox {
    /// The running process's, from `/proc/self/status`; unconfined with every capability when
    /// it cannot be read.
    pub fn current() -> Sandbox {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .map(str::to_string)
        };
        Sandbox {
            confined: field("Seccomp:").is_some_and(|v| v == "2")
                || field("NoNewPrivs:").is_some_and(|v| v == "1"),
            capabilities: field("CapEff:")
                .and_then(|v| u64::from_str_radix(&v, 16).ok())
                .unwrap_or(u64::MAX),
        }
    }

    fn has(&self, capability: u32) -> bool {
        self.capabilities & (1 << capability) != 0
    }
}

/// The key of a resource that runs something which changes the system, if it has one.
fn changes_the_system(private: &PrivateConfig) -> Option<&'static str> {
    match private {
        PrivateConfig::Process(_) => Some("command"),
        PrivateConfig::Exec(e) if e.start.is_some() => Some("start"),
        PrivateConfig::Exec(e) if e.stop.is_some() => Some("stop"),
        PrivateConfig::Ocf(_) => Some("agent"),
        PrivateConfig::Disk(d) if d.mount.is_some() => Some("mount"),
        _ => None,
    }
}

/// Whether the resource's children run as someone else.
fn runs_as_someone_else(private: &PrivateConfig) -> bool {
    let run_as = match private {
        PrivateConfig::Process(p) => p.run_as(),
        PrivateConfig::Exec(e) => e.run_as(),
        PrivateConfig::Ocf(o) => o.run_as(),
        _ => return false,
    };
    run_as.user.is_some() || run_as.group.is_some() || !run_as.supplementary_groups.is_empty()
}

/// The settings `sandbox` makes impossible: errors, at their keys.
pub(super) fn impossible(
    groups: &[GroupConfig],
    children: &Children,
    state_dir: &Path,
    sandbox: &Sandbox,
) -> Vec<(Vec<Seg>, String)> {
    let mut found = Vec::new();
    let forked = *children == Children::Fork;
    for (gi, group) in groups.iter().enumerate() {
        for (ri, resource) in group.resources.iter().enumerate() {
            let at = |key: &str| {
                vec![
                    Seg::Key("groups".into()),
                    Seg::Index(gi),
                    Seg::Key("resources".into()),
                    Seg::Index(ri),
                    Seg::Key(key.into()),
                ]
            };
            if let (true, true, Some(key)) = (
                forked,
                sandbox.confined,
                changes_the_system(&resource.private),
            ) {
                found.push((
                    at(key),
                    "would run inside the agent's own sandbox (a system-call filter, no new \
                     privileges): agent.children is \"fork\" while the agent is confined; set \
                     agent.children = \"auto\" so that systemd runs it as a transient unit"
                        .to_string(),
                ));
            }
            if let PrivateConfig::Ip(_) = &resource.private {
                if !sandbox.has(CAP_NET_ADMIN) {
                    found.push((
                        at("address"),
                        "the agent lacks CAP_NET_ADMIN (its unit's CapabilityBoundingSet): it \
                         could neither add nor remove this address"
                            .to_string(),
                    ));
                }
            }
            if forked
                && runs_as_someone_else(&resource.private)
                && !(sandbox.has(CAP_SETUID) && sandbox.has(CAP_SETGID))
            {
                found.push((
                    at("user"),
                    "the agent lacks CAP_SETUID or CAP_SETGID (its unit's \
                     CapabilityBoundingSet): it cannot start a child as another user"
                        .to_string(),
                ));
            }
        }
    }
    // The nearest directory that exists is what a write would meet.
    let existing = state_dir.ancestors().find(|d| d.exists());
    if let Some(dir) = existing {
        if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK) == Err(nix::errno::Errno::EROFS)
        {
            found.push((
                vec![Seg::Key("agent".into()), Seg::Key("state_dir".into())],
                format!(
                    "{} is read-only for the agent (add it to its unit's ReadWritePaths): pid \
                     files, logs and the cluster's state could not be written",
                    dir.display()
                ),
            ));
        }
    }
    found
}
