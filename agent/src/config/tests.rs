//! The invalid-config fixtures in `testdata/invalid/`, each checked against its exact messages,
//! plus the warnings, the defaults and the way type defaults are overridden.

use super::*;
use resmon_policies::{ResourceId, RestartAction};
use resmon_probes::ResourceConfig as Private;
use std::time::Duration;

fn check_file(name: &str) -> Result<Loaded, ConfigErrors> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/invalid");
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    parse(Path::new(name), &text)
}

#[test]
fn every_invalid_fixture_gives_its_exact_messages() {
    let cases: &[(&str, &[&str])] = &[
        ("bad_address.toml", &["error: bad_address.toml:7:1: groups[0].resources[0].address: invalid address \"127.0.0.1\": expected host:port, such as \"127.0.0.1:8080\" or \"[::1]:25\""]),
        ("bad_duration.toml", &["error: bad_duration.toml:2:1: resource_types.tcp.is_alive_interval: invalid duration \"5 parsecs\" (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write it like \"500ms\", \"5s\", \"1m30s\" or \"1h\""]),
        ("bad_listen.toml", &["error: bad_listen.toml:2:1: agent.listen: invalid listen address \"localhost\": expected ip:port, such as \"127.0.0.1:9477\" or \"[::1]:9477\""]),
        ("bad_children.toml", &["error: bad_children.toml:2:1: agent.children: invalid children \"forks\": \"auto\", \"fork\", \"system\", \"session\" or a D-Bus address"]),
        ("source_address.toml", &[
            "error: source_address.toml:19:1: groups[0].resources[2].source_address: source_address \"store\" is not an ip resource of group \"vs1\": name one (the check then connects from its address, wherever the group runs) or write an address",
            "error: source_address.toml:26:1: groups[0].resources[3].source_address: source_address \"vip\": \"pop3\" must depend on \"vip\" (depends_on), so that it is checked only where the address is",
        ]),
        ("bad_source_address.toml", &["error: bad_source_address.toml:8:1: groups[0].resources[0].source_address: invalid source_address \"10.0.0.300\": an IP address (\"192.0.2.10\") or the name of an ip resource of the group (\"vip\")"]),
        ("anti_affinity.toml", &["error: anti_affinity.toml:6:1: groups[0].anti_affinity: name the class it applies to: anti_affinity_class = \"...\""]),
        ("cross_group.toml", &["error: cross_group.toml:21:15: groups[1].resources[1].depends_on[0]: \"ip\" is a resource of this group: write \"ip\"", "error: cross_group.toml:21:25: groups[1].resources[1].depends_on[1]: \"mail/mta\": there is no group \"mail\"", "error: cross_group.toml:21:37: groups[1].resources[1].depends_on[2]: \"mta/smtp\": group \"mta\" has no resource \"smtp\"; it has mta"]),
        ("anywhere_local.toml", &["error: anywhere_local.toml:13:24: groups[0].resources[1].depends_on_anywhere[0]: \"mta\": name a resource of another group as \"group/resource\"; one of this group goes in depends_on"]),
        ("group_cycle.toml", &["error: group_cycle.toml:18:15: groups[1].resources[0].depends_on[0]: groups depend on each other in a cycle: a -> b -> a"]),
        ("colocation.toml", &["error: colocation.toml:25:15: groups[1].resources[0].depends_on[0]: colocated with group \"mta\", which may run only on n1, where this group may not (possible_owners n2, n3): they can never share a node; use depends_on_anywhere for ordering only", "error: colocation.toml:25:15: groups[1].resources[0].depends_on[0]: colocated with group \"mta\", of the same hard anti-affinity class \"exchange\": they can never share a node"]),
        ("flap_damping.toml", &["error: flap_damping.toml:8:1: groups[0].resources[0].flap_damping: needs 0 < reuse < suppress, a penalty and a half_life above zero (here penalty 1000, suppress 500, reuse 750, half_life 15m)"]),
        ("usage_limits.toml", &["error: usage_limits.toml:8:1: groups[0].resources[0].limits: max_cpu -1 must be a number of cores above 0", "error: usage_limits.toml:8:1: groups[0].resources[0].limits: for_checks must be at least 1"]),
        ("notify.toml", &["error: notify.toml:4:30: notify[0].events[1]: unknown event \"ownership_lost\"; hooks run on ownership_acquired, ownership_released, resource_failed, gave_up, self_fenced, maintenance_changed, node_paused, node_resumed, drain_blocked, restart_damped"]),
        ("bad_name.toml", &["error: bad_name.toml:2:1: groups[0].name: invalid name \"vs 1\": use 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'"]),
        ("cluster_lease.toml", &["error: cluster_lease.toml:2:14: cluster.endpoints[0]: \"10.0.0.1:2379\": write an endpoint as http://host:port or https://host:port", "error: cluster_lease.toml:3:1: cluster.lease_ttl: etcd leases are whole seconds, at least \"2s\""]),
        ("cycle.toml", &["error: cycle.toml:8:1: groups[0].resources[0].depends_on: dependency cycle: a -> c -> b -> a"]),
        ("duplicate_group.toml", &["error: duplicate_group.toml:5:1: groups[1].name: duplicate group name \"web\" (first used by groups[0])"]),
        ("duplicate_resource.toml", &["error: duplicate_resource.toml:10:1: groups[0].resources[1].name: duplicate resource name \"site\" in group \"web\" (first used by resources[0])"]),
        ("empty_command.toml", &["error: empty_command.toml:7:1: groups[0].resources[0].command: a command must name a program: write it as a list, such as [\"sleep\", \"60\"]"]),
        ("fence_time.toml", &["error: fence_time.toml:17:1: groups[0].resources[1].terminate_timeout: a fence terminates this service resource, which may wait terminate_timeout = 10s (default: pending_timeout) for its own stop, but the fence must be done within cluster.fence_margin = 2s: set terminate_timeout below it, on the resource or in [resource_types.service]"]),
        ("zero_threshold.toml", &["error: zero_threshold.toml:8:1: groups[0].resources[0].failure_threshold: must be at least 1 (1: the first result decides)"]),
        ("pid_file.toml", &["error: pid_file.toml:11:1: groups[0].resources[0].pid_file: /tmp/web.pid is not under agent.state_dir (/var/lib/resmon): pid files name what the agent adopts and signals, so only the agent may write them"]),
        ("bad_check.toml", &[
            "error: bad_check.toml:8:1: groups[0].resources[0].check: a \"process\" cannot be a check; one of tcp, smtp, pop3, imap, http, exec",
            "error: bad_check.toml:15:1: groups[0].resources[1].check: set one of ready_tcp, ready_command or check, not several",
        ]),
        ("unknown_user.toml", &[
            "error: unknown_user.toml:8:1: groups[0].resources[0].user: no user \"no-such-user-here\" on this machine",
            "error: unknown_user.toml:14:1: groups[0].resources[1].user: invalid user or group name \"Root\": a lower-case letter or _ first, then lower-case letters, digits, _ or -, at most 32 characters",
        ]),
        ("node_name.toml", &["error: node_name.toml:2:1: agent.node: invalid name \"n1/../x\": use 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'"]),
        ("owner_name.toml", &["error: owner_name.toml:3:26: groups[0].possible_owners[1]: invalid name \"n2/x\": use 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'"]),
        ("too_many_threads.toml", &["error: too_many_threads.toml:2:1: agent.check_threads: 100000 is more than this agent allows (256)"]),
        ("failback.toml", &["error: failback.toml:3:1: groups[0].failback: invalid failback \"sometimes\": \"never\", \"immediate\", or a window of hours such as \"22-06\""]),
        ("ip_label.toml", &["error: ip_label.toml:9:1: groups[0].resources[0].label: \"eth1:vs1\" must be the interface name or start with \"eth0:\", 15 bytes at most"]),
        ("ip_prefix.toml", &["error: ip_prefix.toml:7:1: groups[0].resources[0].address: invalid prefix length in \"192.0.2.10/40\": 0 to 32"]),
        ("missing_name.toml", &["error: missing_name.toml:4:1: groups[0].resources[0]: missing field `name`"]),
        ("never_is_only_for_pending.toml", &["error: never_is_only_for_pending.toml:8:1: groups[0].resources[0].check_timeout: invalid duration \"never\" (expected number at 0); write it like \"500ms\", \"5s\", \"1m30s\" or \"1h\""]),
        ("preferred_owner.toml", &["error: preferred_owner.toml:7:27: groups[0].preferred_owners[1]: \"n3\" is not one of possible_owners"]),
        ("readiness_conflict.toml", &["error: readiness_conflict.toml:9:1: groups[0].resources[0].ready_command: set one of ready_tcp, ready_command or check, not several"]),
        ("self_dependency.toml", &["error: self_dependency.toml:8:1: groups[0].resources[0].depends_on: resource \"a\" depends on itself"]),
        ("service_unit.toml", &["error: service_unit.toml:7:1: groups[0].resources[0].unit: \"postfix\" is not a unit name: write it in full, such as \"postfix.service\""]),
        ("several_errors.toml", &["error: several_errors.toml:8:1: groups[0].resources[0].bogus: unknown field `bogus`, expected `address` or `source_address` in a tcp resource (or a common key: name, type, depends_on, depends_on_anywhere, looks_alive_interval, is_alive_interval, check_timeout, pending_timeout, terminate_timeout, restart_action, restart_threshold, restart_period, retry_period_on_failure, restart_delay, restart_delay_max, failure_threshold, success_threshold, poll_looks_alive, flap_damping)", "error: several_errors.toml:15:1: groups[1].resources[0].type: unknown resource type \"nope\"; known types: process, tcp, smtp, pop3, imap, http, exec, ocf, disk, network_name, ip, service"]),
        ("syntax.toml", &["error: syntax.toml:2:25: invalid TOML: invalid basic string"]),
        ("unknown_agent_key.toml", &["error: unknown_agent_key.toml:3:1: agent.colour: unknown field `colour`, expected one of `listen`, `node`, `state_dir`, `stop_on_exit`, `control_socket`, `max_parallel_starts`, `check_threads`, `children`"]),
        ("unknown_dependency.toml", &["error: unknown_dependency.toml:13:21: groups[0].resources[1].depends_on[1]: unknown resource \"store\": group \"vs1\" has ip, smtp"]),
        ("unknown_resource_key.toml", &["error: unknown_resource_key.toml:8:1: groups[0].resources[0].colour: unknown field `colour`, expected `address` or `source_address` in a tcp resource (or a common key: name, type, depends_on, depends_on_anywhere, looks_alive_interval, is_alive_interval, check_timeout, pending_timeout, terminate_timeout, restart_action, restart_threshold, restart_period, retry_period_on_failure, restart_delay, restart_delay_max, failure_threshold, success_threshold, poll_looks_alive, flap_damping)"]),
        ("unknown_type.toml", &["error: unknown_type.toml:6:1: groups[0].resources[0].type: unknown resource type \"smtpx\"; known types: process, tcp, smtp, pop3, imap, http, exec, ocf, disk, network_name, ip, service"]),
        ("unknown_type_defaults.toml", &["error: unknown_type_defaults.toml:1:17: resource_types.bogus: unknown resource type \"bogus\"; known types: process, tcp, smtp, pop3, imap, http, exec, ocf, disk, network_name, ip, service"]),
        ("wrong_type.toml", &["error: wrong_type.toml:8:1: groups[0].resources[0].restart_threshold: invalid type: string \"three\", expected u32"]),
        ("zero_check_threads.toml", &["error: zero_check_threads.toml:2:1: agent.check_threads: invalid value: integer `0`, expected a nonzero usize"]),
        ("zero_parallel_starts.toml", &["error: zero_parallel_starts.toml:2:1: agent.max_parallel_starts: invalid value: integer `0`, expected a nonzero usize"]),
        ("zero_interval.toml", &["error: zero_interval.toml:8:1: groups[0].resources[0].is_alive_interval: must be longer than zero"]),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/invalid");
    let fixtures = std::fs::read_dir(dir).unwrap().count();
    assert_eq!(
        fixtures,
        cases.len(),
        "every fixture needs a row here, and every row a fixture"
    );
    for (file, expected) in cases {
        let errors = match check_file(file) {
            Ok(_) => panic!("{file} was accepted"),
            Err(e) => e.0.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        };
        assert_eq!(&errors, expected, "{file}");
    }
}

const GOOD: &str = r#"
[agent]
listen = "127.0.0.1:19477"
state_dir = "/tmp/resmon-test"

[resource_types.tcp]
is_alive_interval = "10s"
check_timeout = "2s"
restart_action = "restart_no_failover"

[[groups]]
name = "vs1"

[[groups.resources]]
name = "daemon"
type = "process"
command = ["sleep", "60"]
pending_timeout = "never"

[[groups.resources]]
name = "port"
type = "tcp"
address = "127.0.0.1:8080"
depends_on = ["daemon"]
is_alive_interval = "1s"
check_timeout = "3s"
"#;

#[test]
fn type_defaults_apply_and_resource_values_win() {
    let loaded = parse(Path::new("good.toml"), GOOD).unwrap();
    let g = &loaded.config.groups[0];
    let daemon = &g.resources[0];
    assert_eq!(daemon.props.pending_timeout, PendingTimeout::Never);
    assert_eq!(
        daemon.props.looks_alive_interval,
        Duration::from_secs(5),
        "WSFC default"
    );
    assert_eq!(
        daemon.props.is_alive_interval,
        Duration::from_secs(60),
        "WSFC default"
    );
    assert_eq!(daemon.props.restart_threshold, 3);
    assert_eq!(daemon.props.restart_period, Duration::from_secs(900));
    assert_eq!(
        daemon.props.retry_period_on_failure,
        Duration::from_secs(3600)
    );
    assert_eq!(
        daemon.props.restart_action,
        RestartAction::RestartThenFailover
    );
    assert!(matches!(daemon.private, Private::Process(_)));
    let port = &g.resources[1];
    assert_eq!(
        port.props.is_alive_interval,
        Duration::from_secs(1),
        "resource beats type"
    );
    assert_eq!(
        port.props.restart_action,
        RestartAction::RestartNoFailover,
        "type beats built-in"
    );
    assert_eq!(port.props.check_timeout, Duration::from_secs(3));
    assert_eq!(
        g.spec.resource(ResourceId(1)).depends_on,
        vec![ResourceId(0)]
    );
    assert!(
        g.spec
            .resource(ResourceId(0))
            .policy
            .provides_failure_signal
    );

    // A timeout longer than its interval is allowed, with a warning at the key.
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "warning: good.toml:26:1: groups[0].resources[1].check_timeout: check_timeout 3s is longer than is_alive_interval 1s: a slow check delays the next one"
        ]
    );
}

