//! Small test servers of our own, on 127.0.0.1 port 0: a scripted protocol peer and adversarial
//! peers (silent, slow, endless, rude, TLS with a bad certificate, a handshake that stalls), and
//! a test CA made with rcgen; network namespaces ([`Netns`]) and a systemd user manager
//! ([`UserManager`]) for the system types. Test-only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One step of a scripted server.
pub enum Answer {
    /// Write these bytes.
    Send(&'static str),
    /// Read a line; it must equal this (else the server hangs up).
    Expect(&'static str),
}

/// Serves `script` to every connection; returns the address.
pub async fn serve_script(script: Vec<Answer>) -> SocketAddr {
    let script = Arc::new(script);
    serve(move |stream| {
        let script = script.clone();
        async move {
            let mut stream = BufReader::new(stream);
            for step in script.iter() {
                match step {
                    Answer::Send(text) => {
                        if stream.get_mut().write_all(text.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Answer::Expect(want) => {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.is_err() || line.trim_end() != *want {
                            return;
                        }
                    }
                }
            }
            // Linger so the client closes first.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

/// Runs `handle` on every accepted connection.
pub async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    addr
}

/// Accepts and never speaks.
pub async fn silent() -> SocketAddr {
    serve(|stream| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    })
    .await
}

/// Sends `text` one byte a second.
pub async fn slow(text: &'static str) -> SocketAddr {
    serve(move |mut stream| async move {
        for b in text.bytes() {
            if stream.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await
}

/// Streams a banner line that never ends.
pub async fn endless() -> SocketAddr {
    serve(|mut stream| async move {
        let chunk = [b'2'; 1024];
        while stream.write_all(&chunk).await.is_ok() {}
    })
    .await
}

/// Closes every connection at once.
pub async fn rude() -> SocketAddr {
    serve(|stream| async move { drop(stream) }).await
}

/// Reads the client's hello, then stalls in the middle of the TLS handshake.
pub async fn tls_staller() -> SocketAddr {
    serve(|mut stream| async move {
        let mut buf = [0u8; 512];
        let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await
}

/// A listener whose accept queue is full, so that a new connect hangs in the SYN stage.
pub fn black_hole() -> (std::net::TcpListener, Vec<std::net::TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    (listener, fill, addr)
}

/// A test CA and a way to sign server certificates with it.
pub struct TestCa {
    ca: rcgen::CertifiedKey,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A server certificate and key, DER.
pub struct ServerCert {
    /// The chain: leaf then CA.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The key.
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "resmon test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        TestCa {
            ca: rcgen::CertifiedKey {
                cert,
                key_pair: key,
            },
            pem,
        }
    }

    /// A certificate for `names`, valid from `not_before` to `not_after` (days from now).
    pub fn issue(&self, names: &[&str], not_before_days: i64, not_after_days: i64) -> ServerCert {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(not_before_days);
        params.not_after = now + time::Duration::days(not_after_days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &self.ca.cert, &self.ca.key_pair)
            .unwrap();
        ServerCert {
            chain: vec![cert.der().clone(), self.ca.cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }

    /// A client certificate and key, written as PEM to `dir/client.pem` and `dir/client.key`.
    pub fn issue_client(&self, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "resmon probe");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &self.ca.cert, &self.ca.key_pair)
            .unwrap();
        let (c, k) = (dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A server that requires a client certificate signed by this CA.
    pub async fn tls_server_requiring_client(
        &self,
        cert: ServerCert,
        greeting: &'static str,
    ) -> SocketAddr {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.cert.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.chain, cert.key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        serve(move |stream| {
            let acceptor = acceptor.clone();
            async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(greeting.as_bytes()).await;
                    let mut line = String::new();
                    let mut r = BufReader::new(tls);
                    let _ = r.read_line(&mut line).await;
                }
            }
        })
        .await
    }

    /// Writes the CA certificate to `dir/ca.pem`.
    pub fn write(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

/// A TLS server with `cert` that then serves `script` over TLS (implicit TLS).
pub async fn tls_server(cert: ServerCert, greeting: &'static str) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(cert.chain, cert.key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(mut tls) = acceptor.accept(stream).await {
                let _ = tls.write_all(greeting.as_bytes()).await;
                let mut line = String::new();
                let mut r = BufReader::new(tls);
                let _ = r.read_line(&mut line).await;
            }
        }
    })
    .await
}

/// A network namespace the test made (`ip netns add`), removed with everything in it on drop.
/// Async code runs in it on a thread of its own that entered it, with a runtime of its own: a
/// namespace belongs to a thread, and the test's other threads stay where they are.
pub struct Netns {
    /// The namespace's name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Makes `resmon-<tag>-<pid>`, with loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = format!("resmon-{tag}-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip")
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace; panics unless it succeeds; returns stdout.
    pub fn sh(&self, command: &str) -> String {
        Self::run(&self.name, command)
    }

    /// [`Netns::sh`] by name, for use inside [`Netns::block_on`].
    pub fn run(name: &str, command: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", name, "sh", "-c", command])
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "{command} in {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `future` to completion on a thread inside the namespace.
    pub fn block_on<F, T>(&self, future: F) -> T
    where
        F: std::future::Future<Output = T> + Send,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = std::fs::File::open(&path).expect("open the namespace");
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("enter the namespace");
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(future)
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A real systemd user manager with its own session bus, started by `scripts/user-systemd`
/// (also used by the end-to-end tests) and stopped on drop.
pub struct UserManager {
    /// The bus address to give a `service` resource.
    pub bus: String,
    dir: tempfile::TempDir,
}

impl UserManager {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/user-systemd")
    }

    /// Starts it with these unit files (name, contents) in its runtime unit directory.
    pub fn start(units: &[(&str, &str)]) -> UserManager {
        let dir = tempfile::tempdir().unwrap();
        let unit_dir = dir.path().join("run/systemd/user");
        std::fs::create_dir_all(&unit_dir).unwrap();
        for (name, text) in units {
            std::fs::write(unit_dir.join(name), text).unwrap();
        }
        let out = std::process::Command::new(Self::script())
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("run scripts/user-systemd");
        let manager = UserManager {
            bus: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            dir,
        };
        assert!(
            out.status.success(),
            "systemd --user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        manager
    }

    /// Runs `systemctl --user` against this manager; panics unless it succeeds.
    pub fn systemctl(&self, args: &[&str]) {
        let status = std::process::Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .status()
            .expect("run systemctl");
        assert!(status.success(), "systemctl --user {args:?}");
    }

    /// Runs `systemctl --user` against this manager; its standard output.
    pub fn systemctl_output(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .output()
            .expect("run systemctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
