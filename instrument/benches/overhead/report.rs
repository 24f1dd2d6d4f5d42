//! Turns the collected runs into the Markdown table (for the README) or
//! JSON (for scripts).
//!
//! Every metric is reported as min and median over the runs, and as the
//! ratio of each to the `none` column's min and median. Two extra figures
//! answer the questions the benchmark exists for: how much taskscope's
//! layer adds on top of the floor every tracing-based tool pays
//! (`taskscope-tracing ÷ floor`), and what a live task costs in memory.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::Config;
use crate::runner::{Cell, Column, Outcome, StopReason};
use crate::workload::{Sample, Sizes, Workload};

#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unit {
    Seconds,
    Nanoseconds,
    Bytes,
    Count,
}

/// One number the benchmark reports for a workload.
pub struct Metric {
    pub workload: Workload,
    pub name: &'static str,
    pub unit: Unit,
    /// Whether a ratio to `none` means anything (a drop count has none).
    pub ratio: bool,
    pub value: fn(&Sample) -> Option<f64>,
}

pub const METRICS: &[Metric] = &[
    Metric {
        workload: Workload::SpawnStorm,
        name: "wall time",
        unit: Unit::Seconds,
        ratio: true,
        value: |s| Some(s.wall_secs),
    },
    Metric {
        workload: Workload::SpawnStorm,
        name: "CPU time",
        unit: Unit::Seconds,
        ratio: true,
        value: |s| Some(s.cpu_secs),
    },
    Metric {
        workload: Workload::PingPong,
        name: "wall time",
        unit: Unit::Seconds,
        ratio: true,
        value: |s| Some(s.wall_secs),
    },
    Metric {
        workload: Workload::PingPong,
        name: "CPU time",
        unit: Unit::Seconds,
        ratio: true,
        value: |s| Some(s.cpu_secs),
    },
    Metric {
        workload: Workload::LongLived,
        name: "CPU per loop iteration",
        unit: Unit::Nanoseconds,
        ratio: true,
        value: |s| s.cpu_ns_per_iteration,
    },
    Metric {
        workload: Workload::LongLived,
        name: "memory per live task",
        unit: Unit::Bytes,
        ratio: true,
        value: |s| s.rss_per_live_task_bytes,
    },
    Metric {
        workload: Workload::Growth,
        name: "peak RSS growth",
        unit: Unit::Bytes,
        ratio: true,
        value: |s| s.peak_rss_growth_bytes.map(|b| b as f64),
    },
    Metric {
        workload: Workload::Growth,
        name: "wall time",
        unit: Unit::Seconds,
        ratio: true,
        value: |s| Some(s.wall_secs),
    },
    Metric {
        workload: Workload::Growth,
        name: "dropped spawn events",
        unit: Unit::Count,
        ratio: false,
        value: |s| s.dropped_spawns.map(|n| n as f64),
    },
];

/// What one (metric, column) shows.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Figure {
    Measured {
        runs: usize,
        min: f64,
        median: f64,
        /// min ÷ none's min, median ÷ none's median.
        min_ratio: Option<f64>,
        median_ratio: Option<f64>,
    },
    /// The configuration cannot report this number in-process.
    NotAvailable,
    /// Stopped by the time limit or the memory cap; `text` says which.
    Stopped {
        text: String,
    },
    Failed {
        reason: String,
    },
    NotRun,
}

#[derive(Debug, Serialize)]
pub struct MetricReport {
    pub workload: Workload,
    pub metric: &'static str,
    pub unit: Unit,
    pub figures: Vec<ColumnFigure>,
    /// taskscope-tracing ÷ floor, (min, median).
    pub tracing_over_floor: Option<MinMedian>,
}

/// One column's figure for one metric.
#[derive(Debug, Serialize)]
pub struct ColumnFigure {
    pub column: String,
    #[serde(flatten)]
    pub figure: Figure,
}

/// A ratio of mins and a ratio of medians.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MinMedian {
    pub min: f64,
    pub median: f64,
}

/// Everything printed, also the JSON document's shape.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The command line that produced this report.
    pub command: String,
    pub tokio_unstable: bool,
    pub cpus: usize,
    pub worker_threads: usize,
    pub runs: usize,
    pub quick: bool,
    pub timeout_secs: f64,
    pub memory_cap_bytes: u64,
    pub sizes: Sizes,
    pub columns: Vec<Column>,
    pub metrics: Vec<MetricReport>,
    pub cells: Vec<Cell>,
    pub wall_secs: f64,
    /// One-minute load average when the run started and when it ended.
    pub load_average: [Option<f64>; 2],
}

