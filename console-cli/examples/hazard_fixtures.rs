//! Fixture programs for the hazard catalogue: each hazard as a small, real
//! tokio program, next to a clean twin that does the same job correctly.
//!
//! ```text
//! cargo run -p taskscope-cli --example hazard_fixtures -- <hazard-id> bad|clean
//! TASKSCOPE_RECORD=run.tsrec cargo run -p taskscope-cli --example hazard_fixtures -- lost-waker bad
//! taskscope report run.tsrec
//! ```
//!
//! Each program is instrumented with `taskscope::Builder` (publishing every
//! 50 ms so short runs still record several states; `TASKSCOPE_RECORD`,
//! `TASKSCOPE_RECORD_DIR` and `TASKSCOPE_BIND` are honoured, the server is
//! off unless `TASKSCOPE_BIND` says otherwise), runs for well under 3 s and
//! exits. The line a finding must point at carries a `// HAZARD: <id>`
//! comment; `tests/report_hazards.rs` reads those markers, runs both twins
//! and checks `taskscope report` finds the hazard there and stays silent on
//! the clean twin.
//!
//! Hazard programs that leave tasks stuck end the recording (drop the
//! taskscope guard) while those tasks are still stuck, then exit without
//! waiting for them, so the recording shows the hang, not the teardown.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Mutex};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(id), Some(variant)) = (args.first(), args.get(1)) else {
        eprintln!("usage: hazard_fixtures <hazard-id> bad|clean");
        std::process::exit(2);
    };
    let bad = match variant.as_str() {
        "bad" => true,
        "clean" => false,
        other => {
            eprintln!("unknown variant {other:?}: expected bad or clean");
            std::process::exit(2);
        }
    };
    let guard = taskscope::Builder::default()
        .bind("off")
        .publish_interval(Duration::from_millis(50))
        .from_env()
        .init();
    // Fixtures that are about runtimes build their own; the others run on
    // one multi-thread runtime, kept alive until the recording has ended.
    let mut keep: Option<tokio::runtime::Runtime> = None;
    let mut on = |fixture: Pin<Box<dyn Future<Output = ()>>>| {
        let rt = multi_thread(2);
        rt.block_on(fixture);
        keep = Some(rt);
    };
    match id.as_str() {
        "lost-waker" => on(Box::pin(lost_waker(bad))),
        "waker-dropped-unwoken" => on(Box::pin(waker_dropped_unwoken(bad))),
        "blocking-poll" => on(Box::pin(blocking_poll(bad))),
        "scheduling-delay" => scheduling_delay(bad),
        "never-yielded" => on(Box::pin(never_yielded(bad))),
        "self-wake-loop" => on(Box::pin(self_wake_loop(bad))),
        "cancelled-midway" => on(Box::pin(cancelled_midway(bad))),
        "runtime-dropped-with-tasks" => runtime_dropped_with_tasks(bad),
        "leaked-task" => on(Box::pin(leaked_task(bad))),
        "futurelock" => on(Box::pin(futurelock(bad))),
        "deadlock-cycle" => on(Box::pin(deadlock_cycle(bad))),
        "nested-runtime" => on(Box::pin(nested_runtime(bad))),
        "multiple-runtimes" => on(Box::pin(multiple_runtimes(bad))),
        "large-future" => on(Box::pin(large_future(bad))),
        "unbounded-growth" => on(Box::pin(unbounded_growth(bad))),
        "unpolled-future" => on(Box::pin(unpolled_future(bad))),
        "held-across-await" => on(Box::pin(held_across_await(bad))),
        _ => {
            eprintln!("unknown hazard id {id:?}");
            std::process::exit(2);
        }
    }
    // Final publish while whatever is stuck is still stuck.
    drop(guard);
    if let Some(rt) = keep {
        rt.shutdown_background();
    }
}

fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            std::process::exit(2);
        }
    }
}

/// Lets the publisher record a few states of whatever is going on.
async fn settle(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---------------------------------------------------------------- wakers

/// "Alan hates writing a Stream": a hand-written stream of ticks that
/// returns `Pending` while its timer has not fired, but never registers the
/// waker anywhere. `remember_waker` is the fix.
struct Ticks {
    due: Instant,
    remaining: u32,
    remember_waker: bool,
}

impl futures::Stream for Ticks {
    type Item = u32;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if Instant::now() >= self.due {
            self.remaining -= 1;
            self.due = Instant::now() + Duration::from_millis(20);
            return Poll::Ready(Some(self.remaining));
        }
        if self.remember_waker {
            let waker = cx.waker().clone();
            let due = self.due;
            std::thread::spawn(move || {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                waker.wake();
            });
        }
        Poll::Pending
    }
}

