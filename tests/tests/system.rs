//! System resource types on the real system: a `disk` on a small tmpfs this test mounts (and
//! unmounts), filled to the brim.

use resmon_e2e::Agent;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_and_takes_its_dependents_offline_until_there_is_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    let _unmount = Tmpfs(mnt.clone());
    let agent = Agent::start(&format!(
        r#"[[groups]]
name = "store"

[[groups.resources]]
name = "disk"
type = "disk"
path = {mnt:?}
fstype = "tmpfs"
min_free = "512KiB"
is_alive_interval = "200ms"
check_timeout = "2s"
restart_threshold = 100000
restart_period = "1s"

[[groups.resources]]
name = "store"
type = "process"
command = ["sleep", "600"]
depends_on = ["disk"]
"#,
        mnt = mnt.display().to_string()
    ));
    agent.wait_state("store", "store", "online", LONG);
    agent.wait_for("the disk's size", LONG, |a| {
        a.metrics().contains("resmon_disk_size_bytes{")
    });
    let metrics = agent.metrics();
    let size: f64 = metrics
        .lines()
        .find(|l| l.starts_with("resmon_disk_size_bytes{") && l.contains("resource=\"disk\""))
        .expect("disk size exported")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(size, 2.0 * 1024.0 * 1024.0);

    // Fill it to the brim.
    let filler = mnt.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    agent.wait_for("the disk to fail", LONG, |a| {
        a.events_of("probe_failed", "disk").iter().any(|e| {
            e["reason"] == "unexpected_response"
                && e["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("below min_free")
        })
    });
    agent.wait_for("the store to go offline", LONG, |a| {
        a.transitions("store")
            .iter()
            .any(|t| t.contains("offline_pending(provider_down)"))
    });
    let free_line = agent
        .metrics()
        .lines()
        .find(|l| l.starts_with("resmon_disk_free_bytes{") && l.contains("resource=\"disk\""))
        .unwrap()
        .to_string();
    let free: f64 = free_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(free < 512.0 * 1024.0, "{free_line}");

    std::fs::remove_file(&filler).unwrap();
    agent.wait_state("store", "disk", "online", LONG);
    agent.wait_state("store", "store", "online", LONG);
}

#[test]
fn network_names_are_resolved_through_a_real_dns_server() {
    let port = resmon_e2e::free_port();
    let mut dnsmasq = Command::new("dnsmasq")
        .args([
            "-d",
            "-k",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--no-resolv",
            "--no-hosts",
        ])
        .arg(format!("--port={port}"))
        .args(["--address=/svc.test/192.0.2.7", "--address=/nx.test/"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dnsmasq (Debian dnsmasq-base) is installed by the test script");
    std::thread::sleep(Duration::from_millis(500));
    // A name server of our own that answers every query with SERVFAIL.
    let failing = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let failing_port = failing.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = failing.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut answer = buf[..n].to_vec();
            answer[2] = 0x80 | (answer[2] & 0x01); // QR, keep RD
            answer[3] = 0x82; // RA, RCODE 2: SERVFAIL
            let _ = failing.send_to(&answer, from);
        }
    });
    let mut body = String::from("[[groups]]\nname = \"vs1\"\n");
    for (name, lookup, expect) in [
        ("good", "svc.test", "\"192.0.2.7\""),
        ("moved", "svc.test", "\"192.0.2.8\""),
        ("missing", "host.nx.test", ""),
        ("broken", "host.sf.test", ""),
    ] {
        let server = if name == "broken" { failing_port } else { port };
        body += &format!(
            "\n[[groups.resources]]\nname = \"{name}\"\ntype = \"network_name\"\nhostname = \"{lookup}\"\nnameservers = [\"127.0.0.1:{server}\"]\nexpect_address = [{expect}]\nrestart_action = \"no_restart\"\ncheck_timeout = \"3s\"\npending_timeout = \"3s\"\n"
        );
    }
    let agent = Agent::start(&body);
    agent.wait_state("vs1", "good", "online", LONG);
    for (name, reason) in [
        ("moved", "wrong_address"),
        ("missing", "nxdomain"),
        ("broken", "servfail"),
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
    }
    let detail = agent.events_of("operation_failed", "moved")[0]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("192.0.2.7") && detail.contains("192.0.2.8"),
        "{detail}"
    );
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
}
