//! The parent side: re-executes this binary once per (workload,
//! configuration, run), with a timeout, and collects what each child
//! printed.
//!
//! Runs are interleaved (run 1 of every configuration, then run 2 …) so
//! that a slow phase of a shared machine hits every configuration alike.
//! Once a cell times out or fails, its remaining runs are skipped: a
//! configuration that needed more than the timeout once will not do better
//! the next time, and waiting for it again would only stretch the run.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::workload::{Sample, Workload, PROGRESS_PREFIX};

/// The line prefix a child puts before its JSON sample on stdout.
pub const SAMPLE_PREFIX: &str = "taskscope-overhead-sample ";

/// One column of the table: a configuration run by a given executable.
#[derive(Clone, Debug, Serialize)]
pub struct Column {
    pub label: String,
    pub config: Config,
    /// Run by a second build of this benchmark (`--baseline-exe`), not by
    /// this executable.
    pub other_build: bool,
    #[serde(skip)]
    pub exe: PathBuf,
}

/// How one run of a cell ended.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    Measured {
        sample: Sample,
    },
    /// Stopped by the parent: over the time limit or the memory cap.
    Stopped {
        why: StopReason,
        after_secs: f64,
        /// Tasks spawned by then, from the child's last progress line.
        tasks_spawned: Option<u64>,
    },
    Failed {
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "limit", rename_all = "kebab-case")]
pub enum StopReason {
    Timeout { secs: f64 },
    MemoryCap { bytes: u64 },
}

/// Every run of one (workload, column).
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub workload: Workload,
    pub column: String,
    pub outcomes: Vec<Outcome>,
}

impl Cell {
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.outcomes.iter().filter_map(|outcome| match outcome {
            Outcome::Measured { sample } => Some(sample),
            _ => None,
        })
    }

    fn gave_up(&self) -> bool {
        self.outcomes
            .iter()
            .any(|outcome| !matches!(outcome, Outcome::Measured { .. }))
    }
}

pub struct Plan {
    pub workloads: Vec<Workload>,
    pub columns: Vec<Column>,
    pub runs: usize,
    pub quick: bool,
    pub timeout: Duration,
    /// RSS at which a child is stopped, so that a configuration keeping
    /// per-task state forever cannot push a shared machine out of memory.
    pub memory_cap_bytes: u64,
}

/// Runs the whole plan, reporting progress on stderr.
pub fn run(plan: &Plan) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &workload in &plan.workloads {
        let first = cells.len();
        for column in &plan.columns {
            cells.push(Cell {
                workload,
                column: column.label.clone(),
                outcomes: Vec::new(),
            });
        }
        for run in 1..=plan.runs {
            for (offset, column) in plan.columns.iter().enumerate() {
                let cell = &mut cells[first + offset];
                if cell.gave_up() {
                    continue;
                }
                let outcome = run_child(column, workload, plan);
                eprintln!(
                    "overhead: {:<12} {:<26} run {run}/{}: {}",
                    workload.name(),
                    column.label,
                    plan.runs,
                    progress(&outcome)
                );
                cell.outcomes.push(outcome);
            }
        }
    }
    cells
}

fn progress(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Measured { sample } => format!(
            "wall {:.3} s, cpu {:.3} s",
            sample.wall_secs, sample.cpu_secs
        ),
        Outcome::Stopped { .. } => crate::report::stopped_text(outcome),
        Outcome::Failed { reason } => format!("failed: {reason}"),
    }
}

fn run_child(column: &Column, workload: Workload, plan: &Plan) -> Outcome {
    let mut command = Command::new(&column.exe);
    command
        .arg("--child")
        .arg(workload.name())
        .arg("--child-config")
        .arg(column.config.name())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if plan.quick {
        command.arg("--quick");
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return Outcome::Failed {
                reason: format!("cannot start {}: {error}", column.exe.display()),
            }
        }
    };
    // Read both pipes on their own threads so a chatty child cannot block
    // on a full pipe while we wait for it.
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let started = Instant::now();
    let status_path = format!("/proc/{}/status", child.id());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {
                let stop = if started.elapsed() >= plan.timeout {
                    Some(StopReason::Timeout {
                        secs: plan.timeout.as_secs_f64(),
                    })
                } else if rss_of(&status_path).is_some_and(|rss| rss > plan.memory_cap_bytes) {
                    Some(StopReason::MemoryCap {
                        bytes: plan.memory_cap_bytes,
                    })
                } else {
                    None
                };
                if let Some(why) = stop {
                    // Our own child, by its handle.
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(why);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => {
                return Outcome::Failed {
                    reason: format!("waiting for the child: {error}"),
                }
            }
        }
    };
    let stdout = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let status = match status {
        Ok(status) => status,
        Err(why) => {
            return Outcome::Stopped {
                why,
                after_secs: started.elapsed().as_secs_f64(),
                tasks_spawned: stdout
                    .lines()
                    .rev()
                    .find_map(|line| line.strip_prefix(PROGRESS_PREFIX)?.trim().parse().ok()),
            }
        }
    };
    let sample = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(SAMPLE_PREFIX))
        .map(serde_json::from_str::<Sample>);
    match (status.success(), sample) {
        (true, Some(Ok(sample))) => Outcome::Measured { sample },
        (true, Some(Err(error))) => Outcome::Failed {
            reason: format!("unreadable sample: {error}"),
        },
        (_, _) => Outcome::Failed {
            reason: format!(
                "child exited with {status}: {}",
                last_lines(&stderr, 3).trim()
            ),
        },
    }
}

/// VmRSS of a running child, in bytes; `None` once it is gone.
fn rss_of(status_path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn drain<R: std::io::Read + Send + 'static>(mut pipe: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
