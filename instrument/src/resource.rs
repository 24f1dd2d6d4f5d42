//! Resources (tokio's `Mutex`, `Semaphore`, `RwLock`, `Sleep`, channels…)
//! and the async operations tasks perform on them, from tokio's
//! `runtime.resource` / `runtime.resource.async_op` spans.
//!
//! Like tasks, each one is a cell inserted at creation into a sharded list
//! and updated in place; the publisher derives wait edges from them:
//! * **Waits** — an async op whose last poll returned `Pending`, polled by
//!   task T on resource R: T waits on R.
//! * **Holds** — a `state_update` with `locked = true` (Mutex) or
//!   `write_locked = true` (RwLock) emitted while task T is being polled:
//!   T holds R until the matching `false` update. The edge stays after T
//!   has finished (a guard leaked with `mem::forget` is never released), so
//!   a task waiting on R can be shown to wait on a holder that is gone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use taskscope_wire::model::{AsyncOp, EdgeKind, Location, Resource, WaitEdge};

use crate::clock::{self, ts};

const SHARDS: usize = 16;

/// A sharded list of cells, inserted by the creating thread.
pub(crate) struct Sharded<T> {
    shards: [Mutex<Vec<Arc<T>>>; SHARDS],
}

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % SHARDS
    };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Sharded<T> {
    fn new() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
        }
    }

    pub(crate) fn insert(&self, v: Arc<T>) {
        let i = SHARD.try_with(|i| *i).unwrap_or(0);
        lock(&self.shards[i]).push(v);
    }

    pub(crate) fn for_each_shard(&self, mut f: impl FnMut(&mut Vec<Arc<T>>)) {
        for s in &self.shards {
            f(&mut lock(s));
        }
    }
}

/// An attribute value as tokio recorded it (no allocation for numbers and
/// booleans).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttrValue {
    U64(u64),
    I64(i64),
    Bool(bool),
    Str(Box<str>),
}

impl std::fmt::Display for AttrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrValue::U64(v) => write!(f, "{v}"),
            AttrValue::I64(v) => write!(f, "{v}"),
            AttrValue::Bool(v) => write!(f, "{v}"),
            AttrValue::Str(v) => f.write_str(v),
        }
    }
}

impl AttrValue {
    fn as_i128(&self) -> Option<i128> {
        match self {
            AttrValue::U64(v) => Some(*v as i128),
            AttrValue::I64(v) => Some(*v as i128),
            _ => None,
        }
    }
}

/// How a `state_update` changes an attribute (`<name>.op` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttrOp {
    Override,
    Add,
    Sub,
}

