//! Per-task counters and the process-global task registry.
//!
//! # Why no queue
//! console-subscriber sends every span and waker event through a channel to
//! an aggregator task; under load the channel fills and events are dropped,
//! and the aggregator keeps two 24 KiB HdrHistograms per task. taskscope does
//! the opposite: the thread that spawns a task inserts its [`TaskCell`] into
//! the registry directly (a short, sharded, almost never contended lock), and
//! every later event — poll start and end, waker clone/drop/wake — is a few
//! relaxed atomic operations on that cell. Nothing on the hot path allocates,
//! blocks on another thread or can be dropped. The publisher (on the server
//! thread) reads the cells once per interval and turns the ones marked
//! `dirty` into [`model::Task`]s.
//!
//! # Memory per task
//! A [`TaskCell`] is a fixed-size `#[repr(C)]` record: identity fields,
//! about fifteen `AtomicU64` counters and two 64-bucket `AtomicU16` histograms
//! (poll time and scheduled time, scheme 1 of
//! [`taskscope_wire::histogram`]) — see [`TASK_CELL_SIZE`], about 570 bytes,
//! plus the task's name and spawn file when it has them (file names are
//! interned per thread, so a spawn site costs one allocation, not one per task).
//!
//! # States
//! * `idle` — the last poll returned and no wake arrived since: the task
//!   waits for an event.
//! * `scheduled` — woken (or just spawned) and not yet polled again.
//! * `running` — a worker thread is inside its poll right now.
//! * `completed` — the future finished and was dropped right after its last
//!   poll on the same thread (for tokio tasks seen through tracing this is
//!   inferred: tokio's spans do not say whether the final poll returned
//!   `Ready`).
//! * `cancelled` — dropped without finishing: for the wrapper, dropped after
//!   a `Pending` poll; for tokio tasks, dropped away from their last poll
//!   (abort, runtime shutdown).
//! * `panicked` — the poll unwound.

use std::collections::HashMap;
use std::sync::atomic::{
    AtomicBool, AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};
use std::sync::{Arc, Mutex, MutexGuard};

use taskscope_wire::histogram::{bucket_index, Histogram, BUCKETS};
use taskscope_wire::model::{self, TaskState};

use crate::clock::{self, ts};

/// Adds to a counter only the polling thread writes (a future is polled by
/// one thread at a time): a plain load and store, no locked instruction.
#[inline]
fn bump(a: &AtomicU64, d: u64) {
    a.store(a.load(Relaxed).wrapping_add(d), Relaxed);
}

#[inline]
fn raise(a: &AtomicU64, v: u64) {
    if v > a.load(Relaxed) {
        a.store(v, Relaxed);
    }
}

/// Numeric task states stored in [`TaskCell::state`].
pub(crate) mod state {
    pub const SCHEDULED: u8 = 1;
    pub const IDLE: u8 = 2;
    pub const RUNNING: u8 = 3;
    /// Running, and a wake arrived during the poll: scheduled again after it.
    pub const RUNNING_WOKEN: u8 = 4;
    pub const COMPLETED: u8 = 5;
    pub const CANCELLED: u8 = 6;
    pub const PANICKED: u8 = 7;

    pub fn is_done(s: u8) -> bool {
        s >= COMPLETED
    }
}

/// Where a task came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Source {
    Tracing = 1,
    Wrapper = 2,
}

/// A compact concurrent histogram (scheme 1): 64 × `AtomicU16` — 132
/// bytes. When a bucket would overflow, every bucket is halved, `halvings`
/// goes up by one, and from then on one value in 2^halvings is recorded
/// (systematic sampling), so `count << halvings` stays an unbiased
/// estimate. Exact for tasks with fewer than 65 536 polls in every bucket.
///
/// `halvings`, read by every record, comes first, so that the buckets of
/// common values (under a millisecond, the first 21) usually share its
/// cache line.
#[repr(C)]
pub(crate) struct AtomicHistogram {
    halvings: AtomicU8,
    /// Values seen since sampling started (wrapping).
    seen: AtomicU16,
    counts: [AtomicU16; BUCKETS],
}