pub fn metric_reports(columns: &[Column], cells: &[Cell]) -> Vec<MetricReport> {
    let mut reports = Vec::new();
    for metric in METRICS {
        let cell = |label: &str| {
            cells
                .iter()
                .find(|c| c.workload == metric.workload && c.column == label)
        };
        if !columns.iter().any(|column| cell(&column.label).is_some()) {
            continue;
        }
        let stats = |label: &str| cell(label).and_then(|c| min_median(metric, c));
        let none = columns
            .iter()
            .find(|c| c.config == Config::None && !c.other_build)
            .and_then(|c| stats(&c.label));
        let figures = columns
            .iter()
            .map(|column| {
                let figure = match cell(&column.label) {
                    None => Figure::NotRun,
                    Some(cell) => figure(metric, cell, none),
                };
                ColumnFigure {
                    column: column.label.clone(),
                    figure,
                }
            })
            .collect();
        let by_config = |config: Config| {
            columns
                .iter()
                .find(|c| c.config == config && !c.other_build)
                .and_then(|c| stats(&c.label))
        };
        let tracing_over_floor = match (
            by_config(Config::TaskscopeTracing),
            by_config(Config::Floor),
        ) {
            (Some((tmin, tmed)), Some((fmin, fmed))) if metric.ratio => Some(MinMedian {
                min: tmin / fmin,
                median: tmed / fmed,
            }),
            _ => None,
        };
        reports.push(MetricReport {
            workload: metric.workload,
            metric: metric.name,
            unit: metric.unit,
            figures,
            tracing_over_floor,
        });
    }
    reports
}

fn min_median(metric: &Metric, cell: &Cell) -> Option<(f64, f64)> {
    let mut values: Vec<f64> = cell.samples().filter_map(metric.value).collect();
    if values.is_empty() || values.len() < cell.outcomes.len() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some((values[0], median))
}

fn figure(metric: &Metric, cell: &Cell, none: Option<(f64, f64)>) -> Figure {
    for outcome in &cell.outcomes {
        match outcome {
            Outcome::Stopped { .. } => {
                return Figure::Stopped {
                    text: stopped_text(outcome),
                }
            }
            Outcome::Failed { reason } => {
                return Figure::Failed {
                    reason: reason.clone(),
                }
            }
            Outcome::Measured { .. } => {}
        }
    }
    let Some((min, median)) = min_median(metric, cell) else {
        return Figure::NotAvailable;
    };
    let ratio = |value: f64, base: f64| (metric.ratio && base > 0.0).then(|| value / base);
    Figure::Measured {
        runs: cell.outcomes.len(),
        min,
        median,
        min_ratio: none.and_then(|(base, _)| ratio(min, base)),
        median_ratio: none.and_then(|(_, base)| ratio(median, base)),
    }
}

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * KIB;
const GIB: f64 = 1024.0 * MIB;

pub fn format_value(unit: Unit, value: f64) -> String {
    match unit {
        Unit::Seconds if value < 1.0 => format!("{:.0} ms", value * 1e3),
        Unit::Seconds => format!("{value:.2} s"),
        Unit::Nanoseconds if value < 1e3 => format!("{value:.0} ns"),
        Unit::Nanoseconds => format!("{:.2} µs", value / 1e3),
        Unit::Bytes if value.abs() < 10.0 * KIB => format!("{value:.0} B"),
        Unit::Bytes if value.abs() < 10.0 * MIB => format!("{:.0} KiB", value / KIB),
        Unit::Bytes if value.abs() < 10.0 * GIB => format!("{:.0} MiB", value / MIB),
        Unit::Bytes => format!("{:.1} GiB", value / GIB),
        Unit::Count => format!("{value:.0}"),
    }
}

fn format_ratio(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) if r >= 10.0 => format!("{r:.0}×"),
        Some(r) => format!("{r:.2}×"),
        None => "–".to_owned(),
    }
}

