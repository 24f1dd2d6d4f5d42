//! Loading findings from one source: a recording, a live target or a core.
//!
//! * **Recording** — every update is applied to a [`StateReplica`]; after
//!   each complete state the detectors ([`detect`] and a [`GrowthTracker`]
//!   kept across the replay) run with `now` = the state's `updated_at`, so a
//!   hazard visible at any moment counts, even if it resolved itself before
//!   the process exited. Local detection is authoritative for recordings:
//!   `taskscope.toml`'s thresholds apply, not whatever the recorded process
//!   was configured with.
//! * **Live target** — one snapshot: the target's own findings (its
//!   detectors saw every tick) plus local detection on the snapshot.
//! * **Core** — the dump analyzer's post-mortem findings, located at the
//!   task's await point in the user's code.

use std::io::Read;
use std::path::{Path, PathBuf};

use taskscope_wire::hazards::{detect, fingerprint, GrowthTracker, HazardConfig, HazardKind};
use taskscope_wire::model::{Hazard, Location, State};
use taskscope_wire::recording::{read_recording, RecordingError, MAGIC};
use taskscope_wire::state::{Applied, StateReplica};

use super::{Finding, SourceKind, SourceReport, TaskSite};
use crate::client::{self, ClientOptions, Target};

/// Why a source gave no report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no usable update in the recording: {source}")]
    EmptyRecording {
        path: PathBuf,
        #[source]
        source: RecordingError,
    },
    #[error(
        "{path}: the recording holds no update (the process exited before its first publish?)"
    )]
    NoUpdates { path: PathBuf },
    #[error("{path} is neither a taskscope recording nor an ELF core, and `{path}` is not a target address ({detail})")]
    Unrecognised { path: PathBuf, detail: String },
    #[error(transparent)]
    Client(Box<client::ClientError>),
    #[error("analysing core {path}: {message}")]
    Core { path: PathBuf, message: String },
}

impl From<client::ClientError> for SourceError {
    fn from(e: client::ClientError) -> Self {
        SourceError::Client(Box::new(e))
    }
}

/// What `SOURCE` names.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Recording(PathBuf),
    Core(PathBuf),
    Live(String),
}

