//! Hazard reports for CI: what `taskscope report` and `taskscope ci` print.
//!
//! # Why
//! A hazard found in a test run is only useful if it lands where the user
//! already looks: GitHub code scanning (SARIF), the test tab of a CI server
//! (JUnit XML), a pull-request comment (Markdown) or a script (JSON). This
//! module turns findings from any source into those four formats, and
//! decides the exit status (`--fail-on`).
//!
//! # Shape
//! * [`source`] loads findings from one source: a recording (replayed update
//!   by update, with the detectors run on every intermediate state), a live
//!   target (one snapshot: its own findings plus local detection), an ELF
//!   core (the dump analyzer's post-mortem findings), or a `Cargo.lock`
//!   ([`lockfile`]: two tokio major versions, tokio with async-std).
//! * [`config`] reads `taskscope.toml`: the detectors' `[hazards]` table and
//!   the `[[suppress]]` rules, each with its required `reason`.
//! * [`Report`] gathers the sources, applies suppressions, makes locations
//!   relative to the repository root and counts what fails.
//! * [`sarif`], [`junit`], [`markdown`] and [`json`] render a [`Report`].
//!
//! Findings are de-duplicated by their fingerprint within a source: a
//! finding that shows up at any moment of a recording counts once, as first
//! seen.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use taskscope_wire::hazards::HazardKind;
use taskscope_wire::model::{Hazard, Location, Severity};

pub mod config;
pub mod json;
pub mod junit;
pub mod lockfile;
pub mod markdown;
pub mod sarif;
pub mod source;

pub use config::{ReportConfig, Suppression};

/// Where a report's documentation links point: the hazard docs of the
/// project, with each hazard's anchor appended.
pub fn docs_url(anchor: &str) -> String {
    format!(
        "{}/blob/main/wire-protocol/docs/hazards.md{anchor}",
        env!("CARGO_PKG_REPOSITORY").trim_end_matches('/')
    )
}

/// The `--fail-on` threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailOn {
    /// Fail on errors only (the default).
    Error,
    /// Fail on warnings and errors.
    Warning,
    /// Fail on any finding.
    Info,
    /// Never fail because of findings.
    Never,
}

impl FailOn {
    /// Whether an unsuppressed finding of `severity` fails the run.
    pub fn fails(self, severity: Severity) -> bool {
        match self {
            FailOn::Error => severity >= Severity::Error,
            FailOn::Warning => severity >= Severity::Warning,
            FailOn::Info => true,
            FailOn::Never => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailOn::Error => "error",
            FailOn::Warning => "warning",
            FailOn::Info => "info",
            FailOn::Never => "never",
        }
    }
}

/// Output formats of `taskscope report` and `taskscope ci`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// SARIF 2.1.0, for GitHub code scanning and other SARIF viewers.
    Sarif,
    /// JUnit XML: one testsuite per source, one testcase per hazard kind.
    Junit,
    /// Markdown: a summary table, then one section per finding.
    Markdown,
    /// JSON (`taskscope.report/1`).
    Json,
}

/// What kind of thing a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Recording,
    Live,
    Core,
    Lockfile,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Recording => "recording",
            SourceKind::Live => "live target",
            SourceKind::Core => "core dump",
            SourceKind::Lockfile => "Cargo.lock",
        })
    }
}

/// A suppression that matched a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suppressed {
    /// The rule's `reason`.
    pub reason: String,
    /// Which `[[suppress]]` entry (1-based, in file order).
    pub rule: usize,
}

/// Where one task of a finding comes from, as known when it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskSite {
    pub id: u64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spawned_at: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub await_point: Option<Location>,
}

impl TaskSite {
    /// Await point, else spawn site.
    pub fn location(&self) -> Option<&Location> {
        self.await_point.as_ref().or(self.spawned_at.as_ref())
    }
}

/// A second place a finding involves (the starved task of a scheduling
/// delay, where the blocking worker was last seen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Related {
    /// What the place is, in words: "starved task `heartbeat`".
    pub label: String,
    pub location: Location,
}

/// One finding of one source.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub hazard: Hazard,
    /// Names of the tasks in `hazard.task_ids`, in the same order, as known
    /// when the finding was first seen (used by `task = "…"` suppressions).
    pub task_names: Vec<String>,
    /// The tasks in `hazard.task_ids` with their spawn sites and await
    /// points, when the source knows them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskSite>,
    /// Other places the finding involves.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<Related>,
    /// Set when a `[[suppress]]` rule matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<Suppressed>,
    /// The source line `hazard.location` points at, when the file is readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
}

impl Finding {
    pub fn new(hazard: Hazard, task_names: Vec<String>) -> Self {
        Self {
            hazard,
            task_names,
            tasks: Vec::new(),
            related: Vec::new(),
            suppressed: None,
            snippet: None,
        }
    }

