//! `http`: a GET (or HEAD) of a URL on hyper, over a new connection per check as a health check
//! should, plain or TLS. Passes when the status is in `valid_status` (default 200-399) and,
//! when asked, the body holds a substring or matches a regular expression. Redirects are not
//! followed unless `follow_redirects` asks: a 3xx is judged by its status like any other answer.
//! Followed, each redirect is a new connection to its `Location` (at most ten), and the last
//! answer is judged.
//!
//! Failure reasons: `refused`, `connect_timeout`, `tls_handshake`, `tls_expired`,
//! `http_status`, `http_body`, `reset`, `timeout`, `io`.

use crate::net::Conn;
use crate::resource::{escape_bytes, Failure, Progress, Resource, Stage};
use crate::resource::{BuildContext, TypeConfig};
use crate::secret::Secrets;
use crate::tls::{TlsClient, TlsOptions, TrustCache};
use crate::values::{ConfigRegex, HostPort, SourceAddress};
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use resmon_policies::FailureReason;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Context;

/// An `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// TLS or not.
    pub https: bool,
    /// Where to connect.
    pub target: HostPort,
    /// Path and query.
    pub path: String,
    /// As written.
    pub text: String,
}

impl HttpUrl {
    /// Reads an absolute `http` or `https` URL; the error says why it is not one.
    fn parse(text: &str) -> Result<HttpUrl, String> {
        let uri: hyper::Uri = text.parse().map_err(|_| "not a URL".to_string())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("the scheme must be http or https".into()),
        };
        // Credentials in a URL are not sent by this client, and would show in every log line
        // and event that names the URL: `headers = { Authorization = ... }` sends them.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("user info (user:password@) is not allowed in a URL: send credentials with headers = { Authorization = \"...\" }".into());
        }
        let host = uri.host().ok_or("no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        Ok(HttpUrl {
            https,
            target: HostPort::new(host, port),
            path,
            text: text.to_string(),
        })
    }

    /// Where a redirect's `Location` leads from this URL: absolute, or relative to it as
    /// RFC 3986 resolves a reference (`/x`, `x`, `../x`, `//host/x`).
    fn join(&self, location: &str) -> Result<HttpUrl, String> {
        let base = url::Url::parse(&self.text).map_err(|e| e.to_string())?;
        let next = base.join(location).map_err(|e| e.to_string())?;
        HttpUrl::parse(next.as_str())
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HttpUrl::parse(&text)
            .map_err(|why| serde::de::Error::custom(format!("invalid url {text:?}: {why}")))
    }
}

/// `GET` or `HEAD`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum HttpMethod {
    /// GET.
    #[default]
    #[serde(rename = "GET")]
    Get,
    /// HEAD.
    #[serde(rename = "HEAD")]
    Head,
}

/// `"200"` or `"200-399"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange(pub u16, pub u16);

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parse = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        let range = match s.split_once('-') {
            Some((a, b)) => parse(a).zip(parse(b)).filter(|(a, b)| a <= b),
            None => parse(&s).map(|c| (c, c)),
        };
        range.map(|(a, b)| StatusRange(a, b)).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid status {s:?}: write a code such as \"200\" or a range such as \"200-399\""
            ))
        })
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

fn default_valid_status() -> Vec<StatusRange> {
    vec![StatusRange(200, 399)]
}

fn default_body_limit() -> usize {
    64 * 1024
}

/// Private properties of an `http` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// What to fetch.
    pub url: HttpUrl,
    /// `GET` or `HEAD`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Statuses that pass.
    #[serde(default = "default_valid_status")]
    pub valid_status: Vec<StatusRange>,
    /// The body must contain this.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// The body must match this.
    #[serde(default)]
    pub body_regex: Option<ConfigRegex>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra request headers whose values are secrets, read from files (at start and at each
    /// reload): `header_files = { Authorization = "/etc/resmon/web-token" }`.
    #[serde(default)]
    pub header_files: BTreeMap<String, PathBuf>,
    /// `Host` header to send (default: the URL's host and port).
    #[serde(default)]
    pub host: Option<String>,
    /// Trust and certificate checks for `https`.
    #[serde(default)]
    pub tls_options: TlsOptions,
    /// How much of the body is read to match it.
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// Follow 301, 302, 303, 307 and 308 answers to their `Location` (at most
    /// [`MAX_REDIRECTS`]) and judge the last answer. Off: a redirect is judged by its status.
    #[serde(default)]
    pub follow_redirects: bool,
    /// Connect from this address, or from the address of this `ip` resource of the group.
    #[serde(default)]
    pub source_address: Option<SourceAddress>,
}

/// Answers that send the client to their `Location` (RFC 9110 15.4; 300 and 304 do not).
const REDIRECTS: [u16; 5] = [301, 302, 303, 307, 308];

