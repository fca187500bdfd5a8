//! Real servers for the protocol tests, each with its own config under a temporary directory,
//! on loopback high ports, in the foreground (there is no systemd on these machines): nginx,
//! dovecot (IMAP and POP3, plain with STARTTLS and implicit TLS) and postfix (SMTP with
//! STARTTLS, and implicit TLS through `smtpd_tls_wrappermode`). A test CA signs a `localhost`
//! certificate for all of them. The test script installs the Debian packages.

use crate::free_port;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A test CA and a server certificate for `localhost` / 127.0.0.1, as PEM files.
pub struct TestPki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate followed by the CA.
    pub chain: PathBuf,
    /// The server's key.
    pub key: PathBuf,
}

impl TestPki {
    /// Makes the CA and the certificate in `dir`.
    pub fn new(dir: &Path) -> TestPki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "resmon e2e CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
                127, 0, 0, 1,
            ])));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let pki = TestPki {
            ca: dir.join("ca.pem"),
            chain: dir.join("chain.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.chain, format!("{}{}", cert.pem(), ca.pem())).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }
}

/// A server process, killed (with its process group) on drop.
pub struct Server {
    child: Option<Child>,
    /// The pid file of a daemon that leaves the process group it was started in (postfix's
    /// master makes a session of its own), so that dropping the server stops it too.
    detached_pid_file: Option<PathBuf>,
    /// Its directory.
    pub dir: PathBuf,
    /// Named ports.
    pub ports: Vec<(&'static str, u16)>,
    /// The command line that starts it in the foreground, for `process` resources.
    pub command: Vec<String>,
}

impl Server {
    /// A named port.
    pub fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no port {name}"))
            .1
    }

    fn start(mut self) -> Server {
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(self.dir.join("stderr.log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (the test script installs it)",
                    self.command[0]
                )
            });
        self.child = Some(child);
        for (name, port) in self.ports.clone() {
            wait_port(port, Duration::from_secs(20)).unwrap_or_else(|| {
                panic!(
                    "{} did not listen on {name} port {port}: {}",
                    self.command[0],
                    self.logs()
                )
            });
        }
        self
    }

    /// What the server logged, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                out += &format!(
                    "--- {}\n{}",
                    entry.path().display(),
                    std::fs::read_to_string(entry.path()).unwrap_or_default()
                );
            }
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the process group this harness created.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
        }
        let detached = self.detached_pid_file.as_ref().and_then(|f| {
            let pid = std::fs::read_to_string(f)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()?;
            (pid > 1).then_some(pid)
        });
        if let Some(pid) = detached {
            // SAFETY: signalling the group the daemon made, with its workers in it.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A listener on `addr` (IPv4) for servers of our own that take many connects at once: a
/// backlog of 4,096 where tokio's is 128, which drops the SYNs beyond it, so that each of those
/// connects comes a second later. Called on a tokio runtime.
pub fn listen_for_many(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Waits until `port` on 127.0.0.1 accepts a connection.
pub fn wait_port(port: u16, timeout: Duration) -> Option<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// nginx with a 200 path (`/`), a 503 path (`/down`), over HTTP (`http`) and HTTPS (`https`).
pub fn nginx_config(base: &Path, pki: &TestPki) -> Server {
    nginx_config_on(base, pki, free_port(), free_port())
}

/// [`nginx_config`] on given ports.
pub fn nginx_config_on(base: &Path, pki: &TestPki, http: u16, https: u16) -> Server {
    nginx_config_at(base, pki, LOOPBACK, http, https)
}

/// 127.0.0.1.
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// [`nginx_config`] on given ports of `address`.
pub fn nginx_config_at(
    base: &Path,
    pki: &TestPki,
    address: std::net::IpAddr,
    http: u16,
    https: u16,
) -> Server {
    let d = dir(base, "nginx");
    let conf = d.join("nginx.conf");
    let dd = d.display();
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
pid {dd}/nginx.pid;
error_log {dd}/error.log;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
  access_log {dd}/access.log;
  client_body_temp_path {dd}/body;
  proxy_temp_path {dd}/proxy;
  fastcgi_temp_path {dd}/fastcgi;
  uwsgi_temp_path {dd}/uwsgi;
  scgi_temp_path {dd}/scgi;
  server {{
    listen {address}:{http};
    listen {address}:{https} ssl;
    ssl_certificate {chain};
    ssl_certificate_key {key};
    location / {{ return 200 "ok\n"; }}
    location /down {{ return 503; }}
    location /moved {{ return 302 https://localhost:{https}/; }}
  }}
}}
"#,
            chain = pki.chain.display(),
            key = pki.key.display()
        ),
    )
    .unwrap();
    Server {
        child: None,
        detached_pid_file: None,
        command: vec![
            "nginx".into(),
            "-c".into(),
            conf.display().to_string(),
            "-e".into(),
            d.join("error.log").display().to_string(),
        ],
        dir: d,
        ports: vec![("http", http), ("https", https)],
    }
}

