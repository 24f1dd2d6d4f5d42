//! tokio tasks seen through tracing, checked over loopback gRPC with the
//! console-api client the stock `tokio-console` uses and with taskscope.v1.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use console_api as capi;
use support::*;
use taskscope_wire::model::{EdgeKind, TaskState};

fn server() -> SocketAddr {
    static GUARD: OnceLock<Mutex<taskscope::Guard>> = OnceLock::new();
    let g = GUARD.get_or_init(|| {
        Mutex::new(
            taskscope::Builder::default()
                .bind("127.0.0.1:0")
                .publish_interval(Duration::from_millis(100))
                .init(),
        )
    });
    g.lock()
        .unwrap_or_else(|e| e.into_inner())
        .local_addr()
        .expect("listening on loopback")
}

/// Wakes itself by reference `n` times, returning `Pending` each time.
struct SelfWaking(u32);

impl Future for SelfWaking {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn the_stock_console_client_sees_named_tasks_with_their_stats() {
    let addr = server();
    let rt = runtime();
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::task::Builder::new()
            .name("ts-yielder")
            .spawn(async {
                for _ in 0..50 {
                    tokio::task::yield_now().await;
                }
            })
            .expect("spawn");
        tokio::task::Builder::new()
            .name("ts-selfwaker")
            .spawn(SelfWaking(20))
            .expect("spawn");
        let sleeper = tokio::task::Builder::new()
            .name("ts-sleeper")
            .spawn(async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = rx.await;
            })
            .expect("spawn");

        let mut client = console_client(addr).await;
        let mut stream = client
            .watch_updates(capi::instrument::InstrumentRequest {})
            .await
            .expect("watch_updates")
            .into_inner();
        let mut view = ConsoleView::default();
        let ok = console_until(&mut stream, &mut view, Duration::from_secs(10), |v| {
            v.polls("ts-yielder") >= 51
                && v.polls("ts-selfwaker") >= 21
                && v.polls("ts-sleeper") >= 6
        })
        .await;
        assert!(ok, "tasks and polls arrive: {:?}", view.tasks.len());
        assert_eq!(
            view.first_had_metadata,
            Some(true),
            "first update carries metadata"
        );
        assert_eq!(
            view.orphan_stats, 0,
            "every task arrives with or before its stats"
        );
        assert_eq!(view.dropped_events, Some(0), "no task events dropped");

        let (_, yielder, ystats) = view.task_named("ts-yielder").expect("yielder");
        let meta = yielder.metadata.expect("task metadata id").id;
        assert_eq!(
            view.metadata.get(&meta).map(|m| m.name.as_str()),
            Some("runtime.spawn")
        );
        assert!(
            matches!(field_value(yielder, "task.id"), Some(capi::field::Value::U64Val(n)) if n > 0),
            "tokio's task id travels as task.id"
        );
        let loc = yielder.location.as_ref().expect("spawn location");
        assert!(
            loc.file
                .as_deref()
                .unwrap_or("")
                .ends_with("tracing_tasks.rs"),
            "{loc:?}"
        );
        let ystats = ystats.expect("yielder stats");
        assert_eq!(
            ystats.poll_stats.as_ref().map(|p| p.polls),
            Some(51),
            "50 yields = 51 polls"
        );
        assert!(
            ystats.wakes >= 50,
            "yield_now wakes the task: {}",
            ystats.wakes
        );
        assert!(
            ystats.waker_clones >= 50,
            "tokio defers yields with a cloned waker"
        );

        let (_, _, sw) = view.task_named("ts-selfwaker").expect("self waker");
        let sw = sw.expect("stats");
        assert_eq!(sw.self_wakes, 20, "wake_by_ref inside poll is a self-wake");
        assert_eq!(sw.wakes, 20);