async fn lost_waker(bad: bool) {
    use futures::StreamExt;
    let ticks = Ticks {
        due: Instant::now() + Duration::from_millis(20),
        remaining: 3,
        remember_waker: !bad,
    };
    let consumer = async move { ticks.collect::<Vec<u32>>().await.len() };
    let task = tokio::task::Builder::new()
        .name("tick-consumer")
        .spawn(consumer); // HAZARD: lost-waker
    let Ok(task) = task else { return };
    if bad {
        settle(1_600).await;
    } else {
        let _ = task.await;
        settle(300).await;
    }
}

/// A registry of parked waiters that is cleared ("reset") without waking
/// them: the waker was stored, then dropped unwoken.
#[derive(Default)]
struct Waiters {
    slot: StdMutex<Option<Waker>>,
    fired: std::sync::atomic::AtomicBool,
}

struct WaitForSignal(Arc<Waiters>);

impl Future for WaitForSignal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.fired.load(std::sync::atomic::Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.0.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        Poll::Pending
    }
}

async fn waker_dropped_unwoken(bad: bool) {
    let waiters = Arc::new(Waiters::default());
    let wait = WaitForSignal(waiters.clone());
    let task = tokio::task::Builder::new()
        .name("signal-waiter")
        .spawn(wait); // HAZARD: waker-dropped-unwoken
    let Ok(task) = task else { return };
    settle(100).await;
    let waker = waiters
        .slot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if bad {
        // "reset": forget the waiter instead of waking it.
        drop(waker);
        settle(1_600).await;
    } else {
        waiters
            .fired
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(w) = waker {
            w.wake();
        }
        let _ = task.await;
        settle(200).await;
    }
}

// ---------------------------------------------------------------- timing

fn render_report_sync() {
    // Stands for synchronous work: a std lock, file I/O, a CPU-heavy render.
    std::thread::sleep(Duration::from_millis(120));
}

async fn blocking_poll(bad: bool) {
    let render = async move {
        for _ in 0..3 {
            if bad {
                render_report_sync();
            } else {
                let _ = tokio::task::spawn_blocking(render_report_sync).await;
            }
            settle(50).await;
        }
    };
    let task = tokio::task::Builder::new()
        .name("report-renderer")
        .spawn(render); // HAZARD: blocking-poll
    if let Ok(task) = task {
        let _ = task.await;
    }
    settle(200).await;
}

/// "Scheduling Delay Detected": on a one-worker runtime, a heartbeat task
/// is woken every 20 ms by a sensor thread but cannot run while another
/// task blocks the only worker.
fn scheduling_delay(bad: bool) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cannot start a tokio runtime");
        std::process::exit(2);
    };
    let (tx, mut rx) = mpsc::channel::<u32>(64);
    let sensor = std::thread::spawn(move || {
        for i in 0..40 {
            std::thread::sleep(Duration::from_millis(20));
            if tx.try_send(i).is_err() && tx.is_closed() {
                break;
            }
        }
    });
    rt.block_on(async move {
        let heartbeat = async move { while rx.recv().await.is_some() {} };
        let heartbeat = tokio::task::Builder::new()
            .name("heartbeat")
            .spawn(heartbeat);
        let hog = async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            for _ in 0..3 {
                if bad {
                    std::thread::sleep(Duration::from_millis(150));
                } else {
                    let _ = tokio::task::spawn_blocking(|| {
                        std::thread::sleep(Duration::from_millis(150))
                    })
                    .await;
                }
                tokio::task::yield_now().await;
            }
        };
        let hog = tokio::task::Builder::new().name("cache-rebuild").spawn(hog); // HAZARD: scheduling-delay
        if let (Ok(a), Ok(b)) = (heartbeat, hog) {
            let _ = b.await;
            let _ = a.await;
        }
        settle(200).await;
    });
    let _ = sensor.join();
}

async fn never_yielded(bad: bool) {
    let crunch = async move {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(1_400) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            if !bad {
                tokio::task::yield_now().await;
            }
        }
        x
    };
    let task = tokio::task::Builder::new().name("crunch").spawn(crunch); // HAZARD: never-yielded
    settle(1_250).await;
    if let Ok(task) = task {
        let _ = task.await;
    }
    settle(200).await;
}

/// Busy polling: a hand-written "ready check" that wakes itself until a
/// flag set by another task flips.
struct SpinUntil(Arc<std::sync::atomic::AtomicBool>);

