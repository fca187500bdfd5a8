//! `source_address`: a check that connects from its group's own address, as Exchange's protocol
//! resources do. In a network namespace the test makes: a real nginx that answers only the
//! group's VIP (`allow VIP; deny all;`), the agent holding that VIP (an `ip` resource), and
//! checks with and without `source_address = "vip"`.

use resmon_e2e::cluster::sh;
use resmon_e2e::{free_port, in_netns, Agent};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VIP: &str = "10.77.0.100";
const LONG: Duration = Duration::from_secs(30);

/// The namespace, nginx in it, removed on drop.
struct Place {
    netns: String,
    nginx: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

fn place(port: u16) -> Place {
    let netns = format!("resmon-src-{}", std::process::id());
    let _ = Command::new("ip")
        .args(["netns", "del", &netns])
        .stderr(Stdio::null())
        .status();
    sh(&format!(
        "ip netns add {netns} && ip -n {netns} link set lo up && \
         ip -n {netns} link add v0 type veth peer name v1 && \
         ip -n {netns} link set v0 up && ip -n {netns} link set v1 up"
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/index.html"), "ok\n").unwrap();
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    # (Served from a file: a `return` would answer before the access phase.)
    location / {{
      allow {VIP};
      deny all;
      root {d}/www;
    }}
  }}
}}
"#
        ),
    )
    .unwrap();
    let nginx = Command::new("ip")
        .args(["netns", "exec", &netns, "nginx", "-c"])
        .arg(&conf)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed");
    let started = Instant::now();
    while in_netns(&netns, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    }) {
        assert!(started.elapsed() < LONG, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Place {
        netns,
        nginx,
        _dir: dir,
    }
}

#[test]
fn a_check_from_the_groups_address_passes_where_the_server_accepts_only_that_address() {
    let port = free_port();
    let place = place(port);
    let agent = Agent::start_in_netns(
        &format!(
            r#"
[[groups]]
name = "vs1"

[[groups.resources]]
name = "vip"
type = "ip"
address = "{VIP}/24"
interface = "v0"

[[groups.resources]]
name = "from_vip"
type = "http"
url = "http://127.0.0.1:{port}/"
source_address = "vip"
depends_on = ["vip"]

[[groups.resources]]
name = "tcp_from_vip"
type = "tcp"
address = "127.0.0.1:{port}"
source_address = "vip"
depends_on = ["vip"]

[[groups]]
name = "plain"

[[groups.resources]]
name = "from_anywhere"
type = "http"
url = "http://127.0.0.1:{port}/"

[[groups.resources]]
name = "from_elsewhere"
type = "tcp"
address = "127.0.0.1:{port}"
source_address = "10.77.0.200"
"#
        ),
        "127.0.0.1:9477",
        &place.netns,
    );
    agent.wait_state("vs1", "vip", "online", LONG);
    agent.wait_state("vs1", "from_vip", "online", LONG);
    agent.wait_state("vs1", "tcp_from_vip", "online", LONG);
    agent.wait_for("both plain checks to fail", LONG, |a| {
        ["from_anywhere", "from_elsewhere"]
            .iter()
            .all(|r| !a.events_of("online_attempt_failed", r).is_empty())
    });
    // nginx refuses any other source: the check says so with the server's answer.
    let refused = agent.events_of("online_attempt_failed", "from_anywhere")[0].clone();
    assert_eq!(refused["reason"], "http_status", "{refused}");
    assert!(refused["detail"].to_string().contains("403"), "{refused}");
    // An address this node does not hold cannot be bound: said, with the address.
    let unbound = agent.events_of("online_attempt_failed", "from_elsewhere")[0].clone();
    assert!(
        unbound["detail"]
            .to_string()
            .contains("cannot bind to 10.77.0.200"),
        "{unbound}"
    );
    // nginx saw the VIP as the client of the passing checks.
    let log = std::fs::read_to_string(place._dir.path().join("access.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("{VIP} ")) && l.contains("\" 200 ")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("127.0.0.1 ") && l.contains("\" 403 ")),
        "{log}"
    );
}
