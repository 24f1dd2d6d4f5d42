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
//! The task is registered when the wrapper is created (state idle, no
//! polls), not at its first poll: futures are lazy, and one that is created
//! and never polled (or dropped unpolled) is exactly what the
//! `unpolled-future` hazard is about. Its spawn location is the caller of
//! [`instrument`]. [`Instrumented::named`] re-registers the not-yet-polled
//! task under the same id with its name.
//!
//! The wrapper needs no tracing subscriber: [`crate::Builder::init_without_tracing`]
//! starts the server and recorder alone. Futures are tracked only while a
//! [`crate::Guard`] is alive (its publisher is what evicts finished tasks);
//! otherwise the wrapper just passes polls through. Its tasks have kind `"wrapped"`
//! and ids with bit 62 set, so they never collide with tracing span ids.
//!
//! The task's waker points at the task's cell itself (which keeps the
//! executor's waker of the latest poll), so a wrapped future costs one
//! allocation in total. The executor's waker is cloned again only when it
//! changes (`Waker::will_wake`, checked without a lock: see
//! [`ExecutorWaker`]), so the steady-state cost of a poll is two clock
//! reads and a few atomic operations.
#![allow(unsafe_code)]

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use crate::clock;
use crate::layer::{current_task, pop_current, push_current_id};
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
    let location = std::panic::Location::caller();
    let cell = crate::publish::is_running().then(|| {
        register::<F>(
            WRAPPED_ID_BIT | NEXT_ID.fetch_add(1, Relaxed),
            None,
            location,
        )
    });
    Instrumented {
        inner: fut,
        cell,
        name: None,
        location,
        done: false,
    }
}

/// Creates and registers the cell of a wrapped future that has not been
/// polled yet (state idle, no polls).
fn register<F>(
    id: u64,
    name: Option<Box<str>>,
    location: &'static std::panic::Location<'static>,
) -> Arc<TaskCell> {
    let cell = Arc::new(TaskCell::new(
        id,
        Source::Wrapper,
        TaskIdentity {
            name,
            kind: "wrapped",
            file: Some(intern_file(location.file())),
            line: location.line(),
            column: location.column(),
            tokio_id: 0,
            parent_id: current_task(),
            future_size: Some(std::mem::size_of::<F>() as u64),
            original_future_size: None,
            runtime_id: std::sync::atomic::AtomicU64::new(crate::runtime::current_runtime_id()),
            extra_fields: None,
        },
    ));
    cell.state.store(state::IDLE, Relaxed);
    registry().insert(cell.clone());
    crate::publish::note_source(crate::publish::SOURCE_WRAPPER);
    cell
}

pin_project_lite::pin_project! {
    /// A future observed by taskscope. Created by [`instrument`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Instrumented<F> {
        #[pin]
        inner: F,
        cell: Option<Arc<TaskCell>>,
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
                    release_executor_waker(cell);
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
        let name = name.into().into_boxed_str();
        match self.cell.take() {
            // Registered at creation and not polled yet: the name is part
            // of the cell's identity (read in place by the post-mortem
            // dump), so the cell leaves the registry, is named, and comes
            // back under the same id (a publish in between sees the same
            // task, first unnamed, then named). If the publisher holds the
            // cell at that moment, a named copy replaces it instead.
            Some(mut old) if old.polls.load(Relaxed) == 0 && !old.is_done() => {
                registry().remove(&old);
                match Arc::get_mut(&mut old) {
                    Some(cell) => {
                        cell.identity.name = Some(name);
                        *cell.dirty.get_mut() = true;
                        registry().insert(old.clone());
                        self.cell = Some(old);
                    }
                    None => {
                        self.cell = Some(register::<F>(old.id, Some(name), self.location));
                    }
                }
            }
            // Already polled: the identity is published, keep it.
            Some(old) => self.cell = Some(old),
            None => self.name = Some(name),
        }
        self
    }

    /// The task id, once the future is tracked (from its creation while a
    /// [`crate::Guard`] is alive, otherwise from its first poll then).
    pub fn task_id(&self) -> Option<u64> {
        self.cell.as_ref().map(|c| c.id)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Ids of wrapped tasks have this bit set (shared with every client, which
/// shows such tasks as `w<n>`).
pub use taskscope_wire::model::WRAPPED_ID_BIT;

/// Ends the poll's bookkeeping even if the inner poll unwinds.
struct PollGuard<'a> {
    cell: &'a Arc<TaskCell>,
}

impl PollGuard<'_> {
    /// Records the poll's end at `now` and leaves the current-task stack.
    fn close(&self, now: u64, panicking: bool) {
        self.cell.poll_ended(now, panicking);
        pop_current(self.cell.id);
    }

    /// Ends the poll normally; returns when it ended.
    fn end(self) -> u64 {
        let now = clock::now_ns();
        self.close(now, false);
        std::mem::forget(self);
        now
    }
}

