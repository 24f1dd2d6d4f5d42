//! The four workloads, identical under every configuration.
//!
//! Each workload runs on the same multi-thread tokio runtime (two workers)
//! and is driven from a task, so that its spawns take the runtime's normal
//! worker path. The only thing a configuration may change is [`Spawner`]:
//! `taskscope-wrapper` wraps each future in `taskscope::instrument` before
//! handing it to `tokio::spawn`, `wrapper-floor` in a minimal counting
//! wrapper; every other configuration spawns the bare future. Task bodies, counts and channel sizes never depend on the
//! configuration.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::measure;

/// A workload the benchmark knows, by its command-line name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Many tasks that each yield a few times, all joined.
    SpawnStorm,
    /// Task pairs bouncing a message over capacity-1 channels.
    PingPong,
    /// Many idle-ish tasks alive at once, waking on timers.
    LongLived,
    /// A million short tasks, to see what instrumentation keeps per task.
    Growth,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::SpawnStorm,
        Workload::PingPong,
        Workload::LongLived,
        Workload::Growth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::SpawnStorm => "spawn-storm",
            Workload::PingPong => "ping-pong",
            Workload::LongLived => "long-lived",
            Workload::Growth => "growth",
        }
    }
}

/// Task counts and durations; `--quick` shrinks them for a smoke run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sizes {
    pub storm_tasks: u64,
    pub storm_yields: u32,
    pub ping_pong_pairs: u64,
    pub round_trips: u32,
    pub live_tasks: u64,
    pub live_sleep: Duration,
    pub live_warmup: Duration,
    pub live_window: Duration,
    pub growth_tasks: u64,
    pub growth_batch: u64,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                storm_tasks: 20_000,
                storm_yields: 10,
                ping_pong_pairs: 100,
                round_trips: 100,
                live_tasks: 1_000,
                live_sleep: Duration::from_millis(50),
                live_warmup: Duration::from_millis(300),
                live_window: Duration::from_secs(1),
                growth_tasks: 100_000,
                growth_batch: 10_000,
            }
        } else {
            Sizes {
                storm_tasks: 200_000,
                storm_yields: 10,
                ping_pong_pairs: 1_000,
                round_trips: 100,
                live_tasks: 10_000,
                live_sleep: Duration::from_millis(50),
                live_warmup: Duration::from_secs(1),
                live_window: Duration::from_secs(5),
                growth_tasks: 1_000_000,
                growth_batch: 10_000,
            }
        }
    }

    /// One line saying what `workload` does at these sizes.
    pub fn describe(&self, workload: Workload) -> String {
        match workload {
            Workload::SpawnStorm => format!(
                "{} tasks × {} `yield_now().await`, all joined",
                self.storm_tasks, self.storm_yields
            ),
            Workload::PingPong => format!(
                "{} task pairs × {} round trips over `mpsc` channels of capacity 1",
                self.ping_pong_pairs, self.round_trips
            ),
            Workload::LongLived => format!(
                "{} tasks looping `sleep({} ms)` + `yield_now()`; measured over {} s after {} ms warm-up",
                self.live_tasks,
                self.live_sleep.as_millis(),
                self.live_window.as_secs_f64(),
                self.live_warmup.as_millis()
            ),
            Workload::Growth => format!(
                "{} short tasks (one `yield_now().await` each) in joined batches of {}",
                self.growth_tasks, self.growth_batch
            ),
        }
    }
}

/// What one child process measured for one (workload, configuration) run.
/// Fields a workload does not measure stay `None`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Wall time of the workload, from its first spawn to its last join.
    pub wall_secs: f64,
    /// CPU time (user + system, all threads) over the same interval.
    pub cpu_secs: f64,
    /// RSS after the runtime and the configuration were set up.
    pub baseline_rss_bytes: u64,
    /// long-lived: loop iterations completed in the measuring window.
    pub loop_iterations: Option<u64>,
    /// long-lived: CPU time of the window divided by its loop iterations.
    pub cpu_ns_per_iteration: Option<f64>,
    /// long-lived: (RSS with every task alive − baseline) / tasks.
    pub rss_per_live_task_bytes: Option<f64>,
    /// growth: peak RSS during the workload − baseline.
    pub peak_rss_growth_bytes: Option<u64>,
    /// growth: spawn events the instrumentation dropped, where it can say.
    pub dropped_spawns: Option<u64>,
    /// Whether the kernel let the child reset its peak RSS before the
    /// workload (if not, the peak may include start-up).
    pub peak_reset: bool,
}

/// Spawns tasks the way the configuration asks: bare, wrapped in
/// taskscope's future instrumentation, or in `wrapper-floor`'s minimal
/// wrapper.
#[derive(Clone, Copy, Debug)]
pub enum Spawner {
    Plain,
    Wrapped,
    /// `wrapper-floor`'s minimal wrapper.
    FloorWrapped,
}

impl Spawner {
    pub fn spawn<F>(self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Spawner::Plain => tokio::spawn(future),
            Spawner::Wrapped => tokio::spawn(taskscope::instrument(future)),
            Spawner::FloorWrapped => tokio::spawn(crate::floor_wrapper::wrap(future)),
        }
    }
}

/// The runtime every configuration uses.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

