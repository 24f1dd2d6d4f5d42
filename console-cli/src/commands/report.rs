//! `taskscope report`: hazards of one source (recording, live target or
//! core) as SARIF, JUnit XML, Markdown or JSON, with an exit status CI can
//! gate on. The work is in [`crate::report`]; this is the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::client::ClientOptions;
use crate::report::source::{self, LoadOptions};
use crate::report::{find_root, FailOn, Report, ReportConfig, ReportFormat, SourceReport};

pub const LONG_ABOUT: &str = "\
Report the hazards of one source as SARIF, JUnit XML, Markdown or JSON.

SOURCE is a taskscope recording (TASKSCOPE_RECORD=file.tsrec), a live target
(http://host:port, host:port, unix:/path) or an ELF core file. A recording is
replayed update by update and the detectors run on every state, so a hazard
seen at any moment counts (once, by fingerprint). Thresholds and suppressions
come from taskscope.toml ([hazards] and [[suppress]]; see `taskscope ci --help`).

Exit status: 0 when no unsuppressed finding is at or above --fail-on, 1 when
one is, 2 when the source cannot be read.";

/// Report the hazards of a recording, a live target or a core.
/// What `report` and `ci` share: how the report is written and judged.
#[derive(Debug, clap::Args)]
pub struct ReportOptions {
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = ReportFormat::Markdown)]
    pub format: ReportFormat,
    /// Write the report here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Exit with 1 when an unsuppressed finding of this level or above remains.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    pub fail_on: FailOn,
    /// taskscope.toml to read ([hazards] thresholds, [[suppress]] rules);
    /// by default ./taskscope.toml or the repository root's.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Repository root that locations are made relative to (default: the
    /// nearest directory above the current one holding .git).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A recording (.tsrec), a live target (http://…, host:port, unix:/path) or an ELF core.
    pub source: String,
    #[command(flatten)]
    pub report: ReportOptions,
    /// The executable of a core file, when not the one the core names.
    #[arg(long, value_name = "FILE")]
    pub exe: Option<PathBuf>,
}

/// The repository root: `explicit`, else found from the current directory.
pub fn root_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    Ok(match explicit {
        Some(r) => cwd.join(r),
        None => find_root(&cwd),
    })
}

/// Renders `report` to `output` (or stdout) and turns it into the exit status.
pub fn finish(
    report: &Report,
    format: ReportFormat,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let text = report.render(format);
    match output {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("writing the report to {}", path.display()))?,
        None => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(e).context("writing to stdout"),
            }
        }
    }
    let t = report.totals();
    eprintln!(
        "taskscope: {} error(s), {} warning(s), {} info, {} suppressed; {} at or above --fail-on {}",
        t.errors,
        t.warnings,
        t.infos,
        t.suppressed,
        t.failing,
        report.fail_on.as_str()
    );
    Ok(if t.failing > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let root = root_dir(args.report.root.as_deref())?;
    let config = ReportConfig::discover(args.report.config.as_deref(), &root)?;
    let spec = source::classify(&args.source)?;
    let options = LoadOptions {
        exe: args.exe.clone(),
        client: ClientOptions::default(),
    };
    let loaded: SourceReport = source::load(&spec, &config.hazards, &options)?;
    for w in &loaded.warnings {
        eprintln!("taskscope report: warning: {}: {w}", loaded.name);
    }
    let report = Report::new(root, args.report.fail_on, vec![loaded], &config);
    finish(&report, args.report.format, args.report.output.as_deref())
}