impl Drop for PollGuard<'_> {
    /// The inner poll unwound.
    fn drop(&mut self) {
        self.close(clock::now_ns(), std::thread::panicking());
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
        // Created while no guard was alive: tracked from its first poll.
        let cell = this.cell.get_or_insert_with(|| {
            register::<F>(
                WRAPPED_ID_BIT | NEXT_ID.fetch_add(1, Relaxed),
                this.name.take(),
                this.location,
            )
        });
        if *this.done {
            // Polled after completion: pass through, nothing to record.
            return this.inner.poll(cx);
        }
        // The executor's waker is cloned only when it changed; the
        // per-poll waker borrows the cell (no reference count taken).
        cell.executor_waker.update(cx.waker());
        let waker = cell_waker(cell);
        let mut cx2 = Context::from_waker(&waker);
        cell.poll_started(clock::now_ns());
        push_current_id(cell.id);
        let guard = PollGuard { cell };
        let out = this.inner.poll(&mut cx2);
        let ended = guard.end();
        if out.is_ready() {
            *this.done = true;
            cell.finish(state::COMPLETED, ended);
            release_executor_waker(cell);
        }
        out
    }
}

/// The executor's waker of a wrapped future's latest poll, which every
/// waker the wrapper hands out forwards to.
///
/// Only the wrapper writes the slot (at a poll, when the executor's waker
/// changed, and when the future is done), and a future is polled and
/// dropped by one thread at a time. So the poll-time check "is it still the
/// same waker?" reads the slot without taking the lock: nothing can change
/// it meanwhile, and the wakers only read it. The lock (a byte, spun on)
/// orders the wrapper's writes against the wakers' reads, which happen on
/// any thread; it is held for a pointer swap or a waker clone, never while
/// running an executor's `wake` or `drop`, so an executor that polls inline
/// from `wake` cannot deadlock on it.
pub(crate) struct ExecutorWaker {
    locked: std::sync::atomic::AtomicBool,
    waker: std::cell::UnsafeCell<Option<Waker>>,
}

// SAFETY: the waker inside is only read or written under `locked`, except
// the owner's unlocked reads in `update`, which race with no writer (the
// owner is the only writer, see the type's docs). `Waker` is Send + Sync.
unsafe impl Sync for ExecutorWaker {}

impl ExecutorWaker {
    pub(crate) const fn new() -> Self {
        Self {
            locked: std::sync::atomic::AtomicBool::new(false),
            waker: std::cell::UnsafeCell::new(None),
        }
    }

    fn lock(&self) -> SlotGuard<'_> {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            // Held for a few instructions; a holder that lost its CPU
            // gets it back sooner if we give ours up.
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        SlotGuard { slot: self }
    }

    /// At a poll (owner only): keeps `waker` unless the slot already holds
    /// one that wakes the same task.
    fn update(&self, waker: &Waker) {
        // SAFETY: only the owner writes the slot, and the owner is here; an
        // unlocked read cannot race with a write.
        if unsafe { &*self.waker.get() }
            .as_ref()
            .is_some_and(|w| w.will_wake(waker))
        {
            return;
        }
        let new = waker.clone();
        let old = self.lock().replace(Some(new));
        drop(old);
    }

    /// Owner only: lets go of the executor's waker (the future is done).
    fn release(&self) {
        let old = self.lock().replace(None);
        drop(old);
    }

    /// A clone of the executor's waker, if the future is not done.
    fn get(&self) -> Option<Waker> {
        let guard = self.lock();
        // SAFETY: the lock is held.
        unsafe { &*guard.slot.waker.get() }.clone()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.get().is_none()
    }
}

struct SlotGuard<'a> {
    slot: &'a ExecutorWaker,
}