    /// The same finding with its tasks' sites.
    pub fn with_tasks(mut self, tasks: Vec<TaskSite>) -> Self {
        self.tasks = tasks;
        self
    }

    /// The catalogue kind, when the id is one this version knows.
    pub fn kind(&self) -> Option<HazardKind> {
        HazardKind::from_id(&self.hazard.kind)
    }
}

/// Everything one source gave.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// A file path or a target address, as the user gave it.
    pub name: String,
    pub kind: SourceKind,
    /// Things that make the report less complete (a truncated recording, a
    /// partial core), in words.
    pub warnings: Vec<String>,
    /// Deduplicated by fingerprint, in the order first seen.
    pub findings: Vec<Finding>,
}

impl SourceReport {
    pub fn new(name: impl Into<String>, kind: SourceKind) -> Self {
        Self {
            name: name.into(),
            kind,
            warnings: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// Adds `finding`; one with the same fingerprint seen before is
    /// updated instead (it keeps its place and its first `detected_at`, and
    /// takes the newer evidence: a long poll seen while it lasted is
    /// reported with its final length). Returns whether it was new.
    pub fn add(&mut self, finding: Finding) -> bool {
        let fp = &finding.hazard.fingerprint;
        if !fp.is_empty() {
            if let Some(old) = self
                .findings
                .iter_mut()
                .find(|f| &f.hazard.fingerprint == fp)
            {
                let first_seen = old.hazard.detected_at.or(finding.hazard.detected_at);
                *old = finding;
                old.hazard.detected_at = first_seen;
                return false;
            }
        }
        self.findings.push(finding);
        true
    }

    /// Cross-references a `scheduling-delay` with the `blocking-poll` (or
    /// `never-yielded`) finding of the task that held the worker: names the
    /// starved task with its location, and where the worker was last seen.
    pub fn link_scheduling_delays(&mut self) {
        let holders: Vec<(u64, Location, String)> = self
            .findings
            .iter()
            .filter(|f| f.hazard.kind == "blocking-poll" || f.hazard.kind == "never-yielded")
            .filter_map(|f| {
                Some((
                    *f.hazard.task_ids.first()?,
                    f.hazard.location.clone()?,
                    f.hazard.summary.clone(),
                ))
            })
            .collect();
        for f in &mut self.findings {
            if f.hazard.kind != "scheduling-delay" || !f.related.is_empty() {
                continue;
            }
            let holder = holders
                .iter()
                .find(|(id, _, _)| f.hazard.task_ids.contains(id));
            let holder_id = holder.map(|h| h.0);
            let starved: Vec<TaskSite> = f
                .tasks
                .iter()
                .filter(|t| Some(t.id) != holder_id)
                .cloned()
                .collect();
            for t in &starved {
                if let Some(loc) = t.location() {
                    let what = if t.await_point.is_some() {
                        "parked at"
                    } else {
                        "spawned at"
                    };
                    f.hazard
                        .evidence
                        .push(format!("starved task `{}`: {what} {loc}", t.name));
                    f.related.push(Related {
                        label: format!("starved task `{}`", t.name),
                        location: loc.clone(),
                    });
                }
            }
            if let Some((id, loc, summary)) = holder {
                let name = f
                    .tasks
                    .iter()
                    .find(|t| t.id == *id)
                    .map_or_else(|| format!("task #{id}"), |t| t.name.clone());
                f.hazard.evidence.push(format!(
                    "the blocking worker was last seen in `{name}` at {loc} ({summary})"
                ));
                f.related.push(Related {
                    label: format!("blocking worker last seen in `{name}`"),
                    location: loc.clone(),
                });
            }
        }
    }
}

/// Counts over a report, for summaries and the exit status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub errors: usize,
    pub warnings: usize,
    pub infos: usize,
    pub suppressed: usize,
    /// Unsuppressed findings at or above `--fail-on`.
    pub failing: usize,
}

/// A whole report, ready to render.
#[derive(Debug, Clone)]
pub struct Report {
    /// The repository root locations are made relative to.
    pub root: PathBuf,
    pub fail_on: FailOn,
    pub sources: Vec<SourceReport>,
    /// Kinds disabled by `[hazards] disable` (shown as skipped).
    pub disabled: Vec<HazardKind>,
}

impl Report {
    /// Builds the report: applies `config`'s suppressions, makes locations
    /// relative to `root` and reads each finding's source line.
    pub fn new(
        root: PathBuf,
        fail_on: FailOn,
        mut sources: Vec<SourceReport>,
        config: &ReportConfig,
    ) -> Self {
        for s in &mut sources {
            s.link_scheduling_delays();
            for f in &mut s.findings {
                if let Some(loc) = &mut f.hazard.location {
                    relativize(loc, &root);
                }
                if let Some(loc) = &mut f.hazard.await_point {
                    relativize(loc, &root);
                }
                for t in &mut f.tasks {
                    for loc in [&mut t.spawned_at, &mut t.await_point]
                        .into_iter()
                        .flatten()
                    {
                        relativize(loc, &root);
                    }
                }
                for r in &mut f.related {
                    relativize(&mut r.location, &root);
                }
                f.snippet = f
                    .hazard
                    .location
                    .as_ref()
                    .and_then(|l| source_line(&root, l));
                f.suppressed = config.suppression_for(f);
            }
        }
        Self {
            root,
            fail_on,
            sources,
            disabled: config.hazards.disable.clone(),
        }
    }

