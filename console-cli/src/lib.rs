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
pub mod demo_app;
pub mod output;

/// Async task diagnostics: live console, snapshots, crash dumps, CI hazard reports.
#[derive(Debug, Parser)]
#[command(name = "taskscope", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the current tasks of a live target (taskscope or console-subscriber app).
    #[command(long_about = commands::snapshot::LONG_ABOUT)]
    Snapshot(commands::snapshot::SnapshotArgs),
    /// Run the embedded demo app (real hazards inside) and watch it.
    #[command(long_about = commands::demo::LONG_ABOUT)]
    Demo(commands::demo::DemoArgs),
    /// Reconstruct runtimes, threads and every task's await chain from an ELF core or a live pid.
    Dump(commands::dump::DumpArgs),
}

/// Parses the command line and runs the chosen subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Snapshot(args) => commands::snapshot::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Dump(args) => commands::dump::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("taskscope: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