impl SlotGuard<'_> {
    fn replace(&self, w: Option<Waker>) -> Option<Waker> {
        // SAFETY: the lock is held.
        std::mem::replace(unsafe { &mut *self.slot.waker.get() }, w)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.slot
            .locked
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// The future is done: the executor's waker (often a reference to the
/// executor's task) is not kept while the cell waits for eviction. Wakes
/// through clones still around become no-ops.
fn release_executor_waker(cell: &TaskCell) {
    cell.executor_waker.release();
}

/// Forwards a wake to the executor. The waker is cloned out of the lock
/// so that an executor that polls inline from `wake` cannot deadlock.
fn wake_executor(cell: &TaskCell) {
    if let Some(w) = cell.executor_waker.get() {
        w.wake();
    }
}

static VTABLE: RawWakerVTable =
    RawWakerVTable::new(clone_waker, wake_waker, wake_by_ref_waker, drop_waker);

/// A borrowed waker over `cell` for one poll. It owns no reference count,
/// so it must never be dropped as a `Waker` (hence `ManuallyDrop`); clones
/// made from it own one each.
fn cell_waker(cell: &Arc<TaskCell>) -> ManuallyDrop<Waker> {
    let raw = RawWaker::new(Arc::as_ptr(cell) as *const (), &VTABLE);
    // SAFETY: the data pointer comes from a live `Arc<TaskCell>` that the
    // caller keeps alive for as long as the returned waker is used (the
    // `Context` of one poll); the vtable functions below treat it as such,
    // and `ManuallyDrop` prevents the borrowed waker from releasing a
    // reference it does not own.
    ManuallyDrop::new(unsafe { Waker::from_raw(raw) })
}

unsafe fn clone_waker(ptr: *const ()) -> RawWaker {
    // SAFETY: `ptr` is `Arc::as_ptr` of a live `Arc<TaskCell>` (from
    // `cell_waker` or an earlier clone); incrementing the strong count gives
    // the new `RawWaker` its own reference, released in `drop_waker`/`wake_waker`.
    unsafe { Arc::increment_strong_count(ptr as *const TaskCell) };
    // SAFETY: as above, the pointee is alive.
    let cell = unsafe { &*(ptr as *const TaskCell) };
    cell.waker_cloned();
    RawWaker::new(ptr, &VTABLE)
}

unsafe fn wake_waker(ptr: *const ()) {
    // SAFETY: a by-value wake consumes an owned clone, which holds one
    // strong count taken in `clone_waker`; `from_raw` takes it back.
    let cell = unsafe { Arc::from_raw(ptr as *const TaskCell) };
    cell.woken(current_task() == cell.id, true);
    wake_executor(&cell);
}

unsafe fn wake_by_ref_waker(ptr: *const ()) {
    // SAFETY: the waker this is called on keeps the cell alive.
    let cell = unsafe { &*(ptr as *const TaskCell) };
    cell.woken(current_task() == cell.id, false);
    wake_executor(cell);
}

unsafe fn drop_waker(ptr: *const ()) {
    // SAFETY: only owned clones are dropped (the borrowed per-poll waker is
    // `ManuallyDrop`); each holds one strong count from `clone_waker`.
    let cell = unsafe { Arc::from_raw(ptr as *const TaskCell) };
    cell.waker_dropped();
    drop(cell);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
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
        assert!(m.completed_at.is_some());
        assert_eq!(
            m.completed_at, m.last_poll_ended,
            "it completed when its last poll ended"
        );
    }

    #[test]
    fn a_poll_that_panics_ends_the_poll_and_the_task() {
        crate::publish::set_running(true);
        let exec = Arc::new(CountWakes(AtomicU64::new(0)));
        let waker = Waker::from(exec.clone());
        let mut fut = Box::pin(instrument(std::future::poll_fn(|_| -> Poll<()> {
            panic!("inner poll panics")
        })));
        let cell = fut.cell.clone().expect("registered");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = fut.as_mut().poll(&mut Context::from_waker(&waker));
        }));
        assert!(caught.is_err());
        assert_ne!(
            current_task(),
            cell.id,
            "the poll left the current-task stack"
        );
        drop(fut);
        let m = cell.to_model(false);
        assert_eq!(m.state, taskscope_wire::model::TaskState::Panicked);
        assert_eq!(m.polls, 1);
        assert!(m.last_poll_ended.is_some());
        assert!(cell.executor_waker.is_empty(), "the drop let go of it");
    }

    #[test]
    fn a_future_is_a_task_from_its_creation_and_its_drop_ends_it() {
        crate::publish::set_running(true);
        let line = line!() + 1;
        let fut = instrument(async { 3 });
        let id = fut.task_id().expect("registered at creation");
        let fut = fut.named("lazy");
        assert_eq!(fut.task_id(), Some(id), "naming keeps the task id");
        let cell = fut.cell.clone().expect("registered");
        let m = cell.to_model(false);
        assert_eq!(m.name.as_deref(), Some("lazy"));
        assert_eq!((m.kind.as_str(), m.polls), ("wrapped", 0));
        assert_eq!(m.state, taskscope_wire::model::TaskState::Idle);
        assert_eq!(m.location.map(|l| l.line), Some(line));
        let in_registry = |id| registry().all().iter().filter(|c| c.id == id).count();
        assert_eq!(
            in_registry(id),
            1,
            "one task, not an unnamed and a named one"
        );
        drop(fut);
        let m = cell.to_model(false);
        assert_eq!(m.state, taskscope_wire::model::TaskState::Cancelled);
        assert_eq!(m.polls, 0);
    }

    #[test]
    fn a_finished_future_lets_go_of_the_executor_waker() {
        crate::publish::set_running(true);
        let exec = Arc::new(CountWakes(AtomicU64::new(0)));
        let waker = Waker::from(exec.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = Box::pin(instrument(async { 1 }));
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(1));
        let cell = fut.cell.clone().expect("registered");
        drop(fut);
        assert!(cell.executor_waker.is_empty());
        assert_eq!(Arc::strong_count(&exec), 2, "only `exec` and `waker`");
    }

    #[test]
    fn wakes_from_other_threads_all_reach_the_executor_while_its_waker_changes() {
        crate::publish::set_running(true);
        // Two executor wakers taking turns: every poll replaces the one
        // the task's wakers forward to, while four threads wake the task.
        let execs = [
            Arc::new(CountWakes(AtomicU64::new(0))),
            Arc::new(CountWakes(AtomicU64::new(0))),
        ];
        let wakers = execs.each_ref().map(|e| Waker::from(e.clone()));
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        let mut sent = false;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_fut = stop.clone();
        let mut fut = Box::pin(instrument(std::future::poll_fn(move |cx| {
            if !sent {
                for _ in 0..4 {
                    tx.send(cx.waker().clone()).unwrap();
                }
                sent = true;
            }
            if stop_fut.load(Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })));
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&wakers[0]))
            .is_pending());
        const PER_THREAD: u64 = 20_000;
        let threads: Vec<_> = rx
            .try_iter()
            .map(|w| {
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        if i % 2 == 0 {
                            w.wake_by_ref();
                        } else {
                            // By value: a clone of ours, consumed.
                            let owned = w.clone();
                            owned.wake();
                        }
                    }
                })
            })
            .collect();
        assert_eq!(threads.len(), 4);
        let mut polls = 1u64;
        while !threads.iter().all(|t| t.is_finished()) {
            let w = &wakers[(polls % 2) as usize];
            assert!(fut.as_mut().poll(&mut Context::from_waker(w)).is_pending());
            polls += 1;
        }
        for t in threads {
            t.join().unwrap();
        }
        stop.store(true, Relaxed);
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&wakers[0]))
            .is_ready());
        let reached: u64 = execs.iter().map(|e| e.0.load(Relaxed)).sum();
        assert_eq!(
            reached,
            4 * PER_THREAD,
            "every wake reaches an executor waker"
        );
        let cell = fut.cell.clone().expect("registered");
        drop(fut);
        let m = cell.to_model(false);
        assert_eq!(m.wakes, 4 * PER_THREAD);
        assert_eq!(m.polls, polls + 1);
        // Only the test's own references are left: the replaced executor
        // wakers were all released.
        assert!(execs.iter().all(|e| Arc::strong_count(e) == 2));
    }

    #[test]
    fn an_executor_that_polls_from_inside_wake_does_not_deadlock() {
        crate::publish::set_running(true);
        type Body = Box<dyn FnMut(&mut Context<'_>) -> Poll<()> + Send>;
        type Fut = Pin<Box<Instrumented<std::future::PollFn<Body>>>>;
        // An executor that polls its task right inside `wake`, each time
        // with a waker of its own it has not used before (so the wrapper
        // swaps the executor waker it keeps while a wake is forwarding).
        struct Inline {
            task: Mutex<Option<Fut>>,
            polls: AtomicU64,
        }
        struct InlineWaker(Arc<Inline>);
        impl Wake for InlineWaker {
            fn wake(self: Arc<Self>) {
                let inline = self.0.clone();
                let fresh = Waker::from(Arc::new(InlineWaker(inline.clone())));
                let mut task = inline.task.lock().unwrap();
                if let Some(fut) = task.as_mut() {
                    inline.polls.fetch_add(1, Relaxed);
                    if fut
                        .as_mut()
                        .poll(&mut Context::from_waker(&fresh))
                        .is_ready()
                    {
                        *task = None;
                    }
                }
            }
        }
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        let mut n = 0;
        let body: Body = Box::new(move |cx| {
            n += 1;
            if n == 4 {
                return Poll::Ready(());
            }
            tx.send(cx.waker().clone()).unwrap();
            Poll::Pending
        });
        let inline = Arc::new(Inline {
            task: Mutex::new(Some(Box::pin(instrument(std::future::poll_fn(body))))),
            polls: AtomicU64::new(0),
        });
        // On a thread of its own, so that a deadlock fails the test
        // instead of hanging it.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let driver = inline.clone();
        std::thread::spawn(move || {
            Waker::from(Arc::new(InlineWaker(driver))).wake();
            // Each stored waker, woken, polls the task inline through the
            // wrapper's forwarding.
            for _ in 0..3 {
                rx.recv_timeout(std::time::Duration::from_secs(5))
                    .expect("the task stored its waker")
                    .wake();
            }
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("waking the task deadlocked");
        assert_eq!(inline.polls.load(Relaxed), 4);
        assert!(inline.task.lock().unwrap().is_none(), "the task finished");
    }
}
