//! The `taskscope` command line: one subcommand per user moment.
//!
//! `main.rs` is a thin shim over [`main`]; every subcommand lives in
//! `commands/` and exposes a clap `Args` struct plus `run`.
//!
//! Shared pieces:
//! * [`client`] — connect to a live target (taskscope.v1, or console-api for
//!   console-subscriber apps) and get a [`taskscope_wire::model::State`],
//!   once or as a stream;
//! * [`output`] — text tables and JSON, shared by every subcommand;
//! * [`demo_app`] — the instrumented demo app `taskscope demo` runs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod client;
pub mod commands;
pub mod console;
pub mod demo_app;
pub mod output;
pub mod report;

const AFTER_HELP: &str = "\
Getting started:
  taskscope demo                          an instrumented demo app with real hazards, in the console
  taskscope console                       watch your app (taskscope::init() or console-subscriber) on 127.0.0.1:6669
  taskscope console run.tsrec             replay a recording written with TASKSCOPE_RECORD=run.tsrec
  taskscope dump core.1234                every task and its await chain from a core file (no code change needed)
  taskscope ci -- cargo test              run tests with recording on; fail on hazards (SARIF, JUnit, Markdown)
  taskscope explain lost-waker            what a hazard id means and what to do about it
  gdb -x \"$(taskscope gdb-init --script)\" -p PID
                                          async-aware gdb: info async-tasks, async-bt all, async-hazards

Each command's --help explains its input, output formats and exit status.";

/// Async task diagnostics: live console, snapshots, crash dumps, CI hazard reports.
#[derive(Debug, Parser)]
#[command(
    name = "taskscope",
    version,
    about = "Async task diagnostics for Rust: live console, crash dumps, debugger commands, CI hazard reports",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the current tasks of a live target (taskscope or console-subscriber app).
    #[command(long_about = commands::snapshot::LONG_ABOUT)]
    Snapshot(commands::snapshot::SnapshotArgs),
    /// Interactive console on a live target or a recording: tasks, backtraces, resources, hazards, replay.
    #[command(long_about = commands::console::LONG_ABOUT)]
    Console(commands::console::ConsoleArgs),
    /// Run the embedded demo app (real hazards inside) and watch it.
    #[command(long_about = commands::demo::LONG_ABOUT)]
    Demo(commands::demo::DemoArgs),
    /// Reconstruct runtimes, threads and every task's await chain from an ELF core or a live pid.
    Dump(commands::dump::DumpArgs),
    /// Report the hazards of a recording, live target or core as SARIF, JUnit, Markdown or JSON.
    #[command(long_about = commands::report::LONG_ABOUT)]
    Report(commands::report::ReportArgs),
    /// Run a command with recording on, then report hazards over all recordings (CI gate).
    #[command(long_about = commands::ci::LONG_ABOUT)]
    Ci(commands::ci::CiArgs),
    /// Explain a hazard id (what triggers it, what to do, where it is found), or list them all.
    #[command(long_about = commands::explain::LONG_ABOUT)]
    Explain(commands::explain::ExplainArgs),
    /// Print the lines that load taskscope's gdb commands (info async-tasks, async-bt, async-hazards).
    GdbInit(commands::debugger::InitArgs),
    /// Print the lines that load taskscope's lldb-19 commands (async tasks, async bt, async hazards).
    LldbInit(commands::debugger::InitArgs),
    /// Serve a gdb/lldb front end on stdin/stdout (run by the debugger scripts).
    #[command(hide = true)]
    DebuggerServe,
}

/// Parses the command line and runs the chosen subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Snapshot(args) => commands::snapshot::run(args),
        Command::Console(args) => commands::console::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Dump(args) => commands::dump::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Ci(args) => commands::ci::run(args),
        Command::Explain(args) => commands::explain::run(args),
        Command::GdbInit(args) => {
            commands::debugger::run_init(commands::debugger::Debugger::Gdb, args)
        }
        Command::LldbInit(args) => {
            commands::debugger::run_init(commands::debugger::Debugger::Lldb, args)
        }
        Command::DebuggerServe => commands::debugger::run_serve(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("taskscope: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
