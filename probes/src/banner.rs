//! The banner engine shared by `smtp`, `pop3` and `imap`: a check is a script of expect/send
//! steps over TCP (optionally TLS from the start, optionally upgraded by STARTTLS), as
//! blackbox_exporter's `query_response` is data, not code. Each protocol module is a preset that
//! writes the script; users may replace the expected greeting and add steps.
//!
//! Reads are capped per line and per reply, so a server that streams forever fails with
//! `unexpected_banner` instead of exhausting memory; every byte received is kept (the first 128)
//! to explain a failure. Probes own no deadlines: the runtime's deadline, and the
//! [`Stage`] the engine is in when it passes, make `connect_timeout` or `banner_timeout`.

use crate::net::Conn;
use crate::resource::{escape_bytes, Failure, Progress, Stage};
use crate::tls::{TlsClient, TlsOptions, TrustCache};
use crate::values::{ConfigRegex, HostPort};
use resmon_policies::FailureReason;
use serde::Deserialize;
use std::borrow::Cow;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Longest line accepted.
pub const MAX_LINE: usize = 4096;
/// Most bytes accepted in one reply (all lines of a multi-line answer).
pub const MAX_REPLY: usize = 64 * 1024;
/// The read buffer: a greeting fits, and 10,000 checks in flight at once (an agent start)
/// cost 5 MB instead of the 80 MB of tokio's default. Longer lines take several reads. Under
/// 1 KB on purpose, for the reason given at [`BannerClient::handshake`].
const READ_BUFFER: usize = 512;

/// A line of a script: the presets' own are static, shared by every resource rather than
/// copied into each (a check would read ten thousand copies, each from cold memory); a user's
/// is owned.
pub type Text = Cow<'static, str>;

/// How a connection is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    None,
    /// Plain, then upgraded with the protocol's STARTTLS (`STARTTLS`, `STLS`).
    Starttls,
    /// TLS from the first byte (ports 465, 995, 993).
    Implicit,
}

/// What a reply must look like.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// The reply's last line starts with this text.
    Prefix(Text),
    /// The reply (all its lines) matches this regular expression.
    Regex(regex::Regex),
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Matcher::Prefix(a), Matcher::Prefix(b)) => a == b,
            (Matcher::Regex(a), Matcher::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Matcher {
    /// Whether `reply` (its lines, without line ends) matches.
    pub fn matches(&self, reply: &Reply) -> bool {
        match self {
            Matcher::Prefix(p) => reply.last_line().starts_with(p.as_bytes()),
            Matcher::Regex(r) => r.is_match(&String::from_utf8_lossy(reply.text())),
        }
    }

    fn describe(&self) -> String {
        match self {
            Matcher::Prefix(p) => format!("a reply starting with {p:?}"),
            Matcher::Regex(r) => format!("a reply matching /{}/", r.as_str()),
        }
    }
}

/// Where a reply ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One line.
    Line,
    /// SMTP: `250-...` lines continue, the line whose fourth byte is a space ends it.
    Smtp,
    /// IMAP: untagged `* ...` lines until the line starting with this tag.
    Tagged(String),
}

/// One step of a script.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Read a reply and check it.
    Expect {
        /// How the reply is framed.
        framing: Framing,
        /// What it must look like.
        matcher: Matcher,
        /// The first reply of the session: its absence is a `banner_timeout`.
        greeting: bool,
    },
    /// Read a reply and check that one of its lines (after the status code) names a capability.
    Capability {
        /// How the reply is framed.
        framing: Framing,
        /// The capability, compared case-insensitively (`STARTTLS`, `PIPELINING`).
        name: String,
    },
    /// Send a line (CRLF is added).
    Send(Text),
    /// Upgrade the connection to TLS (after the protocol's STARTTLS was accepted).
    StartTls,
}

/// A reply: its lines without line ends, joined by `\n` (which no line contains), so that a
/// reply of any number of lines is one allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    text: Vec<u8>,
    /// Tells a reply of one empty line from none.
    line_count: usize,
}

