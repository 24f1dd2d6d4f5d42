//! The future wrapper: task instrumentation for any executor.
//!
//! [`instrument`] wraps a future (usually the one you hand to `spawn`). On
//! each poll the wrapper records poll timing in the task's [`TaskCell`] and
//! hands the inner future a waker of its own that forwards to the
//! executor's waker and counts what happens to it: clones, drops, wakes by
//! value and by reference, and self-wakes (a wake while the task is being
//! polled on the same thread). That is what makes a lost waker visible:
//! a task that returned `Pending` while every clone of its waker has been
//! dropped without a wake.
//!
//! The wrapper needs no tracing subscriber: [`crate::Builder::init_without_tracing`]
//! starts the server and recorder alone. Futures are tracked only while a
//! [`crate::Guard`] is alive (its publisher is what evicts finished tasks);
//! otherwise the wrapper just passes polls through. Its tasks have kind `"wrapped"`
//! and ids with bit 62 set, so they never collide with tracing span ids.
//!
//! The waker allocation is reused across polls while the executor's waker
//! stays the same (`Waker::will_wake`), so the steady-state cost of a poll
//! is two clock reads and a few atomic operations.
#![allow(unsafe_code)]

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use crate::clock;
use crate::layer::{current_task, pop_current, push_current};
use crate::task::{intern_file, registry, state, Source, TaskCell, TaskIdentity};

/// Wraps `fut` so that it is observed as a task of kind `"wrapped"`.
///
/// ```
/// # async fn work() {}
/// let fut = taskscope::instrument(work()).named("worker");
/// # drop(fut);
/// ```
#[track_caller]
pub fn instrument<F: Future>(fut: F) -> Instrumented<F> {
    Instrumented {
        inner: fut,
        cell: None,
        shim: None,
        name: None,
        location: std::panic::Location::caller(),
        done: false,
    }
}

pin_project_lite::pin_project! {
    /// A future observed by taskscope. Created by [`instrument`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Instrumented<F> {
        #[pin]
        inner: F,
        cell: Option<Arc<TaskCell>>,
        shim: Option<Arc<WakerShim>>,
        name: Option<Box<str>>,
        location: &'static std::panic::Location<'static>,
        done: bool,
    }

    impl<F> PinnedDrop for Instrumented<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(cell) = this.cell {
                if !*this.done {
                    cell.finish(state::CANCELLED, clock::now_ns());
                    }
            }
        }
    }
}

impl<F> std::fmt::Debug for Instrumented<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented")
            .field("name", &self.name)
            .field("id", &self.cell.as_ref().map(|c| c.id))
            .finish()
    }
}

impl<F> Instrumented<F> {
    /// Names the task (shown by the console).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into().into_boxed_str());
        self
    }

    /// The task id, once the future has been polled.
    pub fn task_id(&self) -> Option<u64> {
        self.cell.as_ref().map(|c| c.id)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Ids of wrapped tasks have this bit set (shared with every client, which
/// shows such tasks as `w<n>`).
pub use taskscope_wire::model::WRAPPED_ID_BIT;

/// Un-does the poll bookkeeping even if the inner poll unwinds.
struct PollGuard<'a> {
    cell: &'a Arc<TaskCell>,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.cell
            .poll_ended(clock::now_ns(), std::thread::panicking());
        pop_current(self.cell.id);
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.cell.is_none() && !crate::publish::is_running() {
            // No guard alive: nothing would ever evict the task.
            return this.inner.poll(cx);
        }
        let cell = this.cell.get_or_insert_with(|| {
            let parent = current_task();
            let cell = Arc::new(TaskCell::new(
                WRAPPED_ID_BIT | NEXT_ID.fetch_add(1, Relaxed),
                Source::Wrapper,
                TaskIdentity {
                    name: this.name.take(),
                    kind: "wrapped",
                    file: Some(intern_file(this.location.file())),
                    line: this.location.line(),
                    column: this.location.column(),
                    tokio_id: 0,
                    parent_id: parent,
                    future_size: Some(std::mem::size_of::<F>() as u64),
                    original_future_size: None,
                    runtime_id: crate::runtime::current_runtime_id(),
                    extra_fields: None,
                },
            ));
            registry().insert(cell.clone());
            crate::publish::note_source(crate::publish::SOURCE_WRAPPER);
            cell
        });
        if *this.done {
            // Polled after completion: pass through, nothing to record.
            return this.inner.poll(cx);
        }
        // The shim is re-made only when the executor's waker changed; the
        // per-poll waker borrows it (no reference count taken).
        if !this
            .shim
            .as_ref()
            .is_some_and(|s| s.inner.will_wake(cx.waker()))
        {
            *this.shim = Some(Arc::new(WakerShim {
                cell: cell.clone(),
                inner: cx.waker().clone(),
            }));
        }
        let Some(shim) = this.shim.as_ref() else {
            // Just set above.
            return this.inner.poll(cx);
        };
        let waker = shim_waker(shim);
        let mut cx2 = Context::from_waker(&waker);
        cell.poll_started(clock::now_ns());
        push_current(cell);
        let guard = PollGuard { cell };
        let out = this.inner.poll(&mut cx2);
        drop(guard);
        if out.is_ready() {
            *this.done = true;
            cell.finish(state::COMPLETED, clock::now_ns());
            *this.shim = None;
        }
        out
    }
}

