//! `taskscope dump`: post-mortem (or live) reconstruction of every tokio task
//! and its await chain, from an ELF core or a running process. A thin edge
//! over `taskscope_dump::analyze`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Output format of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["core", "pid"])))]
pub struct DumpArgs {
    /// The core file to analyse (ELF, x86-64; `gcore` or a kernel core dump).
    pub core: Option<PathBuf>,
    /// Analyse a running process instead (your own; its threads are paused
    /// while it is read, typically well under a second, then resumed).
    #[arg(long, conflicts_with = "core")]
    pub pid: Option<u32>,
    /// The executable; by default the one named in the core's file notes.
    #[arg(long)]
    pub exe: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DumpFormat::Text)]
    pub format: DumpFormat,
    /// Group tasks with identical await chains.
    #[arg(long)]
    pub coalesce: bool,
    /// Print every frame of thread stacks (runtime plumbing is folded by default).
    #[arg(long)]
    pub full_stacks: bool,
}

fn progress(msg: &str) {
    eprintln!("taskscope dump: {msg}");
}

pub fn run(args: DumpArgs) -> anyhow::Result<ExitCode> {
    let target = match (&args.core, args.pid) {
        (Some(core), _) => taskscope_dump::Target::Core {
            core: core.clone(),
            exe: args.exe.clone(),
        },
        (None, Some(pid)) => taskscope_dump::Target::Pid {
            pid,
            exe: args.exe.clone(),
        },
        (None, None) => anyhow::bail!("give a core file or --pid"),
    };
    let options = taskscope_dump::Options {
        progress: Some(progress),
    };
    let report = taskscope_dump::analyze(&target, &options)?;
    for w in &report.warnings {
        eprintln!("taskscope dump: warning: {w}");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.format {
        DumpFormat::Json => report.write_json(&mut out),
        DumpFormat::Text => report.write_text_with(
            &mut out,
            taskscope_dump::report::TextOptions {
                coalesce: args.coalesce,
                full_stacks: args.full_stacks,
            },
        ),
    }
    .context("writing the report")?;
    writeln!(out).ok();
    // A partial report (missing debug info, truncated core...) is still
    // printed, but scripts must be able to tell.
    Ok(if report.partial {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
