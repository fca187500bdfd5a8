//! TLS for the protocol types, through tokio-rustls: system roots or a CA file, a server name
//! (SNI) override, an optional client certificate, verification off only by an explicit key,
//! and the peer certificate's validity recorded on every handshake, also one that fails
//! because the certificate has expired.

use crate::resource::{blocking, CertValidity, Failure, Progress, Stage};
use crate::values::HumanDuration;
use resmon_policies::FailureReason;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// `tls_options = { ... }`: how a resource verifies its peer.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file of the CA(s) to trust instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name sent in SNI and checked against the certificate (default: the target's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM client certificate chain, for servers that ask for one.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Accept any certificate (still recording its validity). Off unless set explicitly.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Fail with `tls_expired` when the certificate expires within this long.
    #[serde(default)]
    pub fail_if_expires_within: Option<HumanDuration>,
}

impl TlsOptions {
    /// Problems visible before connecting: unreadable files, a key without a certificate.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        for (key, path) in [
            ("tls_options.ca_file", &self.ca_file),
            ("tls_options.client_cert", &self.client_cert),
            ("tls_options.client_key", &self.client_key),
        ] {
            if let Some(p) = path {
                if let Err(e) = std::fs::metadata(p) {
                    errors.push((key, format!("cannot read {}: {e}", p.display())));
                }
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            errors.push((
                "tls_options.client_key",
                "client_cert and client_key go together".to_string(),
            ));
        }
        if let Some(name) = &self.server_name {
            if ServerName::try_from(name.clone()).is_err() {
                errors.push((
                    "tls_options.server_name",
                    format!("invalid server name {name:?}"),
                ));
            }
        }
        errors
    }
}

/// A TLS client for one resource; the trust material is loaded on first use, through the
/// [`TrustCache`] it was built with.
pub struct TlsClient {
    options: TlsOptions,
    default_host: String,
    trust: TrustCache,
    loaded: tokio::sync::OnceCell<Result<Arc<Loaded>, Failure>>,
}

/// Trust material shared by the TLS resources built from one config: loaded once for each
/// distinct set of trust keys, not once for each resource. The system's roots, parsed, take
/// about 80 KB: 1,000 `https` resources each holding their own came to 104.6 MB, 18.7 MB
/// shared (`scripts/bench-tls-trust`). A config reload starts a new cache, so that the
/// resources it builds read a changed CA file again.
#[derive(Clone, Default)]
pub struct TrustCache(Arc<Mutex<HashMap<TrustKey, Arc<Loaded>>>>);

/// The options that decide what [`load`] makes.
#[derive(PartialEq, Eq, Hash)]
struct TrustKey {
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    insecure_skip_verify: bool,
}

impl TrustCache {
    /// The trust for `options`, loaded now unless the cache holds it. A failure is not kept:
    /// each resource keeps its own, until a reload builds it again.
    fn get_or_load(&self, options: &TlsOptions) -> Result<Arc<Loaded>, String> {
        let key = TrustKey {
            ca_file: options.ca_file.clone(),
            client_cert: options.client_cert.clone(),
            client_key: options.client_key.clone(),
            insecure_skip_verify: options.insecure_skip_verify,
        };
        // Held while loading: another thread after the same trust waits for it rather than
        // loading it a second time.
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(loaded) = cache.get(&key) {
            return Ok(loaded.clone());
        }
        let loaded = Arc::new(load(options)?);
        cache.insert(key, loaded.clone());
        Ok(loaded)
    }

    /// How many distinct trusts it holds.
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl fmt::Debug for TrustCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustCache({} loaded)", self.len())
    }
}

struct Loaded {
    /// Named explicitly: with several providers compiled in (the etcd client brings *ring*),
    /// rustls cannot pick a process default by itself.
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    client_auth: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl TlsClient {
    /// A client for a target whose host is `default_host` (the SNI unless overridden), its
    /// trust loaded through `trust`.
    pub fn new(options: TlsOptions, default_host: &str, trust: &TrustCache) -> Self {
        TlsClient {
            options,
            default_host: default_host.to_string(),
            trust: trust.clone(),
            loaded: tokio::sync::OnceCell::new(),
        }
    }

    /// The trust, read on a blocking thread the first time (files, and the system's roots
    /// parsed), as the resource contract asks of a call that blocks.
    async fn load(&self, progress: &Progress) -> Result<&Loaded, Failure> {
        let loaded = self
            .loaded
            .get_or_init(|| {
                let (trust, options) = (self.trust.clone(), self.options.clone());
                blocking(progress, move || {
                    trust
                        .get_or_load(&options)
                        .map_err(|e| Failure::new(FailureReason::TlsHandshake, e))
                })
            })
            .await;
        loaded.as_deref().map_err(Failure::clone)
    }

    /// Runs the handshake over `stream` in [`Stage::TlsHandshake`], records the peer
    /// certificate's validity in `progress`, and applies `fail_if_expires_within`.
    pub async fn handshake<S>(
        &self,
        stream: S,
        progress: &Progress,
    ) -> Result<TlsStream<S>, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self
            .options
            .server_name
            .as_deref()
            .unwrap_or(&self.default_host);
        self.handshake_as(stream, name, progress).await
    }

