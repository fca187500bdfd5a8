//! The protocol resource types against real servers: dovecot (IMAP, POP3), postfix (SMTP) and
//! nginx (HTTP), each plain, with STARTTLS and with implicit TLS, trusting a test CA; and the
//! Exchange-style group where those servers are `process` resources the agent keeps.

use resmon_e2e::servers::{self, TestPki};
use resmon_e2e::Agent;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn resource(name: &str, kind: &str, body: &str) -> String {
    format!(
        "\n[[groups.resources]]\nname = \"{name}\"\ntype = \"{kind}\"\nis_alive_interval = \"1s\"\ncheck_timeout = \"3s\"\nrestart_action = \"no_restart\"\n{body}\n"
    )
}

fn tls(ca: &std::path::Path, extra: &str) -> String {
    format!(
        "tls_options = {{ ca_file = {:?}{extra} }}",
        ca.display().to_string()
    )
}

#[test]
fn every_protocol_check_passes_against_real_mail_and_web_servers() {
    let base = tempfile::tempdir().unwrap();
    let pki = TestPki::new(base.path());
    let (dovecot, postfix, nginx) = (
        servers::dovecot(base.path(), &pki),
        servers::postfix(base.path(), &pki),
        servers::nginx(base.path(), &pki),
    );
    let ca = &pki.ca;
    let a = |port: u16| format!("address = \"127.0.0.1:{port}\"");
    let mut body = String::from("[[groups]]\nname = \"vs1\"\n");
    body += &resource("imap", "imap", &a(dovecot.port("imap")));
    body += &resource(
        "imap-starttls",
        "imap",
        &format!(
            "{}\ntls = \"starttls\"\n{}",
            a(dovecot.port("imap")),
            tls(ca, ", server_name = \"localhost\"")
        ),
    );
    body += &resource(
        "imaps",
        "imap",
        &format!(
            "{}\ntls = \"implicit\"\n{}",
            a(dovecot.port("imaps")),
            tls(ca, ", server_name = \"localhost\"")
        ),
    );
    body += &resource("pop3", "pop3", &a(dovecot.port("pop3")));
    body += &resource(
        "pop3-stls",
        "pop3",
        &format!(
            "{}\ntls = \"starttls\"\n{}",
            a(dovecot.port("pop3")),
            tls(ca, ", server_name = \"localhost\"")
        ),
    );
    body += &resource(
        "pop3s",
        "pop3",
        &format!(
            "{}\ntls = \"implicit\"\n{}",
            a(dovecot.port("pop3s")),
            tls(ca, ", server_name = \"localhost\"")
        ),
    );
    body += &resource(
        "smtp",
        "smtp",
        &format!(
            "{}\nehlo = \"probe.test\"\nrequire_capability = \"PIPELINING\"",
            a(postfix.port("smtp"))
        ),
    );
    body += &resource(
        "smtp-starttls",
        "smtp",
        &format!(
            "{}\ntls = \"starttls\"\n{}",
            a(postfix.port("smtp")),
            tls(ca, ", server_name = \"localhost\"")
        ),
    );
    body += &resource(
        "smtps",
        "smtp",
        &format!(
            "{}\ntls = \"implicit\"\n{}",
            a(postfix.port("smtps")),
            tls(ca, ", server_name = \"localhost\"")
        ),
    );
    body += &resource(
        "http",
        "http",
        &format!(
            "url = \"http://127.0.0.1:{}/\"\nbody_contains = \"ok\"",
            nginx.port("http")
        ),
    );
    body += &resource(
        "https",
        "http",
        &format!(
            "url = \"https://localhost:{}/\"\nbody_regex = \"^ok\"\n{}",
            nginx.port("https"),
            tls(ca, "")
        ),
    );
    // Redirected from plain HTTP to HTTPS on another authority: the hop is trusted through
    // the same CA and sent with its own SNI.
    body += &resource(
        "http-redirect",
        "http",
        &format!(
            "url = \"http://127.0.0.1:{}/moved\"\nfollow_redirects = true\nvalid_status = [\"200\"]\nbody_regex = \"^ok\"\n{}",
            nginx.port("http"),
            tls(ca, "")
        ),
    );
    let agent = Agent::start(&body);
    let names = [
        "imap",
        "imap-starttls",
        "imaps",
        "pop3",
        "pop3-stls",
        "pop3s",
        "smtp",
        "smtp-starttls",
        "smtps",
        "http",
        "https",
        "http-redirect",
    ];
    for name in names {
        agent.wait_state("vs1", name, "online", LONG);
    }
    // Let a few is_alive rounds pass: every check keeps passing.
    std::thread::sleep(Duration::from_millis(2500));
    for name in names {
        let r = agent.resource("vs1", name);
        assert_eq!(
            r["state"],
            "online",
            "{name}: {r}\n{}{}{}",
            dovecot.logs(),
            postfix.logs(),
            nginx.logs()
        );
        assert_eq!(r["is_alive"]["last_ok"], true, "{name}: {r}");
    }
    assert!(
        agent.events_of("probe_failed", "").is_empty(),
        "{:?}",
        agent.events_of("probe_failed", "")
    );
    let metrics = agent.metrics();
    for name in [
        "imap-starttls",
        "imaps",
        "pop3-stls",
        "pop3s",
        "smtp-starttls",
        "smtps",
        "https",
    ] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("resmon_tls_cert_not_after_timestamp_seconds")
                    && l.contains(&format!("resource=\"{name}\""))
            })
            .unwrap_or_else(|| panic!("no certificate expiry for {name}"));
        let not_after: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(not_after > resmon_e2e::unix_now(), "{line}");
    }
    // The redirect's server is not the configured URL's: its dates are not exported.
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("resmon_tls_cert_not_")
                && l.contains("resource=\"http-redirect\"")),
        "{metrics}"
    );
    let access = std::fs::read_to_string(nginx.dir.join("access.log")).unwrap_or_default();
    assert!(access.contains("GET /moved "), "{access}");
}