impl Reply {
    /// The lines, without line ends.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.text.split(|b| *b == b'\n').take(self.line_count)
    }

    /// The lines joined by `\n`.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    fn last_line(&self) -> &[u8] {
        match self.text.iter().rposition(|b| *b == b'\n') {
            Some(i) => &self.text[i + 1..],
            None => &self.text,
        }
    }

    /// Whether a line, after its first 4 bytes (`250-`, `250 `), names `capability`.
    pub fn has_capability(&self, capability: &str) -> bool {
        self.lines().any(|l| {
            let rest = l.get(4..).unwrap_or_default();
            let word = rest.split(|b| *b == b' ').next().unwrap_or_default();
            word.eq_ignore_ascii_case(capability.as_bytes())
        })
    }
}

/// Whether `line` ends a reply under `framing`.
pub fn ends_reply(framing: &Framing, line: &[u8]) -> bool {
    match framing {
        Framing::Line => true,
        Framing::Smtp => line.get(3) != Some(&b'-'),
        Framing::Tagged(tag) => {
            line.starts_with(tag.as_bytes()) && line.get(tag.len()) == Some(&b' ')
        }
    }
}

/// Splits a line off the front of `buf` under the caps: `Ok(Some(len))` when a whole line
/// (through its `\n`) is there, `Ok(None)` when more bytes are needed.
pub fn line_end(buf: &[u8], so_far: usize) -> Result<Option<usize>, String> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) if so_far + i < MAX_LINE => Ok(Some(i + 1)),
        Some(_) => Err(format!("a line longer than {MAX_LINE} bytes")),
        None if so_far + buf.len() >= MAX_LINE => {
            Err(format!("a line longer than {MAX_LINE} bytes"))
        }
        None => Ok(None),
    }
}

/// A check's script, built by a preset.
#[derive(Clone, Debug, PartialEq)]
pub struct Script {
    /// The steps, greeting first.
    pub steps: Vec<Step>,
    /// The polite goodbye sent at the end (`QUIT`, `a9 LOGOUT`), its answer not checked.
    pub goodbye: Option<Text>,
}

/// Runs a banner exchange against one target.
pub struct BannerClient {
    target: HostPort,
    /// Connections come from this address when set (`source_address`).
    source: Option<std::net::IpAddr>,
    tls_mode: TlsMode,
    /// Built for a TLS mode only: a plain check, the common case by the ten thousand, would
    /// carry a quarter of a kilobyte it never uses.
    tls: Option<Box<TlsClient>>,
}

impl BannerClient {
    /// A client for `target` secured per `tls_mode`.
    pub fn new(
        target: HostPort,
        tls_mode: TlsMode,
        tls_options: TlsOptions,
        trust: &TrustCache,
    ) -> Self {
        let tls = (tls_mode != TlsMode::None)
            .then(|| Box::new(TlsClient::new(tls_options, &target.host, trust)));
        BannerClient {
            target,
            source: None,
            tls_mode,
            tls,
        }
    }

    fn tls(&self) -> Result<&TlsClient, Failure> {
        self.tls.as_deref().ok_or_else(|| {
            Failure::new(
                FailureReason::TlsHandshake,
                "a TLS step in a script without a TLS mode",
            )
        })
    }

    /// The TLS handshake over `stream`, its state boxed: inline, it would make every check's
    /// future 1.4 KB, plain ones too, and glibc serves requests of 1 KB or more from its large
    /// bins after merging every freed small chunk (`malloc_consolidate`), which cost a plain
    /// check as many instructions as its connect.
    async fn handshake(
        &self,
        stream: TcpStream,
        progress: &Progress,
    ) -> Result<TlsStream<TcpStream>, Failure> {
        let tls = self.tls()?;
        Box::pin(tls.handshake(crate::net::before_tls(stream), progress)).await
    }

    /// The cheap check: a TCP connect.
    pub async fn connect_only(&self, progress: &Progress) -> Result<(), Failure> {
        let stream = crate::net::connect_from(&self.target, self.source, progress).await?;
        crate::net::close_with_reset(&stream);
        Ok(())
    }

