//! Dependencies between groups, checked once every group is read. A resource may name a
//! resource of another group as `group/resource`: in `depends_on` the provider must be online
//! on the same node (the dependent group is colocated with the provider's group and follows
//! it), in `depends_on_anywhere` anywhere in the cluster (ordering only). The provider must
//! exist in another group, groups must not depend on each other in a cycle, and a colocation
//! must be able to hold (a node both may own, no hard anti-affinity class between them).

use super::diagnostics::{Diagnostics, Seg};
use super::GroupConfig;
use resmon_policies::ResourceId;

/// One `group/resource` dependency as written.
struct Link {
    /// The dependent's group, resource and key (`depends_on` or `depends_on_anywhere`) and
    /// position.
    group: usize,
    resource: usize,
    key: &'static str,
    position: usize,
    /// The provider's group and resource.
    provider: usize,
    provided: ResourceId,
    colocated: bool,
}

impl Link {
    fn path(&self) -> Vec<Seg> {
        vec![
            Seg::Key("groups".into()),
            Seg::Index(self.group),
            Seg::Key("resources".into()),
            Seg::Index(self.resource),
            Seg::Key(self.key.into()),
            Seg::Index(self.position),
        ]
    }
}

/// Resolves and checks every dependency between groups; sets each group's `colocated_with`
/// and `published`. `false` when one is wrong.
pub(super) fn link_groups(groups: &mut [GroupConfig], cx: &mut Diagnostics) -> bool {
    let errors = cx.error_count();
    let mut links = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        for (ri, r) in g.resources.iter().enumerate() {
            let written = r
                .depends_on
                .iter()
                .enumerate()
                .map(|(i, d)| ("depends_on", i, d, true))
                .chain(
                    r.depends_on_anywhere
                        .iter()
                        .enumerate()
                        .map(|(i, d)| ("depends_on_anywhere", i, d, false)),
                );
            for (key, position, dep, colocated) in written {
                let Some((group, resource)) = dep.split_once('/') else {
                    continue;
                };
                let path = [
                    Seg::Key("groups".into()),
                    Seg::Index(gi),
                    Seg::Key("resources".into()),
                    Seg::Index(ri),
                    Seg::Key(key.into()),
                    Seg::Index(position),
                ];
                if group == g.name.as_str() {
                    cx.error(
                        &path,
                        format!("{resource:?} is a resource of this group: write \"{resource}\""),
                    );
                    continue;
                }
                let Some(provider) = groups.iter().position(|p| p.name.as_str() == group) else {
                    cx.error(&path, format!("{dep:?}: there is no group {group:?}"));
                    continue;
                };
                let Some(provided) = groups[provider].spec.find(resource) else {
                    let known: Vec<&str> = groups[provider]
                        .resources
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect();
                    cx.error(
                        &path,
                        format!(
                            "{dep:?}: group {group:?} has no resource {resource:?}; it has {}",
                            known.join(", ")
                        ),
                    );
                    continue;
                };
                links.push(Link {
                    group: gi,
                    resource: ri,
                    key,
                    position,
                    provider,
                    provided,
                    colocated,
                });
            }
        }
    }
    if let Some((link, cycle)) = find_cycle(groups.len(), &links) {
        let names: Vec<&str> = cycle.iter().map(|g| groups[*g].name.as_str()).collect();
        cx.error(
            &links[link].path(),
            format!(
                "groups depend on each other in a cycle: {}",
                names.join(" -> ")
            ),
        );
    }
    for link in links.iter().filter(|l| l.colocated) {
        let (dependent, provider) = (&groups[link.group], &groups[link.provider]);
        let (a, b) = (&dependent.placement, &provider.placement);
        let disjoint = !a.possible_owners.is_empty()
            && !b.possible_owners.is_empty()
            && !a
                .possible_owners
                .iter()
                .any(|n| b.possible_owners.contains(n));
        if disjoint {
            cx.error(
                &link.path(),
                format!(
                    "colocated with group {:?}, which may run only on {}, where this group may \
                     not (possible_owners {}): they can never share a node; use \
                     depends_on_anywhere for ordering only",
                    provider.name.as_str(),
                    b.possible_owners.join(", "),
                    a.possible_owners.join(", ")
                ),
            );
        }
        let hard_pair = match (&a.anti_affinity, &b.anti_affinity) {
            (Some(x), Some(y)) if x.class == y.class && (x.hard || y.hard) => Some(&x.class),
            _ => None,
        };
        if let Some(class) = hard_pair {
            cx.error(
                &link.path(),
                format!(
                    "colocated with group {:?}, of the same hard anti-affinity class {class:?}: \
                     they can never share a node",
                    provider.name.as_str()
                ),
            );
        }
    }
    if cx.error_count() != errors {
        return false;
    }
    for link in &links {
        let provider = groups[link.provider].name.to_string();
        let dependent = &mut groups[link.group].placement;
        if link.colocated && !dependent.colocated_with.contains(&provider) {
            dependent.colocated_with.push(provider);
        }
        let published = &mut groups[link.provider].published;
        if !published.contains(&link.provided) {
            published.push(link.provided);
        }
    }
    true
}

/// A cycle among the groups, following the links (dependent to provider): the link that
/// closes it and the groups on it, the first repeated at the end.
fn find_cycle(n: usize, links: &[Link]) -> Option<(usize, Vec<usize>)> {
    // 0: not seen, 1: on the current path, 2: done.
    let mut mark = vec![0u8; n];
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        g: usize,
        links: &[Link],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<(usize, Vec<usize>)> {
        mark[g] = 1;
        path.push(g);
        for (i, l) in links.iter().enumerate().filter(|(_, l)| l.group == g) {
            match mark[l.provider] {
                1 => {
                    let start = path.iter().position(|p| *p == l.provider).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(l.provider);
                    return Some((i, cycle));
                }
                0 => {
                    if let Some(found) = visit(l.provider, links, mark, path) {
                        return Some(found);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        mark[g] = 2;
        None
    }
    (0..n).find_map(|g| {
        if mark[g] == 0 {
            visit(g, links, &mut mark, &mut path)
        } else {
            None
        }
    })
}
