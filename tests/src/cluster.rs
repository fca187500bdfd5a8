//! Several hosts on one machine, for the cluster tests and the failover benchmark: a hub network
//! namespace with a bridge and a real etcd, and one namespace per node joined to the bridge by a
//! veth pair, all made by the test and removed on drop.
//!
//! Addresses: the hub is 10.88.0.1, node `i` (from 1) is 10.88.0.(10+i), the group's VIP is
//! 10.88.0.100; all live only inside these namespaces. With several etcd members
//! ([`Cluster::with_members`]), member `k` (from 1) has a namespace of its own on the bridge at
//! 10.88.0.(5+k), as the members of a real cluster have machines of their own.

use crate::{binary, in_netns, Agent};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The group's address.
pub const VIP: &str = "10.88.0.100";
/// The port the group's service answers on.
pub const SERVICE_PORT: u16 = 8080;

/// Runs a command; panics with its stderr unless it succeeds; returns stdout.
pub fn sh(command: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(command).output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The network, etcd, and the nodes' names.
pub struct Cluster {
    /// Everything on disk: etcd's data, the agents' configs and state.
    pub dir: tempfile::TempDir,
    /// The hub namespace (bridge, etcd, the observer's vantage point).
    pub hub: String,
    /// Node names, `n1`...
    pub nodes: Vec<String>,
    tag: String,
    etcd: Mutex<Option<Child>>,
    tls: Option<EtcdTls>,
    /// etcd members in namespaces of their own (0: one etcd in the hub).
    members: usize,
    /// Their processes, by member number - 1.
    member_processes: Mutex<Vec<Option<Child>>>,
}

/// Certificates for an etcd that speaks TLS and asks clients for theirs.
pub struct EtcdTls {
    /// The CA that signed both.
    pub ca: PathBuf,
    /// etcd's certificate (for 10.88.0.1) and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key the CA signed.
    pub client: (PathBuf, PathBuf),
}

impl EtcdTls {
    /// Makes a CA, a server certificate for the hub's address and a client certificate.
    pub fn new(dir: &Path) -> EtcdTls {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "resmon etcd CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issue =
            |name: &str, sans: Vec<rcgen::SanType>, usage: rcgen::ExtendedKeyUsagePurpose| {
                let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                params.subject_alt_names = sans;
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, name);
                params.extended_key_usages = vec![usage];
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
                let (cert_path, key_path) = (
                    dir.join(format!("{name}.pem")),
                    dir.join(format!("{name}-key.pem")),
                );
                std::fs::write(&cert_path, cert.pem()).unwrap();
                std::fs::write(&key_path, key.serialize_pem()).unwrap();
                (cert_path, key_path)
            };
        let server = issue(
            "etcd",
            vec![rcgen::SanType::IpAddress(std::net::IpAddr::from([
                10, 88, 0, 1,
            ]))],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = issue(
            "resmon",
            vec![rcgen::SanType::DnsName("resmon".try_into().unwrap())],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        EtcdTls {
            ca: ca_path,
            server,
            client,
        }
    }
}

impl Cluster {
    /// Makes the namespaces and starts etcd.
    pub fn new(nodes: usize) -> Cluster {
        Self::build(nodes, false, 0)
    }

    /// Like [`Cluster::new`], with etcd on TLS and requiring client certificates.
    pub fn new_tls(nodes: usize) -> Cluster {
        Self::build(nodes, true, 0)
    }

    /// Like [`Cluster::new`], with an etcd cluster of `members` members, each in its own
    /// namespace, as users run it.
    pub fn with_members(nodes: usize, members: usize) -> Cluster {
        Self::build(nodes, false, members)
    }

    fn build(nodes: usize, tls: bool, members: usize) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("resmon-cluster")
            .tempdir()
            .unwrap();
        let tls = tls.then(|| EtcdTls::new(dir.path()));
        // Unique per cluster: tests of one binary run at the same time.
        static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = format!(
            "rc{}x{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::SeqCst)
        );
        let hub = format!("{tag}-hub");
        let cluster = Cluster {
            dir,
            tls,
            hub: hub.clone(),
            nodes: (1..=nodes).map(|i| format!("n{i}")).collect(),
            tag,
            etcd: Mutex::new(None),
            members,
            member_processes: Mutex::new((0..members).map(|_| None).collect()),
        };
        cluster.teardown_network();
        sh(&format!(
            "ip netns add {hub} && ip -n {hub} link set lo up && \
             ip -n {hub} link add br0 type bridge && ip -n {hub} link set br0 up && \
             ip -n {hub} addr add 10.88.0.1/24 dev br0"
        ));
        for (i, node) in cluster.nodes.clone().iter().enumerate() {
            let ns = cluster.netns(node);
            sh(&format!(
                "ip netns add {ns} && ip -n {ns} link set lo up && \
                 ip -n {hub} link add p-{node} type veth peer name eth0 netns {ns} && \
                 ip -n {hub} link set p-{node} master br0 up && \
                 ip -n {ns} addr add 10.88.0.{}/24 dev eth0 && ip -n {ns} link set eth0 up",
                11 + i
            ));
        }
        for k in 1..=members {
            let ns = cluster.member_netns(k);
            sh(&format!(
                "ip netns add {ns} && ip -n {ns} link set lo up && \
                 ip -n {hub} link add p-e{k} type veth peer name eth0 netns {ns} && \
                 ip -n {hub} link set p-e{k} master br0 up && \
                 ip -n {ns} addr add {}/24 dev eth0 && ip -n {ns} link set eth0 up",
                member_address(k)
            ));
        }
        if members == 0 {
            cluster.start_etcd();
        } else {
            for k in 1..=members {
                cluster.start_member(k);
            }
            cluster.wait_healthy();
        }
        cluster
    }

    /// Member `k`'s namespace.
    pub fn member_netns(&self, k: usize) -> String {
        format!("{}-e{k}", self.tag)
    }

    /// Starts etcd member `k` (its data survives a restart); returns at once: a member alone
    /// has no quorum to answer with.
    pub fn start_member(&self, k: usize) {
        let name = format!("e{k}");
        let data = self.dir.path().join(format!("etcd-{name}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("etcd-{name}.log")))
            .unwrap();
        let peers: Vec<String> = (1..=self.members)
            .map(|m| format!("e{m}=http://{}:2380", member_address(m)))
            .collect();
        let address = member_address(k);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.member_netns(k),
                "etcd",
                "--name",
                &name,
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg(format!("--listen-client-urls=http://{address}:2379"))
            .arg(format!("--advertise-client-urls=http://{address}:2379"))
            .arg(format!("--listen-peer-urls=http://{address}:2380"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://{address}:2380"
            ))
            .arg(format!("--initial-cluster={}", peers.join(",")))
            .args([
                "--initial-cluster-state=new",
                "--initial-cluster-token=resmon-test",
                // The default since etcd 3.5 (Debian 12 ships 3.4): a member cut off does not
                // come back with a higher term and force an election on the others.
                "--pre-vote=true",
                // Elections as quick as a loopback bridge allows.
                "--heartbeat-interval=50",
                "--election-timeout=500",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian etcd-server) is installed by the test script");
        self.member_processes.lock().unwrap()[k - 1] = Some(child);
    }

    /// Kills member `k` (SIGKILL), as a machine that dies.
    pub fn kill_member(&self, k: usize) {
        if let Some(mut child) = self.member_processes.lock().unwrap()[k - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts member `k`'s cable.
    pub fn cut_member(&self, k: usize) {
        sh(&format!("ip -n {} link set p-e{k} down", self.hub));
    }

    /// Plugs it back.
    pub fn mend_member(&self, k: usize) {
        sh(&format!("ip -n {} link set p-e{k} up", self.hub));
    }

    /// The member that leads now (from 1), as the members say.
    pub fn leader(&self) -> Option<usize> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.hub, "etcdctl"])
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args([
                "endpoint",
                "status",
                "--write-out=json",
                "--command-timeout=2s",
            ])
            .env("ETCDCTL_API", "3")
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status.as_array()?.iter().find_map(|s| {
            let own = s["Status"]["header"]["member_id"].as_u64()?;
            let leader = s["Status"]["leader"].as_u64()?;
            let endpoint = s["Endpoint"].as_str()?;
            (own == leader).then(|| {
                (1..=self.members)
                    .find(|k| endpoint.contains(&member_address(*k)))
                    .unwrap_or(0)
            })
        })
    }

    /// Waits until the cluster answers a write.
    pub fn wait_healthy(&self) {
        assert!(
            self.answers_writes(Duration::from_secs(30)),
            "the etcd cluster did not answer a write within 30 s"
        );
    }

    /// Whether the cluster (the hub's etcd or the members) answers a write within `timeout`.
    fn answers_writes(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let healthy = Command::new("ip")
                .args(["netns", "exec", &self.hub, "etcdctl"])
                .arg(format!("--endpoints={}", self.endpoints().join(",")))
                .args(self.etcdctl_tls())
                .args(["put", "resmon-test/health", "1", "--command-timeout=1s"])
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if healthy {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// A node's namespace.
    pub fn netns(&self, node: &str) -> String {
        format!("{}-{node}", self.tag)
    }

    /// The etcd endpoint of the hub's single etcd.
    fn endpoint(&self) -> &'static str {
        if self.tls.is_some() {
            "https://10.88.0.1:2379"
        } else {
            "http://10.88.0.1:2379"
        }
    }

    /// The etcd endpoints the agents use.
    pub fn endpoints(&self) -> Vec<String> {
        if self.members == 0 {
            vec![self.endpoint().to_string()]
        } else {
            (1..=self.members)
                .map(|k| format!("http://{}:2379", member_address(k)))
                .collect()
        }
    }

    /// The TLS material, when etcd speaks TLS.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    fn etcdctl_tls(&self) -> Vec<String> {
        match &self.tls {
            Some(t) => vec![
                format!("--cacert={}", t.ca.display()),
                format!("--cert={}", t.client.0.display()),
                format!("--key={}", t.client.1.display()),
            ],
            None => Vec::new(),
        }
    }

    /// Starts etcd in the hub (its data survives a restart); returns once it answers.
    pub fn start_etcd(&self) {
        let data = self.dir.path().join("etcd");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut etcd = Command::new("ip");
        etcd.args(["netns", "exec", &self.hub, "etcd", "--name", "hub"])
            .arg("--data-dir")
            .arg(&data)
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()));
        if let Some(t) = &self.tls {
            etcd.arg(format!("--cert-file={}", t.server.0.display()))
                .arg(format!("--key-file={}", t.server.1.display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = etcd
            .args([
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=hub=http://127.0.0.1:2380",
                // A single member elects itself after one election timeout: keep it short.
                "--heartbeat-interval=50",
                "--election-timeout=250",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian etcd-server) is installed by the test script");
        *self.etcd.lock().unwrap() = Some(child);
        if !self.answers_writes(Duration::from_secs(20)) {
            panic!(
                "etcd did not come up: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
        }
    }

    /// Runs `etcdctl` (v3) against the cluster's etcd; panics unless it succeeds.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.hub, "etcdctl"])
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(self.etcdctl_tls())
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops etcd (SIGTERM) and waits for it.
    pub fn stop_etcd(&self) {
        let child = self.etcd.lock().unwrap().take();
        if let Some(mut child) = child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// The config of one node's agent, with `groups` (TOML) appended.
    pub fn agent_config(&self, node: &str, ttl: &str, groups: &str) -> String {
        let dir = self.dir.path().join(node);
        std::fs::create_dir_all(&dir).unwrap();
        format!(
            r#"[agent]
listen = "127.0.0.1:9477"
node = "{node}"
state_dir = "{state}"
control_socket = "{socket}"

[cluster]
endpoints = [{endpoints}]
lease_ttl = "{ttl}"
fence_margin = "500ms"
{tls}
{groups}"#,
            state = dir.join("state").display(),
            socket = dir.join("control.sock").display(),
            endpoints = self
                .endpoints()
                .iter()
                .map(|e| format!("{e:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            tls = match &self.tls {
                Some(t) => format!(
                    "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
                    t.ca.display().to_string(),
                    t.client.0.display().to_string(),
                    t.client.1.display().to_string()
                ),
                None => String::new(),
            },
        )
    }

    /// The web group of the tests and the benchmark: the VIP, a service bound to it answering
    /// with the node's name, and an HTTP check of it.
    pub fn web_group(&self, node: &str, extra: &str) -> String {
        let owners: Vec<String> = self.nodes.iter().map(|n| format!("{n:?}")).collect();
        format!(
            r#"[[groups]]
name = "web"
possible_owners = [{owners}]
preferred_owners = [{owners}]
{extra}

[[groups.resources]]
name = "vip"
type = "ip"
address = "{VIP}/24"
interface = "eth0"

[[groups.resources]]
name = "server"
type = "process"
command = ["{testd}", "--listen", "{VIP}:{SERVICE_PORT}", "--http", "--banner", "{node}"]
ready_tcp = "{VIP}:{SERVICE_PORT}"
depends_on = ["vip"]
restart_threshold = 1
restart_period = "1h"

[[groups.resources]]
name = "check"
type = "http"
url = "http://{VIP}:{SERVICE_PORT}/"
depends_on = ["server"]
is_alive_interval = "1s"
"#,
            owners = owners.join(", "),
            testd = binary("resmon-testd").display(),
        )
    }

    /// Starts a node's agent on `config`.
    pub fn start_agent(&self, node: &str, config: &str) -> Agent {
        Agent::start_in_netns(config, "127.0.0.1:9477", &self.netns(node))
    }

    /// Which nodes hold the VIP on a link that is up (able to answer for it).
    pub fn holders(&self) -> Vec<String> {
        self.holders_in(self.nodes.iter())
    }

    /// [`Cluster::holders`], reading the nodes in the opposite order.
    pub fn holders_reversed(&self) -> Vec<String> {
        self.holders_in(self.nodes.iter().rev())
    }

    fn holders_in<'a>(&self, nodes: impl Iterator<Item = &'a String>) -> Vec<String> {
        let mut script = String::new();
        for node in nodes {
            script.push_str(&format!(
                "echo {node} $(ip -n {} -br addr show dev eth0 2>/dev/null);",
                self.netns(node)
            ));
        }
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let node = words.next()?;
                let _ifname = words.next()?;
                let state = words.next()?;
                let holds = words.any(|w| w.starts_with(&format!("{VIP}/")));
                (state == "UP" && holds).then(|| node.to_string())
            })
            .collect()
    }

    /// Who answers on the VIP, asked from the hub (a client outside every node).
    pub fn answer(&self) -> Option<String> {
        in_netns(&self.hub, ask_vip)
    }

    /// Waits until the VIP answers from `node`; returns how long that took.
    pub fn wait_answer(&self, node: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.answer().as_deref() == Some(node) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the VIP did not answer from {node} within {timeout:?}; holders {:?}, answer {:?}",
            self.holders(),
            self.answer()
        );
    }

    /// Cuts a node's cable (its port on the bridge goes down).
    pub fn cut(&self, node: &str) {
        sh(&format!("ip -n {} link set p-{node} down", self.hub));
    }

    /// Plugs it back.
    pub fn mend(&self, node: &str) {
        sh(&format!("ip -n {} link set p-{node} up", self.hub));
    }

    /// Kills every process running in a node's namespace, its agent and what its groups
    /// started: a machine that dies takes them all with it.
    pub fn kill_all(&self, node: &str) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.netns(node)])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: a signal to a process of the test's own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            });
    }

    /// Removes the VIP from a node (what a dead machine's address does).
    pub fn drop_vip(&self, node: &str) {
        let _ = Command::new("ip")
            .args(["-n", &self.netns(node), "addr", "del"])
            .arg(format!("{VIP}/24"))
            .args(["dev", "eth0"])
            .stderr(Stdio::null())
            .status();
    }

    fn teardown_network(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .stderr(Stdio::null())
            .status();
        for k in 1..=self.members {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.member_netns(k)])
                .stderr(Stdio::null())
                .status();
        }
        for node in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns(node)])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// The path of a node's state directory.
    pub fn state_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node).join("state")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_etcd();
        for k in 1..=self.members {
            self.kill_member(k);
        }
        for node in self.nodes.clone() {
            self.kill_all(&node);
        }
        self.teardown_network();
    }
}