impl Future for SpinUntil {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.load(std::sync::atomic::Ordering::Acquire) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

async fn self_wake_loop(bad: bool) {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = if bad {
        let spin = SpinUntil(flag.clone());
        tokio::task::Builder::new().name("ready-poller").spawn(spin) // HAZARD: self-wake-loop
    } else {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let f = flag.clone();
        tokio::spawn(async move {
            while !f.load(std::sync::atomic::Ordering::Acquire) {
                if tx.send(()).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let wait = async move { while rx.recv().await.is_some() {} };
        tokio::task::Builder::new().name("ready-poller").spawn(wait)
    };
    settle(400).await;
    flag.store(true, std::sync::atomic::Ordering::Release);
    if let Ok(task) = task {
        let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
    }
    settle(200).await;
}

// ---------------------------------------------------------------- lifecycle

static LEDGER: StdMutex<Vec<&str>> = StdMutex::new(Vec::new());

fn ledger(entry: &'static str) {
    LEDGER.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
}

/// "Barbara gets burned by select": a timeout cancels a transfer between
/// its two side effects: the debit happened, the credit never does.
async fn cancelled_midway(bad: bool) {
    let transfer = async {
        ledger("debit");
        tokio::time::sleep(Duration::from_millis(200)).await;
        ledger("credit");
    };
    let transfer = taskscope::instrument(transfer).named("transfer"); // HAZARD: cancelled-midway
    let limit = if bad { 50 } else { 1_000 };
    let _ = tokio::time::timeout(Duration::from_millis(limit), transfer).await;
    settle(300).await;
}

/// A runtime dropped while an upload task is still running: the upload is
/// cancelled at whatever await point it had reached.
fn runtime_dropped_with_tasks(bad: bool) {
    let rt = multi_thread(1);
    // The upload takes 10 s; the clean twin's takes 50 ms and is awaited.
    let took = if bad { 10_000 } else { 50 };
    let upload = async move {
        tokio::time::sleep(Duration::from_millis(took)).await;
    };
    let task = rt.spawn(upload); // HAZARD: runtime-dropped-with-tasks
    if bad {
        rt.block_on(settle(100));
    } else {
        let _ = rt.block_on(task);
    }
    drop(rt);
    std::thread::sleep(Duration::from_millis(300));
}

/// A task waiting for a lock whose guard was leaked with `mem::forget` by a
/// task that has finished ("the guard outlived its task"): nobody will ever
/// unlock it.
async fn leaked_task(bad: bool) {
    let session = Arc::new(Mutex::new(0u32));
    let s = session.clone();
    let holder = tokio::spawn(async move {
        let guard = s.lock().await;
        if bad {
            // Meant to keep the session locked "until the reply is sent".
            std::mem::forget(guard);
        }
    });
    let _ = holder.await;
    let s = session.clone();
    let waiter = async move {
        *s.lock().await += 1;
    };
    let task = tokio::task::Builder::new()
        .name("session-writer")
        .spawn(waiter); // HAZARD: leaked-task
    settle(1_500).await;
    if let Ok(task) = task {
        if !bad {
            let _ = task.await;
        }
    }
}

// ---------------------------------------------------------------- locks

/// "futurelock": a future that holds an async lock is pinned in a `select!`
/// loop by `&mut`; the other branch wins, and then waits for the same lock
/// the parked future still holds.
async fn futurelock(bad: bool) {
    let lock = Arc::new(Mutex::new(0u32));
    let l = lock.clone();
    let background = tokio::spawn(async move {
        let _g = l.lock().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    let l = lock.clone();
    let worker = async move {
        let holder = async {
            let mut g = l.lock().await;
            *g += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let holder = taskscope::instrument(holder).named("refresh"); // HAZARD: futurelock
        tokio::pin!(holder);
        tokio::select! {
            _ = &mut holder => {}
            _ = tokio::time::sleep(Duration::from_millis(70)) => {
                if bad {
                    // `holder` is still alive, holding the lock, never polled again.
                    *l.lock().await += 1;
                } else {
                    // Keep polling the holder until it is done.
                    (&mut holder).await;
                    *l.lock().await += 1;
                }
            }
        }
    };
    let task = tokio::task::Builder::new()
        .name("cache-worker")
        .spawn(worker);
    let _ = background.await;
    settle(1_500).await;
    if let Ok(task) = task {
        if !bad {
            let _ = task.await;
        }
    }
}

/// Two transfers lock two accounts in opposite orders.
async fn deadlock_cycle(bad: bool) {
    let a = Arc::new(Mutex::new(100u32));
    let b = Arc::new(Mutex::new(100u32));
    let (a1, b1, a2, b2) = (a.clone(), b.clone(), a.clone(), b.clone());
    let one = async move {
        let mut x = a1.lock().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut y = b1.lock().await;
        *x -= 1;
        *y += 1;
    };
    let two = async move {
        if bad {
            let mut y = b2.lock().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut x = a2.lock().await;
            *y -= 1;
            *x += 1;
        } else {
            let mut x = a2.lock().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut y = b2.lock().await;
            *y -= 1;
            *x += 1;
        }
    };
    let one = tokio::task::Builder::new()
        .name("transfer-a-to-b")
        .spawn(one); // HAZARD: deadlock-cycle
    let two = tokio::task::Builder::new()
        .name("transfer-b-to-a")
        .spawn(two);
    settle(1_200).await;
    if let (Ok(one), Ok(two)) = (one, two) {
        if !bad {
            let _ = one.await;
            let _ = two.await;
        }
    }
}

// ---------------------------------------------------------------- runtimes

/// A `reqwest::blocking`-style client: a synchronous API that hides its own
/// runtime and `block_on`s it.
fn fetch_config_blocking() -> u32 {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 0;
    };
    rt.block_on(async { 7 }) // HAZARD: nested-runtime
}

async fn nested_runtime(bad: bool) {
    let task = if bad {
        // Called straight from async code: block_on inside a task poll.
        tokio::task::Builder::new()
            .name("config-loader")
            .spawn(async { fetch_config_blocking() })
    } else {
        tokio::task::Builder::new()
            .name("config-loader")
            .spawn(async {
                tokio::task::spawn_blocking(fetch_config_blocking)
                    .await
                    .unwrap_or(0)
            })
    };
    if let Ok(task) = task {
        // The bad twin panics ("Cannot start a runtime from within a runtime").
        let _ = task.await;
    }
    settle(300).await;
}

/// A second runtime started next to the main one (what a hidden
/// `reqwest::blocking`-style client does), alive at the same time.
async fn multiple_runtimes(bad: bool) {
    if bad {
        let second = std::thread::spawn(|| {
            // The finding points at the new runtime's first block_on or
            // spawn: where it was built is not observable.
            let rt = multi_thread(1);
            rt.block_on(settle(500)); // HAZARD: multiple-runtimes
        });
        settle(600).await;
        let _ = second.join();
    } else {
        settle(600).await;
    }
}

async fn large_future(bad: bool) {
    let task = if bad {
        let job = async {
            let buffer = [7u8; 40 * 1024];
            tokio::time::sleep(Duration::from_millis(50)).await;
            buffer.iter().map(|&b| b as u64).sum::<u64>()
        };
        tokio::task::Builder::new().name("image-encoder").spawn(job) // HAZARD: large-future
    } else {
        let job = async {
            let buffer = vec![7u8; 40 * 1024];
            tokio::time::sleep(Duration::from_millis(50)).await;
            buffer.iter().map(|&b| b as u64).sum::<u64>()
        };
        tokio::task::Builder::new().name("image-encoder").spawn(job)
    };
    if let Ok(task) = task {
        let _ = task.await;
    }
    settle(200).await;
}

async fn handle_connection(id: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(if id == u32::MAX {
        0
    } else {
        30_000
    }))
    .await;
    id
}

/// An accept loop that spawns a task per connection with no limit, while
/// every connection hangs.
async fn unbounded_growth(bad: bool) {
    let limit = Arc::new(tokio::sync::Semaphore::new(20));
    for round in 0..30u32 {
        for i in 0..20u32 {
            let id = round * 100 + i;
            if bad {
                drop(tokio::spawn(handle_connection(id))); // HAZARD: unbounded-growth
            } else if let Ok(permit) = limit.clone().try_acquire_owned() {
                drop(tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_millis(10), handle_connection(id))
                        .await;
                    drop(permit);
                }));
            }
        }
        settle(60).await;
    }
}

async fn unpolled_future(bad: bool) {
    let save = async {
        ledger("saved");
    };
    let save = taskscope::instrument(save).named("save-settings"); // HAZARD: unpolled-future
    if bad {
        // Futures are lazy: this never runs.
        let pending = save;
        settle(1_300).await;
        drop(pending);
    } else {
        save.await;
        settle(300).await;
    }
}

/// A std `Mutex` guard alive across an `.await` (compiles with a
/// multi-thread runtime only because the task never moves it; a classic
/// source of deadlocks and blocked workers). The clean twin drops the guard
/// before awaiting, as the advice says. The wait is long enough (1.5 s) for
/// a test to take a core in the middle of it: tracing cannot see a std
/// guard, so this hazard is found post-mortem (`taskscope report CORE`).
// The hazard on purpose (clippy's `await_holding_lock` sees it statically,
// which is the best check there is for it today).
#[allow(clippy::await_holding_lock)]
async fn held_across_await(bad: bool) {
    let config = Arc::new(StdMutex::new(String::from("v1")));
    let c = config.clone();
    let job = async move {
        let guard = c.lock().unwrap_or_else(|e| e.into_inner());
        let len = guard.len();
        if bad {
            tokio::time::sleep(Duration::from_millis(1_500)).await; // HAZARD: held-across-await
            guard.len() + len
        } else {
            drop(guard);
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            len
        }
    };
    // A current-thread `LocalSet` lets the non-Send guard cross the await.
    let local = tokio::task::LocalSet::new();
    let task = local.spawn_local(job);
    local
        .run_until(async move {
            let _ = task.await;
        })
        .await;
    settle(200).await;
}
