//! A `process` resource's processes are tracked by a cgroup of their own, not by process group:
//! postfix's master, which calls `setsid`, is stopped by an offline and by a terminate, and a
//! process that daemonizes is supervised until its last process exits.

use resmon_e2e::servers::{self, TestPki};
use resmon_e2e::{process_alive, Agent};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command line as the inside of a TOML array.
fn toml_list(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn master_pid(pid_file: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

fn session_of(pid: i32) -> i32 {
    nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
        .map(|p| p.as_raw())
        .unwrap_or(-1)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn postfix_is_fully_gone_after_offline_and_after_terminate() {
    let base = tempfile::tempdir().unwrap();
    let pki = TestPki::new(base.path());
    let postfix = servers::postfix_config(base.path(), &pki);
    let smtp = postfix.port("smtp");
    let pid_file = postfix.dir.join("spool/pid/master.pid");
    let command = toml_list(&postfix.command);
    let agent = Agent::start(&format!(
        "[[groups]]\nname = \"mail\"\n\n[[groups.resources]]\nname = \"mta\"\ntype = \"process\"\n\
         command = [{command}]\nready_tcp = \"127.0.0.1:{smtp}\"\n"
    ));
    agent.wait_state("mail", "mta", "online", LONG);
    let master = master_pid(&pid_file).expect("postfix wrote its pid");
    let leader = agent.pid_of("mail", "mta").expect("a leader");
    // What makes this hard: the master is not in the process group the agent started.
    assert_ne!(
        session_of(master),
        session_of(leader),
        "postfix's master did not leave the leader's session"
    );

    let (code, out, err) = agent.cli(&["offline", "mail/mta"]);
    assert_eq!(code, 0, "{out}{err}");
    agent.wait_state("mail", "mta", "offline_by_admin", LONG);
    assert!(
        !process_alive(master),
        "postfix's master {master} outlived the offline"
    );
    assert!(!port_open(smtp), "SMTP still answers after the offline");

    let (code, out, err) = agent.cli(&["online", "mail/mta"]);
    assert_eq!(code, 0, "{out}{err}");
    agent.wait_state("mail", "mta", "online", LONG);
    let master = master_pid(&pid_file).expect("postfix wrote its pid");
    assert!(process_alive(master));
    // A failure (the leader killed) terminates the resource before it restarts: the master
    // the leader left behind goes too, and one master serves afterwards.
    let leader = agent.pid_of("mail", "mta").expect("a leader");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait("the old master to be gone", LONG, || !process_alive(master));
    agent.wait_for("a restart", LONG, |a| {
        a.state("mail", "mta") == "online"
            && master_pid(&pid_file).is_some_and(|p| p != master && process_alive(p))
    });
    let terminated = agent
        .events_of("state_changed", "mta")
        .iter()
        .any(|e| e["to"] == "failed" || e["to"] == "offline_pending");
    assert!(terminated, "{:?}", agent.events_of("state_changed", "mta"));
}

#[test]
fn a_process_that_daemonizes_is_supervised_until_its_last_process_exits() {
    let marker = format!("{}", 7000 + std::process::id() % 1000);
    let agent = Agent::start(&format!(
        "[[groups]]\nname = \"app\"\n\n[[groups.resources]]\nname = \"daemon\"\ntype = \"process\"\n\
         command = [\"sh\", \"-c\", \"setsid sleep {marker} > /dev/null 2>&1 & exit 0\"]\n\
         looks_alive_interval = \"200ms\"\n"
    ));
    agent.wait_state("app", "daemon", "online", LONG);
    let find = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c == format!("sleep\0{marker}\0").as_bytes())
            })
    };
    // Online comes when the starter has exited; its child may not have exec'd `sleep` yet.
    let found = || {
        let mut daemon = None;
        wait("the daemon to run", LONG, || {
            daemon = find();
            daemon.is_some()
        });
        daemon.expect("found")
    };
    let daemon = found();
    // Its starter exited 0 long ago; the resource stays online while the daemon runs.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.state("app", "daemon"), "online");

    let (code, out, err) = agent.cli(&["offline", "app/daemon"]);
    assert_eq!(code, 0, "{out}{err}");
    agent.wait_state("app", "daemon", "offline_by_admin", LONG);
    assert!(!process_alive(daemon), "the daemon outlived the offline");

    let (code, out, err) = agent.cli(&["online", "app/daemon"]);
    assert_eq!(code, 0, "{out}{err}");
    agent.wait_state("app", "daemon", "online", LONG);
    let daemon = found();
    // Its exit is the resource's failure: it is restarted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    agent.wait_for("the daemon's restart", LONG, |_| {
        find().is_some_and(|p| p != daemon)
    });
    let failed = agent.events_of("failure_signalled", "daemon");
    assert!(
        failed.iter().any(|e| e
            .to_string()
            .contains("the last process of its cgroup exited")),
        "{failed:?}"
    );
}