        // The sleeper waits on the oneshot: one live clone of its waker.
        let (sid, _, ss) = view.task_named("ts-sleeper").expect("sleeper");
        let ss = ss.expect("stats");
        assert!(ss.wakes >= 5, "woken by each sleep: {}", ss.wakes);
        assert!(
            ss.waker_clones > ss.waker_drops,
            "the oneshot holds a waker clone"
        );
        assert!(ss.dropped_at.is_none(), "still running");

        let _ = tx.send(());
        sleeper.await.expect("sleeper finishes");
        let done = console_until(&mut stream, &mut view, Duration::from_secs(5), |v| {
            v.stats.get(&sid).is_some_and(|s| s.dropped_at.is_some())
        })
        .await;
        assert!(done, "completion reaches the console");

        // The details stream of the yielder carries a decodable histogram.
        let (yid, _, _) = view.task_named("ts-yielder").expect("yielder");
        let mut details = client
            .watch_task_details(capi::instrument::TaskDetailsRequest {
                id: Some(capi::Id { id: yid }),
            })
            .await
            .expect("task details")
            .into_inner();
        let d = tokio::time::timeout(Duration::from_secs(5), details.message())
            .await
            .expect("details in time")
            .expect("details stream")
            .expect("one details message");
        assert_eq!(d.task_id.map(|i| i.id), Some(yid));
        let Some(capi::tasks::task_details::PollTimesHistogram::Histogram(h)) =
            d.poll_times_histogram
        else {
            panic!("poll histogram present");
        };
        let h =
            taskscope_wire::console::histogram_from_console(&h).expect("HdrHistogram V2 decodes");
        assert_eq!(h.count, 51, "one sample per poll");
        assert!(d.scheduled_times_histogram.is_some());
    });
}

#[test]
fn taskscope_v1_sees_parents_states_and_completion() {
    let addr = server();
    let rt = runtime();
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let parent = tokio::task::Builder::new()
            .name("tv-parent")
            .spawn(async move {
                let child = tokio::task::Builder::new()
                    .name("tv-child")
                    .spawn(async move {
                        let _ = rx.await;
                    })
                    .expect("spawn child");
                child.await.expect("child joins");
            })
            .expect("spawn parent");
        let quick = tokio::task::Builder::new()
            .name("tv-quick")
            .spawn(async { 7 })
            .expect("spawn");
        assert_eq!(quick.await.expect("quick"), 7);

        let mut client = taskscope_client(addr).await;
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            v.task_named("tv-child").is_some()
                && v.task_named("tv-quick").is_some_and(|t| !t.state.is_live())
        })
        .await;
        let p = v.task_named("tv-parent").expect("parent");
        let c = v.task_named("tv-child").expect("child");
        assert_eq!(c.parent_id, Some(p.id), "the child knows who spawned it");
        assert_eq!(c.state, TaskState::Idle, "the child waits on its oneshot");
        assert!(c.live_wakers() >= 1);
        let q = v.task_named("tv-quick").expect("quick");
        assert_eq!(q.state, TaskState::Completed);
        assert_eq!(q.polls, 1, "the drop of the finished future is not a poll");
        assert!(q.completed_at.is_some());
        assert!(q.tokio_id.is_some());
        assert!(q.poll_histogram.as_ref().is_some_and(|h| h.count == 1));
        let process = v.process.as_ref().expect("process info");
        assert_eq!(process.pid, std::process::id());
        assert!(process.sources.contains(&"tracing".to_string()));
        // Runtime identity: the task names the runtime it was spawned on,
        // and that runtime is listed with its flavor and workers.
        let rt_id = tokio::runtime::Handle::current().id().to_string();
        assert_eq!(q.runtime_id.map(|r| r.to_string()), Some(rt_id.clone()));
        assert_eq!(c.runtime_id, q.runtime_id, "same runtime");
        // tokio opens a block_on's span before it enters the runtime; the
        // block_on still belongs to the runtime that runs it.
        // (Other tests run their own runtimes in this process.)
        assert!(
            v.tasks
                .values()
                .any(|t| t.kind == "block_on" && t.state.is_live() && t.runtime_id == q.runtime_id),
            "this block_on belongs to its runtime"
        );
        let listed = process
            .runtimes
            .iter()
            .find(|r| r.id.to_string() == rt_id)
            .expect("the runtime is listed in the process info");
        assert_eq!(
            listed.flavor,
            taskscope_wire::model::RuntimeFlavor::MultiThread
        );
        assert_eq!(listed.workers, 2);
        // tokio's span fields travel, as console-subscriber sends them.
        let field = |k: &str| q.fields.get(k).map(String::as_str);
        assert_eq!(field("task.name"), Some("tv-quick"));
        assert_eq!(field("kind"), Some("task"));
        let loc = q.location.as_ref().expect("tokio's loc.* fields");
        assert!(loc.file.ends_with("tracing_tasks.rs"), "{loc:?}");
        assert!(loc.line > 0);
        assert_eq!(
            field("task.id"),
            q.tokio_id.map(|t| t.to_string()).as_deref()
        );
        assert!(v.dropped.is_some(), "drop counters travel");

        let _ = tx.send(());
        parent.await.expect("parent");
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            v.task_named("tv-parent")
                .is_some_and(|t| t.state == TaskState::Completed)
        })
        .await;
        assert_eq!(
            v.task_named("tv-parent").map(|t| t.state),
            Some(TaskState::Completed)
        );

        // An aborted task is cancelled, not completed.
        let aborted = tokio::task::Builder::new()
            .name("tv-aborted")
            .spawn(std::future::pending::<()>())
            .expect("spawn");
        tokio::time::sleep(Duration::from_millis(50)).await;
        aborted.abort();
        let _ = aborted.await;
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            v.task_named("tv-aborted")
                .is_some_and(|t| !t.state.is_live())
        })
        .await;
        assert_eq!(
            v.task_named("tv-aborted").map(|t| t.state),
            Some(TaskState::Cancelled)
        );
    });
}

