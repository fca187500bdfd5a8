//! What is wrong with a config, and where: [`Diagnostic`]s naming file, line, key path and
//! message, collected by [`Diagnostics`] while the file is read.

use super::locate;
use resmon_probes::HumanDuration;
use std::fmt;
use std::path::PathBuf;

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/resmon/resmon.toml";

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The config is rejected.
    Error,
    /// The config is accepted, but something in it is probably not what was meant.
    Warning,
}

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when the key could be found in the file.
    pub position: Option<(usize, usize)>,
    /// Dotted key path, e.g. `groups[0].resources[2].depends_on[1]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The config could not be used; every error found is listed.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects diagnostics and knows where each key is in the file.
pub(super) struct Diagnostics<'a> {
    pub(super) file: PathBuf,
    pub(super) doc: locate::Document<'a>,
    pub(super) found: Vec<Diagnostic>,
    /// Warnings already given, by path and message: one about a type's defaults comes from
    /// each of its resources, and is said once.
    pub(super) warned: std::collections::HashSet<(String, String)>,
}

/// One step of a key path.
#[derive(Clone, Debug)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

impl Diagnostics<'_> {
    pub(super) fn push(&mut self, severity: Severity, path: &[Seg], message: impl Into<String>) {
        self.found.push(Diagnostic {
            severity,
            file: self.file.clone(),
            position: self.doc.position(path),
            path: render_path(path),
            message: message.into(),
        });
    }

    pub(super) fn error_count(&self) -> usize {
        self.found
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub(super) fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        self.push(Severity::Error, path, message)
    }

    pub(super) fn warning(&mut self, path: &[Seg], message: impl Into<String>) {
        let message = message.into();
        if self.warned.insert((render_path(path), message.clone())) {
            self.push(Severity::Warning, path, message)
        }
    }

    /// Deserializes `value` found at `base`, turning a serde error into a diagnostic at the
    /// exact key.
    pub(super) fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        value: toml::Value,
        base: &[Seg],
    ) -> Option<T> {
        self.read_with(value, base, |d| T::deserialize(d))
    }

    pub(super) fn read_with<T>(
        &mut self,
        value: toml::Value,
        base: &[Seg],
        f: impl FnOnce(
            serde_path_to_error::Deserializer<'_, '_, toml::Value>,
        ) -> Result<T, toml::de::Error>,
    ) -> Option<T> {
        let mut track = serde_path_to_error::Track::new();
        let result = f(serde_path_to_error::Deserializer::new(value, &mut track));
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let mut path = base.to_vec();
                for seg in track.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Map { key } => {
                            path.push(Seg::Key(key.clone()))
                        }
                        serde_path_to_error::Segment::Seq { index } => {
                            path.push(Seg::Index(*index))
                        }
                        _ => {}
                    }
                }
                self.error(&path, e.message().to_string());
                None
            }
        }
    }
}

/// Shorthand used by `props` for durations in messages.
pub(super) fn show(d: std::time::Duration) -> String {
    HumanDuration(d).to_string()
}