impl AtomicHistogram {
    fn new() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU16::new(0)),
            seen: AtomicU16::new(0),
            halvings: AtomicU8::new(0),
        }
    }

    /// Records one value (polling thread only, see [`bump`]).
    #[inline]
    pub(crate) fn record(&self, ns: u64) -> usize {
        let i = bucket_index(ns);
        let shift = self.halvings.load(Relaxed);
        if shift > 0 {
            let n = self.seen.load(Relaxed).wrapping_add(1);
            self.seen.store(n, Relaxed);
            if n & ((1u16 << shift) - 1) != 0 {
                return i;
            }
        }
        let c = &self.counts[i];
        let v = c.load(Relaxed);
        if v == u16::MAX {
            for b in &self.counts {
                b.store(b.load(Relaxed) / 2, Relaxed);
            }
            self.halvings.store((shift + 1).min(15), Relaxed);
            c.store(v / 2 + 1, Relaxed);
        } else {
            c.store(v + 1, Relaxed);
        }
        i
    }

    #[inline]
    pub(crate) fn unrecord(&self, bucket: usize) {
        let _ = self.counts[bucket].fetch_update(Relaxed, Relaxed, |c| c.checked_sub(1));
    }

    fn snapshot(&self, max_ns: u64) -> Option<Histogram> {
        let shift = self.halvings.load(Relaxed);
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| (c.load(Relaxed) as u64) << shift)
            .collect();
        let first = counts.iter().position(|c| *c > 0)?;
        let min = taskscope_wire::histogram::bucket_lower(first);
        let max = max_ns.max(min);
        Some(Histogram::from_counts(&counts, min, max))
    }
}