#[test]
fn a_held_tokio_mutex_shows_holder_and_waiter_edges() {
    let addr = server();
    let rt = runtime();
    rt.block_on(async move {
        // An `Interval` first: tokio polls its ticks and `Mutex::lock`
        // through the same instrumented-op callsite, and a timer seen there
        // must not hide the mutex waits that follow.
        let mut interval = tokio::time::interval(Duration::from_millis(1));
        for _ in 0..3 {
            interval.tick().await;
        }
        let mutex = std::sync::Arc::new(tokio::sync::Mutex::new(0u32));
        let (locked_tx, locked_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let m1 = mutex.clone();
        let holder = tokio::task::Builder::new()
            .name("mx-holder")
            .spawn(async move {
                let g = m1.lock().await;
                let _ = locked_tx.send(());
                let _ = release_rx.await;
                drop(g);
            })
            .expect("spawn");
        let _ = locked_rx.await;
        let m2 = mutex.clone();
        let waiter = tokio::task::Builder::new()
            .name("mx-waiter")
            .spawn(async move {
                *m2.lock().await += 1;
            })
            .expect("spawn");

        let mut client = taskscope_client(addr).await;
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            let (Some(h), Some(w)) = (v.task_named("mx-holder"), v.task_named("mx-waiter")) else {
                return false;
            };
            v.edges
                .iter()
                .any(|e| e.task_id == h.id && e.kind == EdgeKind::Holds)
                && v.edges
                    .iter()
                    .any(|e| e.task_id == w.id && e.kind == EdgeKind::Waits)
        })
        .await;
        let h = v.task_named("mx-holder").expect("holder");
        let w = v.task_named("mx-waiter").expect("waiter");
        let holds = v
            .edges
            .iter()
            .find(|e| e.task_id == h.id && e.kind == EdgeKind::Holds)
            .expect("holder holds the mutex");
        let waits = v
            .edges
            .iter()
            .find(|e| e.task_id == w.id && e.kind == EdgeKind::Waits)
            .expect("waiter waits on the mutex");
        assert_eq!(
            holds.resource_id,
            waits.resource_id,
            "the same resource: {:?} {:?}",
            v.resources.get(&holds.resource_id),
            v.resources.get(&waits.resource_id)
        );
        let r = v
            .resources
            .get(&holds.resource_id)
            .expect("the resource is published");
        assert_eq!(r.concrete_type, "Mutex");
        assert!(r
            .location
            .as_ref()
            .is_some_and(|l| l.file.ends_with("tracing_tasks.rs")));

        // The console sees the mutex too.
        let mut console = console_client(addr).await;
        let mut stream = console
            .watch_updates(capi::instrument::InstrumentRequest {})
            .await
            .expect("watch")
            .into_inner();
        let mut cv = ConsoleView::default();
        let rid = holds.resource_id;
        assert!(
            console_until(&mut stream, &mut cv, Duration::from_secs(5), |c| c
                .resources
                .contains_key(&rid))
            .await,
            "console-api resources include the mutex"
        );

        let _ = release_tx.send(());
        holder.await.expect("holder");
        waiter.await.expect("waiter");
        assert_eq!(*mutex.lock().await, 1);
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            !v.edges.iter().any(|e| e.resource_id == rid)
        })
        .await;
        assert!(
            !v.edges.iter().any(|e| e.resource_id == rid),
            "edges go away with the lock"
        );
    });
}

