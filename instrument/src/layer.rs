//! The tracing [`Layer`] that turns tokio's task instrumentation into
//! [`TaskCell`] updates.
//!
//! # Callsites
//! [`interesting_callsite`] decides once per callsite (in
//! `register_callsite`) what the layer wants: tokio's `runtime.spawn`
//! spans, its waker events (`tokio::task::waker`), resource and async-op
//! spans and events, and user spans at DEBUG or above (for logical
//! backtraces). With [`crate::init`] every other callsite is disabled for
//! good; a layer from [`crate::Builder::build`] leaves them to the other
//! layers of the stack.
//!
//! # Hot paths
//! Poll start/end (span enter/exit) and waker events find the task's
//! [`TaskCell`] in [`crate::span_table`] (one index into a table read
//! without locks; the layer stores nothing in the registry's span
//! extensions) and do a few relaxed atomic operations on it; nothing
//! allocates. The task being polled is kept per thread, so a poll's end,
//! and the waker clones and self-wakes inside it, need no lookup at all.
//! Events inside resource spans (`state_update`, `poll_op`) find their
//! span through a per-thread stack of entered span ids instead of the
//! registry; callsites are classified once per thread. Timers are not
//! tracked (a sleeping task shows idle): tokio's `Sleep` callsites are not
//! enabled at all, and other timer resources (`Interval`) are recognised
//! by address.
//! Runtime identity is read once per spawn (see [`crate::runtime`]).
//!
//! # What tokio's spans do not say
//! tokio does not report whether the final poll returned `Ready`. Since
//! tracing 0.1.38 the task's `Instrumented` wrapper enters the span once
//! more to drop the future; that enter/exit pair is taken back when the
//! span closes right after it. A task whose drop follows its own poll on
//! the same thread within 1 ms (tokio drops a finished future inside the
//! call that polled it) is reported `completed`; one dropped anywhere else
//! or later (abort, runtime shutdown) is `cancelled`; a poll that unwinds
//! is `panicked`. An abort landing within 1 ms of the task's own poll on
//! the same thread would be misreported as completed.
//!
//! Nor does tokio report a runtime's shutdown. A multi-thread runtime's
//! workers are `spawn_blocking` tasks that end at shutdown right after
//! cancelling the runtime's tasks; that sequence marks the runtime dropped
//! (see [`runtime_shutdown_seen`]). A current-thread runtime's shutdown
//! leaves no such trace.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id};
use tracing_core::{Event, Interest, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::backtrace::SpanNode;
use crate::clock;
use crate::resource::{resources, AsyncOpCell, AttrOp, AttrValue, ResourceCell};
use crate::span_table::{self, SpanEntry};
use crate::task::{intern_file, registry, state, PollRecord, Source, TaskCell, TaskIdentity};

/// What a callsite is to taskscope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Task,
    Resource,
    AsyncOp,
    AsyncOpPoll,
    User,
    /// A waker event, with the indexes of its `op` and `task.id` fields in
    /// the callsite's field set (so that its visitor compares indexes, not
    /// names; `u8::MAX` when the callsite lacks the field).
    Waker {
        op: u8,
        task: u8,
    },
    PollOp,
    StateUpdate,
    OpStateUpdate,
}

const IGNORED_TARGETS: &[&str] = &[
    "tokio",
    "runtime",
    "h2",
    "hyper",
    "tonic",
    "tower",
    "taskscope",
    "taskscope_wire",
    "mio",
    "want",
    "console",
];

/// Targets whose spans are libraries' internals, not a user's logical
/// frames: the crates of [`IGNORED_TARGETS`], their modules, and crates
/// named after them (`tokio_util`, `hyper_util`; but `taskscope_*` other
/// than `taskscope_wire` are users' crates, e.g. taskscope's own demo app).
fn ignored_target(t: &str) -> bool {
    IGNORED_TARGETS.iter().any(|p| {
        t.strip_prefix(p).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(':') || (rest.starts_with('_') && *p != "taskscope")
        })
    })
}

/// The module of tokio's `Sleep` (`time/sleep.rs`), whose callsites all
/// carry it (its `trace_poll_op!` expands there too).
const TOKIO_SLEEP_MODULE: &str = "tokio::time::sleep";