    /// Runs `script`: connect, TLS if implicit, every step, then the goodbye.
    pub async fn run(&self, script: &Script, progress: &Progress) -> Result<(), Failure> {
        let stream = crate::net::connect_from(&self.target, self.source, progress).await?;
        // After the goodbye the session is over: close with a reset and leave no TIME_WAIT
        // behind, as the tcp type does (thousands of checks a second would fill the port range).
        crate::net::close_with_reset(&stream);
        let conn = if self.tls_mode == TlsMode::Implicit {
            Conn::Tls(Box::new(self.handshake(stream, progress).await?))
        } else {
            Conn::Plain(stream)
        };
        let mut reader = BufReader::with_capacity(READ_BUFFER, conn);
        for step in &script.steps {
            match step {
                Step::Expect {
                    framing,
                    matcher,
                    greeting,
                } => {
                    progress.stage(if *greeting {
                        Stage::Banner
                    } else {
                        Stage::Exchange
                    });
                    let reply = read_reply(&mut reader, framing, progress).await?;
                    if !matcher.matches(&reply) {
                        return Err(Failure::new(
                            FailureReason::UnexpectedBanner,
                            format!(
                                "{} answered {}, expected {}",
                                self.target,
                                escape_bytes(reply.text()),
                                matcher.describe()
                            ),
                        ));
                    }
                }
                Step::Capability { framing, name } => {
                    progress.stage(Stage::Exchange);
                    let reply = read_reply(&mut reader, framing, progress).await?;
                    if !reply.has_capability(name) {
                        return Err(Failure::new(
                            FailureReason::UnexpectedBanner,
                            format!(
                                "{} does not offer {name}: {}",
                                self.target,
                                escape_bytes(reply.text())
                            ),
                        ));
                    }
                }
                Step::Send(line) => {
                    progress.stage(Stage::Exchange);
                    send(&mut reader, line).await?;
                }
                Step::StartTls => {
                    // Bytes the server sent after accepting STARTTLS would be read as if they
                    // came over TLS: a known injection, so refuse.
                    if !reader.buffer().is_empty() {
                        return Err(Failure::new(
                            FailureReason::UnexpectedBanner,
                            "data after the STARTTLS answer, before the handshake",
                        ));
                    }
                    let Conn::Plain(stream) = reader.into_inner() else {
                        return Err(Failure::new(
                            FailureReason::TlsHandshake,
                            "STARTTLS over TLS",
                        ));
                    };
                    reader = BufReader::with_capacity(
                        READ_BUFFER,
                        Conn::Tls(Box::new(self.handshake(stream, progress).await?)),
                    );
                }
            }
        }
        if let Some(goodbye) = &script.goodbye {
            // Politeness only: the check has passed whatever happens now, and the answer is
            // not awaited (a server that never answers QUIT must not turn a pass into a timeout).
            let _ = send(&mut reader, goodbye).await;
        }
        if let Conn::Tls(tls) = reader.get_mut() {
            // TLS ends with close_notify; a plain connection just closes.
            let _ = tls.shutdown().await;
        }
        Ok(())
    }
}

async fn send(reader: &mut BufReader<Conn>, line: &str) -> Result<(), Failure> {
    // One write, so one segment and one system call: the line and its CRLF together, copied
    // on the stack when it fits (every preset's line does), not formatted into a new String.
    let mut short = [0u8; 128];
    let long;
    let bytes = if line.len() + 2 <= short.len() {
        short[..line.len()].copy_from_slice(line.as_bytes());
        short[line.len()..line.len() + 2].copy_from_slice(b"\r\n");
        &short[..line.len() + 2]
    } else {
        long = format!("{line}\r\n");
        long.as_bytes()
    };
    let conn = reader.get_mut();
    conn.write_all(bytes)
        .await
        .map_err(|e| Failure::from_io("send", &e))?;
    conn.flush().await.map_err(|e| Failure::from_io("send", &e))
}