#[tracing::instrument]
async fn load_user(id: u32) {
    fetch_row(id).await
}

#[tracing::instrument]
async fn fetch_row(id: u32) {
    std::future::pending::<()>().await
}

#[test]
fn instrumented_async_fns_form_the_task_backtrace() {
    let addr = server();
    let rt = runtime();
    rt.block_on(async move {
        let task = tokio::task::Builder::new()
            .name("bt-task")
            .spawn(load_user(42))
            .expect("spawn");
        let mut client = taskscope_client(addr).await;
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            v.task_named("bt-task")
                .is_some_and(|t| t.backtrace.len() == 2)
        })
        .await;
        let t = v.task_named("bt-task").expect("task");
        let names: Vec<&str> = t.backtrace.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["load_user", "fetch_row"], "outermost first");
        let inner = &t.backtrace[1];
        assert!(
            inner.detail.contains("id=42"),
            "span fields: {:?}",
            inner.detail
        );
        let loc = inner.location.as_ref().expect("location");
        assert!(
            loc.file.ends_with("tracing_tasks.rs") && loc.line > 0,
            "{loc:?}"
        );
        task.abort();
        let _ = task.await;
    });
}

#[test]
fn tasks_blocked_on_a_semaphore_or_a_full_channel_wait_on_that_resource() {
    let addr = server();
    let rt = runtime();
    rt.block_on(async move {
        // A semaphore with no permits left: the waiter's acquire pends.
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let held = sem.clone().acquire_owned().await.expect("a permit");
        let s2 = sem.clone();
        let sem_waiter = tokio::task::Builder::new()
            .name("sem-waiter")
            .spawn(async move {
                let _p = s2.acquire().await.expect("a permit");
            })
            .expect("spawn");
        // A full bounded channel: the sender waits for room.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        tx.send(0).await.expect("room for one");
        let sender = tokio::task::Builder::new()
            .name("mpsc-sender")
            .spawn(async move {
                tx.send(1).await.expect("the receiver is alive");
            })
            .expect("spawn");

        let mut client = taskscope_client(addr).await;
        let waits_on = |v: &TaskscopeView, name: &str| -> Option<u64> {
            let t = v.task_named(name)?;
            v.edges
                .iter()
                .find(|e| e.task_id == t.id && e.kind == EdgeKind::Waits)
                .map(|e| e.resource_id)
        };
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            waits_on(v, "sem-waiter").is_some() && waits_on(v, "mpsc-sender").is_some()
        })
        .await;
        let sem_res = waits_on(&v, "sem-waiter").expect("the semaphore waiter has a wait edge");
        let r = v
            .resources
            .get(&sem_res)
            .expect("the semaphore is published");
        assert_eq!(r.concrete_type, "Semaphore");
        assert!(
            !r.internal,
            "the semaphore the app made, not tokio's inner one"
        );
        let sem_waits = v
            .edges
            .iter()
            .filter(|e| Some(e.task_id) == v.task_named("sem-waiter").map(|t| t.id))
            .count();
        assert_eq!(sem_waits, 1, "one wait, on one resource");
        let chan_res = waits_on(&v, "mpsc-sender").expect("the blocked sender has a wait edge");
        assert_ne!(chan_res, sem_res, "two different resources");
        assert_eq!(
            v.task_named("mpsc-sender").map(|t| t.state),
            Some(TaskState::Idle)
        );

        // Released: the edges go away.
        drop(held);
        assert_eq!(rx.recv().await, Some(0));
        sem_waiter.await.expect("sem-waiter");
        sender.await.expect("sender");
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            !v.edges
                .iter()
                .any(|e| e.resource_id == sem_res || e.resource_id == chan_res)
        })
        .await;
        assert!(
            !v.edges
                .iter()
                .any(|e| e.resource_id == sem_res || e.resource_id == chan_res),
            "no edge outlives the wait"
        );
    });
}