/// Starts [`nginx_config`].
pub fn nginx(base: &Path, pki: &TestPki) -> Server {
    nginx_config(base, pki).start()
}

/// dovecot with IMAP (`imap`, STARTTLS offered), IMAPS (`imaps`), POP3 (`pop3`, STLS offered)
/// and POP3S (`pop3s`).
pub fn dovecot_config(base: &Path, pki: &TestPki) -> Server {
    dovecot_config_on(
        base,
        pki,
        [free_port(), free_port(), free_port(), free_port()],
    )
}

/// [`dovecot_config`] on given ports: IMAP, IMAPS, POP3, POP3S.
pub fn dovecot_config_on(base: &Path, pki: &TestPki, ports: [u16; 4]) -> Server {
    dovecot_config_at(base, pki, LOOPBACK, ports)
}

/// [`dovecot_config`] on given ports of `address`: IMAP, IMAPS, POP3, POP3S.
pub fn dovecot_config_at(
    base: &Path,
    pki: &TestPki,
    address: std::net::IpAddr,
    ports: [u16; 4],
) -> Server {
    let d = dir(base, "dovecot");
    std::fs::create_dir_all(d.join("mail")).unwrap();
    let [imap, imaps, pop3, pop3s] = ports;
    let conf = d.join("dovecot.conf");
    let dd = d.display();
    std::fs::write(
        &conf,
        format!(
            r#"protocols = imap pop3
listen = {address}
base_dir = {dd}/run
state_dir = {dd}/state
log_path = {dd}/dovecot.log
ssl = yes
ssl_cert = <{chain}
ssl_key = <{key}
mail_location = maildir:{dd}/mail/%u
passdb {{
  driver = static
  args = password=test
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={dd}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
"#,
            chain = pki.chain.display(),
            key = pki.key.display()
        ),
    )
    .unwrap();
    Server {
        child: None,
        detached_pid_file: None,
        command: vec![
            "dovecot".into(),
            "-F".into(),
            "-c".into(),
            conf.display().to_string(),
        ],
        dir: d,
        ports: vec![
            ("imap", imap),
            ("imaps", imaps),
            ("pop3", pop3),
            ("pop3s", pop3s),
        ],
    }
}

/// Starts [`dovecot_config`].
pub fn dovecot(base: &Path, pki: &TestPki) -> Server {
    dovecot_config(base, pki).start()
}

/// postfix with SMTP (`smtp`, STARTTLS offered) and implicit TLS (`smtps`).
pub fn postfix_config(base: &Path, pki: &TestPki) -> Server {
    postfix_config_on(base, pki, free_port(), free_port())
}

/// [`postfix_config`] on given ports.
pub fn postfix_config_on(base: &Path, pki: &TestPki, smtp: u16, smtps: u16) -> Server {
    postfix_config_at(base, pki, LOOPBACK, smtp, smtps)
}

/// [`postfix_config`] on given ports of `address`.
pub fn postfix_config_at(
    base: &Path,
    pki: &TestPki,
    address: std::net::IpAddr,
    smtp: u16,
    smtps: u16,
) -> Server {
    let d = dir(base, "postfix");
    let conf = dir(&d, "conf");
    for sub in ["spool", "data"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    for f in ["main.cf", "dynamicmaps.cf", "postfix-files"] {
        std::fs::copy(Path::new("/etc/postfix").join(f), conf.join(f))
            .unwrap_or_else(|e| panic!("/etc/postfix/{f}: {e} (the test script installs postfix)"));
    }
    for sub in ["dynamicmaps.cf.d", "postfix-files.d"] {
        std::fs::create_dir_all(conf.join(sub)).unwrap();
        for entry in std::fs::read_dir(Path::new("/etc/postfix").join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            std::fs::copy(entry.path(), conf.join(sub).join(entry.file_name())).unwrap();
        }
    }
    let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
    let mut lines = Vec::new();
    for line in master.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 2 && fields[0] == "smtp" && fields[1] == "inet" {
            lines.push(format!("{address}:{smtp} inet n - n - - smtpd"));
            lines.push(format!(
                "{address}:{smtps} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes"
            ));
        } else if fields.len() >= 5
            && fields[1] == "unix"
            && fields[4] == "y"
            && !line.starts_with(char::is_whitespace)
        {
            // No chroot: the spool is not where the chroot expects it.
            let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
            f[4] = "n".into();
            lines.push(f.join(" "));
        } else {
            lines.push(line.to_string());
        }
    }
    std::fs::write(conf.join("master.cf"), lines.join("\n") + "\n").unwrap();
    let dd = d.display();
    let status = Command::new("postconf")
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .args([
            format!("queue_directory={dd}/spool"),
            format!("data_directory={dd}/data"),
            "myhostname=localhost".into(),
            "mydestination=localhost".into(),
            if address.is_loopback() {
                "inet_interfaces=loopback-only".into()
            } else {
                format!("inet_interfaces={address}")
            },
            "inet_protocols=ipv4".into(),
            "maillog_file=/dev/stdout".into(),
            format!("smtpd_tls_cert_file={}", pki.chain.display()),
            format!("smtpd_tls_key_file={}", pki.key.display()),
            "smtpd_tls_security_level=may".into(),
            "compatibility_level=3.6".into(),
        ])
        .status()
        .expect("postconf (the test script installs postfix)");
    assert!(status.success());
    let _ = Command::new("chown")
        .arg("postfix")
        .arg(d.join("data"))
        .status();
    Server {
        child: None,
        detached_pid_file: Some(d.join("spool/pid/master.pid")),
        command: vec![
            "postfix".into(),
            "-c".into(),
            conf.display().to_string(),
            "start-fg".into(),
        ],
        dir: d,
        ports: vec![("smtp", smtp), ("smtps", smtps)],
    }
}

/// Starts [`postfix_config`].
pub fn postfix(base: &Path, pki: &TestPki) -> Server {
    postfix_config(base, pki).start()
}

/// The addresses of `examples/exchange-cluster.toml`: each virtual server's, and the MTA's.
pub const EXCHANGE_CLUSTER: [(&str, &str); 3] = [
    ("evs1", "10.88.0.101"),
    ("evs2", "10.88.0.102"),
    ("mta", "10.88.0.110"),
];

/// What `examples/exchange-cluster.toml` runs, under `dir`: each virtual server's dovecot and
/// nginx (`dir/evs1/dovecot`, `dir/evs1/nginx`, ...) and the cluster's one postfix
/// (`dir/mta/postfix`), each on its group's address.
pub fn exchange_cluster(dir: &Path, pki: &TestPki) -> Vec<Server> {
    let mut made = Vec::new();
    for (name, address) in EXCHANGE_CLUSTER {
        let base = self::dir(dir, name);
        let address: std::net::IpAddr = address.parse().expect("a literal address");
        if name == "mta" {
            made.push(postfix_config_at(&base, pki, address, 25, 465));
        } else {
            made.push(dovecot_config_at(&base, pki, address, [143, 993, 110, 995]));
            made.push(nginx_config_at(&base, pki, address, 80, 443));
        }
    }
    made
}