#[test]
fn a_warning_about_a_types_defaults_is_given_once_at_the_type() {
    let mut text = String::from(
        "[resource_types.smtp]\npoll_looks_alive = false\ncheck_timeout = \"20s\"\n\n[[groups]]\nname = \"mail\"\n",
    );
    for i in 0..3 {
        text += &format!("\n[[groups.resources]]\nname = \"smtp{i}\"\ntype = \"smtp\"\naddress = \"127.0.0.1:25\"\n");
        if i == 1 {
            // A key of its own that no warning involves: what it inherits is still the type's.
            text += "restart_period = \"10m\"\n";
        }
    }
    // This one says them itself: its own warnings are its own.
    text += "poll_looks_alive = false\ncheck_timeout = \"20s\"\n";
    let loaded = parse(Path::new("types.toml"), &text).unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "warning: types.toml:3:1: resource_types.smtp.check_timeout: check_timeout 20s is longer than looks_alive_interval 5s: a slow check delays the next one",
            "warning: types.toml:2:1: resource_types.smtp.poll_looks_alive: a smtp resource reports no failure by itself: with looks_alive off, a failure waits for is_alive (every 1m)",
            "warning: types.toml:24:1: groups[0].resources[2].check_timeout: check_timeout 20s is longer than looks_alive_interval 5s: a slow check delays the next one",
            "warning: types.toml:23:1: groups[0].resources[2].poll_looks_alive: a smtp resource reports no failure by itself: with looks_alive off, a failure waits for is_alive (every 1m)",
        ]
    );
}