#[test]
fn failing_checks_against_real_servers_name_their_reason() {
    let base = tempfile::tempdir().unwrap();
    let pki = TestPki::new(base.path());
    let (dovecot, postfix, nginx) = (
        servers::dovecot(base.path(), &pki),
        servers::postfix(base.path(), &pki),
        servers::nginx(base.path(), &pki),
    );
    let ca = &pki.ca;
    // Each comes online by checking until pending_timeout passes: a short one, so the failure
    // comes soon.
    let mut body = String::new();
    for kind in ["http", "smtp", "imap", "pop3"] {
        body += &format!("[resource_types.{kind}]\npending_timeout = \"2s\"\n\n");
    }
    body += "[[groups]]\nname = \"vs1\"\n";
    body += &resource(
        "down",
        "http",
        &format!("url = \"http://127.0.0.1:{}/down\"", nginx.port("http")),
    );
    body += &resource(
        "wrong-name",
        "smtp",
        &format!(
            "address = \"127.0.0.1:{}\"\ntls = \"implicit\"\n{}",
            postfix.port("smtps"),
            tls(ca, ", server_name = \"mail.elsewhere.test\"")
        ),
    );
    body += &resource(
        "not-trusted",
        "imap",
        &format!("address = \"127.0.0.1:{}\"\ntls = \"implicit\"\ntls_options = {{ server_name = \"localhost\" }}", dovecot.port("imaps")),
    );
    body += &resource(
        "wrong-banner",
        "pop3",
        &format!(
            "address = \"127.0.0.1:{}\"\nexpect = \"+OK Exchange\"",
            dovecot.port("pop3")
        ),
    );
    body += &resource(
        "expiring",
        "http",
        &format!(
            "url = \"https://localhost:{}/\"\n{}",
            nginx.port("https"),
            tls(ca, ", fail_if_expires_within = \"5000y\"")
        ),
    );
    let agent = Agent::start(&body);
    for (name, reason) in [
        ("down", "http_status"),
        ("wrong-name", "tls_handshake"),
        ("not-trusted", "tls_handshake"),
        ("wrong-banner", "unexpected_banner"),
        ("expiring", "tls_expired"),
    ] {
        agent.wait_state("vs1", name, "failed", LONG);
        let failed = agent
            .events_of("state_changed", name)
            .into_iter()
            .find(|e| e["to"] == "failed")
            .unwrap();
        assert_eq!(
            failed["cause"],
            format!("online_failed:{reason}"),
            "{name}: {failed}"
        );
        let op = agent.events_of("operation_failed", name);
        assert!(!op[0]["detail"].as_str().unwrap().is_empty(), "{op:?}");
    }
    let detail = agent.events_of("operation_failed", "wrong-banner")[0]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("+OK Dovecot"),
        "the operator sees what the server said: {detail}"
    );
    // The certificate's expiry is exported even though the check failed because of it.
    assert!(agent.metrics().lines().any(|l| l
        .starts_with("resmon_tls_cert_not_after_timestamp_seconds")
        && l.contains("resource=\"expiring\"")));
}