fn short(figure: &Figure, unit: Unit) -> String {
    match figure {
        Figure::Measured {
            median,
            median_ratio,
            ..
        } => match median_ratio {
            Some(r) => format!(
                "{} ({})",
                format_value(unit, *median),
                format_ratio(Some(*r))
            ),
            None => format_value(unit, *median),
        },
        Figure::NotAvailable => "n/a".to_owned(),
        Figure::Stopped { text } => text.clone(),
        Figure::Failed { .. } => "failed".to_owned(),
        Figure::NotRun => "–".to_owned(),
    }
}

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let labels: Vec<&str> = report.columns.iter().map(|c| c.label.as_str()).collect();
    let _ = writeln!(out, "## Overhead\n");
    let _ = writeln!(
        out,
        "Measured by `{}` on {} CPU(s): \
         tokio multi-thread runtime with {} workers, {} run(s) per cell in separate \
         processes, min and median; a run is stopped after {:.0} s or above {} RSS, \
         and its cell says so. Whole benchmark: {}.\n",
        report.command,
        report.cpus,
        report.worker_threads,
        report.runs,
        report.timeout_secs,
        format_value(Unit::Bytes, report.memory_cap_bytes as f64),
        format_duration(report.wall_secs),
    );
    if let [Some(start), Some(end)] = report.load_average {
        let _ = writeln!(
            out,
            "Load average (1 min) at start / end: {start:.1} / {end:.1} on {} CPU(s){}\n",
            report.cpus,
            if start.max(end) > 0.5 * report.cpus as f64 {
                ": other work shared the machine, so wall times are noisy; CPU \
                 times and memory are steadier."
            } else {
                "."
            }
        );
    }
    let _ = writeln!(
        out,
        "Build: {}. In `none` no subscriber is installed, so each of tokio's \
         instrumentation callsites costs one cached check; a build without \
         `tokio_unstable` has no callsites at all (see `instrument/benches/run.sh`).\n",
        if report.tokio_unstable {
            "`--cfg tokio_unstable` with tokio's `tracing` feature, as the workspace builds"
        } else {
            "without `--cfg tokio_unstable` (tokio's instrumentation compiled out)"
        }
    );
    let _ = writeln!(
        out,
        "Configurations: `none` no subscriber; `floor` tracing-subscriber's registry \
         plus a layer that only enables the callsites taskscope's layer enables (the \
         cost any tracing-based tool pays before its own work); `console-subscriber` \
         0.5 as its docs set it up, with its gRPC server; `taskscope-tracing` \
         taskscope's layer and gRPC server; `taskscope-wrapper` no subscriber, every \
         spawned future wrapped in `taskscope::instrument`.{}{}{}\n",
        if report
            .columns
            .iter()
            .any(|c| c.config == Config::WrapperFloor)
        {
            " `wrapper-floor`: no subscriber, every spawned future wrapped in the least \
             a wrapper that counts wakes and times polls does (its own waker forwarding \
             to the executor's, two time-stamp-counter reads per poll; no task record, \
             registry or server)."
        } else {
            ""
        },
        if report
            .columns
            .iter()
            .any(|c| matches!(c.config, Config::LayerFloor | Config::LayerExtensions))
        {
            " `layer-floor` and `layer-extensions`: `floor` with a layer on top that only \
             counts each task's polls and wakes and reads the time-stamp counter around \
             each poll; `layer-floor` finds a task's record \
             in a flat table indexed by the span's slab address (one index, no hash, no \
             lock: the least such a layer pays), `layer-extensions` in the span's \
             extensions, the way tracing layers usually keep per-span data."
        } else {
            ""
        },
        if report.columns.iter().any(|c| c.other_build) {
            " `none, no tokio_unstable`: `none` run by a second build of this benchmark \
             without `--cfg tokio_unstable` (`instrument/benches/run.sh`)."
        } else {
            ""
        }
    );

    let _ = writeln!(out, "### Summary (median, × none's median)\n");
    let _ = write!(out, "| workload | metric |");
    for label in &labels {
        let _ = write!(out, " {label} |");
    }
    let _ = writeln!(out, " taskscope-tracing ÷ floor |");
    let _ = write!(out, "|---|---|");
    for _ in &labels {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out, "---:|");
    for metric in &report.metrics {
        let _ = write!(out, "| {} | {} |", metric.workload.name(), metric.metric);
        for ColumnFigure { figure, .. } in &metric.figures {
            let _ = write!(out, " {} |", short(figure, metric.unit));
        }
        let _ = writeln!(
            out,
            " {} |",
            format_ratio(metric.tracing_over_floor.map(|r| r.median))
        );
    }
    let _ = writeln!(out);

    for &workload in &Workload::ALL {
        let metrics: Vec<&MetricReport> = report
            .metrics
            .iter()
            .filter(|m| m.workload == workload)
            .collect();
        if metrics.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "### {}: {}\n",
            workload.name(),
            report.sizes.describe(workload)
        );
        for metric in metrics {
            let _ = writeln!(
                out,
                "| {} | min | median | min ÷ none | median ÷ none |",
                metric.metric
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|");
            for ColumnFigure {
                column: label,
                figure,
            } in &metric.figures
            {
                match figure {
                    Figure::Measured {
                        min,
                        median,
                        min_ratio,
                        median_ratio,
                        ..
                    } => {
                        let _ = writeln!(
                            out,
                            "| {label} | {} | {} | {} | {} |",
                            format_value(metric.unit, *min),
                            format_value(metric.unit, *median),
                            format_ratio(*min_ratio),
                            format_ratio(*median_ratio),
                        );
                    }
                    other => {
                        let text = short(other, metric.unit);
                        let _ = writeln!(out, "| {label} | {text} | {text} | – | – |");
                    }
                }
            }
            if let Some(MinMedian { min, median }) = metric.tracing_over_floor {
                let _ = writeln!(
                    out,
                    "\ntaskscope-tracing ÷ floor: {} (min), {} (median)",
                    format_ratio(Some(min)),
                    format_ratio(Some(median))
                );
            }
            let _ = writeln!(out);
        }
    }

    let mut notes = Vec::new();
    for metric in &report.metrics {
        for ColumnFigure {
            column: label,
            figure,
        } in &metric.figures
        {
            if let Figure::Failed { reason } = figure {
                let note = format!("- {} / {label} failed: {reason}", metric.workload.name());
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    let _ = writeln!(out, "Notes:\n");
    let _ = writeln!(
        out,
        "- memory per live task = (RSS with every long-lived task alive − RSS before \
         spawning) ÷ tasks; peak RSS growth = peak RSS during growth (`VmHWM`, reset \
         before the workload) − RSS before it."
    );
    let _ = writeln!(
        out,
        "- dropped spawn events: for taskscope, the `dropped_events` of the first \
         console-api `TaskUpdate` its server sends after the workload, read with the \
         console-api client (tasks evicted before any publish carried them). \
         console-subscriber hands its count out only inside an update and zeroes it \
         whenever it builds one; its first update after ~100k retained tasks exceeds \
         4 MiB and is rebuilt, losing the count, and a client attached for the whole \
         run would measure a different configuration: n/a."
    );
    let _ = writeln!(
        out,
        "- CPU time is user + system time of the whole process (getrusage), so work an \
         instrumentation moves to its own threads is counted."
    );
    let unreset = report
        .cells
        .iter()
        .filter(|cell| cell.workload == Workload::Growth)
        .flat_map(|cell| cell.samples())
        .any(|sample| !sample.peak_reset);
    if unreset {
        notes.push(
            "- the kernel refused to reset the peak RSS (`/proc/self/clear_refs`) in some \
             runs: their peak RSS growth may include start-up."
                .to_owned(),
        );
    }
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    out
}

/// "over 8 GiB after 172k tasks, 27 s", "timeout (120 s) after 520k tasks".
pub fn stopped_text(outcome: &Outcome) -> String {
    let Outcome::Stopped {
        why,
        after_secs,
        tasks_spawned,
    } = outcome
    else {
        return String::new();
    };
    let tasks = match tasks_spawned {
        Some(n) if *n >= 1_000 => format!(" after {}k tasks", n / 1_000),
        Some(n) => format!(" after {n} tasks"),
        None => String::new(),
    };
    match why {
        StopReason::Timeout { secs } => format!("timeout ({secs:.0} s){tasks}"),
        StopReason::MemoryCap { bytes } => format!(
            "stopped at {} RSS{tasks}, {after_secs:.0} s",
            format_value(Unit::Bytes, *bytes as f64)
        ),
    }
}

pub fn format_duration(secs: f64) -> String {
    let secs = secs.round() as u64;
    if secs >= 60 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{secs} s")
    }
}
