//! Overhead benchmark: what each way of instrumenting tokio tasks costs in
//! time and memory, against no instrumentation at all.
//!
//! ```sh
//! cargo bench -p taskscope --bench overhead                  # full run, Markdown table
//! cargo bench -p taskscope --bench overhead -- --quick       # reduced sizes, smoke run
//! cargo bench -p taskscope --bench overhead -- --only growth --configs none,taskscope-tracing --runs 5
//! cargo bench -p taskscope --bench overhead -- --format json
//! ```
//!
//! # Shape
//!
//! One binary, two roles. Run normally it is the *parent*: it plans every
//! (workload, configuration, run), re-executes itself once per run with
//! `--child WORKLOAD --child-config CONFIG`, enforces a timeout, and prints
//! the table. A *child* installs exactly one configuration (a global tracing
//! subscriber can only be set once per process), builds the runtime,
//! measures one workload and prints one JSON sample. Separate processes
//! also give each run a clean heap, so resident-memory figures belong to
//! that configuration alone.
//!
//! Modules: [`workload`] (the task bodies, identical under every
//! configuration), [`config`] (the configurations), [`floor_wrapper`]
//! (the minimal wrapper of `wrapper-floor`), [`floor_layer`] (the minimal
//! layers of `layer-floor` and `layer-extensions`), [`measure`] (CPU time
//! and RSS), [`runner`] (the parent's process handling), [`report`]
//! (statistics, Markdown and JSON).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;

mod config;
mod floor_layer;
mod floor_wrapper;
mod measure;
mod report;
mod runner;
mod workload;

use config::Config;
use runner::Column;
use workload::{Sizes, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Markdown,
    Json,
}

/// Overhead of task instrumentation (none, floor, console-subscriber,
/// taskscope's layer, taskscope's wrapper) on four tokio workloads.
#[derive(Debug, Parser)]
#[command(
    name = "overhead",
    bin_name = "cargo bench -p taskscope --bench overhead --"
)]
struct Args {
    /// Runs per (workload, configuration); the table shows min and median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Reduced task counts and durations, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Only these workloads (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Workload>,
    /// Only these configurations (comma-separated); keep `none` in for ratios.
    #[arg(long, value_enum, value_delimiter = ',')]
    configs: Vec<Config>,
    /// Seconds before one run is stopped and its cell marked "timeout".
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// GiB of RSS at which one run is stopped and its cell marked (keeps
    /// console-subscriber's per-task histograms from exhausting the machine).
    #[arg(long, default_value_t = 8)]
    memory_cap: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    format: Format,
    /// A second build of this benchmark, made without `--cfg tokio_unstable`,
    /// whose `none` is shown as an extra column (see `instrument/benches/run.sh`).
    #[arg(long, value_name = "PATH")]
    baseline_exe: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Child role: measure this workload once and print one sample.
    #[arg(long, hide = true, value_enum, requires = "child_config")]
    child: Option<Workload>,
    /// Child role: the configuration to install.
    #[arg(long, hide = true, value_enum)]
    child_config: Option<Config>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let (Some(workload), Some(config)) = (args.child, args.child_config) {
        return child(workload, config, args.quick);
    }
    parent(args)
}

fn child(workload: Workload, config: Config, quick: bool) -> anyhow::Result<()> {
    let installed = config::install(config)?;
    let runtime = workload::runtime()?;
    // Let servers and aggregators the configuration started come up, so
    // their start-up is part of the baseline, not of the workload.
    std::thread::sleep(Duration::from_millis(200));
    let mut sample = workload::run(workload, Sizes::new(quick), installed.spawner, &runtime)?;
    if workload == Workload::Growth {
        sample.dropped_spawns = installed.dropped_spawns(&runtime)?;
    }
    let json = serde_json::to_string(&sample).context("encoding the sample")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}{json}", runner::SAMPLE_PREFIX).context("writing the sample")?;
    stdout.flush().context("writing the sample")?;
    // Tearing down a runtime and a subscriber holding a million tasks'
    // state is not part of any measurement.
    std::process::exit(0)
}

fn parent(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_before = measure::load_average();
    let exe = std::env::current_exe().context("finding this benchmark's executable")?;
    let configs = if args.configs.is_empty() {
        Config::ALL.to_vec()
    } else {
        args.configs.clone()
    };
    let mut columns: Vec<Column> = Vec::new();
    if let Some(baseline) = &args.baseline_exe {
        columns.push(Column {
            label: "none, no tokio_unstable".to_owned(),
            config: Config::None,
            other_build: true,
            exe: baseline.clone(),
        });
    }
    columns.extend(configs.iter().map(|&config| Column {
        label: config.name().to_owned(),
        config,
        other_build: false,
        exe: exe.clone(),
    }));
    let plan = runner::Plan {
        workloads: Workload::ALL
            .into_iter()
            .filter(|w| args.only.is_empty() || args.only.contains(w))
            .collect(),
        columns,
        runs: usize::try_from(args.runs).context("--runs is too large")?,
        quick: args.quick,
        timeout: Duration::from_secs(args.timeout),
        memory_cap_bytes: args.memory_cap.saturating_mul(1 << 30),
    };
    let cells = runner::run(&plan);
    let report = report::Report {
        command: command_line(args.baseline_exe.is_some()),
        tokio_unstable: cfg!(tokio_unstable),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        worker_threads: 2,
        runs: plan.runs,
        quick: plan.quick,
        timeout_secs: plan.timeout.as_secs_f64(),
        memory_cap_bytes: plan.memory_cap_bytes,
        sizes: Sizes::new(plan.quick),
        metrics: report::metric_reports(&plan.columns, &cells),
        columns: plan.columns,
        cells,
        wall_secs: started.elapsed().as_secs_f64(),
        load_average: [load_before, measure::load_average()],
    };
    let text = match args.format {
        Format::Markdown => report::markdown(&report),
        Format::Json => serde_json::to_string_pretty(&report).context("encoding the report")?,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").context("printing the report")?;
    Ok(())
}

/// How the user started this run, for the table's header: `run.sh` passes
/// `--baseline-exe`, so that flag stands for the script.
fn command_line(from_run_sh: bool) -> String {
    let mut args = std::env::args().skip(1).peekable();
    let mut shown = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--baseline-exe" => {
                args.next();
            }
            _ if arg.starts_with("--baseline-exe=") => {}
            _ => shown.push(arg),
        }
    }
    let program = if from_run_sh {
        "bash instrument/benches/run.sh"
    } else if shown.is_empty() {
        "cargo bench -p taskscope --bench overhead"
    } else {
        "cargo bench -p taskscope --bench overhead --"
    };
    std::iter::once(program.to_owned())
        .chain(shown)
        .collect::<Vec<_>>()
        .join(" ")
}
