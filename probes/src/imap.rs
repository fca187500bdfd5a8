//! `imap`: the IMAP banner check. Expects `* OK`; optionally upgrades with `STARTTLS`
//! (`tls = "starttls"`) or speaks TLS from the start (`tls = "implicit"`, port 993). Ends with
//! `LOGOUT`.

use crate::banner::{
    greeting_matcher, BannerPreset, ExtraStep, Framing, Matcher, Script, Step, TlsMode,
};
use crate::resource::{BuildContext, TypeConfig};
use crate::tls::TlsOptions;
use crate::values::{ConfigRegex, HostPort};
use crate::Resource;
use serde::Deserialize;
use std::sync::Arc;

/// Private properties of an `imap` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// `host:port` of the IMAP service.
    pub address: HostPort,
    /// `none`, `starttls` or `implicit`.
    #[serde(default)]
    pub tls: TlsMode,
    /// Trust and certificate checks.
    #[serde(default)]
    pub tls_options: TlsOptions,
    /// Expected start of the greeting (default `* OK`).
    #[serde(default)]
    pub expect: Option<String>,
    /// Or a regular expression the greeting must match.
    #[serde(default)]
    pub expect_regex: Option<ConfigRegex>,
    /// Extra steps after the preset's (their replies are single lines).
    #[serde(default)]
    pub steps: Vec<ExtraStep>,
}

impl BannerPreset for ImapConfig {
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
        let mut steps = vec![Step::Expect {
            framing: Framing::Line,
            matcher: greeting_matcher(
                self.expect.as_deref(),
                self.expect_regex.as_ref().map(|r| &r.0),
                "* OK",
            ),
            greeting: true,
        }];
        if self.tls == TlsMode::Starttls {
            steps.push(Step::Send("r1 STARTTLS".into()));
            steps.push(Step::Expect {
                framing: Framing::Tagged("r1".into()),
                matcher: Matcher::Prefix("r1 OK".into()),
                greeting: false,
            });
            steps.push(Step::StartTls);
        }
        for extra in &self.steps {
            steps.extend(extra.steps(&Framing::Line));
        }
        Script {
            steps,
            goodbye: Some("r9 LOGOUT".into()),
        }
    }
}

impl TypeConfig for ImapConfig {
    const NAME: &'static str = "imap";

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
}
