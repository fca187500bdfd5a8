//! The ownership state machine ([`resmon_policies::ownership`]): transcripts in
//! `testdata/ownership/` (the format of `transcripts.rs`; `REWRITE=1` regenerates), and
//! property tests over random interleavings of renewals, losses, observations and time.
//!
//! Transcript commands: `node NAME window=D [capacity=NAME:N,...]` makes the machine (its start at 0); `at T INPUT`
//! feeds an input at T (boot clock and Unix seconds both T; `hour=H` before the input sets the
//! local hour): `register G [possible=A,B] [preferred=A,B] [threshold=N] [period=D]
//! [failback=never|immediate|S-E] [apart=CLASS[:hard]] [uses=NAME:N,...] [with=G,...]`,
//! `unregister G`, `session LEASE`, `node-up N [new] [snapshot] [capacity=NAME:N,...] [schema=N]`, `node-down N`, `owner G NODE LEASE REV`, `owner G -`, `target G TO FROM REASON
//! REV`, `target G -`, `failovers G REV [T,T...]`, `sent`, `answered`, `ended [lease-gone]`,
//! `paused N on|off`, `took G REV|-`, `key-released G`, `released G`, `run-refused G`,
//! `frozen G on|off`, `schema N` (the cluster's key schema; this node speaks 1, a node-up may
//! say `schema=N`),
//! `evaluate`, `tick`,
//! `failover G`, `move G [TO]`; `state` prints each group's owner and directive.

mod datadriven;

use proptest::prelude::*;
use resmon_policies::ownership::{
    Action, Directive, Input, MoveTarget, Now, Observation, OwnerKey, Ownership,
};
use resmon_policies::placement::{AntiAffinity, Failback, Placement};
use resmon_policies::Time;
use std::collections::BTreeMap;
use std::time::Duration;

