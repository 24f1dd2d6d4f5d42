//! `taskscope demo`: run the embedded demo app ([`crate::demo_app`]) and
//! watch it.
//!
//! The demo serves taskscope on `--bind`. When stdout is a terminal, this
//! command opens the console ([`crate::console`]) on it, over real gRPC on
//! loopback. Otherwise (piped, or with `--print`) it takes a snapshot every
//! second through the same client `taskscope snapshot` uses and prints it,
//! until `--duration` runs out or Ctrl-C. While it runs, any other client
//! can attach too.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{self, ClientOptions, Target};
use crate::console::{self, ConsoleOptions, Source};
use crate::demo_app::DemoApp;
use crate::output::{self, Format};

pub const LONG_ABOUT: &str = "\
Run an embedded demo app with real async hazards and watch it.

The demo is a small tokio service instrumented with taskscope: a producer and a
consumer over a bounded channel (with nested #[tracing::instrument] calls),
periodic tickers, and the hazards taskscope finds: two tasks deadlocked on each
other's Mutex, a task whose poll blocks its thread for 200 ms, a future that
loses its waker, and futures/tasks cancelled mid-way by a timeout and by abort.

It listens on --bind (default 127.0.0.1:6669) for taskscope and tokio-console
clients. In a terminal it opens `taskscope console` on itself; with --print, or
when stdout is not a terminal, it prints a snapshot every second instead (text,
or one JSON document per line with --format json, same schema as
`taskscope snapshot --format json`).";

const AFTER_LONG_HELP: &str = "\
Examples:
  taskscope demo                       # open the console on the demo (q quits)
  taskscope demo --print               # print snapshots until Ctrl-C
  taskscope demo --bind 127.0.0.1:0    # any free port (printed at start)
  taskscope demo --duration 5 --format json | jq -c '.state.hazards[].kind'

While it runs, from another terminal:
  taskscope snapshot
  tokio-console http://127.0.0.1:6669";

/// Run the embedded demo app and watch it.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_LONG_HELP)]
pub struct DemoArgs {
    /// Address the demo's taskscope server listens on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6669")]
    pub bind: String,

    /// Stop after this many seconds (default: run until Ctrl-C; the console
    /// runs until you quit it).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Output format of the snapshots.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Seconds between snapshots.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,

    /// Print snapshots instead of opening the console (the default when
    /// stdout is not a terminal).
    #[arg(long)]
    pub print: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let duration = args
        .duration
        .map(|secs| {
            Duration::try_from_secs_f64(secs)
                .with_context(|| format!("invalid --duration {secs}: expected seconds"))
        })
        .transpose()?;
    let interval = Duration::try_from_secs_f64(args.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| {
            format!(
                "invalid --interval {}: expected a positive number of seconds",
                args.interval
            )
        })?;

    let app = DemoApp::start(&args.bind)
        .with_context(|| format!("starting the demo on {}", args.bind))?;
    let addr = app.local_addr();
    let target: Target = addr.to_string().parse()?;
    if !args.print && std::io::stdout().is_terminal() {
        let result = console::run(ConsoleOptions {
            source: Source::Live(target),
            client: ClientOptions::default(),
            dot_dir: PathBuf::from("."),
        });
        app.stop();
        return result.map(|()| ExitCode::SUCCESS);
    }
    let stop_hint = match duration {
        Some(d) => format!("stopping after {}s", d.as_secs_f64()),
        None => "press Ctrl-C to stop".to_string(),
    };
    note(&format!(
        "taskscope demo: listening on {target}\n  attach with:  taskscope snapshot {target}\n                tokio-console {target}\n  {stop_hint}"
    ));

    // The watcher runs on its own single-threaded runtime with tracing
    // silenced on this thread, so its own connection tasks do not show up as
    // tasks of the demo.
    let watcher = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the watcher's runtime")?;
    let result =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            watcher.block_on(watch_loop(&target, args.format, interval, duration))
        });
    app.stop();
    result
}

/// A message for the user on stderr; a closed stderr is not worth dying for.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

async fn watch_loop(
    target: &Target,
    format: Format,
    interval: Duration,
    duration: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let options = ClientOptions::default();
    let started = Instant::now();
    let deadline = duration.map(|d| tokio::time::Instant::from_std(started + d));
    let mut ticker = tokio::time::interval(interval);
    // The first tick is immediate: the first snapshot comes one interval in,
    // once the tasks have reached their hazards.
    ticker.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let sleep_until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut ctrl_c => {
                note("taskscope demo: stopping (Ctrl-C)");
                return Ok(ExitCode::SUCCESS);
            }
            () = sleep_until_deadline => return Ok(ExitCode::SUCCESS),
            _ = ticker.tick() => {}
        }
        let snapshot = client::snapshot(target, &options)
            .await
            .context("taking a snapshot of the demo")?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let written = match format {
            Format::Text => writeln!(
                out,
                "──── after {:.1}s ────────────────────────────────",
                started.elapsed().as_secs_f64()
            )
            .and_then(|()| output::write_snapshot_text(&mut out, &snapshot))
            .and_then(|()| writeln!(out)),
            Format::Json => output::write_snapshot_json(&mut out, &snapshot, true),
        };
        match written.and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e).context("writing to stdout"),
        }
    }
}
