//! `smtp`, `pop3`, `imap`: the mail protocols' banner checks of an Exchange protocol resource.
//! One config, [`MailConfig`], for the three, and a table of presets, [`Preset`]: what each
//! protocol's greeting looks like, how it upgrades to TLS and how it says goodbye. The
//! exchange itself is the engine's ([`crate::banner`]).
//!
//! - `smtp`: a `220` greeting (multi-line `220-` included); optionally `EHLO` and a required
//!   capability; `STARTTLS` after an `EHLO` that offers it, then a second `EHLO`; `QUIT`.
//! - `pop3`: `+OK`; `STLS`; `QUIT`.
//! - `imap`: `* OK`; a tagged `STARTTLS`; a tagged `LOGOUT`.
//!
//! `tls = "implicit"` speaks TLS from the start (ports 465, 995, 993).

use crate::banner::{
    greeting_matcher, BannerPreset, ExtraStep, Framing, Matcher, Script, Step, TlsMode,
};
use crate::resource::{BuildContext, TypeConfig};
use crate::tls::TlsOptions;
use crate::values::{ConfigRegex, HostPort, SourceAddress};
use crate::Resource;
use serde::Deserialize;
use std::marker::PhantomData;
use std::sync::Arc;

/// How a protocol upgrades a plain connection to TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// SMTP: `EHLO` must offer `STARTTLS`; after the handshake, `EHLO` again.
    Ehlo,
    /// Send this command and expect a reply starting with `ok` (IMAP's is tagged).
    Command {
        /// The command line.
        send: &'static str,
        /// The start of the answer that agrees.
        ok: &'static str,
        /// The tag that ends the answer, for tagged protocols.
        tag: Option<&'static str>,
    },
}

/// What distinguishes one mail protocol's banner check from another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    /// The `type` value.
    pub name: &'static str,
    /// Whether replies span lines SMTP's way (`250-` continues) or are one line.
    pub smtp_framing: bool,
    /// The start of a good greeting, unless `expect` or `expect_regex` says otherwise.
    pub greeting: &'static str,
    /// How `tls = "starttls"` upgrades.
    pub upgrade: Upgrade,
    /// The last line sent, so that the server logs a clean goodbye.
    pub goodbye: &'static str,
    /// Whether `ehlo` and `require_capability` apply.
    pub ehlo: bool,
}

/// The table of presets.
pub const PRESETS: [Preset; 3] = [SMTP, POP3, IMAP];

const SMTP: Preset = Preset {
    name: "smtp",
    smtp_framing: true,
    greeting: "220",
    upgrade: Upgrade::Ehlo,
    goodbye: "QUIT",
    ehlo: true,
};

const POP3: Preset = Preset {
    name: "pop3",
    smtp_framing: false,
    greeting: "+OK",
    upgrade: Upgrade::Command {
        send: "STLS",
        ok: "+OK",
        tag: None,
    },
    goodbye: "QUIT",
    ehlo: false,
};

const IMAP: Preset = Preset {
    name: "imap",
    smtp_framing: false,
    greeting: "* OK",
    upgrade: Upgrade::Command {
        send: "r1 STARTTLS",
        ok: "r1 OK",
        tag: Some("r1"),
    },
    goodbye: "r9 LOGOUT",
    ehlo: false,
};

/// A protocol of the table, as a type: `MailConfig<Smtp>` is the `smtp` type's config.
pub trait Protocol: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Its row of [`PRESETS`].
    const PRESET: Preset;
}

/// `type = "smtp"`.
#[derive(Clone, Debug, PartialEq)]
pub struct Smtp;
/// `type = "pop3"`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pop3;
/// `type = "imap"`.
#[derive(Clone, Debug, PartialEq)]
pub struct Imap;

impl Protocol for Smtp {
    const PRESET: Preset = SMTP;
}
impl Protocol for Pop3 {
    const PRESET: Preset = POP3;
}
impl Protocol for Imap {
    const PRESET: Preset = IMAP;
}

/// Private properties of an `smtp`, `pop3` or `imap` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct MailConfig<P: Protocol> {
    /// `host:port` of the service.
    pub address: HostPort,
    /// `none`, `starttls` or `implicit`.
    #[serde(default)]
    pub tls: TlsMode,
    /// Trust and certificate checks.
    #[serde(default)]
    pub tls_options: TlsOptions,
    /// Expected start of the greeting (default: the preset's).
    #[serde(default)]
    pub expect: Option<String>,
    /// Or a regular expression the greeting must match.
    #[serde(default)]
    pub expect_regex: Option<ConfigRegex>,
    /// SMTP: send `EHLO <name>` after the greeting (implied by STARTTLS and
    /// `require_capability`).
    #[serde(default)]
    pub ehlo: Option<String>,
    /// SMTP: a capability the `EHLO` answer must list, e.g. `PIPELINING`.
    #[serde(default)]
    pub require_capability: Option<String>,
    /// Extra steps after the preset's.
    #[serde(default)]
    pub steps: Vec<ExtraStep>,
    /// Connect from this address, or from the address of this `ip` resource of the group.
    #[serde(default)]
    pub source_address: Option<SourceAddress>,
    #[serde(skip)]
    protocol: PhantomData<P>,
}