fn parse_duration(s: &str) -> Duration {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("bad duration {s}"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => panic!("bad duration {s}"),
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// `storage_groups:4,cpu:2`
fn amounts(s: &str) -> BTreeMap<String, u64> {
    list(s)
        .iter()
        .map(|a| {
            let (k, v) = a.split_once(':').expect("NAME:N");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

fn render(action: &Action) -> String {
    match action {
        Action::Direct { group, directive } => {
            format!("direct {group} {directive:?}").to_lowercase()
        }
        Action::Take { group, reason } => format!("take {group} ({reason})"),
        Action::Acquired {
            group,
            reason,
            revision,
        } => format!("acquired {group} rev={revision} ({reason})"),
        Action::Release {
            group,
            revision,
            to,
        } => format!(
            "release {group} rev={revision}{}",
            to.as_ref().map(|t| format!(" to={t}")).unwrap_or_default()
        ),
        Action::DropTarget { group, revision } => format!("drop-target {group} rev={revision}"),
        Action::DrainBlocked { group, why } => format!("drain-blocked {group}: {why}"),
        Action::SchemaRefused { cluster, own } => {
            format!("schema-refused cluster={cluster} own={own}")
        }
        Action::RequestMove { group, target } => {
            format!("request-move {group} {}", target_text(target))
        }
        Action::Fenced {
            groups,
            since_renewal,
        } => format!(
            "fenced [{}] since_renewal={}ms",
            groups.join(","),
            since_renewal.as_millis()
        ),
    }
}

fn target_text(t: &MoveTarget) -> String {
    format!(
        "-> {} from {} ({})",
        t.to,
        t.from.as_deref().unwrap_or("-"),
        t.reason
    )
}

struct Harness {
    machine: Option<Ownership>,
    hour: u8,
}

impl Harness {
    fn machine(&mut self) -> &mut Ownership {
        self.machine.as_mut().expect("node first")
    }

    fn run(&mut self, line: &str) -> Vec<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["node", name, window, capacity @ ..] => {
                let window = parse_duration(window.strip_prefix("window=").expect("window="));
                let capacity = capacity
                    .first()
                    .map(|c| amounts(c.strip_prefix("capacity=").expect("capacity=")))
                    .unwrap_or_default();
                self.machine =
                    Some(Ownership::new(*name, window, Time::ZERO).with_capacity(capacity));
                Vec::new()
            }
            ["state"] => {
                let m = self.machine();
                let owners = m.owners();
                owners
                    .iter()
                    .map(|(g, owner)| {
                        format!(
                            "{g}: owner={} directive={:?}{}",
                            owner.as_deref().unwrap_or("-"),
                            m.directive(g).unwrap(),
                            if m.holds(g) { " held" } else { "" }
                        )
                        .to_lowercase()
                    })
                    .collect()
            }
            ["at", t, rest @ ..] => {
                let t = parse_duration(t);
                let mut rest = rest;
                if let Some(h) = rest.first().and_then(|w| w.strip_prefix("hour=")) {
                    self.hour = h.parse().unwrap();
                    rest = &rest[1..];
                }
                let now = Now {
                    at: Time::from_elapsed(t),
                    unix: t.as_secs_f64(),
                    hour: self.hour,
                };
                match rest {
                    ["failover", g] => vec![match self.machine().failover(g, now) {
                        Ok(w) => format!(
                            "failover {g}: history={:?} rev={} {}",
                            w.history,
                            w.revision,
                            target_text(&w.target)
                        ),
                        Err(why) => format!("failover {g} refused: {why}"),
                    }],
                    ["move", g, to @ ..] => vec![match self
                        .machine()
                        .move_request(g, to.first().map(|t| t.to_string()))
                    {
                        Ok(t) => format!("move {g}: {}", target_text(&t)),
                        Err(why) => format!("move {g} refused: {why}"),
                    }],
                    _ => {
                        let input = input(rest);
                        self.machine().step(input, now).iter().map(render).collect()
                    }
                }
            }
            _ => panic!("unknown command: {line}"),
        }
    }
}

fn input(words: &[&str]) -> Input {
    let observed = |change| Input::Observed { change, live: true };
    match words {
        ["register", group, opts @ ..] => {
            let mut placement = Placement {
                possible_owners: Vec::new(),
                preferred_owners: Vec::new(),
                failover_threshold: 10,
                failover_period: Duration::from_secs(6 * 3600),
                failback: Failback::Never,
                anti_affinity: None,
                uses: BTreeMap::new(),
                colocated_with: Vec::new(),
            };
            for opt in opts {
                let (k, v) = opt.split_once('=').expect("key=value");
                match k {
                    "possible" => placement.possible_owners = list(v),
                    "preferred" => placement.preferred_owners = list(v),
                    "threshold" => placement.failover_threshold = v.parse().unwrap(),
                    "uses" => placement.uses = amounts(v),
                    "with" => placement.colocated_with = list(v),
                    "period" => placement.failover_period = parse_duration(v),
                    "apart" => {
                        let (class, hard) = match v.strip_suffix(":hard") {
                            Some(class) => (class, true),
                            None => (v, false),
                        };
                        placement.anti_affinity = Some(AntiAffinity {
                            class: class.into(),
                            hard,
                        })
                    }
                    "failback" => {
                        placement.failback = match v {
                            "never" => Failback::Never,
                            "immediate" => Failback::Immediate,
                            w => {
                                let (s, e) = w.split_once('-').unwrap();
                                Failback::Window {
                                    start: s.parse().unwrap(),
                                    end: e.parse().unwrap(),
                                }
                            }
                        }
                    }
                    _ => panic!("bad option {opt}"),
                }
            }
            Input::Register {
                group: group.to_string(),
                placement,
            }
        }
        ["unregister", g] => Input::Unregister {
            group: g.to_string(),
        },
        ["session", lease] => Input::SessionStarted {
            lease: lease.parse().unwrap(),
        },
        ["node-up", node, flags @ ..] => Input::Observed {
            change: Observation::NodeUp {
                node: node.to_string(),
                new: flags.contains(&"new"),
                capacity: flags
                    .iter()
                    .find_map(|f| f.strip_prefix("capacity="))
                    .map(amounts)
                    .unwrap_or_default(),
                schema: flags
                    .iter()
                    .find_map(|f| f.strip_prefix("schema="))
                    .map(|n| n.parse().unwrap())
                    .unwrap_or(1),
            },
            live: !flags.contains(&"snapshot"),
        },
        ["schema", n] => observed(Observation::Schema {
            schema: n.parse().unwrap(),
        }),
        ["paused", node, on] => observed(Observation::Paused {
            node: node.to_string(),
            paused: *on == "on",
        }),
        ["node-down", node] => observed(Observation::NodeDown {
            node: node.to_string(),
        }),
        ["owner", g, "-"] => observed(Observation::Owner {
            group: g.to_string(),
            key: None,
        }),
        ["owner", g, node, lease, rev] => observed(Observation::Owner {
            group: g.to_string(),
            key: Some(OwnerKey {
                node: node.to_string(),
                lease: lease.parse().unwrap(),
                revision: rev.parse().unwrap(),
            }),
        }),
        ["target", g, "-"] => observed(Observation::Target {
            group: g.to_string(),
            target: None,
        }),
        ["target", g, to, from, reason, rev] => observed(Observation::Target {
            group: g.to_string(),
            target: Some((
                MoveTarget {
                    to: to.to_string(),
                    from: (*from != "-").then(|| from.to_string()),
                    reason: reason.to_string(),
                },
                rev.parse().unwrap(),
            )),
        }),
        ["failovers", g, rev, times @ ..] => observed(Observation::Failovers {
            group: g.to_string(),
            history: times
                .first()
                .map(|t| list(t).iter().map(|x| x.parse().unwrap()).collect())
                .unwrap_or_default(),
            revision: rev.parse().unwrap(),
        }),
        ["sent"] => Input::RenewalSent,
        ["answered"] => Input::RenewalAnswered,
        ["ended"] => Input::SessionEnded { lease_gone: false },
        ["ended", "lease-gone"] => Input::SessionEnded { lease_gone: true },
        ["took", g, "-"] => Input::Took {
            group: g.to_string(),
            revision: None,
        },
        ["took", g, rev] => Input::Took {
            group: g.to_string(),
            revision: Some(rev.parse().unwrap()),
        },
        ["key-released", g] => Input::KeyReleased {
            group: g.to_string(),
        },
        ["released", g] => Input::Released {
            group: g.to_string(),
        },
        ["run-refused", g] => Input::RunRefused {
            group: g.to_string(),
        },
        ["frozen", g, on] => Input::Frozen {
            group: g.to_string(),
            frozen: *on == "on",
        },
        ["evaluate"] => Input::Evaluate,
        ["tick"] => Input::Tick,
        _ => panic!("bad input {words:?}"),
    }
}

/// Runs one transcript with a fresh harness; returns the file with the actual output.
fn run_file(text: &str) -> String {
    let mut h = Harness {
        machine: None,
        hour: 12,
    };
    datadriven::run_file(text, |line| h.run(line))
}

#[test]
fn transcripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/ownership");
    datadriven::check_dir(&dir, run_file);
}

/// One step of a random schedule: time passes, then an input.
#[derive(Clone, Debug)]
enum Step {
    Session(i64),
    NodeUp(usize, bool),
    NodeDown(usize),
    Owner(usize, Option<(usize, i64)>),
    Target(usize, Option<usize>),
    Sent,
    Answered,
    Ended(bool),
    Took(usize, bool),
    Released(usize),
    Evaluate,
    Tick,
}

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const GROUPS: [&str; 2] = ["g1", "g2"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (1i64..3).prop_map(Step::Session),
        1 => (0usize..3, any::<bool>()).prop_map(|(n, new)| Step::NodeUp(n, new)),
        1 => (0usize..3).prop_map(Step::NodeDown),
        1 => (0usize..2, proptest::option::of((0usize..3, 1i64..3)))
            .prop_map(|(g, o)| Step::Owner(g, o)),
        1 => (0usize..2, proptest::option::of(0usize..3)).prop_map(|(g, t)| Step::Target(g, t)),
        4 => Just(Step::Sent),
        4 => Just(Step::Answered),
        1 => any::<bool>().prop_map(Step::Ended),
        1 => (0usize..2, any::<bool>()).prop_map(|(g, ok)| Step::Took(g, ok)),
        1 => (0usize..2).prop_map(Step::Released),
        4 => Just(Step::Evaluate),
        2 => Just(Step::Tick),
    ]
}

/// The machine's input for a step of a schedule.
fn input_of(s: &Step) -> Input {
    match *s {
        Step::Session(lease) => Input::SessionStarted { lease },
        Step::NodeUp(n, new) => Input::Observed {
            change: Observation::NodeUp {
                node: NODES[n].into(),
                new,
                capacity: BTreeMap::new(),
                schema: 1,
            },
            live: true,
        },
        Step::NodeDown(n) => Input::Observed {
            change: Observation::NodeDown {
                node: NODES[n].into(),
            },
            live: true,
        },
        Step::Owner(g, o) => Input::Observed {
            change: Observation::Owner {
                group: GROUPS[g].into(),
                key: o.map(|(n, lease)| OwnerKey {
                    node: NODES[n].into(),
                    lease,
                    revision: 7,
                }),
            },
            live: true,
        },
        Step::Target(g, to) => Input::Observed {
            change: Observation::Target {
                group: GROUPS[g].into(),
                target: to.map(|n| {
                    (
                        MoveTarget {
                            to: NODES[n].into(),
                            from: None,
                            reason: "move".into(),
                        },
                        9,
                    )
                }),
            },
            live: true,
        },
        Step::Sent => Input::RenewalSent,
        Step::Answered => Input::RenewalAnswered,
        Step::Ended(lease_gone) => Input::SessionEnded { lease_gone },
        Step::Took(g, ok) => Input::Took {
            group: GROUPS[g].into(),
            revision: ok.then_some(11),
        },
        Step::Released(g) => Input::Released {
            group: GROUPS[g].into(),
        },
        Step::Evaluate => Input::Evaluate,
        Step::Tick => Input::Tick,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Under any interleaving of renewals, answers, losses, observations and time: a group is
    /// told to run only before the last answered renewal's sending plus the window, and a
    /// group is taken only while its owner key is seen absent, by a node in a live session.
    #[test]
    fn permission_never_outlives_the_lease_and_no_live_key_is_taken(
        schedule in proptest::collection::vec((0u64..1500, step()), 1..120)
    ) {
        let window = Duration::from_secs(2);
        let mut m = Ownership::new("n1", window, Time::ZERO);
        let mut t = Duration::ZERO;
        let now = |t: Duration| Now { at: Time::from_elapsed(t), unix: t.as_secs_f64(), hour: 12 };
        for g in GROUPS {
            m.step(Input::Register {
                group: g.into(),
                placement: Placement {
                    possible_owners: Vec::new(),
                    preferred_owners: vec!["n1".into()],
                    failover_threshold: 3,
                    failover_period: Duration::from_secs(3600),
                    failback: Failback::Immediate,
                    anti_affinity: None,
                    uses: BTreeMap::new(),
                    colocated_with: Vec::new(),
                },
            }, now(t));
        }
        // The model: renewals sent and not answered, the newest answered one's sending, and
        // each group's owner key as last observed.
        let mut unanswered: std::collections::VecDeque<Duration> = Default::default();
        let mut answered: Option<Duration> = None;
        let mut key_seen: [bool; 2] = [false; 2];
        let mut taking: [bool; 2] = [false; 2];
        let mut session = false;
        for (advance, s) in schedule {
            t += Duration::from_millis(advance);
            // The model's side of the step.
            match s {
                Step::Session(_) | Step::Ended(_) => {
                    unanswered.clear();
                    key_seen = [false; 2];
                    taking = [false; 2];
                    session = matches!(s, Step::Session(_));
                }
                Step::Owner(g, o) => key_seen[g] = o.is_some(),
                Step::Sent => {
                    if unanswered.len() >= 16 {
                        unanswered.pop_front();
                    }
                    unanswered.push_back(t);
                }
                Step::Answered => {
                    if let Some(sent) = unanswered.pop_front() {
                        answered = Some(answered.map_or(sent, |a: Duration| a.max(sent)));
                    }
                }
                Step::Took(g, ok) => {
                    // The answer to a take that is out: the key is now this node's.
                    if ok && taking[g] {
                        key_seen[g] = true;
                    }
                    taking[g] = false;
                }
                _ => {}
            }
            let input = input_of(&s);
            let actions = m.step(input, now(t));
            for action in &actions {
                if let Action::Take { group, .. } = action {
                    let g = GROUPS.iter().position(|x| x == group).unwrap();
                    prop_assert!(session && m.lease() != 0, "a take outside a session");
                    prop_assert!(!key_seen[g], "took {group} while its owner key was seen");
                    taking[g] = true;
                }
            }
            for g in GROUPS {
                if m.directive(g) == Some(Directive::Run) {
                    let deadline = answered.map(|a| a + window);
                    prop_assert!(
                        deadline.is_some_and(|d| t < d),
                        "{g} may run at {t:?}, past the last answered renewal ({answered:?}) + {window:?}"
                    );
                }
            }
        }
    }
}

/// The placement rules the property test below checks, one at a time: `g1` and `g2` are of one
/// hard anti-affinity class; or each uses the one unit of this node's capacity; or `g2` is
/// colocated with `g1`; or `g2` is in maintenance here.
#[derive(Clone, Copy, Debug)]
enum Rule {
    HardAntiAffinity,
    Capacity,
    Colocation,
    /// `g2` is in maintenance here.
    Maintenance,
    /// This node is paused (drained), as every snapshot says.
    Paused,
    /// The cluster's key schema is newer than this node's, as every snapshot says.
    NewerSchema,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Under any schedule: a hard anti-affinity pair never shares this node, a group is never
    /// taken beyond this node's capacity (takes under way count), and a colocated group is
    /// taken, and told to run, only while its provider is held or being taken here; a group in
    /// maintenance here is never taken here, and a paused node, or one behind the cluster's key
    /// schema, takes nothing.
    #[test]
    fn placement_rules_hold_under_any_schedule(
        rule in prop_oneof![
            Just(Rule::HardAntiAffinity),
            Just(Rule::Capacity),
            Just(Rule::Colocation),
            Just(Rule::Maintenance),
            Just(Rule::Paused),
            Just(Rule::NewerSchema)
        ],
        schedule in proptest::collection::vec((0u64..800, step()), 1..100)
    ) {
        let capacity = BTreeMap::from([("storage_groups".to_string(), 1)]);
        let mut m = Ownership::new("n1", Duration::from_secs(2), Time::ZERO)
            .with_capacity(capacity);
        let mut t = Duration::ZERO;
        let now = |t: Duration| Now { at: Time::from_elapsed(t), unix: t.as_secs_f64(), hour: 12 };
        for (i, g) in GROUPS.iter().enumerate() {
            let mut placement = Placement {
                possible_owners: Vec::new(),
                preferred_owners: vec!["n1".into()],
                failover_threshold: 3,
                failover_period: Duration::from_secs(3600),
                failback: Failback::Never,
                anti_affinity: None,
                uses: BTreeMap::new(),
                colocated_with: Vec::new(),
            };
            match rule {
                Rule::HardAntiAffinity => {
                    placement.anti_affinity = Some(AntiAffinity { class: "vs".into(), hard: true })
                }
                Rule::Capacity => {
                    placement.uses = BTreeMap::from([("storage_groups".to_string(), 1)])
                }
                Rule::Colocation if i == 1 => placement.colocated_with = vec![GROUPS[0].into()],
                Rule::Colocation | Rule::Maintenance | Rule::Paused | Rule::NewerSchema => {}
            }
            m.step(Input::Register { group: g.to_string(), placement }, now(t));
            if matches!(rule, Rule::Maintenance) && i == 1 {
                m.step(Input::Frozen { group: g.to_string(), frozen: true }, now(t));
            }
        }
        let mut taking = [false; 2];
        for (advance, s) in schedule {
            t += Duration::from_millis(advance);
            match s {
                Step::Session(_) | Step::Ended(_) => taking = [false; 2],
                Step::Took(g, _) => taking[g] = false,
                _ => {}
            }
            let decides = matches!(s, Step::Evaluate | Step::Took(..));
            let input = input_of(&s);
            let mut actions = m.step(input, now(t));
            if matches!(rule, Rule::Paused) && matches!(s, Step::Session(_)) {
                let paused = Observation::Paused { node: "n1".into(), paused: true };
                actions.extend(m.step(Input::Observed { change: paused, live: false }, now(t)));
            }
            if matches!(rule, Rule::NewerSchema) && matches!(s, Step::Session(_)) {
                let newer = Observation::Schema { schema: 2 };
                actions.extend(m.step(Input::Observed { change: newer, live: false }, now(t)));
            }
            for action in actions {
                if let Action::Take { group, .. } = &action {
                    let g = GROUPS.iter().position(|x| x == group).unwrap();
                    let other = 1 - g;
                    match rule {
                        Rule::HardAntiAffinity | Rule::Capacity => prop_assert!(
                            !m.holds(GROUPS[other]) && !taking[other],
                            "{rule:?}: took {group} while holding or taking {}", GROUPS[other]
                        ),
                        Rule::Colocation if g == 1 => prop_assert!(
                            m.holds(GROUPS[0]) || taking[0],
                            "took {group} while its provider is neither held nor being taken here"
                        ),
                        Rule::Colocation => {}
                        Rule::Maintenance => prop_assert!(g != 1, "took {group} in maintenance"),
                        Rule::Paused => prop_assert!(false, "took {group} while paused"),
                        Rule::NewerSchema => {
                            prop_assert!(false, "took {group} under a newer key schema")
                        }
                    }
                    taking[g] = true;
                }
            }
            if matches!(rule, Rule::Colocation) && decides && m.directive(GROUPS[1]) == Some(Directive::Run) {
                prop_assert!(
                    m.holds(GROUPS[0]) || taking[0],
                    "{} told to run while its provider {} is neither held nor being taken here",
                    GROUPS[1], GROUPS[0]
                );
            }
        }
    }
}