/// Runs `workload` on `runtime` and measures it. `baseline_rss_bytes` is
/// taken by the caller right before, after everything else was set up.
pub fn run(
    workload: Workload,
    sizes: Sizes,
    spawner: Spawner,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Sample> {
    let baseline_rss_bytes = measure::rss_bytes()?;
    let peak_reset = measure::reset_peak_rss();
    let cpu_before = measure::cpu_time()?;
    let started = Instant::now();
    let mut sample = match workload {
        Workload::SpawnStorm => {
            block_on_task(runtime, spawner, spawn_storm(sizes, spawner))?;
            Sample::default()
        }
        Workload::PingPong => {
            block_on_task(runtime, spawner, ping_pong(sizes, spawner))??;
            Sample::default()
        }
        Workload::LongLived => block_on_task(
            runtime,
            spawner,
            long_lived(sizes, spawner, baseline_rss_bytes),
        )??,
        Workload::Growth => {
            block_on_task(runtime, spawner, growth(sizes, spawner))?;
            let peak = measure::peak_rss_bytes()?;
            Sample {
                peak_rss_growth_bytes: Some(peak.saturating_sub(baseline_rss_bytes)),
                ..Sample::default()
            }
        }
    };
    sample.wall_secs = started.elapsed().as_secs_f64();
    sample.cpu_secs = (measure::cpu_time()? - cpu_before).as_secs_f64();
    sample.baseline_rss_bytes = baseline_rss_bytes;
    sample.peak_reset = peak_reset;
    Ok(sample)
}

/// Drives `future` as a spawned task (so that it and everything it spawns
/// run on the workers) and waits for it from the main thread.
fn block_on_task<F>(
    runtime: &tokio::runtime::Runtime,
    spawner: Spawner,
    future: F,
) -> anyhow::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let driver = runtime.block_on(async move { spawner.spawn(future).await });
    driver.context("the workload's driver task panicked")
}

/// The line prefix of a progress report (tasks spawned so far) on stdout,
/// which the parent reads when it has to stop a run.
pub const PROGRESS_PREFIX: &str = "taskscope-overhead-spawned ";

/// Tells the parent how far a run got, every [`PROGRESS_EVERY`] spawns.
fn progress(spawned: u64) {
    println!("{PROGRESS_PREFIX}{spawned}");
}

const PROGRESS_EVERY: u64 = 10_000;

async fn spawn_storm(sizes: Sizes, spawner: Spawner) {
    let yields = sizes.storm_yields;
    let tasks: Vec<_> = (1..=sizes.storm_tasks)
        .map(|n| {
            if n % PROGRESS_EVERY == 0 {
                progress(n);
            }
            spawner.spawn(async move {
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        // A yield loop cannot panic; a join error would be a runtime bug.
        let _ = task.await;
    }
}

async fn ping_pong(sizes: Sizes, spawner: Spawner) -> anyhow::Result<()> {
    let round_trips = sizes.round_trips;
    let mut tasks = Vec::with_capacity(2 * sizes.ping_pong_pairs as usize);
    for _ in 0..sizes.ping_pong_pairs {
        let (ping_tx, mut ping_rx) = tokio::sync::mpsc::channel::<u32>(1);
        let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<u32>(1);
        tasks.push(spawner.spawn(async move {
            for i in 0..round_trips {
                ping_tx.send(i).await.ok()?;
                let back = pong_rx.recv().await?;
                if back != i {
                    return None;
                }
            }
            Some(())
        }));
        tasks.push(spawner.spawn(async move {
            while let Some(i) = ping_rx.recv().await {
                pong_tx.send(i).await.ok()?;
            }
            Some(())
        }));
    }
    for task in tasks {
        task.await
            .context("a ping-pong task panicked")?
            .context("a ping-pong channel closed early")?;
    }
    Ok(())
}

async fn long_lived(
    sizes: Sizes,
    spawner: Spawner,
    baseline_rss_bytes: u64,
) -> anyhow::Result<Sample> {
    let iterations = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sleep = sizes.live_sleep;
    let tasks: Vec<_> = (0..sizes.live_tasks)
        .map(|_| {
            let iterations = Arc::clone(&iterations);
            let stop = Arc::clone(&stop);
            spawner.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(sleep).await;
                    tokio::task::yield_now().await;
                    iterations.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(sizes.live_warmup).await;
    let cpu_start = measure::cpu_time()?;
    let iterations_start = iterations.load(Ordering::Relaxed);
    tokio::time::sleep(sizes.live_window).await;
    let cpu = measure::cpu_time()? - cpu_start;
    let done = iterations.load(Ordering::Relaxed) - iterations_start;
    let rss = measure::rss_bytes()?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("a long-lived task panicked")?;
    }
    Ok(Sample {
        loop_iterations: Some(done),
        cpu_ns_per_iteration: (done > 0).then(|| cpu.as_nanos() as f64 / done as f64),
        rss_per_live_task_bytes: Some(
            (rss as f64 - baseline_rss_bytes as f64) / sizes.live_tasks as f64,
        ),
        ..Sample::default()
    })
}

async fn growth(sizes: Sizes, spawner: Spawner) {
    let mut spawned = 0;
    while spawned < sizes.growth_tasks {
        let batch = sizes.growth_batch.min(sizes.growth_tasks - spawned);
        let tasks: Vec<_> = (0..batch)
            .map(|_| spawner.spawn(tokio::task::yield_now()))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        spawned += batch;
        progress(spawned);
    }
}
