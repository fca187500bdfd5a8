//! `smtp`: the SMTP banner check of an Exchange protocol resource. Expects a `220` greeting
//! (multi-line `220-` greetings included); optionally sends `EHLO` and requires a capability;
//! optionally upgrades with `STARTTLS` (`tls = "starttls"`) or speaks TLS from the start
//! (`tls = "implicit"`, port 465). Ends with `QUIT`.

use crate::banner::{
    greeting_matcher, BannerPreset, ExtraStep, Framing, Matcher, Script, Step, TlsMode,
};
use crate::resource::{BuildContext, TypeConfig};
use crate::tls::TlsOptions;
use crate::values::{ConfigRegex, HostPort};
use crate::Resource;
use serde::Deserialize;
use std::sync::Arc;

/// Private properties of an `smtp` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `host:port` of the SMTP service.
    pub address: HostPort,
    /// `none`, `starttls` or `implicit`.
    #[serde(default)]
    pub tls: TlsMode,
    /// Trust and certificate checks.
    #[serde(default)]
    pub tls_options: TlsOptions,
    /// Expected start of the greeting (default `220`).
    #[serde(default)]
    pub expect: Option<String>,
    /// Or a regular expression the greeting must match.
    #[serde(default)]
    pub expect_regex: Option<ConfigRegex>,
    /// Send `EHLO <name>` after the greeting (implied by STARTTLS and `require_capability`).
    #[serde(default)]
    pub ehlo: Option<String>,
    /// A capability the `EHLO` answer must list, e.g. `PIPELINING`.
    #[serde(default)]
    pub require_capability: Option<String>,
    /// Extra steps after the preset's.
    #[serde(default)]
    pub steps: Vec<ExtraStep>,
}

impl BannerPreset for SmtpConfig {
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
        let reply = |prefix: &'static str| Step::Expect {
            framing: Framing::Smtp,
            matcher: Matcher::Prefix(prefix.into()),
            greeting: false,
        };
        let mut steps = vec![Step::Expect {
            framing: Framing::Smtp,
            matcher: greeting_matcher(
                self.expect.as_deref(),
                self.expect_regex.as_ref().map(|r| &r.0),
                "220",
            ),
            greeting: true,
        }];
        let name = self.ehlo.clone().unwrap_or_else(|| "resmon.invalid".into());
        let ehlo_answer = |steps: &mut Vec<Step>| match &self.require_capability {
            Some(cap) => steps.push(Step::Capability {
                framing: Framing::Smtp,
                name: cap.clone(),
            }),
            None => steps.push(reply("250")),
        };
        if self.tls == TlsMode::Starttls {
            steps.push(Step::Send(format!("EHLO {name}").into()));
            steps.push(Step::Capability {
                framing: Framing::Smtp,
                name: "STARTTLS".into(),
            });
            steps.push(Step::Send("STARTTLS".into()));
            steps.push(reply("220"));
            steps.push(Step::StartTls);
            steps.push(Step::Send(format!("EHLO {name}").into()));
            ehlo_answer(&mut steps);
        } else if self.ehlo.is_some() || self.require_capability.is_some() {
            steps.push(Step::Send(format!("EHLO {name}").into()));
            ehlo_answer(&mut steps);
        }
        for extra in &self.steps {
            steps.extend(extra.steps(&Framing::Smtp));
        }
        Script {
            steps,
            goodbye: Some("QUIT".into()),
        }
    }
}

impl TypeConfig for SmtpConfig {
    const NAME: &'static str = "smtp";

    fn validate(&self) -> Vec<(&'static str, String)> {
        self.validate_keys()
    }

    fn build(&self, cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(self.banner_resource(&cx.trust))
    }
}

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
}
