//! `taskscope ci -- <command…>`: run a test command with every
//! taskscope-instrumented process recording, then report the hazards of all
//! the recordings, plus the static `Cargo.lock` check.
//!
//! Each process started by the command inherits `TASKSCOPE_RECORD_DIR`
//! (a fresh temporary directory; `taskscope::init()` then records to
//! `<dir>/<exe>-<pid>.tsrec`) and `TASKSCOPE_BIND=127.0.0.1:0`, so test
//! binaries running in parallel do not fight over one port.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::report::{finish, root_dir};
use crate::report::source::from_recording;
use crate::report::{lockfile, Report, ReportConfig, SourceKind, SourceReport};

pub const LONG_ABOUT: &str = "\
Run a command (usually your test suite) with every taskscope-instrumented
process recording into a temporary directory, then report the hazards of all
recordings, plus a static check of the nearest Cargo.lock (two incompatible
tokio versions, or tokio with async-std).

Instrumented processes (taskscope::init()) see TASKSCOPE_RECORD_DIR=<tmp> and
TASKSCOPE_BIND=127.0.0.1:0 (unless TASKSCOPE_BIND is already set).

taskscope.toml (./taskscope.toml, the repository root's, or --config):

  [hazards]
  blocking_poll_ms = 20                # thresholds; see the hazard docs
  disable = [\"self-wake-loop\"]

  [[suppress]]
  hazard = \"blocking-poll\"             # a hazard id, or \"*\"
  location = \"src/render.rs:*\"         # optional glob on file:line (or the file)
  task = \"render-*\"                    # optional glob on the task name
  reason = \"renders synchronously on purpose (#42)\"   # required

Suppressed findings stay in the report, with their reason; they no longer fail
the run.

Exit status: the command's own status when it failed; else 1 when an
unsuppressed finding at or above --fail-on remains; else 0. 2 when taskscope
itself cannot run (bad taskscope.toml, command not found).";

/// Run a command with recording on, then report hazards over all recordings.
#[derive(Debug, clap::Args)]
pub struct CiArgs {
    #[command(flatten)]
    pub report: super::report::ReportOptions,
    /// Keep the recordings in this directory instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    pub record_dir: Option<PathBuf>,
    /// Skip the static Cargo.lock check.
    #[arg(long)]
    pub no_lockfile: bool,
    /// The command to run, after `--`.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The `.tsrec` files directly in `dir`, sorted by name.
pub fn recordings_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "tsrec") && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Loads every recording of `dir` (a damaged one becomes a source with a
/// warning, so one crashed process does not hide the others' findings).
pub fn load_recordings(dir: &Path, config: &ReportConfig) -> anyhow::Result<Vec<SourceReport>> {
    let mut sources = Vec::new();
    for path in recordings_in(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        match from_recording(&path, &config.hazards) {
            Ok(mut s) => {
                s.name = name;
                sources.push(s);
            }
            Err(e) => {
                let mut s = SourceReport::new(name, SourceKind::Recording);
                s.warnings.push(e.to_string());
                sources.push(s);
            }
        }
    }
    Ok(sources)
}

pub fn run(args: CiArgs) -> anyhow::Result<ExitCode> {
    let root = root_dir(args.report.root.as_deref())?;
    let config = ReportConfig::discover(args.report.config.as_deref(), &root)?;
    let temp;
    let dir: PathBuf = match &args.record_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating the recording directory {}", d.display()))?;
            std::path::absolute(d).unwrap_or_else(|_| d.clone())
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("taskscope-ci-")
                .tempdir()
                .context("creating a temporary directory for the recordings")?;
            temp.path().to_path_buf()
        }
    };
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given after `--`")?;
    let mut command = std::process::Command::new(program);
    // TASKSCOPE_RECORD (one file) would win over the directory and make
    // every process write the same file.
    command
        .args(rest)
        .env("TASKSCOPE_RECORD_DIR", &dir)
        .env_remove("TASKSCOPE_RECORD");
    if std::env::var_os("TASKSCOPE_BIND").is_none() {
        command.env("TASKSCOPE_BIND", "127.0.0.1:0");
    }
    let status = command
        .status()
        .with_context(|| format!("running `{}`", args.command.join(" ")))?;

    let mut sources = load_recordings(&dir, &config)?;
    if sources.is_empty() {
        eprintln!(
            "taskscope ci: warning: no recording in {}: no process called taskscope::init() (or it exited before its first publish)",
            dir.display()
        );
    }
    if !args.no_lockfile {
        let cwd = std::env::current_dir().context("reading the current directory")?;
        if let Some(lock) = lockfile::find_lockfile(&cwd) {
            let display = lock
                .strip_prefix(&root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| lock.display().to_string());
            sources.push(lockfile::check(&lock, &display, &config.hazards)?);
        }
    }
    for s in &sources {
        for w in &s.warnings {
            eprintln!("taskscope ci: warning: {}: {w}", s.name);
        }
    }
    let report = Report::new(root, args.report.fail_on, sources, &config);
    let code = finish(&report, args.report.format, args.report.output.as_deref())?;
    if !status.success() {
        eprintln!(
            "taskscope ci: `{}` failed: {status}",
            args.command.join(" ")
        );
        let c = status.code().unwrap_or(1).clamp(1, 255);
        return Ok(ExitCode::from(u8::try_from(c).unwrap_or(1)));
    }
    Ok(code)
}
