//! Secrets in resource configs: values read from `*_file` keys (`header_files` of `http`,
//! `env_files` of `process` and `exec`, `params_files` of `ocf`), and the credential headers
//! (`Authorization`, `Proxy-Authorization`, `Cookie`) wherever they come from. They are kept
//! out of what the agent shows: a failure's detail (a script that prints its environment, a
//! server that echoes the request) has them replaced by `<secret>`, and `validate` names the
//! key, never the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a secret is replaced with.
pub const REDACTED: &str = "<secret>";

/// Headers whose values are credentials, whatever the config calls them.
pub const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// The secret values of one resource, to hide in what it reports.
#[derive(Clone, Debug, Default)]
pub struct Secrets(Arc<Vec<String>>);

impl Secrets {
    /// Hides these values (empty ones mean nothing and are left out).
    pub fn new(values: impl IntoIterator<Item = String>) -> Secrets {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        // The longest first: a secret that contains another is hidden whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Secrets(Arc::new(values))
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.0.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
            // Failure details show bytes escaped (`escape_bytes`): hide that form too.
            let escaped = crate::resource::escape_bytes(secret.as_bytes());
            let escaped = escaped.trim_matches('"');
            if escaped != secret && out.contains(escaped) {
                out = out.replace(escaped, REDACTED);
            }
        }
        out
    }

    /// A failure with its detail redacted.
    pub fn failure(&self, mut failure: crate::Failure) -> crate::Failure {
        if !self.0.is_empty() {
            failure.detail = self.redact(&failure.detail);
        }
        failure
    }
}

/// Reads a secret file: its content, without the line end an editor leaves.
pub fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Reads every file of a `*_file` map: name to value, or the first error with its name.
pub fn read_all(
    files: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, String>, (String, String)> {
    files
        .iter()
        .map(|(name, path)| {
            read(path)
                .map(|v| (name.clone(), v))
                .map_err(|e| (name.clone(), e))
        })
        .collect()
}

/// `validate`'s errors for a `*_file` map under `key`: each file must be readable.
pub fn check_files(
    key: &'static str,
    files: &BTreeMap<String, PathBuf>,
) -> Vec<(&'static str, String)> {
    files
        .iter()
        .filter_map(|(name, path)| read(path).err().map(|e| (key, format!("{name}: {e}"))))
        .collect()
}

/// `validate`'s warnings for a `*_file` map under `key`: a file every user can read.
pub fn world_readable(
    key: &'static str,
    files: &BTreeMap<String, PathBuf>,
) -> Vec<(&'static str, String)> {
    use std::os::unix::fs::PermissionsExt;
    files
        .iter()
        .filter(|(_, path)| {
            std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
        })
        .map(|(name, path)| {
            (
                key,
                format!(
                    "{name}: {} is readable by every user of this machine: chmod o-r it",
                    path.display()
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden_plain_and_escaped() {
        let secrets = Secrets::new(["s3cret".to_string(), "a\"b".to_string(), String::new()]);
        assert_eq!(
            secrets.redact("token s3cret, quoted \"a\\\"b\""),
            "token <secret>, quoted \"<secret>\""
        );
        assert_eq!(secrets.redact("nothing here"), "nothing here");
    }
}