/// A span field beyond tokio's own: name and formatted value.
pub(crate) type ExtraField = (&'static str, Box<str>);

/// Identity of a task, fixed at spawn.
pub(crate) struct TaskIdentity {
    pub name: Option<Box<str>>,
    pub kind: &'static str,
    pub file: Option<Arc<str>>,
    pub line: u32,
    pub column: u32,
    /// tokio's task id, 0 when unknown (tokio's ids start at 1).
    pub tokio_id: u64,
    /// The spawning task, 0 when none.
    pub parent_id: u64,
    pub future_size: Option<u64>,
    pub original_future_size: Option<u64>,
    /// The tokio runtime the task was spawned on, 0 when unknown. A
    /// `block_on` task's span is opened before its runtime is entered, so
    /// its runtime is bound at its first poll ([`TaskCell::bind_runtime`]).
    pub runtime_id: AtomicU64,
    /// Span fields beyond tokio's own (rare: allocated only when present).
    pub extra_fields: Option<Box<[ExtraField]>>,
}

impl TaskIdentity {
    /// The task's span fields as console-subscriber lists them: tokio's
    /// (`kind`, `task.name`, `task.id`, `size.bytes`, ...) and any others,
    /// formatted only now (at publish), never at spawn. tokio's `loc.file`,
    /// `loc.line` and `loc.col` are the task's `location`, not fields (as
    /// console-subscriber does).
    pub(crate) fn fields(&self) -> std::collections::BTreeMap<String, String> {
        let mut f = std::collections::BTreeMap::new();
        f.insert("kind".to_string(), self.kind.to_string());
        if let Some(n) = &self.name {
            f.insert("task.name".to_string(), n.to_string());
        }
        if self.tokio_id != 0 {
            f.insert("task.id".to_string(), self.tokio_id.to_string());
        }
        if let Some(s) = self.future_size {
            f.insert("size.bytes".to_string(), s.to_string());
        }
        if let Some(s) = self.original_future_size {
            f.insert("original_size.bytes".to_string(), s.to_string());
        }
        for (k, v) in self.extra_fields.iter().flatten() {
            f.insert(k.to_string(), v.to_string());
        }
        f
    }

    /// An identity with nothing known but the kind.
    #[cfg(test)]
    pub(crate) fn unnamed(kind: &'static str) -> Self {
        Self {
            name: None,
            kind,
            file: None,
            line: 0,
            column: 0,
            tokio_id: 0,
            parent_id: 0,
            future_size: None,
            original_future_size: None,
            runtime_id: AtomicU64::new(0),
            extra_fields: None,
        }
    }
}

/// Everything taskscope knows about one task. Hot paths touch only the
/// atomics.
///
/// Field order is chosen for the cache: when many tasks take turns, a cell
/// has gone cold by its next poll or wake, and every distinct line it
/// touches is a miss. A wake from elsewhere (a timer, another task) touches
/// the state, the last wake and the wake counters, so those come first,
/// next to the `Arc` counts. What poll starts and ends read and write (the
/// id, the last timestamps, poll counters and maxima) follows, then the
/// executor's waker of a wrapped future (read at its every poll and wake),
/// so that all of it, with the `Arc` counts, spans 144 bytes (asserted in
/// the tests). The rarer counters follow, then the histograms (a poll
/// touches one bucket of each; each has its sampling state in front) and
/// the identity. A dump reader finds the fields through
/// [`crate::debug_header`], not by this order.
#[repr(C)]
pub(crate) struct TaskCell {
    pub state: AtomicU8,
    /// Set on every change; the publisher clears it when it reads the cell.
    pub dirty: AtomicBool,
    pub source: Source,
    /// The registry shard holding the cell.
    pub shard: u8,
    /// Set once a publish has included the task after it finished.
    pub published_done: AtomicBool,
    pub last_wake: AtomicU64,
    pub wakes: AtomicU64,
    pub waker_drops: AtomicU64,
    pub waker_clones: AtomicU64,
    /// Process-unique id (the tracing span id for tokio tasks); read at
    /// every poll's start and end.
    pub id: u64,
    pub last_poll_started: AtomicU64,
    pub last_poll_ended: AtomicU64,
    pub polls: AtomicU64,
    pub busy_ns: AtomicU64,
    pub scheduled_ns: AtomicU64,
    pub max_poll_ns: AtomicU64,
    pub max_scheduled_ns: AtomicU64,
    /// Wrapped futures only: the executor's waker of the latest poll, which
    /// the task's own waker (pointing at this cell, so one allocation per
    /// wrapped future) forwards to; read at every poll and every wake.
    /// `None` once the future is done.
    pub executor_waker: crate::wrapper::ExecutorWaker,
    pub wakes_while_scheduled: AtomicU64,
    pub self_wakes: AtomicU64,
    pub created_at: u64,
    pub completed_at: AtomicU64,
    pub poll_histogram: AtomicHistogram,
    pub scheduled_histogram: AtomicHistogram,
    pub identity: TaskIdentity,
    /// Live user spans inside the task (only tasks that have some pay).
    pub spans: crate::backtrace::SpanTree,
}

/// `size_of::<TaskCell>()`: the fixed memory cost of one task (plus the
/// `Arc` header and the registry slot, 24 bytes).
pub const TASK_CELL_SIZE: usize = std::mem::size_of::<TaskCell>();

/// What one poll changed, so that the pair tokio's `Instrumented` drop
/// produces (it enters the span to drop the future) can be taken back.
#[derive(Clone, Copy)]
pub(crate) struct PollRecord {
    /// When this poll started.
    pub started: u64,
    pub busy_ns: u64,
    pub bucket: usize,
    pub prev_started: u64,
    pub prev_ended: u64,
}

impl TaskCell {
    pub(crate) fn new(id: u64, source: Source, identity: TaskIdentity) -> Self {
        Self {
            id,
            created_at: clock::now_ns(),
            state: AtomicU8::new(state::SCHEDULED),
            source,
            shard: SHARD_INDEX.try_with(|i| *i as u8).unwrap_or(0),
            dirty: AtomicBool::new(true),
            published_done: AtomicBool::new(false),
            polls: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            scheduled_ns: AtomicU64::new(0),
            wakes: AtomicU64::new(0),
            self_wakes: AtomicU64::new(0),
            waker_clones: AtomicU64::new(0),
            waker_drops: AtomicU64::new(0),
            wakes_while_scheduled: AtomicU64::new(0),
            last_wake: AtomicU64::new(0),
            last_poll_started: AtomicU64::new(0),
            last_poll_ended: AtomicU64::new(0),
            completed_at: AtomicU64::new(0),
            max_poll_ns: AtomicU64::new(0),
            max_scheduled_ns: AtomicU64::new(0),
            poll_histogram: AtomicHistogram::new(),
            scheduled_histogram: AtomicHistogram::new(),
            identity,
            spans: crate::backtrace::SpanTree::default(),
            executor_waker: crate::wrapper::ExecutorWaker::new(),
        }
    }

    /// Binds a task spawned outside any runtime to the runtime that polls
    /// it first: called at the first poll. tokio opens a `block_on`'s span
    /// before entering its runtime, so without this a second runtime's
    /// `block_on` — the best evidence of where that runtime was built —
    /// would belong to none.
    fn bind_runtime(&self) {
        if self.identity.runtime_id.load(Relaxed) == 0 {
            let rt = crate::runtime::current_runtime_id();
            if rt != 0 {
                self.identity.runtime_id.store(rt, Relaxed);
            }
        }
    }

    /// A poll starts at `now`; the first one binds the task to the runtime
    /// polling it. Returns when the previous poll started (0: this is the
    /// first).
    pub(crate) fn poll_started(&self, now: u64) -> u64 {
        let prev_started = self.last_poll_started.load(Relaxed);
        let prev_ended = self.last_poll_ended.load(Relaxed);
        // Time spent scheduled: since the wake that followed the last poll
        // (or since spawn for the first poll).
        let wake = self.last_wake.load(Relaxed);
        let since = if prev_ended == 0 {
            // A spawned task is scheduled from its spawn; a wrapped future
            // is registered when created and only becomes a task when
            // someone first polls it (the gap is the `unpolled-future`
            // story, not scheduling delay): its first wait counts as 0,
            // as it did when wrappers registered at their first poll.
            if self.source == Source::Wrapper {
                now
            } else {
                self.created_at
            }
        } else if wake > prev_ended {
            wake
        } else {
            0
        };
        if since != 0 {
            let d = now.saturating_sub(since);
            bump(&self.scheduled_ns, d);
            self.scheduled_histogram.record(d);
            raise(&self.max_scheduled_ns, d);
        }
        self.last_poll_started.store(now, Relaxed);
        self.state.store(state::RUNNING, Relaxed);
        if prev_started == 0 {
            self.bind_runtime();
        }
        prev_started
    }

    /// The poll that started at `started` ends now.
    #[inline]
    pub(crate) fn poll_ended(&self, now: u64, panicking: bool) -> PollRecord {
        let started = self.last_poll_started.load(Relaxed);
        let busy = now.saturating_sub(started);
        bump(&self.polls, 1);
        bump(&self.busy_ns, busy);
        let bucket = self.poll_histogram.record(busy);
        raise(&self.max_poll_ns, busy);
        // Only the polling thread writes it (see [`bump`]): no locked swap.
        let prev_ended = self.last_poll_ended.load(Relaxed);
        self.last_poll_ended.store(now, Relaxed);
        if panicking {
            self.finish(state::PANICKED, now);
        } else {
            let r = self.state.fetch_update(Relaxed, Relaxed, |s| match s {
                state::RUNNING => Some(state::IDLE),
                state::RUNNING_WOKEN => Some(state::SCHEDULED),
                _ => None,
            });
            if r == Ok(state::RUNNING_WOKEN) {
                // Woken during the poll: scheduled from the poll's end.
                self.last_wake.store(now.saturating_add(1), Relaxed);
            }
        }
        self.dirty.store(true, Relaxed);
        PollRecord {
            started: 0,
            busy_ns: busy,
            bucket,
            prev_started: 0,
            prev_ended,
        }
    }

    /// Takes back a poll recorded by [`poll_ended`](Self::poll_ended).
    pub(crate) fn unpoll(&self, rec: &PollRecord) {
        let _ = self
            .polls
            .fetch_update(Relaxed, Relaxed, |p| p.checked_sub(1));
        let _ = self
            .busy_ns
            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(rec.busy_ns));
        self.poll_histogram.unrecord(rec.bucket);
        if rec.prev_started != 0 {
            self.last_poll_started.store(rec.prev_started, Relaxed);
        }
        if rec.prev_ended != 0 {
            self.last_poll_ended.store(rec.prev_ended, Relaxed);
        }
    }

    /// A wake (by value or by reference).
    #[inline]
    pub(crate) fn woken(&self, self_wake: bool, by_value: bool) {
        self.wakes.fetch_add(1, Relaxed);
        if self_wake {
            self.self_wakes.fetch_add(1, Relaxed);
        }
        if by_value {
            self.waker_drops.fetch_add(1, Relaxed);
        }
        let r = self.state.fetch_update(Relaxed, Relaxed, |s| match s {
            state::IDLE => Some(state::SCHEDULED),
            state::RUNNING => Some(state::RUNNING_WOKEN),
            _ => None,
        });
        match r {
            // A wake of an idle task starts its scheduled time.
            Ok(state::IDLE) => self.last_wake.store(clock::now_ns(), Relaxed),
            // A wake during a poll (`yield_now`, a self-wake, another
            // thread): the task counts as woken at the poll's end, which
            // [`poll_ended`](Self::poll_ended) stamps, so the clock is not
            // read here (the most frequent wake of all).
            Ok(_) => {
                self.wakes_while_scheduled.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.wakes_while_scheduled.fetch_add(1, Relaxed);
            }
        }
        self.dirty.store(true, Relaxed);
    }

    #[inline]
    pub(crate) fn waker_cloned(&self) {
        self.waker_clones.fetch_add(1, Relaxed);
        self.dirty.store(true, Relaxed);
    }

    #[inline]
    pub(crate) fn waker_dropped(&self) {
        self.waker_drops.fetch_add(1, Relaxed);
        self.dirty.store(true, Relaxed);
    }

    /// The task is gone: `how` is one of the done states.
    pub(crate) fn finish(&self, how: u8, now: u64) {
        let prev = self.state.swap(how, Relaxed);
        if state::is_done(prev) && prev != how {
            // Keep the first verdict (e.g. panicked before the drop).
            self.state.store(prev, Relaxed);
        }
        let _ = self.completed_at.compare_exchange(0, now, Relaxed, Relaxed);
        self.dirty.store(true, Relaxed);
        if !state::is_done(prev) {
            registry().finished(self.shard);
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        state::is_done(self.state.load(Relaxed))
    }

    pub(crate) fn model_state(&self) -> TaskState {
        match self.state.load(Relaxed) {
            state::SCHEDULED => TaskState::Scheduled,
            state::IDLE => TaskState::Idle,
            state::RUNNING | state::RUNNING_WOKEN => TaskState::Running,
            state::COMPLETED => TaskState::Completed,
            state::CANCELLED => TaskState::Cancelled,
            state::PANICKED => TaskState::Panicked,
            _ => TaskState::Unknown,
        }
    }

    /// The task as the shared model sees it, now.
    pub(crate) fn to_model(&self, with_histograms: bool) -> model::Task {
        let id = &self.identity;
        let completed_at = ts(self.completed_at.load(Relaxed));
        let now = completed_at.map(|t| t.0).unwrap_or_else(clock::now_ns);
        let busy_ns = self.busy_ns.load(Relaxed);
        let scheduled_ns = self.scheduled_ns.load(Relaxed);
        let total = now.saturating_sub(self.created_at);
        let tokio_id = (id.tokio_id != 0).then_some(id.tokio_id);
        model::Task {
            id: self.id,
            tokio_id,
            runtime_id: match id.runtime_id.load(Relaxed) {
                0 => None,
                rt => Some(rt),
            },
            name: id.name.as_deref().map(str::to_string),
            kind: id.kind.to_string(),
            location: id
                .file
                .as_ref()
                .map(|f| model::Location::new(f.as_ref(), id.line, id.column)),
            parent_id: (id.parent_id != 0).then_some(id.parent_id),
            future_size: id.future_size,
            original_future_size: id.original_future_size,
            state: self.model_state(),
            polls: self.polls.load(Relaxed),
            busy_ns,
            scheduled_ns,
            idle_ns: total.saturating_sub(busy_ns).saturating_sub(scheduled_ns),
            created_at: ts(self.created_at),
            completed_at,
            last_poll_started: ts(self.last_poll_started.load(Relaxed)),
            last_poll_ended: ts(self.last_poll_ended.load(Relaxed)),
            last_wake: ts(self.last_wake.load(Relaxed)),
            wakes: self.wakes.load(Relaxed),
            self_wakes: self.self_wakes.load(Relaxed),
            waker_clones: self.waker_clones.load(Relaxed),
            waker_drops: self.waker_drops.load(Relaxed),
            wakes_while_scheduled: self.wakes_while_scheduled.load(Relaxed),
            max_poll_ns: self.max_poll_ns.load(Relaxed),
            fields: id.fields(),
            backtrace: self.spans.backtrace(),
            poll_histogram: if with_histograms {
                self.poll_histogram.snapshot(self.max_poll_ns.load(Relaxed))
            } else {
                None
            },
            scheduled_histogram: if with_histograms {
                self.scheduled_histogram
                    .snapshot(self.max_scheduled_ns.load(Relaxed))
            } else {
                None
            },
            last_poll_location: self.spans.innermost_location(),
        }
    }
}

/// Number of registry shards (a power of two).
pub const SHARDS: usize = 64;

/// One shard: the cells of the tasks inserted by threads hashed to it.
#[derive(Default)]
pub(crate) struct Shard {
    pub tasks: Vec<Arc<TaskCell>>,
}

/// Per-shard counter of finished tasks no publish has seen yet, on its own
/// cache line so that worker threads do not contend on it.
#[repr(align(64))]
#[derive(Default)]
pub(crate) struct ShardCounter(pub AtomicUsize);

/// The process-global task registry.
pub(crate) struct Registry {
    shards: [Mutex<Shard>; SHARDS],
    /// Finished tasks no publish has seen yet, per shard.
    pub unpublished: [ShardCounter; SHARDS],
    /// Set by the server thread so that a finishing task can wake it early.
    pub pressure: crate::publish::PressureSignal,
}

static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();

pub(crate) fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| Registry {
        shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
        unpublished: std::array::from_fn(|_| ShardCounter::default()),
        pressure: crate::publish::PressureSignal::default(),
    })
}