/// Redirects a check follows before it fails: browsers and Go's client stop at ten too.
pub const MAX_REDIRECTS: usize = 10;

impl HttpConfig {
    /// Checks that need several keys.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.valid_status.is_empty() {
            errors.push((
                "valid_status",
                "list at least one status or range".to_string(),
            ));
        }
        if self.method == HttpMethod::Head
            && (self.body_contains.is_some() || self.body_regex.is_some())
        {
            errors.push(("method", "a HEAD answer has no body to match".to_string()));
        }
        if let Some(host) = &self.host {
            if hyper::header::HeaderValue::from_str(host).is_err() {
                errors.push(("host", format!("invalid Host header {host:?}")));
            }
        }
        for (name, value) in &self.headers {
            // The value may be a credential: named, never shown.
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || hyper::header::HeaderValue::from_str(value).is_err()
            {
                errors.push((
                    "headers",
                    format!("invalid header {name:?}: a header name or value with characters HTTP does not allow"),
                ));
            }
        }
        // Read once: the files must be readable and hold valid header values.
        match crate::secret::read_all(&self.header_files) {
            Err((name, why)) => errors.push(("header_files", format!("{name}: {why}"))),
            Ok(values) => {
                for (name, value) in values {
                    if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                        || hyper::header::HeaderValue::from_str(&value).is_err()
                    {
                        errors.push((
                            "header_files",
                            format!("invalid header {name:?}: a header name or value with characters HTTP does not allow"),
                        ));
                    }
                }
            }
        }
        // A followed redirect may lead to https from a plain URL.
        if self.url.https || self.follow_redirects {
            errors.extend(self.tls_options.validate());
        }
        errors
    }
}

/// An HTTP health check.
pub struct HttpResource {
    config: HttpConfig,
    /// Hidden in failure details: a server may echo the request.
    secrets: Secrets,
    /// For `https` only (a plain check need not carry it).
    tls: Option<Box<TlsClient>>,
    /// The request every check sends, parsed once (or why it cannot be).
    request: Result<RequestTemplate, String>,
    /// For redirects to `https` from a plain URL that follows them (see `hop_tls`); it loads
    /// nothing until used.
    redirect_tls: Option<Box<TlsClient>>,
    /// `source_address`, resolved.
    source: Option<std::net::IpAddr>,
}

/// What each check's request is cloned from: parsing the path and every header anew for each
/// of thousands of checks a second would be work for nothing.
struct RequestTemplate {
    method: hyper::Method,
    uri: hyper::Uri,
    headers: hyper::HeaderMap,
}

impl RequestTemplate {
    /// The request for `url`, with `host` as its `Host` (the URL's authority when `None`), and
    /// the configured headers when `with_headers` (the configured origin).
    fn new(
        c: &HttpConfig,
        url: &HttpUrl,
        host: Option<&str>,
        with_headers: bool,
    ) -> Result<Self, String> {
        let host = host.map_or_else(|| authority(url), str::to_string);
        let mut request = hyper::Request::builder()
            .method(match c.method {
                HttpMethod::Get => hyper::Method::GET,
                HttpMethod::Head => hyper::Method::HEAD,
            })
            .uri(&url.path)
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("resmon/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in c.headers.iter().filter(|_| with_headers) {
            request = request.header(k.as_str(), v.as_str());
        }
        let (parts, ()) = request.body(()).map_err(|e| e.to_string())?.into_parts();
        // Sized to fit: one template per resource, ten thousand resources.
        let mut headers = hyper::HeaderMap::with_capacity(parts.headers.len());
        headers.extend(parts.headers);
        Ok(RequestTemplate {
            method: parts.method,
            uri: parts.uri,
            headers,
        })
    }