#[test]
fn an_empty_file_is_a_valid_config_with_defaults() {
    let loaded = parse(Path::new("empty.toml"), "").unwrap();
    assert!(loaded.config.groups.is_empty());
    assert_eq!(
        loaded.config.agent.listen,
        "127.0.0.1:9477".parse().unwrap()
    );
    assert!(!loaded.config.agent.stop_on_exit);
}

#[test]
fn a_missing_file_is_named() {
    let err = load(Path::new("/nonexistent/resmon.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("error: /nonexistent/resmon.toml: cannot read the config file"),
        "{err}"
    );
}

#[test]
fn a_network_name_expects_the_address_of_the_ip_it_depends_on() {
    let text = r#"
[[groups]]
name = "vs1"

[[groups.resources]]
name = "ip"
type = "ip"
address = "192.0.2.10/24"
interface = "eth0"

[[groups.resources]]
name = "name"
type = "network_name"
hostname = "mail.example.test"
depends_on = ["ip"]

[[groups.resources]]
name = "pinned"
type = "network_name"
hostname = "mail.example.test"
expect_address = ["192.0.2.99"]
depends_on = ["ip"]
"#;
    let loaded = parse(Path::new("vs.toml"), text).unwrap();
    let expected = |i: usize| match &loaded.config.groups[0].resources[i].private {
        Private::NetworkName(n) => n.expect_address.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        expected(1),
        vec!["192.0.2.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        expected(2),
        vec!["192.0.2.99".parse::<std::net::IpAddr>().unwrap()],
        "an explicit address wins"
    );
}

#[test]
fn a_group_fingerprint_changes_with_anything_it_runs_with() {
    let fingerprint =
        |toml: &str| parse(Path::new("f.toml"), toml).unwrap().config.groups[0].fingerprint();
    let base = "[[groups]]\nname = \"g\"\n[[groups.resources]]\nname = \"r\"\ntype = \"tcp\"\naddress = \"127.0.0.1:25\"\n";
    assert_eq!(fingerprint(base), fingerprint(base));
    // Comments and layout are not the config.
    assert_eq!(
        fingerprint(base),
        fingerprint(&format!("# a comment\n{base}"))
    );
    for changed in [
        base.replace("127.0.0.1:25", "127.0.0.1:26"),
        format!("{base}check_timeout = \"2s\"\n"),
        format!("[resource_types.tcp]\nrestart_threshold = 9\n{base}"),
        format!("{base}[[groups.resources]]\nname = \"s\"\ntype = \"tcp\"\naddress = \"127.0.0.1:25\"\n"),
    ] {
        assert_ne!(fingerprint(base), fingerprint(&changed), "{changed}");
    }
}

#[test]
fn a_world_readable_secret_file_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("etcd-password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let text = format!(
        "[cluster]\nendpoints = [\"http://10.0.0.1:2379\"]\nusername = \"resmon\"\npassword_file = {:?}\n",
        secret.display().to_string()
    );
    for (mode, warned) in [(0o644, true), (0o640, false)] {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let loaded = parse(Path::new("secret.toml"), &text).unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        let expected = format!(
            "warning: secret.toml:4:1: cluster.password_file: {} is readable by every user of this machine: chmod o-r it",
            secret.display()
        );
        assert_eq!(
            warnings.contains(&expected),
            warned,
            "mode {mode:o}: {warnings:?}"
        );
    }
}

#[test]
fn an_endpoint_beyond_loopback_is_a_warning() {
    for (listen, warned) in [("0.0.0.0:9477", true), ("[::1]:9477", false)] {
        let text = format!("[agent]\nlisten = \"{listen}\"\n");
        let loaded = parse(Path::new("listen.toml"), &text).unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        let expected = format!(
            "warning: listen.toml:2:1: agent.listen: {listen} is reachable beyond this machine, \
             without TLS or authentication: anyone who reaches it reads the status, events and \
             metrics; keep it on loopback or behind a TLS proxy"
        );
        assert_eq!(
            warnings.contains(&expected),
            warned,
            "{listen}: {warnings:?}"
        );
    }
}

#[test]
fn a_world_readable_resource_secret_file_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("db-password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let text = format!(
        "[[groups]]\nname = \"g\"\n\n[[groups.resources]]\nname = \"report\"\ntype = \"exec\"\ncheck = [\"true\"]\nenv_files = {{ DB_PASSWORD = {:?} }}\n",
        secret.display().to_string()
    );
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let loaded = parse(Path::new("secret.toml"), &text).unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        let expected = format!(
            "warning: secret.toml:8:1: groups[0].resources[0].env_files: DB_PASSWORD: {} is readable by every user of this machine: chmod o-r it",
            secret.display()
        );
        assert_eq!(
            warnings.contains(&expected),
            warned,
            "mode {mode:o}: {warnings:?}"
        );
    }
}