#[test]
fn killing_dovecot_fails_imap_and_pop3_only_and_the_store_comes_back() {
    let base = tempfile::tempdir().unwrap();
    let pki = TestPki::new(base.path());
    let (dovecot, postfix, nginx) = (
        servers::dovecot_config(base.path(), &pki),
        servers::postfix_config(base.path(), &pki),
        servers::nginx_config(base.path(), &pki),
    );
    let process = |name: &str, server: &servers::Server, port: &str| {
        let command: Vec<String> = server.command.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "\n[[groups.resources]]\nname = \"{name}\"\ntype = \"process\"\ncommand = [{}]\nready_tcp = \"127.0.0.1:{}\"\npending_timeout = \"30s\"\n",
            command.join(", "),
            server.port(port)
        )
    };
    let protocol = |name: &str, kind: &str, provider: &str, target: String| {
        format!(
            "\n[[groups.resources]]\nname = \"{name}\"\ntype = \"{kind}\"\n{target}\ndepends_on = [\"{provider}\"]\nis_alive_interval = \"1s\"\ncheck_timeout = \"1s\"\n"
        )
    };
    let mut body = String::from("[[groups]]\nname = \"evs1\"\n");
    body += &process("store", &dovecot, "imap");
    body += &process("mta", &postfix, "smtp");
    body += &process("web", &nginx, "http");
    body += &protocol(
        "imap",
        "imap",
        "store",
        format!("address = \"127.0.0.1:{}\"", dovecot.port("imap")),
    );
    body += &protocol(
        "pop3",
        "pop3",
        "store",
        format!("address = \"127.0.0.1:{}\"", dovecot.port("pop3")),
    );
    body += &protocol(
        "smtp",
        "smtp",
        "mta",
        format!("address = \"127.0.0.1:{}\"", postfix.port("smtp")),
    );
    body += &protocol(
        "http",
        "http",
        "web",
        format!("url = \"http://127.0.0.1:{}/\"", nginx.port("http")),
    );
    let agent = Agent::start(&body);
    for name in ["imap", "pop3", "smtp", "http"] {
        agent.wait_state("evs1", name, "online", LONG);
    }
    let dovecot_pid = agent.pid_of("evs1", "store").unwrap();
    // SAFETY: killing the dovecot master the agent started.
    unsafe { libc::kill(dovecot_pid, libc::SIGKILL) };
    agent.wait_for("the store's restart", LONG, |a| {
        !a.events_of("restart_requested", "store").is_empty()
    });
    for name in ["imap", "pop3"] {
        agent.wait_for(&format!("{name} to come back"), LONG, |a| {
            let t = a.transitions(name);
            t.iter()
                .any(|x| x.starts_with("online->offline_pending(provider_down)"))
                && a.state("evs1", name) == "online"
        });
    }
    agent.wait_state("evs1", "store", "online", LONG);
    assert_ne!(agent.pid_of("evs1", "store"), Some(dovecot_pid));
    for name in ["smtp", "http", "mta", "web"] {
        let t = agent.transitions(name);
        assert_eq!(t.len(), 2, "{name} never left online: {t:?}");
        assert_eq!(agent.state("evs1", name), "online");
    }
}