/// The seed's hung information store: dovecot stopped with SIGSTOP keeps its ports accepting
/// (the kernel answers the handshake). The store's `check.imap` is its is_alive: the store is
/// restarted, and IMAP and POP3, which depend on it, are online again.
#[test]
fn a_hung_store_is_restarted_and_its_protocols_come_back() {
    let base = tempfile::tempdir().unwrap();
    let pki = TestPki::new(base.path());
    let dovecot = servers::dovecot_config(base.path(), &pki);
    let (imap, pop3) = (dovecot.port("imap"), dovecot.port("pop3"));
    let command = toml_list(&dovecot.command);
    let agent = Agent::start(&format!(
        "[resource_types.process]\nis_alive_interval = \"2s\"\ncheck_timeout = \"1s\"\n\n\
         [resource_types.imap]\nis_alive_interval = \"2s\"\ncheck_timeout = \"1s\"\npending_timeout = \"30s\"\n\n\
         [resource_types.pop3]\nis_alive_interval = \"2s\"\ncheck_timeout = \"1s\"\npending_timeout = \"30s\"\n\n\
         [[groups]]\nname = \"evs1\"\n\n\
         [[groups.resources]]\nname = \"information-store\"\ntype = \"process\"\ncommand = [{command}]\n\
         check.imap = {{ address = \"127.0.0.1:{imap}\" }}\n\n\
         [[groups.resources]]\nname = \"imap\"\ntype = \"imap\"\naddress = \"127.0.0.1:{imap}\"\n\
         depends_on = [\"information-store\"]\n\n\
         [[groups.resources]]\nname = \"pop3\"\ntype = \"pop3\"\naddress = \"127.0.0.1:{pop3}\"\n\
         depends_on = [\"information-store\"]\n"
    ));
    for r in ["information-store", "imap", "pop3"] {
        agent.wait_state("evs1", r, "online", LONG);
    }
    let store = agent.pid_of("evs1", "information-store").expect("a pid");
    // Every dovecot process: the master and its login and auth processes.
    let all = dovecot_processes(store);
    assert!(all.len() > 1, "{all:?}");
    let stopped = Instant::now();
    for pid in &all {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGSTOP,
        );
    }
    agent.wait_for("the store's restart", LONG, |a| {
        a.pid_of("evs1", "information-store")
            .is_some_and(|p| p != store)
    });
    let restarted = stopped.elapsed();
    agent.wait_for("IMAP and POP3 online again", LONG, |a| {
        a.state("evs1", "information-store") == "online"
            && a.state("evs1", "imap") == "online"
            && a.state("evs1", "pop3") == "online"
    });
    let back = stopped.elapsed();
    let failed = agent
        .events_of("probe_failed", "information-store")
        .into_iter()
        .find(|e| e["check"] == "is_alive")
        .expect("the store's is_alive failed");
    assert_eq!(failed["reason"], "banner_timeout", "{failed}");
    // The stopped processes went with the restart (SIGKILL reaches a stopped process).
    for pid in &all {
        assert!(!process_alive(*pid), "dovecot process {pid} survived");
    }
    eprintln!(
        "dovecot stopped: store restarted after {restarted:?}, IMAP and POP3 online again after \
         {back:?} (is_alive_interval 2 s + check_timeout 1 s + the restart)"
    );
    assert!(back < Duration::from_secs(15), "{back:?}");
}

/// `pid` and its descendants.
fn dovecot_processes(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if ppid == Some(parent) && !all.contains(&child) {
                all.push(child);
            }
        }
        i += 1;
    }
    all
}
