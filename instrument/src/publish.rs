//! The publisher: once per interval (and early when many tasks finished),
//! read the changed cells, evict what retention allows, derive wait edges,
//! run the hazard detectors, and hand one [`Tick`] to every consumer (gRPC
//! watchers and the recorder).
//!
//! It runs on the server thread only. It is the only reader of the cells'
//! `dirty` flags, so each change is published once; a finished task is
//! evicted only after a tick has carried its final state (so every task
//! reaches every consumer at least once), and then only when it is older
//! than `retention` or more than `max_retained_completed` finished tasks are
//! kept. While nobody consumes the ticks (no watcher, no recorder) a large
//! registry is walked only when that frees enough (`Publisher::walk_due`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use taskscope_wire::model::{self, DropCounters, Hazard, ProcessInfo, Timestamp};

use crate::clock;
use crate::resource;
use crate::task::{registry, TaskCell};

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Whether a publisher runs (between `init`/`build` and the guard's drop).
/// Without one nothing would evict finished tasks, so none are tracked.
#[inline]
pub(crate) fn is_running() -> bool {
    RUNNING.load(Relaxed)
}

pub(crate) fn set_running(on: bool) {
    RUNNING.store(on, Relaxed);
}

pub(crate) const SOURCE_TRACING: u8 = 1;
pub(crate) const SOURCE_WRAPPER: u8 = 2;
static SOURCES: AtomicU8 = AtomicU8::new(0);

#[inline]
pub(crate) fn note_source(bit: u8) {
    if SOURCES.load(Relaxed) & bit == 0 {
        SOURCES.fetch_or(bit, Relaxed);
    }
}

fn sources() -> Vec<String> {
    let s = SOURCES.load(Relaxed);
    let mut v = Vec::new();
    if s & SOURCE_TRACING != 0 {
        v.push("tracing".to_string());
    }
    if s & SOURCE_WRAPPER != 0 {
        v.push("wrapper".to_string());
    }
    v
}

/// Lets finishing tasks wake the publisher early when many of them wait to
/// be published (keeps memory flat under spawn storms).
#[derive(Default)]
pub(crate) struct PressureSignal {
    notify: OnceLock<Arc<tokio::sync::Notify>>,
    armed: AtomicBool,
    threshold: std::sync::atomic::AtomicUsize,
}

impl PressureSignal {
    /// `n` finished tasks of one shard wait for a publish.
    #[inline]
    pub(crate) fn check(&self, n: usize) {
        // Per shard: a few threads share the threshold.
        let per_shard = (self.threshold.load(Relaxed) / 2).max(1024);
        if n >= per_shard && self.armed.swap(false, Relaxed) {
            if let Some(notify) = self.notify.get() {
                notify.notify_one();
            }
        }
    }

    pub(crate) fn install(&self, threshold: usize) -> Arc<tokio::sync::Notify> {
        self.threshold.store(threshold.max(1), Relaxed);
        let n = self.notify.get_or_init(Default::default).clone();
        self.armed.store(true, Relaxed);
        n
    }
}

/// Publisher settings (from the [`crate::Builder`]).
#[derive(Debug, Clone)]
pub(crate) struct PublishConfig {
    pub retention: Duration,
    pub max_retained_completed: usize,
    pub hazards: taskscope_wire::hazards::HazardConfig,
}

/// Registries up to this size are walked at every publish (a walk of
/// them costs well under a millisecond).
const ALWAYS_WALK_BELOW: usize = 16_384;

/// What changed in one publish. Large deltas are split into several ticks
/// of at most [`MAX_TASKS_PER_TICK`] tasks.
#[derive(Debug, Clone)]
pub(crate) struct Tick {
    pub at: Timestamp,
    pub tasks: Vec<model::Task>,
    pub evicted_tasks: Vec<u64>,
    pub resources: Vec<model::Resource>,
    pub evicted_resources: Vec<u64>,
    pub async_ops: Vec<model::AsyncOp>,
    pub evicted_async_ops: Vec<u64>,
    /// The complete current edge set (present on the last tick of a publish).
    pub edges: Option<Vec<model::WaitEdge>>,
    pub new_hazards: Vec<Hazard>,
    pub dropped: DropCounters,
    pub live_tasks: u64,
    /// The process info, on the last tick of a publish when it changed since
    /// the previous one (sources and runtimes appear as the app starts, after
    /// a recording or a watcher got its first state).
    pub process: Option<ProcessInfo>,
}

impl Default for Tick {
    fn default() -> Self {
        Self {
            at: Timestamp(0),
            tasks: Vec::new(),
            evicted_tasks: Vec::new(),
            resources: Vec::new(),
            evicted_resources: Vec::new(),
            async_ops: Vec::new(),
            evicted_async_ops: Vec::new(),
            edges: None,
            new_hazards: Vec::new(),
            dropped: DropCounters::default(),
            live_tasks: 0,
            process: None,
        }
    }
}

pub(crate) const MAX_TASKS_PER_TICK: usize = 4096;

/// Hazards kept (de-duplicated by fingerprint); more are counted as dropped.
const MAX_HAZARDS: usize = 1000;

pub(crate) struct Publisher {
    pub config: PublishConfig,
    pub process: ProcessInfo,
    hazards: Vec<Hazard>,
    fingerprints: HashSet<String>,
    dropped_hazards: u64,
    pub dropped_recording_frames: u64,
    /// What the last tick carrying process info carried.
    sent_process: Option<ProcessInfo>,
    /// Tasks in the registry after the last publish: what the next one
    /// walks (see [`Publisher::early_gap`]).
    registry_len: usize,
    /// Finished tasks the last walk of the registry kept (within the
    /// retention window and the cap).
    retained_done: usize,
    /// When the registry was last walked.
    last_walk: u64,
}

impl Publisher {
    pub(crate) fn new(config: PublishConfig) -> Self {
        Self {
            config,
            process: process_info(),
            hazards: Vec::new(),
            fingerprints: HashSet::new(),
            dropped_hazards: 0,
            dropped_recording_frames: 0,
            sent_process: None,
            registry_len: 0,
            retained_done: 0,
            last_walk: 0,
        }
    }

    /// Whether a publish nobody consumes should walk the registry. Such a
    /// publish only marks finished tasks seen and evicts them, so it walks
    /// when that pays: the registry is small, or the finished tasks beyond
    /// the retention cap are a quarter of the tasks a walk visits (each
    /// walk then frees a good share of what it reads, which keeps the
    /// memory they hold to a fraction of the live tasks'), or half the
    /// retention window passed since the last walk. An app nobody watches
    /// thus pays almost nothing for the publisher, even with 200k live
    /// tasks, where every walk is a cache miss per task.
    ///
    /// `unpublished`: finished tasks no walk has seen yet.
    fn walk_due(&self, unpublished: usize, now: u64) -> bool {
        if self.registry_len <= ALWAYS_WALK_BELOW {
            return true;
        }
        let pending = unpublished + self.retained_done;
        let cap = self.config.max_retained_completed;
        if pending > cap && pending - cap >= self.registry_len / 4 {
            return true;
        }
        let half_retention = (self.config.retention.as_nanos() / 2).min(u64::MAX as u128) as u64;
        pending > 0 && now.saturating_sub(self.last_walk) >= half_retention
    }

    /// How long to wait after a publish before an early one (finished
    /// tasks piling up): as long as walking the registry takes, about
    /// 250 ns a task, ten times over, between 5 and 50 ms. A publisher
    /// that walks 200k tasks thus takes a tenth of a core at most, while
    /// a storm of short tasks (a small registry, most time spent freeing
    /// finished tasks, which cannot be saved) is published every 5 ms,
    /// so few finished tasks wait in memory.
    pub(crate) fn early_gap(&self) -> Duration {
        Duration::from_nanos(self.registry_len as u64 * 250)
            .clamp(Duration::from_millis(5), Duration::from_millis(50))
    }

    pub(crate) fn process(&self) -> ProcessInfo {
        let mut p = self.process.clone();
        p.sources = sources();
        p.runtimes = crate::runtime::runtimes();
        p
    }

    pub(crate) fn hazards(&self) -> &[Hazard] {
        &self.hazards
    }

    pub(crate) fn dropped(&self) -> DropCounters {
        DropCounters {
            // Spawns insert their cell synchronously and finished tasks are
            // evicted only after a publish carried them: nothing to drop.
            task_events: 0,
            resource_events: 0,
            async_op_events: 0,
            recording_frames: self.dropped_recording_frames,
            hazards: self.dropped_hazards,
            backtrace_frames: crate::backtrace::DROPPED_FRAMES.load(Relaxed),
        }
    }

    /// One publish. `consumers`: whether anyone will read the ticks (if
    /// not, finished tasks are marked seen without building their models).
    /// `evict`: false while a console client has paused updates.
    pub(crate) fn tick(&mut self, consumers: bool, evict: bool) -> Vec<Tick> {
        let now = clock::now_ns();
        let retention = self.config.retention.as_nanos().min(u64::MAX as u128) as u64;
        let reg = registry();
        reg.pressure.armed.store(true, Relaxed);

        clock::recalibrate();

        if !consumers
            && evict
            && !self.walk_due(reg.unpublished.iter().map(|c| c.0.load(Relaxed)).sum(), now)
        {
            resource::collect(false, evict);
            return Vec::new();
        }
        self.last_walk = now;

        // One pass: changed cells are read (their final state goes into
        // this publish), finished ones past retention are evicted — possibly
        // in the same publish that carries them.
        let cap = self.config.max_retained_completed;
        let mut evicted = Vec::new();
        let mut changed: Vec<Arc<TaskCell>> = Vec::new();
        let mut live = 0u64;
        let mut kept = 0usize;
        let mut done_times = Vec::new();
        reg.for_each_shard(|s| {
            s.tasks.retain(|c| {
                // Load first: unchanged cells are not written to.
                if c.dirty.load(Relaxed) && c.dirty.swap(false, Relaxed) {
                    if c.is_done() && !c.published_done.swap(true, Relaxed) {
                        let _ = reg.unpublished[c.shard as usize % crate::task::SHARDS]
                            .0
                            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
                    }
                    if consumers {
                        changed.push(c.clone());
                    }
                }
                if !c.published_done.load(Relaxed) {
                    live += u64::from(!c.is_done());
                    return true;
                }
                let at = c.completed_at.load(Relaxed);
                if evict && now.saturating_sub(at) > retention {
                    evicted.push(c.id);
                    return false;
                }
                done_times.push(at);
                true
            });
            if s.tasks.capacity() > 64 && s.tasks.len() < s.tasks.capacity() / 4 {
                s.tasks.shrink_to(s.tasks.len() * 2);
            }
            kept += s.tasks.len();
        });
        self.registry_len = kept;
        self.retained_done = done_times.len();
        // Beyond the cap, the oldest finished tasks go (a second pass only
        // when needed).
        if evict && done_times.len() > cap {
            let k = done_times.len() - cap;
            let (_, kth, _) = done_times.select_nth_unstable(k - 1);
            let cutoff = *kth;
            let before = evicted.len();
            reg.for_each_shard(|s| {
                s.tasks.retain(|c| {
                    if c.published_done.load(Relaxed) && c.completed_at.load(Relaxed) <= cutoff {
                        evicted.push(c.id);
                        return false;
                    }
                    true
                })
            });
            let gone = evicted.len() - before;
            self.registry_len = self.registry_len.saturating_sub(gone);
            self.retained_done = self.retained_done.saturating_sub(gone);
        }
        drop(done_times);

        let res = resource::collect(false, evict);
        let at = Timestamp(now);
        if !consumers {
            return Vec::new();
        }

        let mut ticks = Vec::new();
        let mut changed = changed.into_iter().peekable();
        let mut evicted = Some(evicted);
        let mut res = Some(res);
        loop {
            let tasks: Vec<model::Task> = changed
                .by_ref()
                .take(MAX_TASKS_PER_TICK)
                .map(|c| c.to_model(true))
                .collect();
            let mut t = Tick {
                at,
                tasks,
                live_tasks: live,
                ..Default::default()
            };
            if let Some(e) = evicted.take() {
                t.evicted_tasks = e;
            }
            if let Some(r) = res.take() {
                t.resources = r.resources;
                t.evicted_resources = r.evicted_resources;
                t.async_ops = r.async_ops;
                t.evicted_async_ops = r.evicted_async_ops;
            }
            let last = changed.peek().is_none();
            if last {
                let state = self.state(false, false);
                t.edges = Some(state.edges.clone());
                t.new_hazards = self.detect(&state, at);
                t.dropped = self.dropped();
                let process = self.process();
                if self.sent_process.as_ref() != Some(&process) {
                    self.sent_process = Some(process.clone());
                    t.process = Some(process);
                }
                ticks.push(t);
                break;
            }
            ticks.push(t);
        }
        ticks
    }

    fn detect(&mut self, state: &model::State, now: Timestamp) -> Vec<Hazard> {
        // The single call site of the hazard detectors.
        let found = taskscope_wire::hazards::detect(state, &self.config.hazards, now);
        let mut new = Vec::new();
        for h in found {
            if self.fingerprints.contains(&h.fingerprint) {
                continue;
            }
            if self.hazards.len() >= MAX_HAZARDS {
                self.dropped_hazards += 1;
                continue;
            }
            self.fingerprints.insert(h.fingerprint.clone());
            self.hazards.push(h.clone());
            new.push(h);
        }
        new
    }

    /// The whole current state with hazards detected on it now: what a
    /// `Snapshot` or a new watcher gets. Publishes run the detectors only
    /// when someone consumes their ticks, so without this a client that
    /// only takes snapshots would never see a hazard. Hazards found here
    /// are not recorded: the next publish with consumers records and
    /// broadcasts them, so hazard watchers miss none.
    pub(crate) fn state_with_hazards(
        &self,
        include_completed: bool,
        histograms: bool,
    ) -> model::State {
        let mut state = self.state(include_completed, histograms);
        let live;
        let detect_on = if include_completed {
            live = self.state(false, false);
            &live
        } else {
            &state
        };
        let found = taskscope_wire::hazards::detect(detect_on, &self.config.hazards, clock::now());
        let mut hazards = self.hazards.clone();
        for h in found {
            if !self.fingerprints.contains(&h.fingerprint)
                && !hazards.iter().any(|k| k.fingerprint == h.fingerprint)
            {
                hazards.push(h);
            }
        }
        state.hazards = hazards;
        state
    }

    /// The whole current state, built from the cells (does not consume
    /// their change flags).
    pub(crate) fn state(&self, include_completed: bool, histograms: bool) -> model::State {
        let mut tasks = BTreeMap::new();
        for c in registry().all() {
            if include_completed || !c.is_done() {
                tasks.insert(c.id, c.to_model(histograms));
            }
        }
        let res = resource::collect(true, false);
        let edges = resource::current_edges(|id| tasks.get(&id).is_some_and(|t| t.state.is_live()));
        model::State {
            process: Some(self.process()),
            tasks,
            resources: res.resources.into_iter().map(|r| (r.id, r)).collect(),
            async_ops: res.async_ops.into_iter().map(|o| (o.id, o)).collect(),
            edges,
            hazards: self.hazards.clone(),
            dropped: self.dropped(),
            updated_at: Some(clock::now()),
            paused: false,
        }
    }
}

/// Who this process is.
pub(crate) fn process_info() -> ProcessInfo {
    let started_at = Some(crate::clock::process_start());
    ProcessInfo {
        pid: std::process::id(),
        executable: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        args: std::env::args().collect(),
        started_at,
        taskscope_version: env!("CARGO_PKG_VERSION").to_string(),
        runtimes: Vec::new(),
        sources: sources(),
    }
}

/// Converts a tick to the wire `Update` (the recording frame and the
/// `taskscope.v1` Watch message).
pub(crate) fn tick_to_update(t: &Tick, paused: bool) -> taskscope_wire::proto::Update {
    use taskscope_wire::proto;
    proto::Update {
        at: Some(t.at.into()),
        process: t.process.as_ref().map(proto::ProcessInfo::from),
        full: false,
        last_chunk: t.edges.is_some(),
        tasks: t.tasks.iter().map(proto::Task::from).collect(),
        evicted_task_ids: t.evicted_tasks.clone(),
        resources: t.resources.iter().map(proto::Resource::from).collect(),
        evicted_resource_ids: t.evicted_resources.clone(),
        async_ops: t.async_ops.iter().map(proto::AsyncOp::from).collect(),
        evicted_async_op_ids: t.evicted_async_ops.clone(),
        edges: t
            .edges
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(proto::WaitEdge::from)
            .collect(),
        edges_replaced: t.edges.is_some(),
        hazards: t.new_hazards.iter().map(proto::Hazard::from).collect(),
        dropped: Some((&t.dropped).into()),
        live_tasks: t.live_tasks,
        paused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_publishes_are_spaced_by_what_a_walk_of_the_registry_costs() {
        let mut p = Publisher::new(PublishConfig {
            retention: Duration::from_secs(10),
            max_retained_completed: 10_000,
            hazards: Default::default(),
        });
        let gap = |p: &mut Publisher, n| {
            p.registry_len = n;
            p.early_gap()
        };
        // A storm of short tasks: publish often, few wait in memory.
        assert_eq!(gap(&mut p, 10_000), Duration::from_millis(5));
        assert_eq!(gap(&mut p, 40_000), Duration::from_millis(10));
        // 200k live tasks: a walk is expensive, at most every 50 ms.
        assert_eq!(gap(&mut p, 200_000), Duration::from_millis(50));
        assert_eq!(gap(&mut p, 5_000_000), Duration::from_millis(50));
    }

    #[test]
    fn an_unwatched_app_walks_its_registry_only_when_it_frees_enough() {
        let mut p = Publisher::new(PublishConfig {
            retention: Duration::from_secs(10),
            max_retained_completed: 10_000,
            hazards: Default::default(),
        });
        let s = 1_000_000_000u64;
        p.last_walk = 100 * s;
        // A small registry: every publish walks it.
        p.registry_len = 16_000;
        assert!(p.walk_due(0, 100 * s));
        // 200k tasks, a few thousand finished: not worth a walk...
        p.registry_len = 200_000;
        p.retained_done = 9_000;
        assert!(!p.walk_due(3_000, 101 * s));
        // ...until what is beyond the cap is a quarter of the registry...
        assert!(!p.walk_due(50_999, 101 * s));
        assert!(p.walk_due(51_000, 101 * s));
        // ...or half the retention window went by.
        assert!(!p.walk_due(3_000, 104 * s));
        assert!(p.walk_due(3_000, 105 * s));
        // Nothing finished: nothing to free, ever.
        p.retained_done = 0;
        assert!(!p.walk_due(0, 1_000 * s));
    }
}