fn classify(meta: &Metadata<'_>) -> Kind {
    if meta.module_path() == Some(TOKIO_SLEEP_MODULE) {
        // tokio's `Sleep` opens a resource span, an async-op span and its
        // poll span per sleep, enters all three on every poll and emits
        // state and poll-op events in them. taskscope tracks no timers (a
        // sleeping task shows idle, and the timer's hold on its waker is
        // still counted through the waker events), so none of these is
        // enabled: for a task looping on `sleep` they were the largest
        // cost per iteration, for taskscope and for the registry under it.
        return Kind::None;
    }
    if meta.is_span() {
        match meta.name() {
            "runtime.spawn" => Kind::Task,
            "runtime.resource" => Kind::Resource,
            "runtime.resource.async_op" => Kind::AsyncOp,
            "runtime.resource.async_op.poll" => Kind::AsyncOpPoll,
            _ => {
                let ignored = ignored_target(meta.target());
                if *meta.level() <= Level::DEBUG && !ignored {
                    Kind::User
                } else {
                    Kind::None
                }
            }
        }
    } else {
        match meta.target() {
            "tokio::task::waker" => {
                let index = |name| {
                    meta.fields()
                        .field(name)
                        .and_then(|f| u8::try_from(f.index()).ok())
                        .unwrap_or(u8::MAX)
                };
                Kind::Waker {
                    op: index("op"),
                    task: index("task.id"),
                }
            }
            "runtime::resource::poll_op" => Kind::PollOp,
            "runtime::resource::state_update" => Kind::StateUpdate,
            "runtime::resource::async_op::state_update" => Kind::OpStateUpdate,
            _ => Kind::None,
        }
    }
}

/// Exactly the callsites [`TaskscopeLayer`] enables (used by the overhead
/// benchmark's "tracing floor" layer).
#[doc(hidden)]
pub fn interesting_callsite(meta: &Metadata<'_>) -> bool {
    classify(meta) != Kind::None
}

// ---- per-thread context, shared with the future wrapper ----

