//! `taskscope.toml` as the reports read it: the detectors' `[hazards]`
//! table ([`HazardConfig`]) and the `[[suppress]]` rules.
//!
//! ```toml
//! [hazards]
//! blocking_poll_ms = 20
//!
//! [[suppress]]
//! hazard = "blocking-poll"            # a hazard id, or "*"
//! location = "src/report.rs:*"        # optional glob on `file:line` (or just the file)
//! task = "render-*"                   # optional glob on the task name
//! reason = "renders synchronously on purpose, see #42"   # required
//! ```
//!
//! A suppressed finding is not hidden: every format shows it with its
//! reason, it just no longer fails the run. A rule without a reason, with an
//! unknown hazard id or with an unknown key is an error, so a typo cannot
//! silently suppress nothing (or everything).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use taskscope_wire::hazards::{ConfigError, HazardConfig, HazardKind};

use super::{Finding, Suppressed};

/// Why `taskscope.toml` could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Hazards {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("{path}: [[suppress]]: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: [[suppress]] entry {index} has no `reason`: say why the finding is acceptable (it is shown in every report)")]
    MissingReason { path: PathBuf, index: usize },
    #[error("{path}: [[suppress]] entry {index}: unknown hazard id `{hazard}` (known: {known}, or \"*\")")]
    UnknownHazard {
        path: PathBuf,
        index: usize,
        hazard: String,
        known: String,
    },
}

/// One `[[suppress]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suppression {
    /// A hazard id, or `*` for any.
    pub hazard: String,
    /// Glob on `file:line` or on the file alone; a pattern may name just
    /// the end of the path (`src/x.rs:12` matches `crate/src/x.rs:12`).
    #[serde(default)]
    pub location: Option<String>,
    /// Glob on the name of any task the finding names.
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub reason: String,
}

impl Suppression {
    /// Whether this rule covers `finding`.
    pub fn matches(&self, finding: &Finding) -> bool {
        if self.hazard != "*" && self.hazard != finding.hazard.kind {
            return false;
        }
        if let Some(pattern) = &self.location {
            let Some(loc) = finding.hazard.location.as_ref().filter(|l| l.is_known()) else {
                return false;
            };
            let with_line = format!("{}:{}", loc.file, loc.line);
            if !path_glob(pattern, &with_line) && !path_glob(pattern, &loc.file) {
                return false;
            }
        }
        if let Some(pattern) = &self.task {
            if !finding.task_names.iter().any(|n| glob(pattern, n)) {
                return false;
            }
        }
        true
    }
}

#[derive(Deserialize)]
struct SuppressFile {
    #[serde(default)]
    suppress: Vec<Suppression>,
    #[serde(flatten)]
    _rest: std::collections::BTreeMap<String, toml::Value>,
}

/// Thresholds and suppressions for a report.
#[derive(Debug, Clone, Default)]
pub struct ReportConfig {
    pub hazards: HazardConfig,
    pub suppress: Vec<Suppression>,
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
}

impl ReportConfig {
    /// Parses a whole `taskscope.toml`; `path` is only used in messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ReportConfigError> {
        let hazards =
            HazardConfig::from_toml_str(text).map_err(|source| ReportConfigError::Hazards {
                path: path.to_path_buf(),
                source,
            })?;
        let file: SuppressFile =
            toml::from_str(text).map_err(|source| ReportConfigError::Toml {
                path: path.to_path_buf(),
                source,
            })?;
        for (i, s) in file.suppress.iter().enumerate() {
            if s.reason.trim().is_empty() {
                return Err(ReportConfigError::MissingReason {
                    path: path.to_path_buf(),
                    index: i + 1,
                });
            }
            if s.hazard != "*" && HazardKind::from_id(&s.hazard).is_none() {
                return Err(ReportConfigError::UnknownHazard {
                    path: path.to_path_buf(),
                    index: i + 1,
                    hazard: s.hazard.clone(),
                    known: HazardKind::ALL
                        .iter()
                        .map(|k| k.id())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(Self {
            hazards,
            suppress: file.suppress,
            path: Some(path.to_path_buf()),
        })
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ReportConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// `--config` when given, else `taskscope.toml` in the current directory
    /// or the repository root when one exists, else the defaults.
    pub fn discover(explicit: Option<&Path>, root: &Path) -> Result<Self, ReportConfigError> {
        if let Some(p) = explicit {
            return Self::load(p);
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| root.to_path_buf());
        for dir in [cwd.as_path(), root] {
            let candidate = dir.join("taskscope.toml");
            if candidate.is_file() {
                return Self::load(&candidate);
            }
        }
        Ok(Self::default())
    }

    /// The first rule covering `finding`.
    pub fn suppression_for(&self, finding: &Finding) -> Option<Suppressed> {
        self.suppress
            .iter()
            .position(|s| s.matches(finding))
            .map(|i| Suppressed {
                reason: self.suppress[i].reason.clone(),
                rule: i + 1,
            })
    }
}

/// `*` (any run of characters) and `?` (one character) glob match.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with single-star backtracking: linear in practice.
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// [`glob`] on the whole path or on any suffix starting after a `/`.
fn path_glob(pattern: &str, path: &str) -> bool {
    glob(pattern, path)
        || path
            .match_indices('/')
            .any(|(i, _)| glob(pattern, &path[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskscope_wire::model::{Hazard, Location};

    fn finding(kind: &str, file: &str, line: u32, task: &str) -> Finding {
        Finding::new(
            Hazard {
                kind: kind.into(),
                location: Some(Location::new(file, line, 1)),
                ..Hazard::default()
            },
            vec![task.into()],
        )
    }

    #[test]
    fn globs() {
        assert!(glob("worker-*", "worker-12"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*x*y", "aaxbby"));
        assert!(!glob("worker-*", "reader-1"));
    }

    #[test]
    fn rules_match_on_kind_location_and_task() {
        let text = r#"
            [[suppress]]
            hazard = "blocking-poll"
            location = "src/render.rs:*"
            reason = "renders synchronously on purpose"

            [[suppress]]
            hazard = "*"
            task = "legacy-*"
            reason = "legacy code, tracked in #12"
        "#;
        let c = ReportConfig::from_toml_str(text, Path::new("taskscope.toml")).expect("valid");
        let hit = finding("blocking-poll", "app/src/render.rs", 40, "t");
        assert_eq!(c.suppression_for(&hit).map(|s| s.rule), Some(1));
        let other_file = finding("blocking-poll", "app/src/main.rs", 40, "t");
        assert_eq!(c.suppression_for(&other_file), None);
        let legacy = finding("lost-waker", "x.rs", 1, "legacy-poller");
        assert_eq!(
            c.suppression_for(&legacy).map(|s| s.reason),
            Some("legacy code, tracked in #12".into())
        );
    }

    #[test]
    fn a_rule_without_reason_or_with_a_bad_id_is_an_error() {
        let err = ReportConfig::from_toml_str(
            "[[suppress]]\nhazard = \"blocking-poll\"\n",
            Path::new("taskscope.toml"),
        )
        .expect_err("reason required");
        assert!(err.to_string().contains("no `reason`"), "{err}");
        let err = ReportConfig::from_toml_str(
            "[[suppress]]\nhazard = \"blocking-polls\"\nreason = \"x\"\n",
            Path::new("taskscope.toml"),
        )
        .expect_err("bad id");
        assert!(err.to_string().contains("blocking-polls"), "{err}");
        let err = ReportConfig::from_toml_str(
            "[[suppress]]\nhazard = \"*\"\nreason = \"x\"\nfile = \"a\"\n",
            Path::new("taskscope.toml"),
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("file"), "{err}");
    }
}