#[test]
fn a_runtime_shut_down_with_a_live_task_is_marked_dropped_an_abort_is_not() {
    let addr = server();
    // Kept running: a task aborted mid-sleep, and a `block_in_place` that
    // hands the worker's core to another thread (its worker task ends).
    let running = runtime();
    running.block_on(async {
        let sleeper = tokio::spawn(tokio::time::sleep(Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        sleeper.abort();
        let _ = sleeper.await;
        tokio::spawn(async {
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(20)));
        })
        .await
        .expect("block_in_place task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    });
    // Shut down while a task sleeps.
    let dropped = runtime();
    let dropped_id = dropped.handle().id().to_string();
    dropped.spawn(async { tokio::time::sleep(Duration::from_secs(30)).await });
    dropped.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
    drop(dropped);

    let running_id = running.handle().id().to_string();
    let check = runtime();
    check.block_on(async move {
        let mut client = taskscope_client(addr).await;
        let runtime_of = |v: &TaskscopeView, id: &str| {
            v.process
                .as_ref()
                .and_then(|p| p.runtimes.iter().find(|r| r.id.to_string() == id))
                .cloned()
        };
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            runtime_of(v, &dropped_id).is_some_and(|r| r.dropped_at.is_some())
        })
        .await;
        let shut = runtime_of(&v, &dropped_id).expect("the dropped runtime is listed");
        assert!(shut.dropped_at.is_some(), "{shut:?}");
        let alive = runtime_of(&v, &running_id).expect("the running runtime is listed");
        assert_eq!(
            alive.dropped_at, None,
            "an abort or a block_in_place is not a shutdown"
        );
    });
    drop(running);
}

/// A snapshot taken once the tasks `{prefix}-0` … `{prefix}-{n - 1}` all
/// show completed (or after 5 s).
async fn all_completed(addr: SocketAddr, prefix: &str, n: u32) -> TaskscopeView {
    let mut client = taskscope_client(addr).await;
    snapshot_until(&mut client, Duration::from_secs(5), |v| {
        (0..n).all(|i| {
            v.task_named(&format!("{prefix}-{i}"))
                .is_some_and(|t| t.state == TaskState::Completed)
        })
    })
    .await
}

#[test]
fn yields_and_sleeps_are_counted_exactly() {
    // A yield's wake is deferred by tokio until after the poll (outside
    // the task's span), and a sleep's comes from the timer: both count
    // (the second although tokio's `Sleep` spans are not enabled), and
    // every waker the task handed out is gone when it completes.
    let addr = server();
    let rt = runtime();
    rt.block_on(async move {
        let yields = |i: u32| i % 7 + 1;
        let mut handles = Vec::new();
        for i in 0..40u32 {
            let n = yields(i);
            let h = tokio::task::Builder::new()
                .name(&format!("yielder-{i}"))
                .spawn(async move {
                    for _ in 0..n {
                        tokio::task::yield_now().await;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                })
                .expect("spawn");
            handles.push(h);
        }
        for h in handles {
            h.await.expect("the task joins");
        }
        let v = all_completed(addr, "yielder", 40).await;
        for i in 0..40u32 {
            let t = v.task_named(&format!("yielder-{i}")).expect("listed");
            let n = u64::from(yields(i));
            // The first poll, one after each yield, one after the sleep.
            assert_eq!(t.polls, n + 2, "yielder-{i}: {t:?}");
            assert_eq!(t.wakes, n + 1, "yielder-{i}: {t:?}");
            assert_eq!(t.live_wakers(), 0, "yielder-{i}: {t:?}");
            assert!(
                t.scheduled_histogram
                    .as_ref()
                    .is_some_and(|h| h.count == n + 2),
                "every poll records its wait (the first since the spawn): {t:?}"
            );
        }
    });
}

#[test]
fn wakes_from_wakers_that_outlive_their_task_reach_no_other_task() {
    // A finished task's waker still names its span (tokio keeps the id),
    // and the registry hands that span's slot to new spans. Wakes from
    // such wakers, fired from other threads while new tasks start and end
    // in the reused slots, must be ignored: not counted on the new tasks,
    // and never read a freed record.
    let addr = server();
    let rt = runtime();
    rt.block_on(async move {
        let stale: std::sync::Arc<Mutex<Vec<std::task::Waker>>> = Default::default();
        let mut handles = Vec::new();
        for i in 0..200u32 {
            let stale = stale.clone();
            let h = tokio::task::Builder::new()
                .name(&format!("stale-{i}"))
                .spawn(async move {
                    std::future::poll_fn(|cx| {
                        stale
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(cx.waker().clone());
                        Poll::Ready(())
                    })
                    .await;
                    tokio::task::yield_now().await;
                })
                .expect("spawn");
            handles.push(h);
        }
        for h in handles {
            h.await.expect("the task joins");
        }
        let wakers = std::mem::take(&mut *stale.lock().unwrap_or_else(|e| e.into_inner()));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let wakes_fired = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let wakers = std::sync::Arc::new(wakers);
        let firing: Vec<_> = (0..2)
            .map(|_| {
                let (wakers, done, fired) = (wakers.clone(), done.clone(), wakes_fired.clone());
                std::thread::spawn(move || {
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        for w in wakers.iter() {
                            w.wake_by_ref();
                        }
                        fired.fetch_add(wakers.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let churn = |k: u32| k % 5 + 1;
        for wave in 0..6u32 {
            let mut handles = Vec::new();
            for j in 0..100u32 {
                let k = wave * 100 + j;
                let n = churn(k);
                let h = tokio::task::Builder::new()
                    .name(&format!("churn-{k}"))
                    .spawn(async move {
                        for _ in 0..n {
                            tokio::task::yield_now().await;
                        }
                    })
                    .expect("spawn");
                handles.push(h);
            }
            for h in handles {
                h.await.expect("the task joins");
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for f in firing {
            f.join().expect("the firing thread ends");
        }
        assert!(
            wakes_fired.load(std::sync::atomic::Ordering::Relaxed) >= 200,
            "stale wakers were fired"
        );
        drop(wakers);

        let v = all_completed(addr, "churn", 600).await;
        for k in 0..600u32 {
            let t = v.task_named(&format!("churn-{k}")).expect("listed");
            let n = u64::from(churn(k));
            assert_eq!(t.wakes, n, "churn-{k} counts only its own wakes: {t:?}");
            assert_eq!(t.polls, n + 1, "churn-{k}: {t:?}");
        }
        for i in 0..200u32 {
            if let Some(t) = v.task_named(&format!("stale-{i}")) {
                assert_eq!(
                    t.wakes, 1,
                    "stale-{i}: wakes after its end are not counted: {t:?}"
                );
            }
        }
    });
}