thread_local! {
    /// Set on taskscope's own server thread: its spans and tasks are ignored.
    static IGNORED: Cell<bool> = const { Cell::new(false) };
    /// The tasks being polled on this thread, innermost last: each one's
    /// id and, for a tokio task, its cell. A wrapped future's cell is held
    /// by its wrapper through the poll, so it is not cloned here.
    static CURRENT: RefCell<Vec<(u64, Option<Arc<TaskCell>>)>> =
        const { RefCell::new(Vec::new()) };
    /// The last two poll exits on this thread: (task id, what it recorded),
    /// and (the previous exit's task id, how many exits this thread saw).
    static LAST_EXIT: Cell<Option<(u64, PollRecord)>> = const { Cell::new(None) };
    static PREV_EXIT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    /// The run of task cancellations on this thread that no poll separates:
    /// (the exit count at its last cancellation, when it started). A tokio
    /// worker shutting down drops every task of its runtime this way, then
    /// ends (see [`runtime_shutdown_seen`]).
    static CANCEL_RUN: Cell<(u64, u64)> = const { Cell::new((u64::MAX, 0)) };
    /// (task id, start of its previous poll) saved at the last task enter.
    static ENTERED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    /// Ids of the spans entered on this thread, innermost last: the
    /// registry's current span without a registry lookup.
    static SPAN_STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The span a contextual event on this thread belongs to.
#[inline]
fn current_span_id() -> Option<u64> {
    SPAN_STACK
        .try_with(|s| s.borrow().last().copied())
        .ok()
        .flatten()
}

pub(crate) fn ignore_this_thread() {
    let _ = IGNORED.try_with(|i| i.set(true));
}

fn ignored() -> bool {
    IGNORED.try_with(|i| i.get()).unwrap_or(true)
}

/// The id of the task being polled on this thread, 0 if none.
#[inline]
pub(crate) fn current_task() -> u64 {
    CURRENT
        .try_with(|c| c.borrow().last().map(|t| t.0).unwrap_or(0))
        .unwrap_or(0)
}

/// Runs `f` on the innermost polled task if its id is `id`.
#[inline]
fn with_current<R>(id: u64, f: impl FnOnce(&TaskCell) -> R) -> Option<R> {
    CURRENT
        .try_with(|c| match c.borrow().last() {
            Some((i, Some(t))) if *i == id => Some(f(t)),
            _ => None,
        })
        .ok()
        .flatten()
}

/// A tokio task's poll starts on this thread.
#[inline]
fn push_current(cell: Arc<TaskCell>) {
    let _ = CURRENT.try_with(|c| c.borrow_mut().push((cell.id, Some(cell))));
}

/// A wrapped future's poll starts on this thread.
#[inline]
pub(crate) fn push_current_id(id: u64) {
    let _ = CURRENT.try_with(|c| c.borrow_mut().push((id, None)));
}

/// Removes the innermost entry for task `id` and returns its cell (`None`
/// for a wrapped future's).
#[inline]
pub(crate) fn pop_current(id: u64) -> Option<Arc<TaskCell>> {
    CURRENT
        .try_with(|c| {
            let mut c = c.borrow_mut();
            match c.last() {
                Some(t) if t.0 == id => c.pop(),
                _ => {
                    let pos = c.iter().rposition(|t| t.0 == id)?;
                    Some(c.remove(pos))
                }
            }
        })
        .ok()
        .flatten()
        .and_then(|(_, cell)| cell)
}

/// Records the start of a poll of task `cell` on this thread.
#[inline]
fn task_entered(cell: &TaskCell) {
    let prev_started = cell.poll_started(clock::now_ns());
    let _ = ENTERED.try_with(|e| e.set((cell.id, prev_started)));
}

/// Records the end of a poll of `cell` on this thread.
fn exited(cell: &TaskCell) {
    let now = clock::now_ns();
    let started = cell.last_poll_started.load(Relaxed);
    let mut rec = cell.poll_ended(now, std::thread::panicking());
    rec.started = started;
    rec.prev_started = match ENTERED.try_with(|e| e.get()) {
        Ok((id, prev)) if id == cell.id => prev,
        _ => 0,
    };
    let _ = LAST_EXIT.try_with(|l| {
        let prev = l.replace(Some((cell.id, rec)));
        let _ = PREV_EXIT.try_with(|p| {
            let exits = p.get().1.wrapping_add(1);
            p.set((prev.map(|(i, _)| i).unwrap_or(0), exits));
        });
    });
}

/// A task's span closed: decide how the task ended (see the module docs).
fn task_closed(cell: &TaskCell, now: u64) {
    let last = LAST_EXIT.try_with(|l| l.get()).ok().flatten();
    let (prev, exits) = PREV_EXIT.try_with(|p| p.get()).unwrap_or((0, 0));
    let mut verdict = state::CANCELLED;
    let mut drop_pair = false;
    if let Some((last_id, rec)) = last {
        if last_id == cell.id {
            drop_pair = true;
            // The enter/exit pair of `Instrumented`'s drop.
            cell.unpoll(&rec);
            let _ = LAST_EXIT.try_with(|l| l.set(None));
            // tokio drops a finished future right after the
            // poll that returned `Ready`, in the same call; an
            // aborted one later, from another scheduler run.
            let gap = rec.started.saturating_sub(rec.prev_ended);
            if prev == cell.id && gap < READY_DROP_GAP_NS {
                verdict = state::COMPLETED;
            }
        }
    }
    cell.finish(verdict, now);
    if drop_pair {
        runtime_shutdown_seen(cell, verdict, exits, now);
    }
}

/// Recognises a multi-thread runtime shutting down, for
/// `runtime-dropped-with-tasks` (tokio reports no shutdown): each worker
/// runs as a `spawn_blocking` task of tokio's `multi_thread/worker.rs`
/// that ends only at shutdown (or when `block_in_place` hands its core
/// to another thread), and at shutdown a worker cancels the runtime's
/// tasks one after another, polling nothing in between, then ends. So a
/// worker task that ends right after such a run of cancellations on its
/// thread (no poll between them: the exit count advanced by exactly the
/// drop pairs) marks its runtime dropped from the run's first
/// cancellation. A `block_in_place` hand-off polls the task that called
/// it just before, so it breaks the run. A runtime whose worker saw no
/// cancellation had no live task to drop and is not marked.
fn runtime_shutdown_seen(cell: &TaskCell, verdict: u8, exits: u64, now: u64) {
    let Ok((at_last, start)) = CANCEL_RUN.try_with(Cell::get) else {
        return;
    };
    if verdict == state::CANCELLED {
        // One exit since the previous cancellation: this task's drop pair.
        let start = if exits == at_last.wrapping_add(1) {
            start
        } else {
            now
        };
        let _ = CANCEL_RUN.try_with(|r| r.set((exits, start)));
    } else if verdict == state::COMPLETED
        && exits == at_last.wrapping_add(2)
        && is_tokio_worker(cell)
    {
        // Two exits: the worker's final poll and its own drop pair.
        let rt = cell.identity.runtime_id.load(Relaxed);
        if rt != 0 {
            crate::runtime::mark_dropped(rt, start);
        }
        let _ = CANCEL_RUN.try_with(|r| r.set((u64::MAX, 0)));
    }
}

/// A multi-thread runtime's worker: the `spawn_blocking` in tokio's
/// `runtime/scheduler/multi_thread/worker.rs`.
fn is_tokio_worker(cell: &TaskCell) -> bool {
    let id = &cell.identity;
    id.kind == "blocking"
        && id.file.as_deref().is_some_and(|f| {
            f.replace('\\', "/")
                .ends_with("src/runtime/scheduler/multi_thread/worker.rs")
        })
}

/// Longest time between a poll's end and the drop of its future for the
/// task to count as completed (see the module docs).
const READY_DROP_GAP_NS: u64 = 1_000_000;

/// Resource-span callsites that create timers, remembered so that the
/// next `Sleep` costs a pointer comparison instead of visiting its fields
/// (tokio's timer spans name `kind = "timer"` as a literal, so a callsite
/// that made one timer makes only timers).
struct CallsiteSet {
    slots: [std::sync::atomic::AtomicUsize; 8],
}

impl CallsiteSet {
    fn key(meta: &Metadata<'_>) -> usize {
        meta as *const Metadata<'_> as usize
    }

    #[inline]
    fn contains(&self, meta: &Metadata<'_>) -> bool {
        let k = Self::key(meta);
        self.slots.iter().any(|s| s.load(Relaxed) == k)
    }

    fn add(&self, meta: &Metadata<'_>) {
        let k = Self::key(meta);
        for s in &self.slots {
            match s.compare_exchange(0, k, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(cur) if cur == k => return,
                Err(_) => {}
            }
        }
        // Full: such callsites are just not cached.
    }
}

static TIMER_CALLSITES: CallsiteSet = CallsiteSet {
    slots: [const { std::sync::atomic::AtomicUsize::new(0) }; 8],
};

/// [`classify`] with a per-thread cache keyed by the callsite's address:
/// spans and events are created far more often than callsites exist.
#[inline]
fn classify_cached(meta: &'static Metadata<'static>) -> Kind {
    thread_local! {
        static CACHE: RefCell<[(usize, Kind); 64]> =
            const { RefCell::new([(0, Kind::None); 64]) };
    }
    let k = meta as *const Metadata<'static> as usize;
    let slot = (k >> 4) % 64;
    CACHE
        .try_with(|c| {
            let mut c = c.borrow_mut();
            if c[slot].0 == k {
                return c[slot].1;
            }
            let kind = classify(meta);
            c[slot] = (k, kind);
            kind
        })
        .unwrap_or_else(|_| classify(meta))
}

/// The tracing layer. Build one with [`crate::Builder::build`], or let
/// [`crate::init`] install it.
#[derive(Debug, Clone)]
pub struct TaskscopeLayer {
    /// Composed with other layers: leave uninteresting callsites to them.
    pub(crate) composed: bool,
}

// ---- field visitors ----

/// A fixed-size string buffer for short `Display` fields (no allocation).
struct SmallStr {
    buf: [u8; 24],
    len: usize,
    overflow: bool,
}

impl SmallStr {
    fn new() -> Self {
        Self {
            buf: [0; 24],
            len: 0,
            overflow: false,
        }
    }
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for SmallStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            self.overflow = true;
            return Ok(());
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[derive(Default)]
struct TaskFields {
    kind: Option<&'static str>,
    name: Option<String>,
    tokio_id: Option<u64>,
    size: Option<u64>,
    original_size: Option<u64>,
    file: Option<Arc<str>>,
    line: u32,
    col: u32,
    /// Fields tokio does not set (allocated only when there are some).
    extra: Vec<(&'static str, Box<str>)>,
}

fn static_kind(s: &str) -> &'static str {
    match s {
        "task" => "task",
        "blocking" => "blocking",
        "block_on" => "block_on",
        "local" => "local",
        _ => "task",
    }
}

impl Visit for TaskFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "kind" => {
                let mut s = SmallStr::new();
                let _ = write!(s, "{value:?}");
                self.kind = Some(static_kind(s.as_str()));
            }
            "task.name" => {
                let mut s = String::new();
                let _ = write!(s, "{value:?}");
                if !s.is_empty() {
                    self.name = Some(s);
                }
            }
            "task.id"
            | "size.bytes"
            | "original_size.bytes"
            | "loc.line"
            | "loc.col"
            | "loc.file" => {}
            other => self.extra.push((other, format!("{value:?}").into())),
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "loc.file" => self.file = Some(intern_file(value)),
            "kind" => self.kind = Some(static_kind(value)),
            "task.name" => {
                if !value.is_empty() {
                    self.name = Some(value.to_string())
                }
            }
            other => self.extra.push((other, value.into())),
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "task.id" => self.tokio_id = Some(value),
            "size.bytes" => self.size = Some(value),
            "original_size.bytes" => self.original_size = Some(value),
            "loc.line" => self.line = value as u32,
            "loc.col" => self.col = value as u32,
            other => self.extra.push((other, value.to_string().into())),
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        match u64::try_from(value) {
            Ok(v) => self.record_u64(field, v),
            Err(_) => self.extra.push((field.name(), value.to_string().into())),
        }
    }
}