    /// [`Self::handshake`] with a server known as `name`, whatever the options say: the host
    /// an HTTP redirect leads to.
    pub async fn handshake_as<S>(
        &self,
        stream: S,
        name: &str,
        progress: &Progress,
    ) -> Result<TlsStream<S>, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // A trust file that hangs (a dead NFS mount) times out as the handshake.
        progress.stage(Stage::TlsHandshake);
        let loaded = self.load(progress).await?;
        let seen = Arc::new(Mutex::new(None));
        let verifier = Arc::new(Recording {
            inner: loaded.verifier.clone(),
            seen: seen.clone(),
        });
        let builder = ClientConfig::builder_with_provider(loaded.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::new(FailureReason::TlsHandshake, format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &loaded.client_auth {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| {
                    Failure::new(
                        FailureReason::TlsHandshake,
                        format!("client certificate: {e}"),
                    )
                })?,
            None => builder.with_no_client_auth(),
        };
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            Failure::new(
                FailureReason::TlsHandshake,
                format!("invalid server name {name:?}"),
            )
        })?;
        let result = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, stream)
            .await;
        let validity = *seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = validity {
            progress.peer_certificate(v);
        }
        let tls = result.map_err(|e| handshake_failure(name, &e))?;
        progress.stage(Stage::Other);
        if let (Some(window), Some(v)) = (self.options.fail_if_expires_within, validity) {
            let left = v.not_after - unix_now();
            if left < window.0.as_secs_f64() {
                return Err(Failure::new(
                    FailureReason::TlsExpired,
                    format!(
                        "the certificate of {name} expires in {} (fail_if_expires_within {window})",
                        HumanDuration(Duration::from_secs(left.max(0.0) as u64))
                    ),
                ));
            }
        }
        Ok(tls)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn handshake_failure(name: &str, e: &std::io::Error) -> Failure {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let reason = match rustls_error {
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired
            | rustls::CertificateError::ExpiredContext { .. }
            | rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. },
        )) => FailureReason::TlsExpired,
        _ => FailureReason::TlsHandshake,
    };
    Failure::new(reason, format!("TLS handshake with {name}: {e}"))
}

fn load(options: &TlsOptions) -> Result<Loaded, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if options.insecure_skip_verify {
        Arc::new(AcceptAny {
            provider: provider.clone(),
        })
    } else {
        let mut roots = RootCertStore::empty();
        match &options.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        if roots.is_empty() {
            return Err("no trusted CA certificate (system roots or ca_file)".into());
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("cannot build the certificate verifier: {e}"))?
    };
    let client_auth = match (&options.client_cert, &options.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("client_cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client_key {}: {e}", key.display()))?;
            Some((certs, Arc::new(key)))
        }
        _ => None,
    };
    Ok(Loaded {
        provider,
        verifier,
        client_auth,
    })
}

/// Records the end-entity certificate's validity, then lets the real verifier decide.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Arc<Mutex<Option<CertValidity>>>,
}

/// NotBefore and NotAfter of a DER certificate.
pub fn validity(der: &[u8]) -> Option<CertValidity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some(CertValidity {
        not_before: v.not_before.timestamp() as f64,
        not_after: v.not_after.timestamp() as f64,
    })
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = validity(end_entity);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure_skip_verify = true`: any certificate, but the handshake's signatures are still
/// checked so that the session is with the holder of the certificate's key.
#[derive(Debug)]
struct AcceptAny {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Now, for tests comparing certificate times.
#[cfg(test)]
pub(crate) fn tests_now() -> f64 {
    unix_now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestCa;

    #[tokio::test]
    async fn clients_with_the_same_trust_share_one_load_and_a_failure_is_their_own() {
        let progress = Progress::default();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = TestCa::new().write(dir.path());
        let trust = TrustCache::default();
        let by_ca = TlsOptions {
            ca_file: Some(ca_file),
            ..TlsOptions::default()
        };
        let a = TlsClient::new(by_ca.clone(), "a.test", &trust);
        // The name and the expiry window do not change what is loaded.
        let b = TlsClient::new(
            TlsOptions {
                server_name: Some("b.test".into()),
                fail_if_expires_within: Some("1d".parse().unwrap()),
                ..by_ca.clone()
            },
            "b.test",
            &trust,
        );
        let (a, b) = (
            a.load(&progress).await.unwrap(),
            b.load(&progress).await.unwrap(),
        );
        assert!(std::ptr::eq(a, b), "loaded twice");
        assert_eq!(trust.len(), 1);
        let insecure = TlsOptions {
            insecure_skip_verify: true,
            ..TlsOptions::default()
        };
        TlsClient::new(insecure, "c.test", &trust)
            .load(&progress)
            .await
            .unwrap();
        assert_eq!(trust.len(), 2);
        let missing = TlsOptions {
            ca_file: Some(dir.path().join("missing.pem")),
            ..TlsOptions::default()
        };
        let Err(e) = TlsClient::new(missing, "d.test", &trust)
            .load(&progress)
            .await
        else {
            panic!("a missing ca_file loaded");
        };
        assert_eq!(e.reason, FailureReason::TlsHandshake);
        assert!(e.detail.contains("cannot read ca_file"), "{e}");
        assert_eq!(trust.len(), 2);
        // A new cache (a reload) reads the file again.
        let reloaded = TrustCache::default();
        let c = TlsClient::new(by_ca, "a.test", &reloaded);
        assert!(!std::ptr::eq(c.load(&progress).await.unwrap(), a));
        assert_eq!(progress.blocking_in_flight(), 0);
    }
}
