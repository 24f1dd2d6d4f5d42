//! Two minimal tracing layers that count each task's polls and wakes and
//! time its polls, to put `taskscope-tracing`'s figures in proportion (as
//! `wrapper-floor` does for the wrapper path). Each is installed on top of
//! `floor` (the registry and the layer that enables exactly taskscope's
//! callsites), so it costs what `floor` costs plus its counting, and
//! nothing else: no task states, histograms, scheduled time or waker clone
//! and drop counts, no resources, backtraces or hazards, no registry of
//! tasks, no publisher or server.
//!
//! - `layer-extensions` ([`ExtensionsLayer`]) keeps its per-task record
//!   the way tracing layers usually do, in the registry's span extensions:
//!   each enter, exit and wake finds it through the registry's slab slot,
//!   the extensions' lock and map, and the record's box.
//! - `layer-floor` ([`DirectLayer`]) is the least such a layer pays: the
//!   record lives in a flat table indexed by the registry's slab address
//!   (decoded from the span id), so finding it is one index, no hashing,
//!   no lock and no pointer to follow. Its records are never freed, it
//!   has no answer for an id the table cannot place, and a wake racing
//!   with a slot's reuse may count on the new task: fine for a yardstick,
//!   not for a tool. (taskscope's span table uses the same index, with
//!   hazard pointers for the race and a map behind it for other ids.)
//!
//! Whatever taskscope's layer costs above `layer-floor` is the price of
//! what it shows and of finding a task safely.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, Layout};
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id};
use tracing_core::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::floor_wrapper::ticks;

/// What both layers keep per task.
#[derive(Default)]
struct Record {
    /// `layer-floor`: the span id the slot holds now (0: none).
    id: AtomicU64,
    polls: AtomicU64,
    wakes: AtomicU64,
    busy_ticks: AtomicU64,
}

impl Record {
    fn poll_ended(&self, started: u64) {
        self.polls.fetch_add(1, Relaxed);
        self.busy_ticks
            .fetch_add(ticks().wrapping_sub(started), Relaxed);
    }
}

thread_local! {
    /// Time-stamp counter at each enter of a task span on this thread,
    /// innermost last (a task is polled by one thread at a time, but its
    /// span can be entered inside another's, e.g. `block_on`).
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn entered() {
    ENTERED.with(|e| e.borrow_mut().push(ticks()));
}

fn exited() -> Option<u64> {
    ENTERED.with(|e| e.borrow_mut().pop())
}

/// The task a tokio waker event wakes (`op` is a wake), if any.
fn woken_task(event: &Event<'_>) -> Option<u64> {
    #[derive(Default)]
    struct WakerFields {
        wake: bool,
        task: u64,
    }
    impl Visit for WakerFields {
        fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "op" {
                self.wake = matches!(value, "waker.wake" | "waker.wake_by_ref");
            }
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            if field.name() == "task.id" {
                self.task = value;
            }
        }
    }
    if event.metadata().target() != "tokio::task::waker" {
        return None;
    }
    let mut f = WakerFields::default();
    event.record(&mut f);
    (f.wake && f.task != 0).then_some(f.task)
}

/// `layer-extensions`: records in the registry's span extensions.
pub struct ExtensionsLayer;

impl<S> Layer<S> for ExtensionsLayer
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() == "runtime.spawn" {
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(Record::default());
            }
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if ctx
            .span(id)
            .is_some_and(|s| s.extensions().get::<Record>().is_some())
        {
            entered();
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let ext = span.extensions();
        if let Some(record) = ext.get::<Record>() {
            if let Some(started) = exited() {
                record.poll_ended(started);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(task) = woken_task(event) else {
            return;
        };
        if let Some(span) = ctx.span(&Id::from_u64(task)) {
            if let Some(record) = span.extensions().get::<Record>() {
                record.wakes.fetch_add(1, Relaxed);
            }
        }
    }
}

/// sharded-slab's default layout of a key (tracing-subscriber's span id
/// minus one): the slot's address in its shard in the low 38 bits, then
/// 13 bits of shard (the creating thread), then the generation.
const ADDR_BITS: u32 = 38;
const TID_BITS: u32 = 13;
/// Table rows: addresses below this, shards below [`TIDS`], are tracked.
const ADDRS: u64 = 1 << 18;
const TIDS: u64 = 8;

/// `layer-floor`'s table: one [`Record`] per (shard, address), zeroed
/// pages the kernel maps as they are touched.
fn table() -> &'static [Record] {
    static TABLE: OnceLock<&'static [Record]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let len = (TIDS * ADDRS) as usize;
        let layout = Layout::array::<Record>(len).expect("table layout");
        // SAFETY: the layout is not zero-sized; an all-zero `Record` is
        // valid (four `AtomicU64`s); the table lives for the process.
        unsafe {
            let ptr = alloc_zeroed(layout).cast::<Record>();
            assert!(!ptr.is_null(), "allocating layer-floor's table");
            std::slice::from_raw_parts(ptr, len)
        }
    })
}

/// The slot of span `id`, if the table covers it.
#[inline]
fn slot(id: u64) -> Option<&'static Record> {
    let key = id.wrapping_sub(1);
    let addr = key & ((1 << ADDR_BITS) - 1);
    let tid = (key >> ADDR_BITS) & ((1 << TID_BITS) - 1);
    (addr < ADDRS && tid < TIDS).then(|| &table()[(tid * ADDRS + addr) as usize])
}

/// The record of task span `id`, if it is one.
#[inline]
fn record(id: u64) -> Option<&'static Record> {
    slot(id).filter(|r| r.id.load(Relaxed) == id)
}

/// `layer-floor`: records in a flat table indexed by slab address.
pub struct DirectLayer;

impl<S> Layer<S> for DirectLayer
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let id = id.into_u64();
        let task = attrs.metadata().name() == "runtime.spawn";
        if !task {
            return;
        }
        // A slot still holding a task means two live spans share it: the
        // decoding above no longer matches tracing-subscriber's ids.
        match slot(id) {
            Some(r) if r.id.load(Relaxed) == 0 => {
                r.polls.store(0, Relaxed);
                r.wakes.store(0, Relaxed);
                r.busy_ticks.store(0, Relaxed);
                r.id.store(id, Relaxed);
            }
            _ => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "layer-floor: span id {id:#x} has no free slot in its table; \
                         its figures undercount"
                    )
                });
            }
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some(r) = record(id.into_u64()) {
            r.id.store(0, Relaxed);
        }
    }

    fn on_enter(&self, id: &Id, _ctx: Context<'_, S>) {
        if record(id.into_u64()).is_some() {
            entered();
        }
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        if let Some(r) = record(id.into_u64()) {
            if let Some(started) = exited() {
                r.poll_ended(started);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if let Some(r) = woken_task(event).and_then(record) {
            r.wakes.fetch_add(1, Relaxed);
        }
    }
}