/// Collects every field as `(name, value)` strings (resources, async ops,
/// user spans: not hot).
#[derive(Default)]
struct AllFields(Vec<(&'static str, String)>);

impl Visit for AllFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push((field.name(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name(), value.to_string()));
    }
}

/// `runtime.resource` / `runtime.resource.async_op` span fields.
#[derive(Default)]
struct ResourceFields {
    kind: Option<Arc<str>>,
    concrete_type: Option<Arc<str>>,
    source: Option<Arc<str>>,
    file: Option<Arc<str>>,
    line: u32,
    col: u32,
    internal: bool,
}

impl Visit for ResourceFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = SmallStr::new();
        let _ = write!(s, "{value:?}");
        if !s.overflow {
            self.record_str(field, s.as_str().trim_matches('"'));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "kind" => self.kind = Some(intern_file(value)),
            "concrete_type" => self.concrete_type = Some(intern_file(value)),
            "source" => self.source = Some(intern_file(value)),
            "loc.file" => self.file = Some(intern_file(value)),
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "loc.line" => self.line = value as u32,
            "loc.col" => self.col = value as u32,
            _ => {}
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "is_internal" {
            self.internal = value;
        }
    }
}

/// The fields of one `state_update` event, without allocating for numbers.
struct StateFields {
    values: [Option<(&'static str, AttrValue)>; 6],
    ops: [Option<(&'static str, AttrOp)>; 6],
}

impl StateFields {
    fn new() -> Self {
        Self {
            values: Default::default(),
            ops: Default::default(),
        }
    }
    fn push(&mut self, name: &'static str, v: AttrValue) {
        if let Some(slot) = self.values.iter_mut().find(|s| s.is_none()) {
            *slot = Some((name, v));
        }
    }
    fn each(self, mut f: impl FnMut(&'static str, AttrValue, AttrOp)) {
        let ops = self.ops;
        let find = |name: &str| {
            ops.iter()
                .flatten()
                .find(|(n, _)| *n == name)
                .map(|(_, o)| *o)
                .unwrap_or(AttrOp::Override)
        };
        for (n, v) in self.values.into_iter().flatten() {
            f(n, v, find(n));
        }
    }
}

impl Visit for StateFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = SmallStr::new();
        let _ = write!(s, "{value:?}");
        let v = if s.overflow {
            format!("{value:?}")
        } else {
            s.as_str().to_string()
        };
        self.record_str(field, v.trim_matches('"'));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        if let Some(base) = name.strip_suffix(".op") {
            let op = match value {
                "add" => AttrOp::Add,
                "sub" => AttrOp::Sub,
                _ => AttrOp::Override,
            };
            if let Some(slot) = self.ops.iter_mut().find(|s| s.is_none()) {
                // `base` borrows the 'static field name.
                *slot = Some((&name[..base.len()], op));
            }
            return;
        }
        self.push(name, AttrValue::Str(value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), AttrValue::U64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), AttrValue::I64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name(), AttrValue::Bool(value));
    }
}

struct WakerFields {
    /// Indexes of the `op` and `task.id` fields (see [`Kind::Waker`]).
    op_field: u8,
    task_field: u8,
    op: u8,
    task: u64,
}

impl Visit for WakerFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.index() == usize::from(self.op_field) {
            let mut s = SmallStr::new();
            let _ = write!(s, "{value:?}");
            self.record_str(field, s.as_str().trim_matches('"'));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.index() == usize::from(self.op_field) {
            self.op = match value {
                "waker.clone" => 1,
                "waker.drop" => 2,
                "waker.wake" => 3,
                "waker.wake_by_ref" => 4,
                _ => 0,
            };
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.index() == usize::from(self.task_field) {
            self.task = value;
        }
    }
}

#[derive(Default)]
struct PollOpFields {
    ready: Option<bool>,
    /// Whether to read `op_name` (only when the op starts being tracked).
    want_name: bool,
    op_name: Option<Arc<str>>,
}

impl Visit for PollOpFields {
    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.want_name && field.name() == "op_name" {
            self.op_name = Some(intern_file(value));
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "is_ready" {
            self.ready = Some(value);
        }
    }
}

// ---- the layer ----

fn parent_span<'a, S>(attrs: &Attributes<'_>, ctx: &'a Context<'_, S>) -> Option<SpanRef<'a, S>>
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    if let Some(p) = attrs.parent() {
        ctx.span(p)
    } else if attrs.is_contextual() {
        ctx.lookup_current()
    } else {
        None
    }
}