/// Attributes by field name (field names are `'static`).
pub(crate) type Attributes = Mutex<Vec<(&'static str, AttrValue)>>;

fn apply_attr(
    attrs: &mut Vec<(&'static str, AttrValue)>,
    name: &'static str,
    value: AttrValue,
    op: AttrOp,
) {
    let slot = attrs.iter_mut().find(|(n, _)| *n == name);
    let new = match (
        op,
        slot.as_ref().and_then(|(_, v)| v.as_i128()),
        value.as_i128(),
    ) {
        (AttrOp::Add, Some(old), Some(d)) => num(old + d),
        (AttrOp::Sub, Some(old), Some(d)) => num(old - d),
        _ => value,
    };
    match slot {
        Some((_, v)) => *v = new,
        None => attrs.push((name, new)),
    }
}

fn num(v: i128) -> AttrValue {
    if v >= 0 {
        AttrValue::U64(v.min(u64::MAX as i128) as u64)
    } else {
        AttrValue::I64(v.max(i64::MIN as i128) as i64)
    }
}

fn attrs_model(a: &Attributes) -> BTreeMap<String, String> {
    lock(a)
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

pub(crate) struct ResourceCell {
    pub id: u64,
    pub created_at: u64,
    pub kind: Arc<str>,
    pub concrete_type: Arc<str>,
    pub location: Option<(Arc<str>, u32, u32)>,
    pub parent_id: Option<u64>,
    pub internal: bool,
    pub dropped_at: AtomicU64,
    pub dirty: AtomicBool,
    pub published_done: AtomicBool,
    pub attributes: Attributes,
    /// (task id, since) of the task holding the resource, if any.
    pub holder: Mutex<Option<(u64, u64)>>,
}

pub(crate) struct AsyncOpCell {
    pub id: u64,
    pub created_at: u64,
    pub resource_id: Option<u64>,
    pub source: Arc<str>,
    pub task_id: AtomicU64,
    pub polls: AtomicU64,
    pub ready: AtomicBool,
    /// When the current run of `Pending` polls started (0 = not pending).
    pub pending_since: AtomicU64,
    pub dropped_at: AtomicU64,
    pub dirty: AtomicBool,
    pub published_done: AtomicBool,
    pub attributes: Attributes,
}

pub(crate) struct Resources {
    pub resources: Sharded<ResourceCell>,
    pub async_ops: Sharded<AsyncOpCell>,
}

static RESOURCES: std::sync::OnceLock<Resources> = std::sync::OnceLock::new();

pub(crate) fn resources() -> &'static Resources {
    RESOURCES.get_or_init(|| Resources {
        resources: Sharded::new(),
        async_ops: Sharded::new(),
    })
}

impl ResourceCell {
    /// Applies one `state_update` field. `task` is the task being polled
    /// on this thread (0 if none).
    pub(crate) fn update(&self, name: &'static str, value: AttrValue, op: AttrOp, task: u64) {
        if matches!(name, "locked" | "write_locked") {
            match value {
                AttrValue::Bool(true) if task != 0 => {
                    *lock(&self.holder) = Some((task, clock::now_ns()))
                }
                AttrValue::Bool(false) => *lock(&self.holder) = None,
                _ => {}
            }
        }
        apply_attr(&mut lock(&self.attributes), name, value, op);
        self.dirty.store(true, Relaxed);
    }

    pub(crate) fn to_model(&self) -> Resource {
        Resource {
            id: self.id,
            kind: self.kind.to_string(),
            concrete_type: self.concrete_type.to_string(),
            location: self
                .location
                .as_ref()
                .map(|(f, l, c)| Location::new(f.as_ref(), *l, *c)),
            attributes: attrs_model(&self.attributes),
            parent_id: self.parent_id,
            created_at: ts(self.created_at),
            dropped_at: ts(self.dropped_at.load(Relaxed)),
            internal: self.internal,
        }
    }
}

impl AsyncOpCell {
    pub(crate) fn polled(&self, task: u64, ready: bool) {
        self.polls.fetch_add(1, Relaxed);
        if task != 0 {
            self.task_id.store(task, Relaxed);
        }
        self.ready.store(ready, Relaxed);
        if ready {
            self.pending_since.store(0, Relaxed);
        } else {
            let _ = self
                .pending_since
                .compare_exchange(0, clock::now_ns(), Relaxed, Relaxed);
        }
        self.dirty.store(true, Relaxed);
    }

    pub(crate) fn update(&self, name: &'static str, value: AttrValue, op: AttrOp) {
        apply_attr(&mut lock(&self.attributes), name, value, op);
        self.dirty.store(true, Relaxed);
    }

    pub(crate) fn to_model(&self) -> AsyncOp {
        let task = self.task_id.load(Relaxed);
        AsyncOp {
            id: self.id,
            resource_id: self.resource_id,
            task_id: (task != 0).then_some(task),
            source: self.source.to_string(),
            polls: self.polls.load(Relaxed),
            ready: self.ready.load(Relaxed),
            created_at: ts(self.created_at),
            dropped_at: ts(self.dropped_at.load(Relaxed)),
            attributes: attrs_model(&self.attributes),
        }
    }
}

/// Derives the current wait-for edges from the live cells.
pub(crate) fn current_edges(is_live_task: impl Fn(u64) -> bool) -> Vec<WaitEdge> {
    let mut edges = Vec::new();
    let r = resources();
    // tokio's `Mutex`, `Semaphore` and `RwLock` wait on an internal
    // semaphore (a resource span of its own, `is_internal`, with no parent
    // link) inside their own async op: a task with a wait on a resource
    // users know keeps only that edge; a wait on an internal resource alone
    // (a bounded channel's semaphore) is kept, it is all there is.
    let mut internal = std::collections::HashSet::new();
    r.resources.for_each_shard(|rs| {
        for res in rs.iter() {
            if res.internal {
                internal.insert(res.id);
            }
        }
    });
    r.async_ops.for_each_shard(|ops| {
        for op in ops.iter() {
            let since = op.pending_since.load(Relaxed);
            let task = op.task_id.load(Relaxed);
            if since == 0 || task == 0 || op.dropped_at.load(Relaxed) != 0 || !is_live_task(task) {
                continue;
            }
            if let Some(res) = op.resource_id {
                edges.push(WaitEdge {
                    task_id: task,
                    resource_id: res,
                    kind: EdgeKind::Waits,
                    op: op.source.to_string(),
                    since: ts(since),
                });
            }
        }
    });
    r.resources.for_each_shard(|rs| {
        for res in rs.iter() {
            if res.dropped_at.load(Relaxed) != 0 {
                continue;
            }
            // Kept even when the holder has finished: a guard leaked with
            // `mem::forget` never sends `locked = false`, and "held by a
            // task that is gone" is exactly what shows that nobody will
            // ever unlock it.
            if let Some((task, since)) = *lock(&res.holder) {
                edges.push(WaitEdge {
                    task_id: task,
                    resource_id: res.id,
                    kind: EdgeKind::Holds,
                    op: "lock".to_string(),
                    since: ts(since),
                });
            }
        }
    });
    let waits_on_known: std::collections::HashSet<u64> = edges
        .iter()
        .filter(|e| e.kind == EdgeKind::Waits && !internal.contains(&e.resource_id))
        .map(|e| e.task_id)
        .collect();
    edges.retain(|e| {
        !(e.kind == EdgeKind::Waits
            && internal.contains(&e.resource_id)
            && waits_on_known.contains(&e.task_id))
    });
    edges.sort_by_key(|e| (e.task_id, e.resource_id, e.kind));
    edges.dedup_by_key(|e| (e.task_id, e.resource_id, e.kind));
    edges
}

/// One publish's view of resources and async ops: the changed ones and the
/// ones evicted (dropped longer than `retention` ago and already published).
pub(crate) struct ResourceDelta {
    pub resources: Vec<Resource>,
    pub evicted_resources: Vec<u64>,
    pub async_ops: Vec<AsyncOp>,
    pub evicted_async_ops: Vec<u64>,
}

/// Dropped resources and async ops are published once with their drop
/// time and evicted in the same publish (a `Sleep` or an mpsc permit comes
/// and goes thousands of times a second); `full` reads everything without
/// consuming change flags.
pub(crate) fn collect(full: bool, evict: bool) -> ResourceDelta {
    let mut d = ResourceDelta {
        resources: Vec::new(),
        evicted_resources: Vec::new(),
        async_ops: Vec::new(),
        evicted_async_ops: Vec::new(),
    };
    let r = resources();
    let mut changed_res = Vec::new();
    r.resources.for_each_shard(|rs| {
        rs.retain(|c| {
            let dropped = c.dropped_at.load(Relaxed) != 0;
            if full {
                changed_res.push(c.clone());
                return true;
            }
            if c.dirty.swap(false, Relaxed) {
                changed_res.push(c.clone());
                c.published_done.store(dropped, Relaxed);
            }
            if evict && dropped && c.published_done.load(Relaxed) {
                d.evicted_resources.push(c.id);
                return false;
            }
            true
        })
    });
    d.resources = changed_res.iter().map(|c| c.to_model()).collect();
    let mut changed_ops = Vec::new();
    r.async_ops.for_each_shard(|ops| {
        ops.retain(|c| {
            let dropped = c.dropped_at.load(Relaxed) != 0;
            if full {
                changed_ops.push(c.clone());
                return true;
            }
            if c.dirty.swap(false, Relaxed) {
                changed_ops.push(c.clone());
                c.published_done.store(dropped, Relaxed);
            }
            if evict && dropped && c.published_done.load(Relaxed) {
                d.evicted_async_ops.push(c.id);
                return false;
            }
            true
        })
    });
    d.async_ops = changed_ops.iter().map(|c| c.to_model()).collect();
    d
}