/// Reads one line under [`MAX_LINE`] onto the end of `text`; `\r\n` or `\n` ends it, and is
/// not kept.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    progress: &Progress,
    text: &mut Vec<u8>,
) -> Result<(), Failure> {
    let start = text.len();
    loop {
        let buf = reader
            .fill_buf()
            .await
            .map_err(|e| Failure::from_io("read", &e))?;
        let line = &text[start..];
        if buf.is_empty() {
            let detail = if line.is_empty() {
                "the server closed the connection".to_string()
            } else {
                format!(
                    "the server closed the connection after {}",
                    escape_bytes(line)
                )
            };
            return Err(Failure::new(FailureReason::Reset, detail));
        }
        match line_end(buf, line.len()) {
            Ok(Some(n)) => {
                text.extend_from_slice(&buf[..n]);
                progress.received(&buf[..n]);
                reader.consume(n);
                while text.len() > start && matches!(text.last(), Some(b'\n' | b'\r')) {
                    text.pop();
                }
                return Ok(());
            }
            Ok(None) => {
                let n = buf.len();
                text.extend_from_slice(buf);
                progress.received(buf);
                reader.consume(n);
            }
            Err(why) => {
                progress.received(buf);
                return Err(Failure::new(
                    FailureReason::UnexpectedBanner,
                    format!("{why}: {}", escape_bytes(line)),
                ));
            }
        }
    }
}

/// Reads one reply under the caps (public for the fuzz target).
pub async fn read_reply<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    framing: &Framing,
    progress: &Progress,
) -> Result<Reply, Failure> {
    let mut reply = Reply::default();
    let mut size = 0;
    loop {
        if reply.line_count > 0 {
            reply.text.push(b'\n');
        }
        let start = reply.text.len();
        read_line(reader, progress, &mut reply.text).await?;
        reply.line_count += 1;
        let line = &reply.text[start..];
        size += line.len() + 2;
        if ends_reply(framing, line) {
            return Ok(reply);
        }
        if size > MAX_REPLY {
            return Err(Failure::new(
                FailureReason::UnexpectedBanner,
                format!(
                    "a reply longer than {MAX_REPLY} bytes: {}",
                    escape_bytes(reply.text())
                ),
            ));
        }
    }
}

/// `expect = "..."` (a prefix) or `expect_regex = "..."`: a user's replacement for the preset's
/// expected greeting.
pub fn greeting_matcher(
    prefix: Option<&str>,
    regex: Option<&regex::Regex>,
    default: &'static str,
) -> Matcher {
    match (prefix, regex) {
        (_, Some(r)) => Matcher::Regex(r.clone()),
        (Some(p), None) => Matcher::Prefix(p.to_string().into()),
        (None, None) => Matcher::Prefix(default.into()),
    }
}

/// `steps = [{ send = "NOOP" }, { expect = "250" }]`: extra steps after the preset's.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraStep {
    /// A line to send.
    #[serde(default)]
    pub send: Option<String>,
    /// A prefix the next reply must start with.
    #[serde(default)]
    pub expect: Option<String>,
    /// A regular expression the next reply must match.
    #[serde(default)]
    pub expect_regex: Option<ConfigRegex>,
}

impl ExtraStep {
    /// The engine's steps for this entry, framed as the protocol frames replies.
    pub fn steps(&self, framing: &Framing) -> Vec<Step> {
        let mut out = Vec::new();
        if let Some(line) = &self.send {
            out.push(Step::Send(line.clone().into()));
        }
        let matcher = match (&self.expect, &self.expect_regex) {
            (_, Some(r)) => Some(Matcher::Regex(r.0.clone())),
            (Some(p), None) => Some(Matcher::Prefix(p.clone().into())),
            (None, None) => None,
        };
        if let Some(matcher) = matcher {
            out.push(Step::Expect {
                framing: framing.clone(),
                matcher,
                greeting: false,
            });
        }
        out
    }
}