/// Member `k`'s address on the bridge.
fn member_address(k: usize) -> String {
    format!("10.88.0.{}", 5 + k)
}

/// Asks the service on the VIP who it is, from the calling thread's network namespace.
fn ask_vip() -> Option<String> {
    ask(format!("{VIP}:{SERVICE_PORT}").parse().unwrap())
}

/// Asks the service at `address` who it is (the body of its answer), from the calling thread's
/// network namespace.
pub fn ask(address: SocketAddr) -> Option<String> {
    // On this bridge an answer takes well under a millisecond: a VIP that does not answer in
    // 40 ms counts as not answering, so that the observer keeps its 50 ms cadence.
    let mut s = TcpStream::connect_timeout(&address, Duration::from_millis(40)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .filter(|b| !b.is_empty())
}

/// One observation: when, which nodes held the VIP, and who answered on it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Since the observer started.
    pub at: Duration,
    /// Nodes holding the VIP on a link that is up.
    pub holders: Vec<String>,
    /// Who answered on the VIP.
    pub answer: Option<String>,
}

/// Records every 50 ms which node holds and answers on the VIP, until stopped.
pub struct Observer {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    /// Starts observing `cluster` (which must outlive it).
    pub fn start(cluster: &Arc<Cluster>) -> Observer {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop, cluster) = (samples.clone(), stop.clone(), cluster.clone());
            std::thread::spawn(move || {
                // The observer lives in the hub, outside every node: it enters once.
                let hub = std::fs::File::open(format!("/run/netns/{}", cluster.hub)).unwrap();
                // SAFETY: setns on a valid descriptor changes only this thread's namespace.
                let entered = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&hub), libc::CLONE_NEWNET)
                };
                assert_eq!(entered, 0, "enter the hub namespace");
                let started = Instant::now();
                // Bounded: a test that forgets to stop it still ends.
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(900) {
                    let tick = Instant::now();
                    // Two scans in opposite orders: a VIP that moves from a node read early to
                    // one read late shows in one scan only, while two nodes that really hold it
                    // at once show in both.
                    let forward = cluster.holders();
                    let answer = ask_vip();
                    let backward = cluster.holders_reversed();
                    let both_see_two = forward.len() > 1 && backward.len() > 1;
                    let holders = if both_see_two || forward.len() <= backward.len() {
                        forward
                    } else {
                        backward
                    };
                    let sample = Sample {
                        at: tick.duration_since(started),
                        holders,
                        answer,
                    };
                    samples.lock().unwrap().push(sample);
                    if let Some(rest) = Duration::from_millis(50).checked_sub(tick.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
            })
        };
        Observer {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns every sample.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs keepalived (VRRP only, in the foreground) on `conf` in `node`'s namespace, its pid files
/// in the node's directory and its output appended to `log`.
pub fn spawn_keepalived(cluster: &Cluster, node: &str, conf: &Path, log: &Path) -> Child {
    let dir = cluster.dir.path().join(node);
    std::fs::create_dir_all(&dir).unwrap();
    // A killed keepalived leaves its pid files, and a new one then refuses to start.
    for pid in ["keepalived.pid", "vrrp.pid", "checkers.pid"] {
        let _ = std::fs::remove_file(dir.join(pid));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new("ip")
        .args(["netns", "exec", &cluster.netns(node), "keepalived"])
        .args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
        .arg(conf)
        .arg(format!("--pid={}", dir.join("keepalived.pid").display()))
        .arg(format!("--vrrp_pid={}", dir.join("vrrp.pid").display()))
        .arg(format!(
            "--checkers_pid={}",
            dir.join("checkers.pid").display()
        ))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("keepalived is installed (apt-get install keepalived)")
}

/// Writes a keepalived config for one node of the benchmark's comparison.
pub fn keepalived_config(dir: &Path, node: &str, priority: u8) -> PathBuf {
    let path = dir.join(format!("keepalived-{node}.conf"));
    std::fs::write(
        &path,
        format!(
            r#"global_defs {{
  router_id {node}
  enable_script_security
}}
vrrp_instance web {{
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority {priority}
  nopreempt
  advert_int 1
  virtual_ipaddress {{
    {VIP}/24 dev eth0
  }}
}}
"#
        ),
    )
    .unwrap();
    path
}