impl<P: Protocol> MailConfig<P> {
    fn framing(&self) -> Framing {
        if P::PRESET.smtp_framing {
            Framing::Smtp
        } else {
            Framing::Line
        }
    }
}

impl<P: Protocol> BannerPreset for MailConfig<P> {
    fn address(&self) -> &HostPort {
        &self.address
    }

    fn tls(&self) -> TlsMode {
        self.tls
    }

    fn tls_options(&self) -> &TlsOptions {
        &self.tls_options
    }

    fn extra_steps(&self) -> &[ExtraStep] {
        &self.steps
    }

    fn script(&self) -> Script {
        let preset = P::PRESET;
        let framing = self.framing();
        let reply = |prefix: &'static str| Step::Expect {
            framing: framing.clone(),
            matcher: Matcher::Prefix(prefix.into()),
            greeting: false,
        };
        let mut steps = vec![Step::Expect {
            framing: framing.clone(),
            matcher: greeting_matcher(
                self.expect.as_deref(),
                self.expect_regex.as_ref().map(|r| &r.0),
                preset.greeting,
            ),
            greeting: true,
        }];
        let name = self.ehlo.clone().unwrap_or_else(|| "resmon.invalid".into());
        let ehlo = |steps: &mut Vec<Step>| {
            steps.push(Step::Send(format!("EHLO {name}").into()));
            match &self.require_capability {
                Some(cap) => steps.push(Step::Capability {
                    framing: Framing::Smtp,
                    name: cap.clone(),
                }),
                None => steps.push(reply("250")),
            }
        };
        match (self.tls, preset.upgrade) {
            (TlsMode::Starttls, Upgrade::Ehlo) => {
                steps.push(Step::Send(format!("EHLO {name}").into()));
                steps.push(Step::Capability {
                    framing: Framing::Smtp,
                    name: "STARTTLS".into(),
                });
                steps.push(Step::Send("STARTTLS".into()));
                steps.push(reply("220"));
                steps.push(Step::StartTls);
                ehlo(&mut steps);
            }
            (TlsMode::Starttls, Upgrade::Command { send, ok, tag }) => {
                steps.push(Step::Send(send.into()));
                steps.push(Step::Expect {
                    framing: tag.map_or(Framing::Line, |t| Framing::Tagged(t.into())),
                    matcher: Matcher::Prefix(ok.into()),
                    greeting: false,
                });
                steps.push(Step::StartTls);
            }
            _ if preset.ehlo && (self.ehlo.is_some() || self.require_capability.is_some()) => {
                ehlo(&mut steps);
            }
            _ => {}
        }
        for extra in &self.steps {
            steps.extend(extra.steps(&framing));
        }
        Script {
            steps,
            goodbye: Some(preset.goodbye.into()),
        }
    }
}

impl<P: Protocol> TypeConfig for MailConfig<P> {
    const NAME: &'static str = P::PRESET.name;

    fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = self.validate_keys();
        if !P::PRESET.ehlo {
            let only_smtp = |key: &'static str| {
                (
                    key,
                    format!(
                        "{key} is an smtp setting; a {} check sends no EHLO",
                        P::PRESET.name
                    ),
                )
            };
            if self.ehlo.is_some() {
                errors.push(only_smtp("ehlo"));
            }
            if self.require_capability.is_some() {
                errors.push(only_smtp("require_capability"));
            }
        }
        errors
    }

    fn source_address(&self) -> Option<&SourceAddress> {
        self.source_address.as_ref()
    }

    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(
            self.banner_resource(&cx.trust)
                .from_source(cx.source(&self.source_address)),
        )
    }
}