#[test]
fn servers_that_stream_forever_or_stall_do_not_grow_the_agents_memory() {
    // An endless banner and a silent server, checked as fast as the agent will: every check
    // fails within its cap or its deadline and leaves nothing behind.
    let endless = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (endless_addr, silent_addr) = (endless.local_addr().unwrap(), silent.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in endless.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::Write;
                let mut conn = conn;
                let chunk = [b'2'; 4096];
                while conn.write_all(&chunk).is_ok() {}
            });
        }
    });
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in silent.incoming().flatten() {
            keep.lock().unwrap().push(conn);
        }
    });
    let mut body = String::from("[[groups]]\nname = \"bad\"\n");
    for i in 0..20 {
        let addr = if i % 2 == 0 {
            endless_addr
        } else {
            silent_addr
        };
        body += &format!(
            "\n[[groups.resources]]\nname = \"r{i}\"\ntype = \"smtp\"\naddress = \"{addr}\"\npending_timeout = \"200ms\"\nrestart_threshold = 100000\nrestart_period = \"1s\"\nrestart_delay = \"10ms\"\n"
        );
    }
    let agent = Agent::start(&body);
    let rss = || {
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap()
    };
    std::thread::sleep(Duration::from_secs(3));
    let (before, attempts_before) = (rss(), agent.events_of("restart_requested", "").len());
    std::thread::sleep(Duration::from_secs(6));
    let (after, attempts_after) = (rss(), agent.events_of("restart_requested", "").len());
    assert!(
        attempts_after - attempts_before > 200,
        "only {} attempts",
        attempts_after - attempts_before
    );
    assert!(
        after < before + 4096,
        "RSS grew from {before} KiB to {after} KiB over {} attempts",
        attempts_after - attempts_before
    );
    let reasons: std::collections::BTreeSet<String> = agent
        .events_of("operation_failed", "")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(reasons.contains("unexpected_banner"), "{reasons:?}");
    // The silent server's onlines end with their attempt's reason when pending_timeout passes.
    assert!(
        agent
            .events_of("operation_failed", "r1")
            .iter()
            .any(|e| e["reason"] == "banner_timeout"),
        "the silent server's onlines fail: {:?}",
        agent.events_of("operation_failed", "r1")
    );
}

#[test]
fn the_agent_names_a_server_that_stops_answering_a_banner_timeout() {
    // Greets while `speak` is set, then accepts and says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let speak = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = speak.clone();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = conn.write_all(b"220 mail.test ESMTP\r\n");
            }
            keep.lock().unwrap().push(conn);
        }
    });
    let agent = Agent::start(&format!(
        "[[groups]]\nname = \"vs1\"\n\n[[groups.resources]]\nname = \"smtp\"\ntype = \"smtp\"\naddress = \"{addr}\"\nis_alive_interval = \"300ms\"\ncheck_timeout = \"300ms\"\npoll_looks_alive = false\nrestart_action = \"no_restart\"\n"
    ));
    agent.wait_state("vs1", "smtp", "online", LONG);
    speak.store(false, std::sync::atomic::Ordering::SeqCst);
    agent.wait_state("vs1", "smtp", "failed", LONG);
    let failed = &agent.events_of("probe_failed", "smtp")[0];
    assert_eq!(failed["reason"], "banner_timeout", "{failed}");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("waiting for the banner"),
        "{failed}"
    );
    assert!(agent
        .metrics()
        .contains(r#"resmon_check_failures_total{check="is_alive",reason="banner_timeout",group="vs1",resource="smtp",type="smtp"} 1"#));
}
