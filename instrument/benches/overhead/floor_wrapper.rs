//! The `wrapper-floor` configuration's wrapper: the least a
//! runtime-agnostic wrapper that counts wakes and times polls pays, to put
//! `taskscope-wrapper`'s figures in proportion (as `floor` does for the
//! tracing path).
//!
//! Per future it allocates one reference-counted record. Each poll keeps
//! the executor's waker (cloned only when it changed: the wrapper compares
//! against a copy of its own, so a poll takes no lock unless it changed),
//! hands the inner future a waker of its own, reads the time-stamp counter
//! before and after, and adds to two counters. Each wake is counted and
//! forwarded to the executor's waker. Nothing else: no task registry, no
//! waker clone and drop counts, no states, histograms or scheduled time,
//! no publisher, no server. Whatever taskscope's wrapper costs above this
//! is the price of what it shows.
#![allow(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// What the wrapper keeps per future.
struct Record {
    executor: Mutex<Option<Waker>>,
    wakes: AtomicU64,
    polls: AtomicU64,
    busy_ticks: AtomicU64,
}

impl Record {
    fn forward(&self) {
        let waker = self
            .executor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Wake for Record {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Relaxed);
        self.forward();
    }
}

pin_project_lite::pin_project! {
    /// A future under the minimal wrapper.
    pub struct FloorWrapped<F> {
        #[pin]
        inner: F,
        record: Arc<Record>,
        waker: Waker,
        // The executor's waker of the latest poll, for the comparison.
        executor: Option<Waker>,
    }
}

/// Wraps `inner`.
pub fn wrap<F: Future>(inner: F) -> FloorWrapped<F> {
    let record = Arc::new(Record {
        executor: Mutex::new(None),
        wakes: AtomicU64::new(0),
        polls: AtomicU64::new(0),
        busy_ticks: AtomicU64::new(0),
    });
    FloorWrapped {
        inner,
        waker: Waker::from(record.clone()),
        record,
        executor: None,
    }
}

/// The time-stamp counter, as taskscope's clock reads it.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn ticks() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 CPU and only reads a counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Elsewhere taskscope reads `Instant`.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub(crate) fn ticks() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

impl<F: Future> Future for FloorWrapped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !this
            .executor
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            *this.executor = Some(cx.waker().clone());
            *this
                .record
                .executor
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        }
        let started = ticks();
        let out = this.inner.poll(&mut Context::from_waker(this.waker));
        let ended = ticks();
        this.record.polls.fetch_add(1, Relaxed);
        this.record
            .busy_ticks
            .fetch_add(ended.wrapping_sub(started), Relaxed);
        if out.is_ready() {
            // Done: let go of the executor's task, as taskscope does.
            *this
                .record
                .executor
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            *this.executor = None;
        }
        out
    }
}
