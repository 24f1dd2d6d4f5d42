//! Which tokio runtime a task belongs to.
//!
//! tokio's `runtime.spawn` spans do not carry a runtime id, but a task is
//! spawned from inside the runtime that will run it (a worker thread, or a
//! thread inside `Runtime::enter`/`block_on`), and with `tokio_unstable`
//! `Handle::id()` names that runtime. So at spawn taskscope asks
//! `Handle::try_current()` — a thread-local read and a reference-count
//! increment — and keeps the last id it converted per thread, so the
//! common case does no formatting and takes no lock. Each runtime seen for
//! the first time is registered (flavor, worker count, when first seen) and
//! appears in `ProcessInfo.runtimes`.
//!
//! Without `tokio_unstable` runtime ids do not exist and tasks have none.

use std::sync::Mutex;

use taskscope_wire::model::{self, RuntimeFlavor};

use crate::clock;

/// Runtimes seen so far, in the order they were first seen.
static RUNTIMES: Mutex<Vec<model::Runtime>> = Mutex::new(Vec::new());

/// The id of the tokio runtime the current thread is in, 0 if none.
#[cfg(tokio_unstable)]
pub(crate) fn current_runtime_id() -> u64 {
    use std::cell::Cell;
    thread_local! {
        /// The last runtime seen on this thread and its numeric id.
        static LAST: Cell<Option<(tokio::runtime::Id, u64)>> = const { Cell::new(None) };
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return 0;
    };
    let id = handle.id();
    if let Ok(Some((last, n))) = LAST.try_with(Cell::get) {
        if last == id {
            return n;
        }
    }
    // tokio's `Id` is a `NonZeroU64` shown only through `Display`.
    let n: u64 = id.to_string().parse().unwrap_or(0);
    if n != 0 {
        register(n, &handle);
        let _ = LAST.try_with(|l| l.set(Some((id, n))));
    }
    n
}

#[cfg(not(tokio_unstable))]
pub(crate) fn current_runtime_id() -> u64 {
    0
}

#[cfg(tokio_unstable)]
fn register(id: u64, handle: &tokio::runtime::Handle) {
    let mut rts = RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
    if rts.iter().any(|r| r.id == id) {
        return;
    }
    let flavor = match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => RuntimeFlavor::CurrentThread,
        tokio::runtime::RuntimeFlavor::MultiThread => RuntimeFlavor::MultiThread,
        _ => RuntimeFlavor::Other,
    };
    rts.push(model::Runtime {
        id,
        name: format!("tokio runtime {id}"),
        flavor,
        workers: handle.metrics().num_workers() as u32,
        created_at: Some(clock::now()),
        dropped_at: None,
    });
}

/// Notes that runtime `id` began shutting down at `at_ns` (the earliest
/// report wins).
pub(crate) fn mark_dropped(id: u64, at_ns: u64) {
    let mut rts = RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = rts.iter_mut().find(|r| r.id == id) {
        let at = model::Timestamp(at_ns);
        if r.dropped_at.is_none_or(|d| d > at) {
            r.dropped_at = Some(at);
        }
    }
}

/// Every runtime seen so far.
pub(crate) fn runtimes() -> Vec<model::Runtime> {
    RUNTIMES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(all(test, tokio_unstable))]
mod tests {
    use super::*;

    #[test]
    fn tasks_see_the_runtime_they_run_on() {
        assert_eq!(std::thread::spawn(current_runtime_id).join().ok(), Some(0));
        let a = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime a");
        let b = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime b");
        let in_a = a.block_on(async { tokio::spawn(async { current_runtime_id() }).await });
        let in_b = b.block_on(async { current_runtime_id() });
        let in_a = in_a.expect("join");
        assert_ne!(in_a, 0);
        assert_ne!(in_b, 0);
        assert_ne!(in_a, in_b, "two runtimes, two ids");
        assert_eq!(in_a.to_string(), a.handle().id().to_string());
        let rts = runtimes();
        let ra = rts.iter().find(|r| r.id == in_a).expect("a registered");
        assert_eq!(ra.flavor, RuntimeFlavor::MultiThread);
        assert_eq!(ra.workers, 2);
        let rb = rts.iter().find(|r| r.id == in_b).expect("b registered");
        assert_eq!(rb.flavor, RuntimeFlavor::CurrentThread);
    }
}