/// The `smtp` type's config.
pub type SmtpConfig = MailConfig<Smtp>;
/// The `pop3` type's config.
pub type Pop3Config = MailConfig<Pop3>;
/// The `imap` type's config.
pub type ImapConfig = MailConfig<Imap>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{serve_script, Answer};
    use crate::Resource;
    use resmon_policies::FailureReason;

    fn resource(config: &str) -> crate::banner::BannerResource {
        let c: SmtpConfig = toml::from_str(config).unwrap();
        assert!(c.validate_keys().is_empty());
        c.banner_resource(&crate::tls::TrustCache::default())
    }

    #[tokio::test]
    async fn a_multi_line_greeting_and_a_required_capability() {
        let addr = serve_script(vec![
            Answer::Send("220-mail.test first\r\n220 mail.test ESMTP\r\n"),
            Answer::Expect("EHLO probe.test"),
            Answer::Send("250-mail.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            Answer::Expect("QUIT"),
            Answer::Send("221 bye\r\n"),
        ])
        .await;
        let r = resource(&format!(
            "address = \"{addr}\"\nehlo = \"probe.test\"\nrequire_capability = \"pipelining\""
        ));
        r.is_alive(&Default::default()).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_capability_is_an_unexpected_banner() {
        let addr = serve_script(vec![
            Answer::Send("220 mail.test ESMTP\r\n"),
            Answer::Expect("EHLO resmon.invalid"),
            Answer::Send("250 mail.test\r\n"),
        ])
        .await;
        let r = resource(&format!(
            "address = \"{addr}\"\nrequire_capability = \"CHUNKING\""
        ));
        let err = r.is_alive(&Default::default()).await.unwrap_err();
        assert_eq!(err.reason, FailureReason::UnexpectedBanner, "{err}");
        assert!(err.detail.contains("does not offer CHUNKING"), "{err}");
    }

    #[test]
    fn starttls_needs_the_capability_then_a_second_ehlo() {
        let c: SmtpConfig =
            toml::from_str("address = \"127.0.0.1:25\"\ntls = \"starttls\"").unwrap();
        let sends: Vec<String> = c
            .script()
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Send(l) => Some(l.to_string()),
                Step::StartTls => Some("<tls>".into()),
                _ => None,
            })
            .collect();
        assert_eq!(
            sends,
            [
                "EHLO resmon.invalid",
                "STARTTLS",
                "<tls>",
                "EHLO resmon.invalid"
            ]
        );
    }

    #[tokio::test]
    async fn greeting_and_an_extra_step() {
        let addr = serve_script(vec![
            Answer::Send("+OK POP3 ready\r\n"),
            Answer::Expect("CAPA"),
            Answer::Send("+OK\r\n"),
            Answer::Expect("QUIT"),
            Answer::Send("+OK bye\r\n"),
        ])
        .await;
        let c: Pop3Config = toml::from_str(&format!(
            "address = \"{addr}\"\nsteps = [{{ send = \"CAPA\", expect = \"+OK\" }}]"
        ))
        .unwrap();
        let r = c.banner_resource(&crate::tls::TrustCache::default());
        r.is_alive(&Default::default()).await.unwrap();
    }

    #[tokio::test]
    async fn an_error_greeting_is_unexpected() {
        let addr = serve_script(vec![Answer::Send("-ERR go away\r\n")]).await;
        let c: Pop3Config = toml::from_str(&format!("address = \"{addr}\"")).unwrap();
        let r = c.banner_resource(&crate::tls::TrustCache::default());
        let err = r.is_alive(&Default::default()).await.unwrap_err();
        assert_eq!(err.reason, FailureReason::UnexpectedBanner);
        assert!(err.detail.contains(r#""-ERR go away""#), "{err}");
    }

    #[tokio::test]
    async fn greeting_then_logout() {
        let addr = serve_script(vec![
            Answer::Send("* OK [CAPABILITY IMAP4rev1] ready\r\n"),
            Answer::Expect("r9 LOGOUT"),
            Answer::Send("* BYE\r\nr9 OK\r\n"),
        ])
        .await;
        let c: ImapConfig = toml::from_str(&format!("address = \"{addr}\"")).unwrap();
        let r = c.banner_resource(&crate::tls::TrustCache::default());
        r.is_alive(&Default::default()).await.unwrap();
    }

    #[test]
    fn the_smtp_settings_are_refused_on_pop3_and_imap() {
        let c: Pop3Config = toml::from_str("address = \"127.0.0.1:110\"\nehlo = \"x\"").unwrap();
        assert_eq!(
            TypeConfig::validate(&c),
            [(
                "ehlo",
                "ehlo is an smtp setting; a pop3 check sends no EHLO".to_string()
            )]
        );
        let c: ImapConfig =
            toml::from_str("address = \"127.0.0.1:143\"\nrequire_capability = \"X\"").unwrap();
        assert_eq!(TypeConfig::validate(&c)[0].0, "require_capability");
        let c: SmtpConfig = toml::from_str("address = \"127.0.0.1:25\"\nehlo = \"x\"").unwrap();
        assert!(TypeConfig::validate(&c).is_empty());
    }

    #[test]
    fn every_preset_greets_upgrades_and_says_goodbye_its_own_way() {
        let sends = |script: Script| -> Vec<String> {
            script
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::Send(l) => Some(l.to_string()),
                    Step::StartTls => Some("<tls>".into()),
                    _ => None,
                })
                .chain(script.goodbye.map(|g| g.to_string()))
                .collect()
        };
        let tls = "address = \"127.0.0.1:1\"\ntls = \"starttls\"";
        let pop3: Pop3Config = toml::from_str(tls).unwrap();
        assert_eq!(sends(pop3.script()), ["STLS", "<tls>", "QUIT"]);
        let imap: ImapConfig = toml::from_str(tls).unwrap();
        assert_eq!(sends(imap.script()), ["r1 STARTTLS", "<tls>", "r9 LOGOUT"]);
        assert_eq!(
            PRESETS.map(|p| p.name),
            ["smtp", "pop3", "imap"],
            "the registry's names"
        );
    }
}