    fn request(&self) -> hyper::Request<Empty<Bytes>> {
        let mut request = hyper::Request::new(Empty::new());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

impl HttpResource {
    /// Builds it from its config, its TLS trust loaded through `trust`.
    pub fn new(mut config: HttpConfig, trust: &TrustCache) -> Self {
        // The files' values join the headers; one that cannot be read makes every check fail
        // with the reason (validate said it first).
        let read = crate::secret::read_all(&config.header_files);
        let mut secret_values = Vec::new();
        if let Ok(values) = &read {
            for (name, value) in values {
                secret_values.push(value.clone());
                config.headers.insert(name.clone(), value.clone());
            }
        }
        secret_values.extend(
            config
                .headers
                .iter()
                .filter(|(name, _)| {
                    crate::secret::CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                })
                .map(|(_, value)| value.clone()),
        );
        let secrets = Secrets::new(secret_values);
        let tls = config.url.https.then(|| {
            Box::new(TlsClient::new(
                config.tls_options.clone(),
                &config.url.target.host,
                trust,
            ))
        });
        let redirect_tls = (config.follow_redirects && !config.url.https)
            .then(|| Box::new(TlsClient::new(config.tls_options.clone(), "", trust)));
        let request = match read {
            Err((name, why)) => Err(format!("header_files {name}: {why}")),
            Ok(_) => RequestTemplate::new(&config, &config.url, config.host.as_deref(), true),
        };
        HttpResource {
            config,
            secrets,
            tls,
            request,
            redirect_tls,
            source: None,
        }
    }

    async fn fetch(&self, progress: &Progress) -> Result<(), Failure> {
        let template = match &self.request {
            Ok(template) => template,
            Err(e) => return Err(Failure::new(FailureReason::Io, format!("request: {e}"))),
        };
        let tls = self.tls.as_deref().map(|tls| (tls, None));
        match self
            .exchange(&self.config.url, tls, template, progress)
            .await?
        {
            None => Ok(()),
            // Boxed: the rare path's state stays out of every check's future.
            Some(location) => Box::pin(self.follow(location, progress)).await,
        }
    }

    /// Follows redirects from the configured URL's `location`, each over a new connection, and
    /// judges the answer that does not redirect.
    async fn follow(&self, mut location: String, progress: &Progress) -> Result<(), Failure> {
        let c = &self.config;
        let mut url = c.url.clone();
        for _ in 0..MAX_REDIRECTS {
            let next = url.join(&location).map_err(|why| {
                Failure::new(
                    FailureReason::HttpStatus,
                    format!(
                        "{} {} redirected to {location:?}, which is not an http(s) URL: {why}",
                        method(c),
                        url.text
                    ),
                )
            })?;
            // A redirect from https to http would send the request, and what it carries, in
            // the clear: refused, as browsers refuse mixed content.
            if url.https && !next.https {
                return Err(Failure::new(
                    FailureReason::HttpStatus,
                    format!(
                        "{} {} redirected from https to {}: refused",
                        method(c),
                        url.text,
                        next.text
                    ),
                ));
            }
            url = next;
            // Back to the configured server (`/login` on a virtual host): its `host` and
            // `server_name` overrides still name it, as Go's client keeps a custom Host. Another
            // origin gets none of the configured headers (`Authorization`, `Cookie`...): they
            // were meant for the configured server only.
            let same_server = url.https == c.url.https && url.target == c.url.target;
            let host = if same_server { c.host.as_deref() } else { None };
            let template = RequestTemplate::new(c, &url, host, same_server)
                .map_err(|e| Failure::new(FailureReason::Io, format!("request: {e}")))?;
            let tls = match (url.https, same_server) {
                (false, _) => None,
                (true, true) => self.tls.as_deref().map(|tls| (tls, None)),
                (true, false) => Some((self.hop_tls(), Some(url.target.host.as_str()))),
            };
            match self.exchange(&url, tls, &template, progress).await? {
                None => return Ok(()),
                Some(further) => location = further,
            }
        }
        Err(Failure::new(
            FailureReason::HttpStatus,
            format!(
                "{} {} still redirects after {MAX_REDIRECTS} redirects (to {location:?})",
                method(c),
                c.url.text
            ),
        ))
    }

    /// The TLS client for a redirect's host: this resource's trust and client certificate,
    /// its `server_name` override left out (it names the configured URL's server).
    fn hop_tls(&self) -> &TlsClient {
        self.tls
            .as_deref()
            .or(self.redirect_tls.as_deref())
            .expect("a resource that follows redirects has a TLS client for them")
    }

    /// One request to `url` over a new connection (TLS through `tls`, with the redirect's host
    /// name when it has one). `Ok(Some(location))` when the answer is a redirect to follow,
    /// `Ok(None)` when the answer passed.
    async fn exchange(
        &self,
        url: &HttpUrl,
        tls: Option<(&TlsClient, Option<&str>)>,
        template: &RequestTemplate,
        progress: &Progress,
    ) -> Result<Option<String>, Failure> {
        let c = &self.config;
        let tcp = crate::net::connect_from(&url.target, self.source, progress).await?;
        crate::net::close_with_reset(&tcp);
        let stream = match tls {
            // The handshake boxed for the same reason as its stream (see `Conn`).
            Some((tls, None)) => Conn::Tls(Box::new(
                Box::pin(tls.handshake(crate::net::before_tls(tcp), progress)).await?,
            )),
            Some((tls, Some(host))) => {
                progress.stage(Stage::TlsHandshake);
                Conn::Tls(Box::new(
                    Box::pin(redirect_handshake(tls, tcp, host)).await?,
                ))
            }
            None => Conn::Plain(tcp),
        };
        progress.stage(Stage::Exchange);
        let io_error = |e: hyper::Error| {
            Failure::new(
                FailureReason::Io,
                format!("{} {}: {e}", method(c), url.text),
            )
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(io_error)?;
        // Queued now, before the connection is first polled: its first poll then finds the
        // request and writes it, where queueing it later would wake this task once more.
        let response = sender.send_request(template.request());
        let exchange = async {
            let response = response.await.map_err(io_error)?;
            let status = response.status();
            // Kept as the start of what was received, without formatting a String per check.
            let mut seen = *b"HTTP 000 ";
            seen[5..8].copy_from_slice(status.as_str().as_bytes());
            progress.received(&seen);
            if c.follow_redirects && REDIRECTS.contains(&status.as_u16()) {
                if let Some(location) = response.headers().get(hyper::header::LOCATION) {
                    let location = String::from_utf8_lossy(location.as_bytes()).into_owned();
                    return Ok(Some(location));
                }
            }
            if !c
                .valid_status
                .iter()
                .any(|r| (r.0..=r.1).contains(&status.as_u16()))
            {
                let expected: Vec<String> = c.valid_status.iter().map(|r| r.to_string()).collect();
                return Err(Failure::new(
                    FailureReason::HttpStatus,
                    format!(
                        "{} {} answered {status}, expected {}",
                        method(c),
                        url.text,
                        expected.join(", ")
                    ),
                ));
            }
            if c.body_contains.is_none() && c.body_regex.is_none() {
                return Ok(None);
            }
            let body = read_body(response.into_body(), c.body_limit)
                .await
                .map_err(io_error)?;
            progress.received(&body);
            let text = String::from_utf8_lossy(&body);
            let contains = c
                .body_contains
                .as_ref()
                .is_none_or(|s| text.contains(s.as_str()));
            let matches = c.body_regex.as_ref().is_none_or(|r| r.0.is_match(&text));
            if contains && matches {
                Ok(None)
            } else {
                Err(Failure::new(
                    FailureReason::HttpBody,
                    format!(
                        "{} {} answered {status} with a body that does not hold {}: {}",
                        method(c),
                        url.text,
                        c.body_contains
                            .as_ref()
                            .map(|s| format!("{s:?}"))
                            .or_else(|| c
                                .body_regex
                                .as_ref()
                                .map(|r| format!("/{}/", r.0.as_str())))
                            .unwrap_or_default(),
                        escape_bytes(&body)
                    ),
                ))
            }
        };
        // The connection is driven here, not on a task of its own, so that a check the runtime
        // cancels leaves nothing behind.
        // Boxed, as the handshake is: inline, the connection's state takes the check's future
        // over 1 KB.
        let mut conn = Box::pin(conn);
        // Unconstrained: out of its budget tokio would have it yield by waking it, and while
        // the connection runs its wakes go nowhere (below).
        let mut exchange = std::pin::pin!(tokio::task::unconstrained(exchange));
        let mut conn_done = false;
        std::future::poll_fn(|cx| {
            // The connection first: it reads the answer and hands it over, so that the exchange,
            // polled next, finds it there. Its error is not the check's: hyper hands an error
            // that comes before the answer to the exchange, and returns one only when the
            // answer (which the exchange judges) has already been handed over.
            if !conn_done && conn.as_mut().poll(cx).is_ready() {
                conn_done = true;
            }
            // While the connection runs, all the exchange waits for (the answer, the body's
            // chunks) comes out of the connection's poll just above, and this poll follows
            // each one: a wake at the handover would only poll the task once more for nothing,
            // late and cold when thousands of checks are in flight. The connection's own
            // wake-ups (the socket, the exchange asking for the body) keep the real waker.
            let waker = if conn_done {
                cx.waker()
            } else {
                futures::task::noop_waker_ref()
            };
            exchange.as_mut().poll(&mut Context::from_waker(waker))
        })
        .await
    }
}

/// The TLS handshake with a redirect's server: its certificate is checked but not recorded, so
/// that the exported validity stays that of the configured URL's server.
async fn redirect_handshake(
    tls: &TlsClient,
    tcp: tokio::net::TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Failure> {
    let unrecorded = Progress::default();
    tls.handshake_as(crate::net::before_tls(tcp), host, &unrecorded)
        .await
}

fn method(c: &HttpConfig) -> &'static str {
    match c.method {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
    }
}

fn authority(url: &HttpUrl) -> String {
    let default = if url.https { 443 } else { 80 };
    let host = if url.target.host.contains(':') {
        format!("[{}]", url.target.host)
    } else {
        url.target.host.clone()
    };
    if url.target.port == default {
        host
    } else {
        format!("{host}:{}", url.target.port)
    }
}

async fn read_body(mut body: hyper::body::Incoming, limit: usize) -> Result<Vec<u8>, hyper::Error> {
    let mut out = Vec::new();
    while out.len() < limit {
        match body.frame().await {
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    let room = limit - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            None => break,
        }
    }
    Ok(out)
}

#[async_trait]
impl Resource for HttpResource {
    fn online_is_a_check(&self) -> bool {
        true
    }

    async fn online(&self, progress: &Progress) -> Result<(), Failure> {
        self.fetch(progress)
            .await
            .map_err(|f| self.secrets.failure(f))
    }

    async fn offline(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn terminate(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn looks_alive(&self, progress: &Progress) -> Result<(), Failure> {
        let stream =
            crate::net::connect_from(&self.config.url.target, self.source, progress).await?;
        crate::net::close_with_reset(&stream);
        Ok(())
    }

    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.fetch(progress)
            .await
            .map_err(|f| self.secrets.failure(f))
    }
}

impl TypeConfig for HttpConfig {
    const NAME: &'static str = "http";

    fn validate(&self) -> Vec<(&'static str, String)> {
        HttpConfig::validate(self)
    }

    fn warnings(&self) -> Vec<(&'static str, String)> {
        crate::secret::world_readable("header_files", &self.header_files)
    }

    fn source_address(&self) -> Option<&SourceAddress> {
        self.source_address.as_ref()
    }

    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        let mut resource = HttpResource::new(self.clone(), &cx.trust);
        resource.source = cx.source(&self.source_address);
        Arc::new(resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{serve_script, Answer};

    fn resource(config: &str) -> HttpResource {
        let c: HttpConfig = toml::from_str(config).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        HttpResource::new(c, &TrustCache::default())
    }

    async fn server(response: &'static str) -> std::net::SocketAddr {
        serve_script(vec![
            Answer::Expect("GET /health HTTP/1.1"),
            Answer::Send(response),
        ])
        .await
    }

    #[tokio::test]
    async fn a_secret_header_from_a_file_never_shows_in_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "Bearer t0ken-42\n").unwrap();
        // A server that echoes what it was sent, as a debugging endpoint would.
        let echo =
            server("HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\nyou sent Bearer t0ken-42").await;
        let config: HttpConfig = toml::from_str(&format!(
            "url = \"http://{echo}/health\"\nbody_contains = \"never\"\nheader_files = {{ Authorization = {:?} }}",
            token.display().to_string()
        ))
        .unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        let f = HttpResource::new(config, &TrustCache::default())
            .is_alive(&Progress::default())
            .await
            .unwrap_err();
        assert_eq!(f.reason, FailureReason::HttpBody, "{f}");
        assert!(f.detail.contains("you sent <secret>"), "{f}");
        assert!(!f.detail.contains("t0ken-42"), "{f}");
        // An inline credential header is a secret too; an invalid one is named, not shown.
        let bad: HttpConfig = toml::from_str(
            "url = \"http://127.0.0.1:1/\"\nheaders = { Authorization = \"Bearer x\\u0001y\" }",
        )
        .unwrap();
        let errors = bad.validate();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(!errors[0].1.contains("Bearer"), "{errors:?}");
        let missing: HttpConfig = toml::from_str(
            "url = \"http://127.0.0.1:1/\"\nheader_files = { Authorization = \"/nonexistent/token\" }",
        )
        .unwrap();
        assert!(missing.validate()[0]
            .1
            .starts_with("Authorization: cannot read /nonexistent/token"));
    }

    #[test]
    fn a_checks_state_stays_under_a_kilobyte() {
        let r = resource("url = \"https://127.0.0.1:8443/health\"\nbody_contains = \"ok\"");
        let progress = Progress::default();
        let check = r.is_alive(&progress);
        // See `crate::banner::BannerClient::handshake`: glibc's large bins start at 1 KB.
        let size = std::mem::size_of_val(&*check);
        assert!(size < 1000, "a check's future is {size} bytes");
    }

    #[tokio::test]
    async fn status_and_body_are_checked() {
        let ok = server("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nall is ok").await;
        resource(&format!(
            "url = \"http://{ok}/health\"\nbody_contains = \"is ok\""
        ))
        .is_alive(&Progress::default())
        .await
        .unwrap();
        resource(&format!(
            "url = \"http://{ok}/health\"\nbody_regex = \"^all\""
        ))
        .is_alive(&Progress::default())
        .await
        .unwrap();

        let f = resource(&format!(
            "url = \"http://{ok}/health\"\nbody_contains = \"broken\""
        ))
        .is_alive(&Progress::default())
        .await
        .unwrap_err();
        assert_eq!(f.reason, FailureReason::HttpBody, "{f}");
        assert!(f.detail.contains("\"all is ok\""), "{f}");

        let down = server("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let f = resource(&format!("url = \"http://{down}/health\""))
            .is_alive(&Progress::default())
            .await
            .unwrap_err();
        assert_eq!(f.reason, FailureReason::HttpStatus, "{f}");
        assert!(
            f.detail.contains("503") && f.detail.contains("200-399"),
            "{f}"
        );
    }

    #[tokio::test]
    async fn a_check_ends_with_a_reset_not_a_half_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ends, mut ended) = tokio::sync::mpsc::unbounded_channel();
        let web = crate::testing::serve(move |mut stream| {
            let ends = ends.clone();
            async move {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
                // What comes after the answer: a FIN reads as 0 bytes, a reset as an error.
                let mut rest = [0u8; 16];
                let _ = ends.send(stream.read(&mut rest).await.map_err(|e| e.kind()));
            }
        })
        .await;
        let check = resource(&format!("url = \"http://{web}/\""));
        for _ in 0..2 {
            check.is_alive(&Progress::default()).await.unwrap();
            assert_eq!(
                ended.recv().await.unwrap(),
                Err(std::io::ErrorKind::ConnectionReset)
            );
        }
    }