thread_local! {
    static SHARD_INDEX: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % SHARDS
    };
    static FILES: std::cell::RefCell<FileCache> = Default::default();
}

/// Per-thread interned spawn file names, with the last one in front (a
/// spawn loop asks for the same name every time).
#[derive(Default)]
struct FileCache {
    last: Option<((usize, usize), Arc<str>)>,
    all: HashMap<(usize, usize), Arc<str>>,
}

/// Interns a spawn file name. tokio's names are `&'static str`s from
/// `Location::caller()`, so the address identifies them; the cache is per
/// thread, lock-free, and bounded.
pub(crate) fn intern_file(file: &str) -> Arc<str> {
    let key = (file.as_ptr() as usize, file.len());
    FILES
        .try_with(|f| {
            let mut f = f.borrow_mut();
            if let Some((k, a)) = &f.last {
                if *k == key && a.as_ref() == file {
                    return a.clone();
                }
            }
            let a = match f.all.get(&key) {
                Some(a) if a.as_ref() == file => a.clone(),
                _ => {
                    if f.all.len() > 4096 {
                        f.all.clear();
                    }
                    let a: Arc<str> = Arc::from(file);
                    f.all.insert(key, a.clone());
                    a
                }
            };
            f.last = Some((key, a.clone()));
            a
        })
        .unwrap_or_else(|_| Arc::from(file))
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding a shard lock cannot leave a shard inconsistent
    // (pushes and swap_removes only), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Inserts a new task: never queued, never dropped.
    pub(crate) fn insert(&self, cell: Arc<TaskCell>) {
        let i = cell.shard as usize % SHARDS;
        let mut s = lock(&self.shards[i]);
        s.tasks.push(cell);
        crate::debug_header::publish_shard(i, &s.tasks);
    }

    #[cfg(test)]
    pub(crate) fn lock_shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        lock(&self.shards[i % SHARDS])
    }

    /// Takes a cell that never ran out of the registry (a wrapped future
    /// re-registered under its name); `true` if it was there.
    pub(crate) fn remove(&self, cell: &Arc<TaskCell>) -> bool {
        let i = cell.shard as usize % SHARDS;
        let mut s = lock(&self.shards[i]);
        let Some(at) = s.tasks.iter().position(|c| Arc::ptr_eq(c, cell)) else {
            return false;
        };
        s.tasks.swap_remove(at);
        crate::debug_header::publish_shard(i, &s.tasks);
        true
    }

    /// A task of shard `shard` finished; wakes the publisher early when
    /// many finished tasks wait for it.
    pub(crate) fn finished(&self, shard: u8) {
        let n = self.unpublished[shard as usize % SHARDS]
            .0
            .fetch_add(1, Relaxed)
            + 1;
        self.pressure.check(n);
    }

    /// Visits every shard in turn with its lock held (briefly: callers
    /// only copy `Arc`s or remove entries).
    pub(crate) fn for_each_shard(&self, mut f: impl FnMut(&mut Shard)) {
        for (i, s) in self.shards.iter().enumerate() {
            let mut s = lock(s);
            f(&mut s);
            crate::debug_header::publish_shard(i, &s.tasks);
        }
    }

    /// All cells, copied out.
    pub(crate) fn all(&self) -> Vec<Arc<TaskCell>> {
        let mut v = Vec::new();
        self.for_each_shard(|s| v.extend(s.tasks.iter().cloned()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> TaskIdentity {
        TaskIdentity {
            name: Some("t".into()),
            ..TaskIdentity::unnamed("task")
        }
    }

    // A task cell, its `Arc` header and its registry slot fit in 1 KiB.
    const _: () = assert!(TASK_CELL_SIZE + 16 + 8 <= 1024);

    // What every poll and wake touches stays within 144 bytes of the
    // allocation's start (the `Arc` counts are its first 16): three cache
    // lines.
    const _: () = {
        use std::mem::{offset_of, size_of};
        let hot_end =
            16 + offset_of!(TaskCell, executor_waker) + size_of::<crate::wrapper::ExecutorWaker>();
        assert!(hot_end <= 144);
        assert!(offset_of!(TaskCell, max_scheduled_ns) < offset_of!(TaskCell, executor_waker));
        assert!(offset_of!(TaskCell, last_wake) < offset_of!(TaskCell, id));
    };

    #[test]
    fn spawn_files_are_shared_per_name_and_never_confused() {
        let a = "src/spawner.rs";
        let b = "src/other.rs";
        let first = intern_file(a);
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&intern_file(a), &first), "one copy per name");
            assert_eq!(&*intern_file(b), b);
        }
        // Another string at another address: same text, so same content.
        let owned = String::from(a);
        assert_eq!(&*intern_file(&owned), a);
        // A buffer reused with other text at the same address and length
        // is not taken for the name it held before.
        let mut buf = String::from("src/reused_1.rs");
        assert_eq!(&*intern_file(&buf), "src/reused_1.rs");
        buf.replace_range(11..12, "2");
        assert_eq!(&*intern_file(&buf), "src/reused_2.rs");
        assert_eq!(&*intern_file(&buf), "src/reused_2.rs");
    }

    #[test]
    fn a_task_cell_is_what_the_docs_say() {
        assert!((450..=600).contains(&TASK_CELL_SIZE), "{TASK_CELL_SIZE}");
    }

    #[test]
    fn wake_during_poll_leaves_the_task_scheduled() {
        let c = TaskCell::new(1, Source::Wrapper, identity());
        c.poll_started(clock::now_ns());
        c.woken(true, false);
        c.poll_ended(clock::now_ns(), false);
        assert_eq!(c.model_state(), TaskState::Scheduled);
        assert_eq!(c.self_wakes.load(Relaxed), 1);
        c.poll_started(clock::now_ns());
        c.poll_ended(clock::now_ns(), false);
        assert_eq!(c.model_state(), TaskState::Idle);
        let m = c.to_model(true);
        assert_eq!(m.polls, 2);
        assert_eq!(m.poll_histogram.map(|h| h.count), Some(2));
        assert_eq!(m.scheduled_histogram.map(|h| h.count), Some(2));
    }

    #[test]
    fn a_full_histogram_bucket_halves_and_keeps_the_shape() {
        let h = AtomicHistogram::new();
        for _ in 0..70_000 {
            h.record(500);
        }
        for _ in 0..1_000 {
            h.record(5_000_000);
        }
        let s = h.snapshot(5_000_000).expect("not empty");
        let fast = s.counts[bucket_index(500)];
        let slow = s.counts[bucket_index(5_000_000)];
        assert!((69_000..=71_000).contains(&fast), "{fast}");
        assert!((900..=1_100).contains(&slow), "{slow}");
    }

    #[test]
    fn an_undone_poll_leaves_no_trace() {
        let c = TaskCell::new(2, Source::Tracing, identity());
        c.poll_started(clock::now_ns());
        c.poll_ended(clock::now_ns(), false);
        c.poll_started(clock::now_ns());
        let rec = c.poll_ended(clock::now_ns(), false);
        c.unpoll(&rec);
        let m = c.to_model(true);
        assert_eq!(m.polls, 1);
        assert_eq!(m.poll_histogram.map(|h| h.count), Some(1));
    }
}