/// When a played watchdog reset its node, once it has.
pub type Reset = Arc<Mutex<Option<Instant>>>;

/// Plays a watchdog device for `node`, as the hardware would: a FIFO whose reader, once the
/// first keep-alive came, resets the node (kills every process in its namespace and cuts its
/// cable) when no keep-alive follows within `timeout`; a `V` disarms it. The agent's ioctls
/// fail on a FIFO, which it tolerates. Returns the FIFO's path and when the reset happened.
pub fn play_watchdog(cluster: &Arc<Cluster>, node: &str, timeout: Duration) -> (PathBuf, Reset) {
    use std::os::unix::fs::OpenOptionsExt;
    let path = cluster.dir.path().join(format!("{node}-watchdog"));
    // A node that was reset gets a new one when it boots again.
    sh(&format!("rm -f {0} && mkfifo {0}", path.display()));
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let reset = Arc::new(Mutex::new(None));
    // Weak: the harness must not keep the namespaces alive past the test.
    let (cluster, node, fired) = (Arc::downgrade(cluster), node.to_string(), reset.clone());
    std::thread::spawn(move || {
        let mut last: Option<Instant> = None;
        let mut buf = [0u8; 64];
        loop {
            match fifo.read(&mut buf) {
                Ok(n) if n > 0 => {
                    if buf[..n].contains(&b'V') {
                        return;
                    }
                    last = Some(Instant::now());
                }
                // No writer (EOF) or nothing yet: the count goes on.
                _ => {}
            }
            let Some(cluster) = cluster.upgrade() else {
                return; // the test is over
            };
            if last.is_some_and(|l| l.elapsed() > timeout) {
                cluster.kill_all(&node);
                cluster.cut(&node);
                *fired.lock().unwrap() = Some(Instant::now());
                return;
            }
            drop(cluster);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    (path, reset)
}
