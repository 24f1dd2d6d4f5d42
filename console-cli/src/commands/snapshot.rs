//! `taskscope snapshot`: print the current tasks of a live target once.
//!
//! Connects with [`crate::client`], which speaks `taskscope.v1` to
//! taskscope-instrumented apps and falls back to console-api for apps using
//! `console-subscriber`; renders with [`crate::output`].

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::client::{self, ClientOptions, Protocol, Target};
use crate::output::{self, Format};

pub const LONG_ABOUT: &str = "\
Print the current tasks of a live target once, then exit.

The target is an app instrumented with taskscope (`taskscope::init()`) or any
app using console-subscriber. For each task: id (the id tokio-console shows),
tokio's task id, name, state, polls, busy / scheduled / idle time, live wakers
(clones-drops), wakes / self-wakes, spawn location and, for taskscope targets,
the logical async backtrace and what the task waits on. Hazards found by the
target's detectors are listed first; for console-subscriber targets taskscope's
detectors run here, on what console-api tells.

Exit status: 0 on success, 2 when the target cannot be reached or answers
something unexpected (the message says which).";

const AFTER_LONG_HELP: &str = "\
Targets:
  http://127.0.0.1:6669       the default (taskscope::init() and console-subscriber)
  127.0.0.1:7000, 7000        host:port, or just a port on 127.0.0.1
  unix:/run/app/console.sock  a Unix domain socket

Examples:
  taskscope snapshot
  taskscope snapshot 127.0.0.1:7000 --include-completed
  taskscope snapshot --protocol console-api   # what tokio-console sees of a taskscope app
  taskscope snapshot unix:/tmp/app.sock --format json | jq '.state.tasks[] | {name, state}'
  taskscope snapshot --format json | jq '.state.hazards[].kind'

JSON (--format json) is one document:
  {\"schema\": \"taskscope.snapshot/1\", \"target\": ..., \"protocol\": \"taskscope.v1\" | \"console-api\",
   \"taken_at\": <ns since epoch>, \"state\": {process, tasks: {<id>: task}, resources, async_ops,
   edges, hazards, dropped, updated_at, paused}}
Durations are integer nanoseconds (fields ending in _ns); unknown fields are null.";

/// Print the current tasks of a live target.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_LONG_HELP)]
pub struct SnapshotArgs {
    /// Where the app listens: http://host:port, host:port, a port, or unix:/path.
    #[arg(default_value = client::DEFAULT_TARGET)]
    pub target: String,

    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Also list tasks that completed recently (still in the target's retention window).
    #[arg(long)]
    pub include_completed: bool,

    /// Seconds allowed to connect and for each answer.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub timeout: f64,

    /// Largest gRPC message accepted, in MiB (console-api sends the whole state at once).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_message_mib: usize,

    /// console-api targets: also fetch each live task's poll-time histogram
    /// (one extra request per task), so long polls can be judged.
    #[arg(long)]
    pub details: bool,

    /// Which protocol to speak: `auto` tries taskscope.v1, then console-api.
    #[arg(long, value_enum, default_value_t = ProtocolChoice::Auto)]
    pub protocol: ProtocolChoice,
}

/// `--protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolChoice {
    /// taskscope.v1 if the target serves it, else console-api.
    Auto,
    /// Only taskscope.v1 (backtraces, hazards, wait edges).
    Taskscope,
    /// Only console-api: what tokio-console sees.
    ConsoleApi,
}

impl ProtocolChoice {
    pub fn protocol(self) -> Option<Protocol> {
        match self {
            ProtocolChoice::Auto => None,
            ProtocolChoice::Taskscope => Some(Protocol::Taskscope),
            ProtocolChoice::ConsoleApi => Some(Protocol::ConsoleApi),
        }
    }
}

impl SnapshotArgs {
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        Ok(ClientOptions {
            connect_timeout: seconds(self.timeout)?,
            max_message_bytes: self.max_message_mib.saturating_mul(1024 * 1024),
            include_completed: self.include_completed,
            protocol: self.protocol.protocol(),
            task_details: self.details,
            ..ClientOptions::default()
        })
    }
}

/// Parses `--timeout`-style seconds.
pub fn seconds(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("invalid --timeout {secs}: expected a positive number of seconds"))
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let target: Target = args.target.parse()?;
    let options = args.client_options()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let snapshot = runtime.block_on(client::snapshot(&target, &options))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match args.format {
        Format::Text => output::write_snapshot_text(&mut out, &snapshot),
        Format::Json => output::write_snapshot_json(&mut out, &snapshot, false),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `taskscope snapshot | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
