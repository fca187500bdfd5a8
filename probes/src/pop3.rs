//! `pop3`: the POP3 banner check. Expects `+OK`; optionally upgrades with `STLS`
//! (`tls = "starttls"`) or speaks TLS from the start (`tls = "implicit"`, port 995). Ends with
//! `QUIT`.

use crate::banner::{
    greeting_matcher, BannerPreset, ExtraStep, Framing, Matcher, Script, Step, TlsMode,
};
use crate::resource::{BuildContext, TypeConfig};
use crate::tls::TlsOptions;
use crate::values::{ConfigRegex, HostPort};
use crate::Resource;
use serde::Deserialize;
use std::sync::Arc;

/// Private properties of a `pop3` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pop3Config {
    /// `host:port` of the POP3 service.
    pub address: HostPort,
    /// `none`, `starttls` or `implicit`.
    #[serde(default)]
    pub tls: TlsMode,
    /// Trust and certificate checks.
    #[serde(default)]
    pub tls_options: TlsOptions,
    /// Expected start of the greeting (default `+OK`).
    #[serde(default)]
    pub expect: Option<String>,
    /// Or a regular expression the greeting must match.
    #[serde(default)]
    pub expect_regex: Option<ConfigRegex>,
    /// Extra steps after the preset's.
    #[serde(default)]
    pub steps: Vec<ExtraStep>,
}

impl BannerPreset for Pop3Config {
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
                "+OK",
            ),
            greeting: true,
        }];
        if self.tls == TlsMode::Starttls {
            steps.push(Step::Send("STLS".into()));
            steps.push(Step::Expect {
                framing: Framing::Line,
                matcher: Matcher::Prefix("+OK".into()),
                greeting: false,
            });
            steps.push(Step::StartTls);
        }
        for extra in &self.steps {
            steps.extend(extra.steps(&Framing::Line));
        }
        Script {
            steps,
            goodbye: Some("QUIT".into()),
        }
    }
}

impl TypeConfig for Pop3Config {
    const NAME: &'static str = "pop3";

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
}