/// Checks a list of extra steps: each needs something to do.
pub fn validate_steps(steps: &[ExtraStep]) -> Vec<(&'static str, String)> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.send.is_none() && s.expect.is_none() && s.expect_regex.is_none())
        .map(|(i, _)| ("steps", format!("step {i} has neither send nor expect")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Reply {
        Reply {
            text: lines.join("\n").into_bytes(),
            line_count: lines.len(),
        }
    }

    #[test]
    fn smtp_replies_continue_on_dash() {
        assert!(!ends_reply(&Framing::Smtp, b"220-mail.example ESMTP"));
        assert!(ends_reply(&Framing::Smtp, b"220 mail.example ESMTP"));
        assert!(ends_reply(&Framing::Smtp, b"22"));
        assert!(ends_reply(&Framing::Tagged("a1".into()), b"a1 OK done"));
        assert!(!ends_reply(
            &Framing::Tagged("a1".into()),
            b"* CAPABILITY IMAP4rev1"
        ));
        assert!(!ends_reply(&Framing::Tagged("a1".into()), b"a10 OK"));
    }

    #[test]
    fn capabilities_are_words_after_the_code() {
        let r = reply(&[
            "250-localhost",
            "250-PIPELINING",
            "250-STARTTLS",
            "250 8BITMIME",
        ]);
        assert!(r.has_capability("starttls"));
        assert!(r.has_capability("8BITMIME"));
        assert!(!r.has_capability("localhost-x"));
        assert!(!r.has_capability("AUTH"));
    }

    #[test]
    fn lines_are_capped() {
        assert_eq!(line_end(b"220 ok\r\nmore", 0), Ok(Some(8)));
        assert_eq!(line_end(b"220 ok", 0), Ok(None));
        assert!(line_end(&vec![b'x'; MAX_LINE], 0).is_err());
        assert!(line_end(b"x\n", MAX_LINE).is_err());
    }

    #[test]
    fn a_checks_state_stays_under_a_kilobyte() {
        use crate::Resource;
        let resource = BannerResource::new(
            "127.0.0.1:25".parse().unwrap(),
            TlsMode::Implicit,
            TlsOptions::default(),
            &TrustCache::default(),
            Script {
                steps: vec![Step::StartTls],
                goodbye: Some("QUIT".into()),
            },
        );
        let progress = Progress::default();
        let check = resource.is_alive(&progress);
        // See `BannerClient::handshake`: glibc's large bins start at 1 KB.
        let size = std::mem::size_of_val(&*check);
        assert!(size < 1000, "a check's future is {size} bytes");
    }

    #[test]
    fn matchers_look_at_the_last_line_or_the_whole_reply() {
        let r = reply(&["220-first", "220 second"]);
        assert!(Matcher::Prefix("220".into()).matches(&r));
        assert!(!Matcher::Prefix("250".into()).matches(&r));
        assert!(Matcher::Regex(regex::Regex::new("(?m)^220-first$").unwrap()).matches(&r));
    }
}

/// A protocol resource built on the engine: online succeeds once the exchange passes (the
/// protocol rides on the service that serves it), offline and terminate do nothing,
/// `looks_alive` is a TCP connect and `is_alive` the whole exchange.
pub struct BannerResource {
    client: BannerClient,
    script: Script,
}

impl BannerResource {
    /// A resource running `script` against `target`.
    pub fn new(
        target: HostPort,
        tls_mode: TlsMode,
        tls_options: TlsOptions,
        trust: &TrustCache,
        script: Script,
    ) -> Self {
        BannerResource {
            client: BannerClient::new(target, tls_mode, tls_options, trust),
            script,
        }
    }

    /// The same, connecting from `source` (`source_address`) when given.
    pub fn from_source(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.client.source = source;
        self
    }
}

#[async_trait::async_trait]
impl crate::resource::Resource for BannerResource {
    fn online_is_a_check(&self) -> bool {
        true
    }

    async fn online(&self, progress: &Progress) -> Result<(), Failure> {
        self.client.run(&self.script, progress).await
    }

    async fn offline(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn terminate(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn looks_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.client.connect_only(progress).await
    }

    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.client.run(&self.script, progress).await
    }
}

/// A protocol preset over the engine: the keys every banner protocol shares (kept as fields
/// of each config, since serde's `flatten` would lose the unknown-key check) and its script.
/// Validation and building are written once, here.
pub trait BannerPreset {
    /// `host:port`.
    fn address(&self) -> &HostPort;
    /// How the connection is secured.
    fn tls(&self) -> TlsMode;
    /// Trust and certificate checks.
    fn tls_options(&self) -> &TlsOptions;
    /// The user's extra steps.
    fn extra_steps(&self) -> &[ExtraStep];
    /// The exchange.
    fn script(&self) -> Script;

    /// Checks that need several keys.
    fn validate_keys(&self) -> Vec<(&'static str, String)> {
        let mut errors = validate_steps(self.extra_steps());
        if self.tls() != TlsMode::None || self.tls_options() != &TlsOptions::default() {
            errors.extend(self.tls_options().validate());
        }
        errors
    }

    /// The runnable resource, its TLS trust loaded through `trust`.
    fn banner_resource(&self, trust: &TrustCache) -> BannerResource {
        BannerResource::new(
            self.address().clone(),
            self.tls(),
            self.tls_options().clone(),
            trust,
            self.script(),
        )
    }
}

/// The adversarial servers of `testing`, each giving its exact failure reason within the
/// deadline (played here by the test as the runtime would).
#[cfg(test)]
mod adversarial {
    use super::*;
    use crate::resource::Resource;
    use crate::testing::{self, TestCa};
    use std::time::Duration;

    fn smtp(addr: impl std::fmt::Display, extra: &str) -> BannerResource {
        let c: crate::mail::SmtpConfig =
            toml::from_str(&format!("address = \"{addr}\"\n{extra}")).unwrap();
        assert!(c.validate_keys().is_empty(), "{:?}", c.validate_keys());
        c.banner_resource(&TrustCache::default())
    }

    /// Runs is_alive under a deadline the way the runtime does.
    async fn check(r: &BannerResource, limit: Duration) -> (Result<(), Failure>, Progress) {
        let progress = Progress::default();
        let result = match tokio::time::timeout(limit, r.is_alive(&progress)).await {
            Ok(result) => result,
            Err(_) => Err(progress.timed_out("the deadline")),
        };
        (result, progress)
    }

    async fn failure(r: &BannerResource) -> Failure {
        check(r, Duration::from_millis(1500)).await.0.unwrap_err()
    }

    #[tokio::test]
    async fn silent_server_is_a_banner_timeout() {
        let f = failure(&smtp(testing::silent().await, "")).await;
        assert_eq!(f.reason, FailureReason::BannerTimeout, "{f}");
    }

    #[tokio::test]
    async fn one_byte_a_second_is_a_banner_timeout_with_what_came() {
        let f = failure(&smtp(testing::slow("220 slow\r\n").await, "")).await;
        assert_eq!(f.reason, FailureReason::BannerTimeout, "{f}");
        assert!(f.detail.contains("received \"22"), "{f}");
    }

    #[tokio::test]
    async fn a_wrong_banner_is_unexpected() {
        let addr = testing::serve_script(vec![testing::Answer::Send("554 not today\r\n")]).await;
        let f = failure(&smtp(addr, "")).await;
        assert_eq!(f.reason, FailureReason::UnexpectedBanner, "{f}");
        assert!(f.detail.contains(r#""554 not today""#), "{f}");
    }

    #[tokio::test]
    async fn an_endless_banner_is_cut_off() {
        let f = failure(&smtp(testing::endless().await, "")).await;
        assert_eq!(f.reason, FailureReason::UnexpectedBanner, "{f}");
        assert!(f.detail.contains("longer than 4096 bytes"), "{f}");
    }

    #[tokio::test]
    async fn a_server_that_closes_at_once_is_a_reset() {
        let f = failure(&smtp(testing::rude().await, "")).await;
        assert_eq!(f.reason, FailureReason::Reset, "{f}");
    }

    #[tokio::test]
    async fn nothing_listening_is_refused() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = failure(&smtp(format!("127.0.0.1:{port}"), "")).await;
        assert_eq!(f.reason, FailureReason::Refused, "{f}");
    }

    #[tokio::test]
    async fn a_full_accept_queue_is_a_connect_timeout() {
        let (_listener, _filled, addr) = testing::black_hole();
        let f = failure(&smtp(addr, "")).await;
        assert_eq!(f.reason, FailureReason::ConnectTimeout, "{f}");
    }

    #[tokio::test]
    async fn a_stalled_tls_handshake_is_reported_as_such() {
        let f = failure(&smtp(testing::tls_staller().await, "tls = \"implicit\"")).await;
        assert_eq!(f.reason, FailureReason::TlsHandshake, "{f}");
    }

    #[tokio::test]
    async fn a_server_that_requires_a_client_certificate_gets_ours() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let ca_file = ca.write(dir.path());
        let (cert, key) = ca.issue_client(dir.path());
        let server = ca
            .tls_server_requiring_client(ca.issue(&["localhost"], -1, 90), "220 hello client\r\n")
            .await;
        let base = format!(
            "tls = \"implicit\"\ntls_options = {{ ca_file = {:?}, server_name = \"localhost\"",
            ca_file.display().to_string()
        );
        let with_cert = format!(
            "{base}, client_cert = {:?}, client_key = {:?} }}",
            cert.display().to_string(),
            key.display().to_string()
        );
        let (result, _) = check(&smtp(server, &with_cert), Duration::from_secs(5)).await;
        result.unwrap();
        // Without one, the server refuses the session (with TLS 1.3 its alert comes with the
        // first read, after the handshake): still a TLS failure, not an I/O one.
        let (result, _) = check(&smtp(server, &format!("{base} }}")), Duration::from_secs(2)).await;
        let f = result.unwrap_err();
        assert_eq!(f.reason, FailureReason::TlsHandshake, "{f}");
        assert!(f.detail.contains("CertificateRequired"), "{f}");
    }

    #[tokio::test]
    async fn certificates_valid_expired_wrong_name_and_expiring() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let ca_file = ca.write(dir.path());
        let opts = |extra: &str| {
            format!(
                "tls = \"implicit\"\ntls_options = {{ ca_file = {:?}, server_name = \"localhost\"{extra} }}",
                ca_file.display().to_string()
            )
        };

        let good = testing::tls_server(ca.issue(&["localhost"], -1, 90), "220 tls ok\r\n").await;
        let (result, progress) = check(&smtp(good, &opts("")), Duration::from_secs(5)).await;
        result.unwrap();
        let cert = progress.certificate().expect("validity recorded");
        assert!(cert.not_after > cert.not_before);

        let (result, _) = check(
            &smtp(good, &opts(", fail_if_expires_within = \"100d\"")),
            Duration::from_secs(5),
        )
        .await;
        let f = result.unwrap_err();
        assert_eq!(f.reason, FailureReason::TlsExpired, "{f}");
        assert!(f.detail.contains("expires in"), "{f}");

        let expired = testing::tls_server(ca.issue(&["localhost"], -30, -1), "220 old\r\n").await;
        let (result, progress) = check(&smtp(expired, &opts("")), Duration::from_secs(5)).await;
        let f = result.unwrap_err();
        assert_eq!(f.reason, FailureReason::TlsExpired, "{f}");
        let cert = progress
            .certificate()
            .expect("validity recorded even though the check failed");
        assert!(cert.not_after < crate::tls::tests_now());

        let wrong =
            testing::tls_server(ca.issue(&["elsewhere.test"], -1, 90), "220 wrong\r\n").await;
        let (result, _) = check(&smtp(wrong, &opts("")), Duration::from_secs(5)).await;
        let f = result.unwrap_err();
        assert_eq!(f.reason, FailureReason::TlsHandshake, "{f}");
        assert!(f.detail.contains("localhost"), "{f}");

        // An explicit key turns verification off, and the validity is still recorded.
        let (result, progress) = check(
            &smtp(
                wrong,
                "tls = \"implicit\"\ntls_options = { insecure_skip_verify = true }",
            ),
            Duration::from_secs(5),
        )
        .await;
        result.unwrap();
        assert!(progress.certificate().is_some());
    }
}