/// Classifies `SOURCE`: an existing file by its first bytes, anything else
/// as a target address (`http://…`, `host:port`, `unix:/path`).
pub fn classify(source: &str) -> Result<SourceSpec, SourceError> {
    let path = Path::new(source);
    if path.is_file() {
        let mut head = [0u8; 8];
        let n = std::fs::File::open(path)
            .and_then(|mut f| read_up_to(&mut f, &mut head))
            .map_err(|e| SourceError::Read {
                path: path.to_path_buf(),
                source: e,
            })?;
        if n == 8 && head == MAGIC {
            return Ok(SourceSpec::Recording(path.to_path_buf()));
        }
        if n >= 4 && head[..4] == *b"\x7fELF" {
            return Ok(SourceSpec::Core(path.to_path_buf()));
        }
        return Err(SourceError::Unrecognised {
            path: path.to_path_buf(),
            detail: format!("it starts with {:02x?}", &head[..n]),
        });
    }
    match source.parse::<Target>() {
        Ok(_) => Ok(SourceSpec::Live(source.to_string())),
        Err(e) => Err(SourceError::Unrecognised {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads any source.
pub fn load(
    spec: &SourceSpec,
    config: &HazardConfig,
    options: &LoadOptions,
) -> Result<SourceReport, SourceError> {
    match spec {
        SourceSpec::Recording(p) => from_recording(p, config),
        SourceSpec::Core(p) => from_core(p, options.exe.as_deref(), config),
        SourceSpec::Live(t) => from_live(t, config, &options.client),
    }
}

/// Options only some sources use.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The executable of a core, when not the one the core names.
    pub exe: Option<PathBuf>,
    pub client: ClientOptions,
}

/// A finding with the names and sites of its tasks as `state` knows them.
fn finding_in(state: &State, hazard: Hazard) -> Finding {
    let sites: Vec<TaskSite> = hazard
        .task_ids
        .iter()
        .map(|&id| match state.tasks.get(&id) {
            Some(t) => TaskSite {
                id,
                name: t.display_name(),
                spawned_at: t.location.clone().filter(|l| l.is_known()),
                await_point: taskscope_wire::hazards::await_point(t),
            },
            None => TaskSite {
                id,
                name: format!("task #{id}"),
                spawned_at: None,
                await_point: None,
            },
        })
        .collect();
    let names = sites.iter().map(|t| t.name.clone()).collect();
    Finding::new(hazard, names).with_tasks(sites)
}

/// Replays a recording, running the detectors after every complete state.
pub fn from_recording(path: &Path, config: &HazardConfig) -> Result<SourceReport, SourceError> {
    let (updates, error) = read_recording(path);
    let mut report = SourceReport::new(path.display().to_string(), SourceKind::Recording);
    if updates.is_empty() {
        return Err(match error {
            Some(source) => SourceError::EmptyRecording {
                path: path.to_path_buf(),
                source,
            },
            None => SourceError::NoUpdates {
                path: path.to_path_buf(),
            },
        });
    }
    if let Some(e) = error {
        report
            .warnings
            .push(format!("{e}; findings are from the frames before it"));
    }
    let mut replica = StateReplica::new();
    let mut growth = GrowthTracker::new();
    let mut states = 0u64;
    for update in updates {
        if replica.apply(update) == Applied::Staged {
            continue;
        }
        let state = replica.state();
        let Some(now) = state.updated_at else {
            continue;
        };
        states += 1;
        growth.observe(state, config.growth_window_ms, now);
        let mut found = detect(state, config, now);
        found.extend(growth.hazards(state, config, now));
        for h in found {
            report.add(finding_in(state, h));
        }
    }
    if states == 0 {
        report.warnings.push(
            "the recording has no complete state with a timestamp: nothing could be checked".into(),
        );
    }
    Ok(report)
}

/// One snapshot of a live target: its findings plus local detection.
pub fn from_live(
    target: &str,
    config: &HazardConfig,
    options: &ClientOptions,
) -> Result<SourceReport, SourceError> {
    let parsed: Target = target.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SourceError::Read {
            path: PathBuf::from(target),
            source: e,
        })?;
    let snapshot = runtime.block_on(client::snapshot(&parsed, options))?;
    let state = &snapshot.state;
    let mut report = SourceReport::new(parsed.to_string(), SourceKind::Live);
    let now = state
        .updated_at
        .unwrap_or_else(taskscope_wire::model::Timestamp::now);
    let mut found: Vec<Hazard> = state
        .hazards
        .iter()
        .filter(|h| HazardKind::from_id(&h.kind).is_none_or(|k| config.enabled(k)))
        .cloned()
        .map(|mut h| {
            if let Some(k) = HazardKind::from_id(&h.kind) {
                h.severity = config.severity_for(k, h.severity);
            }
            h
        })
        .collect();
    found.extend(detect(state, config, now));
    for h in found {
        report.add(finding_in(state, h));
    }
    Ok(report)
}

/// The dump analyzer's post-mortem findings.
pub fn from_core(
    path: &Path,
    exe: Option<&Path>,
    config: &HazardConfig,
) -> Result<SourceReport, SourceError> {
    let target = taskscope_dump::Target::Core {
        core: path.to_path_buf(),
        exe: exe.map(Path::to_path_buf),
    };
    let dump =
        taskscope_dump::analyze(&target, &taskscope_dump::Options::default()).map_err(|e| {
            SourceError::Core {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            }
        })?;
    let mut report = SourceReport::new(path.display().to_string(), SourceKind::Core);
    report.warnings.extend(dump.warnings.iter().cloned());
    let mut observations: Vec<&str> = Vec::new();
    for h in &dump.hazards {
        let Some(kind) = HazardKind::from_id(h.kind) else {
            // The dump analyzer also notes things that are not catalogue
            // hazards (e.g. a lock held by another task: contention).
            if !observations.contains(&h.kind) {
                observations.push(h.kind);
            }
            continue;
        };
        if !config.enabled(kind) {
            continue;
        }
        let info = kind.info();
        let tasks: Vec<&taskscope_dump::report::TaskReport> = h
            .tasks
            .iter()
            .filter_map(|id| dump.tasks.iter().find(|t| t.id == Some(*id)))
            .collect();
        let await_point = h
            .location
            .as_ref()
            .or_else(|| tasks.first().and_then(|t| t.await_point()))
            .map(|l| dump_location(&l.file, l.line, l.column));
        let spawn = tasks
            .first()
            .and_then(|t| t.spawned_at.as_ref())
            .map(|l| dump_location(&l.file, l.line, l.column));
        let mut evidence = h.evidence.clone();
        if let Some(r) = &h.resource {
            evidence.push(format!("resource: {r}"));
        }
        let hazard = Hazard {
            kind: info.id.to_string(),
            severity: config.severity_for(kind, info.default_severity),
            task_ids: h.tasks.clone(),
            resource_ids: Vec::new(),
            location: await_point.clone().or(spawn),
            await_point,
            summary: h.message.clone(),
            evidence,
            advice: info.advice.to_string(),
            doc_anchor: info.doc_anchor.to_string(),
            detected_at: None,
            fingerprint: format!(
                "{}{}",
                fingerprint(info.id, &h.tasks, &[]),
                h.resource
                    .as_deref()
                    .map(|r| format!(":{r}"))
                    .unwrap_or_default()
            ),
        };
        let names = tasks
            .iter()
            .map(|t| match (&t.future_type, t.id) {
                (Some(ty), _) => ty
                    .strip_prefix("tracing::instrument::Instrumented<")
                    .and_then(|inner| inner.strip_suffix('>'))
                    .unwrap_or(ty)
                    .to_string(),
                (None, Some(id)) => format!("task {id}"),
                (None, None) => format!("task @{}", t.header),
            })
            .collect();
        report.add(Finding::new(hazard, names));
    }
    if !observations.is_empty() {
        report.warnings.push(format!(
            "the dump analyzer's other observations are not catalogue hazards and are not reported here: {} (see `taskscope dump`)",
            observations.join(", ")
        ));
    }
    Ok(report)
}

fn dump_location(file: &str, line: u64, column: Option<u64>) -> Location {
    Location::new(
        file,
        u32::try_from(line).unwrap_or(u32::MAX),
        column.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
    )
}