    pub fn findings(&self) -> impl Iterator<Item = (&SourceReport, &Finding)> {
        self.sources
            .iter()
            .flat_map(|s| s.findings.iter().map(move |f| (s, f)))
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for (_, f) in self.findings() {
            if f.suppressed.is_some() {
                t.suppressed += 1;
                continue;
            }
            match f.hazard.severity {
                Severity::Error => t.errors += 1,
                Severity::Warning => t.warnings += 1,
                Severity::Info => t.infos += 1,
            }
            if self.fail_on.fails(f.hazard.severity) {
                t.failing += 1;
            }
        }
        t
    }

    /// Whether the run fails: an unsuppressed finding at or above `--fail-on`.
    pub fn failed(&self) -> bool {
        self.totals().failing > 0
    }

    /// Findings per hazard id, for summary tables: `(unsuppressed, suppressed)`.
    pub fn counts_by_kind(&self) -> BTreeMap<String, (usize, usize)> {
        let mut m: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (_, f) in self.findings() {
            let e = m.entry(f.hazard.kind.clone()).or_default();
            if f.suppressed.is_some() {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
        m
    }

    /// Renders in `format`.
    pub fn render(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Sarif => sarif::render(self),
            ReportFormat::Junit => junit::render(self),
            ReportFormat::Markdown => markdown::render(self),
            ReportFormat::Json => json::render(self),
        }
    }
}

/// The repository root for `start`: the nearest ancestor holding `.git`,
/// else `start` itself.
pub fn find_root(start: &Path) -> PathBuf {
    start
        .ancestors()
        .find(|d| d.join(".git").exists())
        .unwrap_or(start)
        .to_path_buf()
}

/// Makes `loc.file` relative to `root` when it lies inside it. Relative
/// paths are kept (rustc writes workspace members' paths relative to the
/// workspace root); absolute paths outside the root (dependencies, the
/// standard library) stay absolute.
pub fn relativize(loc: &mut Location, root: &Path) {
    let path = Path::new(&loc.file);
    if path.is_absolute() {
        if let Ok(rel) = path.strip_prefix(root) {
            loc.file = rel.to_string_lossy().replace('\\', "/");
        }
    } else if !root.join(path).exists() {
        // Relative to the current directory rather than the root (a crate
        // built on its own, outside a workspace)?
        if let Ok(abs) = std::env::current_dir().map(|d| d.join(path)) {
            if abs.exists() {
                if let Ok(rel) = abs.strip_prefix(root) {
                    loc.file = rel.to_string_lossy().replace('\\', "/");
                }
            }
        }
    }
}

/// The text of the line `loc` points at, trimmed; `None` when the file or
/// line cannot be read.
pub fn source_line(root: &Path, loc: &Location) -> Option<String> {
    if loc.line == 0 {
        return None;
    }
    let path = Path::new(&loc.file);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().nth(loc.line as usize - 1)?;
    Some(line.trim().to_string())
}

/// Title of a hazard id (the id itself for ids this version does not know).
pub fn title_of(id: &str) -> &str {
    HazardKind::from_id(id).map_or(id, |k| k.info().title)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_on_levels() {
        assert!(FailOn::Error.fails(Severity::Error));
        assert!(!FailOn::Error.fails(Severity::Warning));
        assert!(FailOn::Warning.fails(Severity::Warning));
        assert!(!FailOn::Warning.fails(Severity::Info));
        assert!(FailOn::Info.fails(Severity::Info));
        assert!(!FailOn::Never.fails(Severity::Error));
    }

    #[test]
    fn absolute_paths_inside_the_root_become_relative() {
        let mut l = Location::new("/repo/src/main.rs", 3, 1);
        relativize(&mut l, Path::new("/repo"));
        assert_eq!(l.file, "src/main.rs");
        let mut dep = Location::new("/home/u/.cargo/registry/x/src/lib.rs", 3, 1);
        relativize(&mut dep, Path::new("/repo"));
        assert_eq!(dep.file, "/home/u/.cargo/registry/x/src/lib.rs");
    }
}