impl TaskscopeLayer {
    fn new_task(&self, attrs: &Attributes<'_>, id: &Id) {
        let mut f = TaskFields::default();
        attrs.record(&mut f);
        let parent = current_task();
        let cell = Arc::new(TaskCell::new(
            id.into_u64(),
            Source::Tracing,
            TaskIdentity {
                name: f.name.map(String::into_boxed_str),
                kind: f.kind.unwrap_or("task"),
                file: f.file,
                line: f.line,
                column: f.col,
                tokio_id: f.tokio_id.unwrap_or(0),
                parent_id: parent,
                future_size: f.size,
                original_future_size: f.original_size,
                runtime_id: std::sync::atomic::AtomicU64::new(crate::runtime::current_runtime_id()),
                extra_fields: (!f.extra.is_empty()).then(|| f.extra.into_boxed_slice()),
            },
        ));
        registry().insert(cell.clone());
        crate::publish::note_source(crate::publish::SOURCE_TRACING);
        span_table::insert(id.into_u64(), SpanEntry::Task(cell));
    }

    fn new_resource<S>(&self, attrs: &Attributes<'_>, id: &Id, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'l> LookupSpan<'l>,
    {
        let meta = attrs.metadata();
        if TIMER_CALLSITES.contains(meta) {
            return;
        }
        let mut f = ResourceFields::default();
        attrs.record(&mut f);
        if f.kind
            .as_deref()
            .is_some_and(|k| k.eq_ignore_ascii_case("timer"))
        {
            // Timers (`Sleep`) come and go at the rate tasks sleep; a
            // sleeping task shows as idle. Not tracked as resources.
            TIMER_CALLSITES.add(meta);
            return;
        }
        let parent_id = parent_span(attrs, ctx).and_then(|p| {
            p.scope()
                .find_map(|s| match span_table::get(s.id().into_u64()) {
                    Some(SpanEntry::Resource(r)) => Some(r.id),
                    _ => None,
                })
        });
        let location = f.file.map(|file| (file, f.line, f.col));
        let cell = Arc::new(ResourceCell {
            id: id.into_u64(),
            created_at: clock::now_ns(),
            kind: f.kind.unwrap_or_else(|| intern_file("Unknown")),
            concrete_type: f.concrete_type.unwrap_or_else(|| intern_file("Unknown")),
            location,
            parent_id,
            internal: f.internal || parent_id.is_some(),
            dropped_at: Default::default(),
            dirty: std::sync::atomic::AtomicBool::new(true),
            published_done: Default::default(),
            attributes: Default::default(),
            holder: Default::default(),
        });
        resources().resources.insert(cell.clone());
        span_table::insert(id.into_u64(), SpanEntry::Resource(cell));
    }

    /// An async op is tracked from its first `Pending` poll: the many that
    /// complete on their first poll (an uncontended lock, a channel with
    /// room) cost nothing beyond tokio's own span.
    fn poll_op<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'l> LookupSpan<'l>,
    {
        let mut f = PollOpFields::default();
        event.record(&mut f);
        let ready = f.ready.unwrap_or(false);
        let Some(current) = event_span_id(event).and_then(|id| ctx.span(&Id::from_u64(id))) else {
            return;
        };
        // tokio emits the event inside the op's `async_op.poll` span, a
        // child of the `async_op` span: found without walking the scope.
        let op_id = match current.metadata().name() {
            "runtime.resource.async_op.poll" => current.parent().map(|p| p.id()),
            "runtime.resource.async_op" => Some(current.id()),
            _ => None,
        };
        let Some(op_id) = op_id else { return };
        let task = current_task();
        let tracked = span_table::with(op_id.into_u64(), |e| match e {
            SpanEntry::AsyncOp(op) => {
                op.polled(task, ready);
                true
            }
            _ => false,
        });
        if tracked == Some(true) || ready {
            return;
        }
        // First `Pending` poll: find the resource the op belongs to.
        let Some(op_span) = ctx.span(&op_id) else {
            return;
        };
        let mut resource_id = None;
        for s in op_span.scope().skip(1) {
            // (A poll-op callsite cannot be remembered as "timers only":
            // tokio's generic `InstrumentedAsyncOp` shares one callsite
            // between `Interval::tick` and `Mutex::lock`.)
            if TIMER_CALLSITES.contains(s.metadata()) {
                return;
            }
            if let Some(SpanEntry::Resource(r)) = span_table::get(s.id().into_u64()) {
                resource_id = Some(r.id);
                break;
            }
        }
        let Some(resource_id) = resource_id else {
            return;
        };
        f.want_name = true;
        event.record(&mut f);
        let cell = Arc::new(AsyncOpCell {
            id: op_span.id().into_u64(),
            created_at: clock::now_ns(),
            resource_id: Some(resource_id),
            source: f.op_name.unwrap_or_else(|| intern_file("poll")),
            task_id: std::sync::atomic::AtomicU64::new(task),
            polls: Default::default(),
            ready: Default::default(),
            pending_since: Default::default(),
            dropped_at: Default::default(),
            dirty: std::sync::atomic::AtomicBool::new(true),
            published_done: Default::default(),
            attributes: Default::default(),
        });
        cell.polled(task, false);
        resources().async_ops.insert(cell.clone());
        span_table::insert(cell.id, SpanEntry::AsyncOp(cell));
    }

    fn new_user_span<S>(&self, attrs: &Attributes<'_>, id: &Id, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'l> LookupSpan<'l>,
    {
        let Some(parent) = parent_span(attrs, ctx) else {
            return;
        };
        // The nearest enclosing task or user span.
        let found = parent
            .scope()
            .find_map(|s| match span_table::get(s.id().into_u64()) {
                Some(SpanEntry::Task(t)) => Some((t, 0)),
                Some(SpanEntry::User(t)) => Some((t, s.id().into_u64())),
                _ => None,
            });
        let Some((task, parent_id)) = found else {
            return;
        };
        let mut f = AllFields::default();
        attrs.record(&mut f);
        let mut fields = String::new();
        for (n, v) in &f.0 {
            if !fields.is_empty() {
                fields.push_str(", ");
            }
            let _ = write!(fields, "{n}={v}");
        }
        let meta = attrs.metadata();
        task.spans.add(SpanNode {
            span_id: id.into_u64(),
            parent: parent_id,
            name: meta.name(),
            file: meta.file(),
            line: meta.line().unwrap_or(0),
            module_path: meta.module_path(),
            fields,
            last_entered: 0,
        });
        task.dirty.store(true, Relaxed);
        span_table::insert(id.into_u64(), SpanEntry::User(task));
    }

    fn on_waker_event(&self, event: &Event<'_>, op_field: u8, task_field: u8) {
        let mut f = WakerFields {
            op_field,
            task_field,
            op: 0,
            task: 0,
        };
        event.record(&mut f);
        if f.op == 0 || f.task == 0 {
            return;
        }
        let apply = |cell: &TaskCell, is_current: bool| match f.op {
            1 => cell.waker_cloned(),
            2 => cell.waker_dropped(),
            op => cell.woken(is_current, op == 3),
        };
        // Most clones and self-wakes happen inside the task's own poll.
        if with_current(f.task, |cell| apply(cell, true)).is_some() {
            return;
        }
        span_table::with(f.task, |e| {
            if let SpanEntry::Task(cell) = e {
                apply(cell, false);
            }
        });
    }

    fn on_resource_event(&self, kind: Kind, event: &Event<'_>) {
        let Some(current) = event_span_id(event) else {
            return;
        };
        // tokio emits state updates inside the resource's (or op's) own
        // span; one not in the table (a timer, an op that never pended)
        // is not tracked, and nothing further up the scope can be its.
        span_table::with(current, |e| match (kind, e) {
            (Kind::OpStateUpdate, SpanEntry::AsyncOp(op)) => {
                let mut f = StateFields::new();
                event.record(&mut f);
                f.each(|n, v, o| op.update(n, v, o));
            }
            (Kind::StateUpdate, SpanEntry::Resource(r)) => {
                let mut f = StateFields::new();
                event.record(&mut f);
                let task = current_task();
                f.each(|n, v, o| r.update(n, v, o, task));
            }
            _ => {}
        });
    }
}

/// The id of the span an event belongs to (its explicit parent or the
/// current one).
fn event_span_id(event: &Event<'_>) -> Option<u64> {
    if let Some(p) = event.parent() {
        Some(p.into_u64())
    } else if event.is_contextual() {
        current_span_id()
    } else {
        None
    }
}

impl<S> Layer<S> for TaskscopeLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if interesting_callsite(meta) {
            Interest::always()
        } else if self.composed {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !crate::publish::is_running() || ignored() {
            return;
        }
        match classify_cached(attrs.metadata()) {
            Kind::Task => self.new_task(attrs, id),
            Kind::Resource => self.new_resource(attrs, id, &ctx),
            Kind::User => self.new_user_span(attrs, id, &ctx),
            _ => {}
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        match classify_cached(event.metadata()) {
            Kind::Waker { op, task } => self.on_waker_event(event, op, task),
            Kind::PollOp if !ignored() => self.poll_op(event, &ctx),
            k @ (Kind::StateUpdate | Kind::OpStateUpdate) if !ignored() => {
                self.on_resource_event(k, event)
            }
            _ => {}
        }
    }

    fn on_enter(&self, id: &Id, _ctx: Context<'_, S>) {
        let _ = SPAN_STACK.try_with(|s| s.borrow_mut().push(id.into_u64()));
        span_table::with(id.into_u64(), |e| match e {
            SpanEntry::Task(cell) => {
                task_entered(cell);
                push_current(cell.clone());
            }
            SpanEntry::User(task) => task.spans.entered(id.into_u64()),
            SpanEntry::Resource(_) | SpanEntry::AsyncOp(_) => {}
        });
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        let _ = SPAN_STACK.try_with(|s| {
            let mut s = s.borrow_mut();
            let id = id.into_u64();
            if s.last() == Some(&id) {
                s.pop();
            } else if let Some(i) = s.iter().rposition(|x| *x == id) {
                s.remove(i);
            }
        });
        // The task entered last on this thread needs no lookup.
        if let Some(cell) = pop_current(id.into_u64()) {
            exited(&cell);
            return;
        }
        span_table::with(id.into_u64(), |e| {
            if let SpanEntry::Task(cell) = e {
                exited(cell);
            }
        });
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let Some(entry) = span_table::remove(id.into_u64()) else {
            return;
        };
        let now = clock::now_ns();
        match entry {
            SpanEntry::Task(cell) => task_closed(&cell, now),
            SpanEntry::User(task) => {
                task.spans.remove(id.into_u64());
                task.dirty.store(true, Relaxed);
            }
            SpanEntry::Resource(r) => {
                r.dropped_at.store(now, Relaxed);
                *r.holder.lock().unwrap_or_else(|e| e.into_inner()) = None;
                r.dirty.store(true, Relaxed);
            }
            SpanEntry::AsyncOp(op) => {
                op.dropped_at.store(now, Relaxed);
                op.pending_since.store(0, Relaxed);
                op.dirty.store(true, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, ignored_target, Kind};
    use tracing_core::callsite::{Callsite, Identifier};
    use tracing_core::field::FieldSet;
    use tracing_core::metadata::Kind as MetaKind;
    use tracing_core::{Interest, Level, Metadata};

    /// A `runtime.resource` span callsite declared in `module`, as tokio
    /// declares one in each of its resource types.
    macro_rules! resource_callsite {
        ($cs:ident, $meta:ident, $module:literal) => {
            struct $cs;
            static $meta: Metadata<'static> = Metadata::new(
                "runtime.resource",
                $module,
                Level::TRACE,
                Some("src/x.rs"),
                Some(1),
                Some($module),
                FieldSet::new(&["concrete_type", "kind"], Identifier(&$cs)),
                MetaKind::SPAN,
            );
            impl Callsite for $cs {
                fn set_interest(&self, _: Interest) {}
                fn metadata(&self) -> &Metadata<'_> {
                    &$meta
                }
            }
        };
    }

    #[test]
    fn sleep_callsites_are_left_disabled_but_other_resources_are_tracked() {
        resource_callsite!(SleepCs, SLEEP, "tokio::time::sleep");
        resource_callsite!(MutexCs, MUTEX, "tokio::sync::mutex");
        assert_eq!(classify(&SLEEP), Kind::None);
        assert!(!super::interesting_callsite(&SLEEP));
        assert_eq!(classify(&MUTEX), Kind::Resource);
    }

    #[test]
    fn library_internals_are_not_logical_frames_but_user_crates_are() {
        for t in [
            "tokio",
            "tokio::sync",
            "tokio_util::codec",
            "h2::proto",
            "taskscope::server",
            "taskscope_wire::state",
        ] {
            assert!(ignored_target(t), "{t}");
        }
        for t in [
            "taskscope_cli::demo_app",
            "my_app",
            "tokioish::x",
            "hyperion",
        ] {
            assert!(!ignored_target(t), "{t}");
        }
    }
}