#[test]
fn what_the_agents_sandbox_makes_impossible_is_an_error_at_its_key() {
    use super::diagnostics::render_path;
    use super::sandbox::{impossible, Sandbox};
    use resmon_probes::launch::Children;
    let text = r#"
[[groups]]
name = "g"
[[groups.resources]]
name = "p"
type = "process"
command = ["sleep", "60"]
user = "nobody"
[[groups.resources]]
name = "e"
type = "exec"
check = ["true"]
start = ["true"]
[[groups.resources]]
name = "watch"
type = "exec"
check = ["true"]
[[groups.resources]]
name = "d"
type = "disk"
path = "/srv/data"
mount = { source = "tmpfs", fstype = "tmpfs" }
[[groups.resources]]
name = "vip"
type = "ip"
address = "192.0.2.10/24"
interface = "eth0"
"#;
    let loaded = parse(Path::new("s.toml"), text).unwrap();
    let state_dir = Path::new("/var/lib/resmon");
    let found = |children: &Children, sandbox: &Sandbox| -> Vec<String> {
        impossible(&loaded.config.groups, children, state_dir, sandbox)
            .into_iter()
            .map(|(path, message)| format!("{}: {message}", render_path(&path)))
            .collect()
    };
    let confined = Sandbox {
        confined: true,
        capabilities: 0,
    };
    let inside = "would run inside the agent's own sandbox (a system-call filter, no new privileges): agent.children is \"fork\" while the agent is confined; set agent.children = \"auto\" so that systemd runs it as a transient unit";
    let net = "groups[0].resources[4].address: the agent lacks CAP_NET_ADMIN (its unit's CapabilityBoundingSet): it could neither add nor remove this address";
    assert_eq!(
        found(&Children::Fork, &confined),
        [
            format!("groups[0].resources[0].command: {inside}"),
            "groups[0].resources[0].user: the agent lacks CAP_SETUID or CAP_SETGID (its unit's CapabilityBoundingSet): it cannot start a child as another user".to_string(),
            format!("groups[0].resources[1].start: {inside}"),
            format!("groups[0].resources[3].mount: {inside}"),
            net.to_string(),
        ]
    );
    // Transient units run outside the sandbox: only the agent's own address work remains.
    assert_eq!(
        found(&Children::Units(Default::default()), &confined),
        [net.to_string()]
    );
    // Unconfined, with the packaged unit's capabilities: nothing.
    let packaged = Sandbox {
        confined: false,
        capabilities: (1 << 6) | (1 << 7) | (1 << 12),
    };
    assert!(found(&Children::Fork, &packaged).is_empty());
    // This test itself: whatever confines it, the parse above passed.
    let _ = Sandbox::current();
}