/// The data behind a wrapped task's waker.
struct WakerShim {
    cell: Arc<TaskCell>,
    inner: Waker,
}

static VTABLE: RawWakerVTable =
    RawWakerVTable::new(clone_shim, wake_shim, wake_by_ref_shim, drop_shim);

/// A borrowed waker over `shim` for one poll. It owns no reference count,
/// so it must never be dropped as a `Waker` (hence `ManuallyDrop`); clones
/// made from it own one each.
fn shim_waker(shim: &Arc<WakerShim>) -> ManuallyDrop<Waker> {
    let raw = RawWaker::new(Arc::as_ptr(shim) as *const (), &VTABLE);
    // SAFETY: the data pointer comes from a live `Arc<WakerShim>` that the
    // caller keeps alive for as long as the returned waker is used (the
    // `Context` of one poll); the vtable functions below treat it as such,
    // and `ManuallyDrop` prevents the borrowed waker from releasing a
    // reference it does not own.
    ManuallyDrop::new(unsafe { Waker::from_raw(raw) })
}

unsafe fn clone_shim(ptr: *const ()) -> RawWaker {
    // SAFETY: `ptr` is `Arc::as_ptr` of a live `Arc<WakerShim>` (from
    // `shim_waker` or an earlier clone); incrementing the strong count gives
    // the new `RawWaker` its own reference, released in `drop_shim`/`wake_shim`.
    unsafe { Arc::increment_strong_count(ptr as *const WakerShim) };
    // SAFETY: as above, the pointee is alive.
    let shim = unsafe { &*(ptr as *const WakerShim) };
    shim.cell.waker_cloned();
    RawWaker::new(ptr, &VTABLE)
}

unsafe fn wake_shim(ptr: *const ()) {
    // SAFETY: a by-value wake consumes an owned clone, which holds one
    // strong count taken in `clone_shim`; `from_raw` takes it back.
    let shim = unsafe { Arc::from_raw(ptr as *const WakerShim) };
    shim.cell.woken(current_task() == shim.cell.id, true);
    shim.inner.wake_by_ref();
}

unsafe fn wake_by_ref_shim(ptr: *const ()) {
    // SAFETY: the waker this is called on keeps the shim alive.
    let shim = unsafe { &*(ptr as *const WakerShim) };
    shim.cell.woken(current_task() == shim.cell.id, false);
    shim.inner.wake_by_ref();
}

unsafe fn drop_shim(ptr: *const ()) {
    // SAFETY: only owned clones are dropped (the borrowed per-poll waker is
    // `ManuallyDrop`); each holds one strong count from `clone_shim`.
    let shim = unsafe { Arc::from_raw(ptr as *const WakerShim) };
    shim.cell.waker_dropped();
    drop(shim);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct CountWakes(AtomicU64);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn clones_drops_and_wakes_reach_the_task_and_the_executor() {
        crate::publish::set_running(true);
        let exec = Arc::new(CountWakes(AtomicU64::new(0)));
        let waker = Waker::from(exec.clone());
        let mut cx = Context::from_waker(&waker);
        let mut stored: Option<Waker> = None;
        let mut polls = 0;
        let fut = std::future::poll_fn(|cx| {
            polls += 1;
            if polls == 1 {
                stored = Some(cx.waker().clone());
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                if let Some(w) = stored.take() {
                    w.wake();
                }
                Poll::Ready(7)
            }
        });
        let mut fut = Box::pin(instrument(fut).named("unit"));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(7));
        assert_eq!(exec.0.load(Relaxed), 2, "both wakes reach the executor");
        let cell = fut.cell.clone().expect("registered at first poll");
        drop(fut);
        let m = cell.to_model(false);
        assert_eq!(m.name.as_deref(), Some("unit"));
        assert_eq!(m.kind, "wrapped");
        assert_eq!((m.polls, m.wakes, m.self_wakes), (2, 2, 2));
        assert_eq!((m.waker_clones, m.waker_drops), (1, 1));
        assert_eq!(m.state, taskscope_wire::model::TaskState::Completed);
    }
}