    #[tokio::test]
    async fn a_whole_answer_passes_even_if_the_server_resets_after_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // On this test's one thread the answer and the reset are both in the socket before the
        // check reads, so hyper's connection reads the answer and then fails on the reset.
        let web = crate::testing::serve(|mut stream| async move {
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
            crate::net::close_with_reset(&stream);
        })
        .await;
        let check = resource(&format!("url = \"http://{web}/\""));
        for _ in 0..3 {
            check.is_alive(&Progress::default()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_host_override_and_extra_headers_are_sent() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        // Answers 200 only to a request that carries both.
        let vhost = crate::testing::serve(|stream| async move {
            let mut stream = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line.to_ascii_lowercase());
            }
            let answer = if head.contains("\r\nhost: vhost.test\r\n")
                && head.contains("\r\nx-check: yes\r\n")
            {
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            } else {
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
            };
            let _ = stream.get_mut().write_all(answer.as_bytes()).await;
        })
        .await;
        let with = resource(&format!(
            "url = \"http://{vhost}/\"\nhost = \"vhost.test\"\nheaders = {{ \"X-Check\" = \"yes\" }}"
        ));
        // Twice: the second check sends the same request as the first.
        for _ in 0..2 {
            with.is_alive(&Progress::default()).await.unwrap();
        }
        let without = resource(&format!("url = \"http://{vhost}/\""));
        let f = without.is_alive(&Progress::default()).await.unwrap_err();
        assert_eq!(f.reason, FailureReason::HttpStatus, "{f}");
    }

    /// Answers every request with `status`, a header of `padding` bytes and `body`.
    async fn padded_server(
        status: &'static str,
        padding: usize,
        body: String,
    ) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        crate::testing::serve(move |mut stream| {
            let answer = format!(
                "HTTP/1.1 {status}\r\nX-Padding: {}\r\nContent-Length: {}\r\n\r\n{body}",
                "p".repeat(padding),
                body.len()
            );
            async move {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_comes_in_pieces_is_read_to_its_end() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The head alone, then the body in two parts, each a while later: the check waits for
        // each piece as it waits for the answer (a wake lost there would leave it to time out).
        let slow = crate::testing::serve(|mut stream| async move {
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            let pieces: [&[u8]; 3] = [
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
                b"all is",
                b" well",
            ];
            for piece in pieces {
                let _ = stream.write_all(piece).await;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await;
        for (body_contains, passes) in [("is well", true), ("is ill", false)] {
            let check = resource(&format!(
                "url = \"http://{slow}/\"\nbody_contains = \"{body_contains}\""
            ));
            let progress = Progress::default();
            let outcome =
                tokio::time::timeout(std::time::Duration::from_secs(5), check.is_alive(&progress))
                    .await
                    .expect("the check saw every piece of the answer");
            assert_eq!(outcome.is_ok(), passes, "{body_contains}: {outcome:?}");
        }
    }

    #[tokio::test]
    async fn a_long_head_and_a_long_body_are_read_whole() {
        // Longer than one read of a small buffer: a 6 KB head.
        let down = padded_server("503 Service Unavailable", 6000, String::new()).await;
        let f = resource(&format!("url = \"http://{down}/\""))
            .is_alive(&Progress::default())
            .await
            .unwrap_err();
        assert_eq!(f.reason, FailureReason::HttpStatus, "{f}");
        let up = padded_server("200 OK", 6000, String::new()).await;
        resource(&format!("url = \"http://{up}/\""))
            .is_alive(&Progress::default())
            .await
            .unwrap();
        // A body check finds its text at the end of a 60 KB body, inside `body_limit`.
        let long = padded_server("200 OK", 3000, format!("{}all is ok", "b".repeat(60_000))).await;
        resource(&format!(
            "url = \"http://{long}/\"\nbody_contains = \"all is ok\""
        ))
        .is_alive(&Progress::default())
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let moved = server("HTTP/1.1 302 Found\r\nLocation: http://elsewhere.invalid/\r\nContent-Length: 0\r\n\r\n").await;
        resource(&format!("url = \"http://{moved}/health\""))
            .is_alive(&Progress::default())
            .await
            .unwrap();
        let f = resource(&format!(
            "url = \"http://{moved}/health\"\nvalid_status = [\"200\"]"
        ))
        .is_alive(&Progress::default())
        .await
        .unwrap_err();
        assert_eq!(f.reason, FailureReason::HttpStatus, "{f}");
    }

    /// What a [`router`] was asked: each request's path and `Host`.
    type Asked = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

    /// Answers each request by its path from `routes` (path, whole answer), keeping what it
    /// was asked; an unknown path gets a 404.
    async fn router(routes: Vec<(&'static str, String)>) -> (std::net::SocketAddr, Asked) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let routes = std::sync::Arc::new(routes);
        let asked = Asked::default();
        let seen = asked.clone();
        let addr = crate::testing::serve(move |stream| {
            let routes = routes.clone();
            let asked = asked.clone();
            async move {
                let mut stream = tokio::io::BufReader::new(stream);
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    match stream.read_line(&mut line).await {
                        Ok(n) if n > 0 && line != "\r\n" => head.push(line),
                        _ => break,
                    }
                }
                let Some(first) = head.first() else {
                    return;
                };
                let path = first.split(' ').nth(1).unwrap_or_default().to_string();
                let host = head
                    .iter()
                    .find(|l| l.to_ascii_lowercase().starts_with("host: "))
                    .map_or("", |l| l["host: ".len()..].trim_end())
                    .to_string();
                asked.lock().unwrap().push((path.clone(), host));
                let answer = routes.iter().find(|(p, _)| *p == path).map_or(
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
                    |(_, a)| a.clone(),
                );
                let _ = stream.get_mut().write_all(answer.as_bytes()).await;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await;
        (addr, seen)
    }

    fn ok_with(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn moved(status: &str, location: &str) -> String {
        format!("HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n")
    }

    /// A check of `url` with `follow_redirects` that must fail with `http_status`, saying `why`.
    async fn fails_following(url: String, why: &str) {
        let f = resource(&format!("url = \"{url}\"\nfollow_redirects = true"))
            .is_alive(&Progress::default())
            .await
            .unwrap_err();
        assert_eq!(f.reason, FailureReason::HttpStatus, "{f}");
        assert!(f.detail.contains(why), "{f}");
    }

    #[tokio::test]
    async fn redirects_are_followed_when_asked_and_the_last_answer_is_judged() {
        let (elsewhere, _) = router(vec![("/final", ok_with("landed"))]).await;
        let (start, served) = router(vec![
            ("/a/start", moved("302 Found", "next")),
            ("/a/next", moved("301 Moved Permanently", "../b?x=1")),
            (
                "/b?x=1",
                moved(
                    "308 Permanent Redirect",
                    &format!("http://{elsewhere}/final"),
                ),
            ),
        ])
        .await;
        let config = format!(
            "url = \"http://{start}/a/start\"\nfollow_redirects = true\nbody_contains = \"landed\"\nvalid_status = [\"200\"]"
        );
        resource(&config)
            .is_alive(&Progress::default())
            .await
            .unwrap();
        assert_eq!(served.lock().unwrap().len(), 3);
        // The last answer is judged: a redirect to a 404 fails on the 404.
        let (gone, _) = router(vec![("/x", moved("307 Temporary Redirect", "/missing"))]).await;
        let why = format!("http://{gone}/missing answered 404");
        fails_following(format!("http://{gone}/x"), &why).await;
    }

    #[tokio::test]
    async fn a_redirect_loop_fails_after_ten_redirects() {
        let (looping, served) = router(vec![("/loop", moved("302 Found", "/loop"))]).await;
        let why = "still redirects after 10 redirects";
        fails_following(format!("http://{looping}/loop"), why).await;
        assert_eq!(served.lock().unwrap().len(), 1 + MAX_REDIRECTS);
    }

    #[tokio::test]
    async fn a_redirect_back_to_the_configured_server_keeps_the_host_override() {
        let (elsewhere, away) = router(vec![("/", ok_with(""))]).await;
        let (vhost, asked) = router(vec![
            ("/", moved("302 Found", "/login")),
            (
                "/login",
                moved("302 Found", &format!("http://{elsewhere}/")),
            ),
        ])
        .await;
        let config = format!(
            "url = \"http://{vhost}/\"\nhost = \"www.example.test\"\nfollow_redirects = true"
        );
        resource(&config)
            .is_alive(&Progress::default())
            .await
            .unwrap();
        let asked = asked.lock().unwrap().clone();
        let host = "www.example.test".to_string();
        assert_eq!(asked, [("/".into(), host.clone()), ("/login".into(), host)]);
        // Another server is asked with its own name.
        assert_eq!(away.lock().unwrap()[0], ("/".into(), elsewhere.to_string()));
    }

    #[tokio::test]
    async fn a_redirect_out_of_http_fails_with_where_it_led() {
        let (away, _) = router(vec![("/", moved("302 Found", "ftp://files.invalid/x"))]).await;
        let why = "redirected to \"ftp://files.invalid/x\", which is not an http(s) URL";
        fails_following(format!("http://{away}/"), why).await;
    }

    #[test]
    fn a_location_is_resolved_against_the_url_it_came_from() {
        let base = HttpUrl::parse("http://h:8080/a/b/c?q=1").unwrap();
        let cases = [
            ("d", "http://h:8080/a/b/d"),
            ("../x", "http://h:8080/a/x"),
            ("/y?z", "http://h:8080/y?z"),
            ("//other:9/p", "http://other:9/p"),
            ("https://[::1]/s", "https://[::1]/s"),
        ];
        for (location, want) in cases {
            let next = base.join(location).unwrap();
            assert_eq!(next.text, want, "{location}");
        }
        let next = base.join("https://[::1]/s").unwrap();
        assert_eq!(
            (next.target.host.as_str(), next.target.port, next.https),
            ("::1", 443, true)
        );
        assert!(base.join("mailto:x@y").is_err());
    }

    #[test]
    fn config_values_are_checked_as_read() {
        let e = toml::from_str::<HttpConfig>("url = \"ftp://x/\"").unwrap_err();
        assert!(
            e.to_string().contains("the scheme must be http or https"),
            "{e}"
        );
        let e = toml::from_str::<HttpConfig>("url = \"http://x/\"\nvalid_status = [\"299-200\"]")
            .unwrap_err();
        assert!(e.to_string().contains("invalid status"), "{e}");
        let c: HttpConfig = toml::from_str("url = \"https://[::1]:8443/x?y=1\"").unwrap();
        assert_eq!(
            (c.url.target.port, c.url.path.as_str(), c.url.https),
            (8443, "/x?y=1", true)
        );
        assert_eq!(authority(&c.url), "[::1]:8443");
        let c: HttpConfig = toml::from_str("url = \"http://x/\"\nhost = \"a\\nb\"").unwrap();
        assert_eq!(
            c.validate(),
            [("host", "invalid Host header \"a\\nb\"".to_string())]
        );
    }

    /// A server that answers `answer` and keeps each request's head, lower-cased.
    async fn recording(answer: String) -> (std::net::SocketAddr, Asked) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let asked = Asked::default();
        let seen = asked.clone();
        let addr = crate::testing::serve(move |stream| {
            let (asked, answer) = (asked.clone(), answer.clone());
            async move {
                let mut stream = tokio::io::BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    match stream.read_line(&mut line).await {
                        Ok(n) if n > 0 && line != "\r\n" => {
                            head.push_str(&line.to_ascii_lowercase())
                        }
                        _ => break,
                    }
                }
                asked.lock().unwrap().push((head, String::new()));
                let _ = stream.get_mut().write_all(answer.as_bytes()).await;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await;
        (addr, seen)
    }

    #[tokio::test]
    async fn a_redirect_to_another_origin_carries_none_of_the_configured_headers() {
        let (elsewhere, away) = recording(ok_with("")).await;
        let (start, home) = recording(moved("302 Found", &format!("http://{elsewhere}/"))).await;
        let config = format!(
            "url = \"http://{start}/\"\nfollow_redirects = true\nheaders = {{ Authorization = \"Bearer s3cret\", Cookie = \"id=1\" }}"
        );
        resource(&config)
            .is_alive(&Progress::default())
            .await
            .unwrap();
        let home = home.lock().unwrap()[0].0.clone();
        assert!(
            home.contains("authorization: bearer s3cret") && home.contains("cookie: id=1"),
            "{home}"
        );
        let away = away.lock().unwrap()[0].0.clone();
        assert!(
            !away.contains("authorization") && !away.contains("cookie"),
            "{away}"
        );
    }

    #[tokio::test]
    async fn a_redirect_from_https_to_http_is_refused_and_user_info_is_not_a_url() {
        let ca = crate::testing::TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let (elsewhere, away) = recording(ok_with("")).await;
        let answer: &'static str =
            Box::leak(moved("302 Found", &format!("http://{elsewhere}/")).into_boxed_str());
        let tls = crate::testing::tls_server(ca.issue(&["localhost"], -1, 90), answer).await;
        let f = resource(&format!(
            "url = \"https://localhost:{}/\"\nfollow_redirects = true\ntls_options = {{ ca_file = {:?} }}",
            tls.port(),
            ca.write(dir.path()).display().to_string()
        ))
        .is_alive(&Progress::default())
        .await
        .unwrap_err();
        assert_eq!(f.reason, FailureReason::HttpStatus, "{f}");
        assert!(f.detail.contains("refused"), "{f}");
        assert!(
            away.lock().unwrap().is_empty(),
            "the plain server was asked"
        );
        let err = toml::from_str::<HttpConfig>("url = \"http://user:pw@127.0.0.1:8080/\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("user info"), "{err}");
    }
}
