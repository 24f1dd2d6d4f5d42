//! The future wrapper on two executors (tokio without any tracing
//! subscriber, and smol), with a future that loses its waker and one that
//! keeps it.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use console_api as capi;
use support::*;
use taskscope_wire::model::TaskState;

/// Returns `Pending` without keeping the waker: nobody can ever wake it.
struct LosesWaker;

impl Future for LosesWaker {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// Stores its waker in `slot` and completes once `ready` is set.
struct KeepsWaker {
    slot: Arc<Mutex<(bool, Option<Waker>)>>,
}

impl Future for KeepsWaker {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 {
            return Poll::Ready(());
        }
        s.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn release(slot: &Arc<Mutex<(bool, Option<Waker>)>>) {
    let w = {
        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = true;
        s.1.take()
    };
    if let Some(w) = w {
        w.wake();
    }
}

#[test]
fn wrapped_tasks_on_tokio_and_smol_report_their_wakers() {
    let hazards = taskscope_wire::hazards::HazardConfig {
        lost_waker_grace_ms: 50,
        ..Default::default()
    };
    let guard = taskscope::Builder::default()
        .bind("127.0.0.1:0")
        .publish_interval(Duration::from_millis(100))
        .hazard_config(hazards)
        .init_without_tracing();
    let addr = guard.local_addr().expect("listening");

    // tokio, with no tracing subscriber at all.
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tokio_slot = Arc::new(Mutex::new((false, None)));
    let tokio_kept = {
        let _enter = tokio_rt.enter();
        tokio::spawn(taskscope::instrument(LosesWaker).named("tokio-lost"));
        tokio::spawn(
            taskscope::instrument(KeepsWaker {
                slot: tokio_slot.clone(),
            })
            .named("tokio-kept"),
        )
    };
    let tokio_driver = std::thread::spawn(move || {
        tokio_rt.block_on(async {
            let _ = tokio_kept.await;
        })
    });

    // smol.
    let smol_slot = Arc::new(Mutex::new((false, None)));
    let smol_lost = smol::spawn(taskscope::instrument(LosesWaker).named("smol-lost"));
    let smol_kept = smol::spawn(
        taskscope::instrument(KeepsWaker {
            slot: smol_slot.clone(),
        })
        .named("smol-kept"),
    );

    let rt = runtime();
    rt.block_on(async {
        let mut client = taskscope_client(addr).await;
        let names = ["tokio-lost", "tokio-kept", "smol-lost", "smol-kept"];
        let v = snapshot_until(&mut client, Duration::from_secs(10), |v| {
            names
                .iter()
                .all(|n| v.task_named(n).is_some_and(|t| t.polls >= 1))
        })
        .await;
        for n in names {
            let t = v
                .task_named(n)
                .unwrap_or_else(|| panic!("{n} is published"));
            assert_eq!(t.kind, "wrapped", "{n}");
            assert_eq!(t.state, TaskState::Idle, "{n} waits");
            assert!(
                t.location
                    .as_ref()
                    .is_some_and(|l| l.file.ends_with("wrapper.rs")),
                "{n}"
            );
            if n.ends_with("lost") {
                assert_eq!(t.live_wakers(), 0, "{n}: nobody holds a waker");
            } else {
                assert_eq!(t.live_wakers(), 1, "{n}: the slot holds one waker");
            }
        }
        let p = v.process.as_ref().expect("process");
        assert!(
            p.sources.contains(&"wrapper".to_string()),
            "{:?}",
            p.sources
        );

        // The lost wakers are reported as hazards; the kept ones are not.
        let mut hz = client
            .watch_hazards(taskscope_wire::proto::WatchHazardsRequest {})
            .await
            .expect("watch hazards")
            .into_inner();
        let ids = |n: &str| v.task_named(n).map(|t| t.id).expect("task");
        let lost: Vec<u64> = vec![ids("tokio-lost"), ids("smol-lost")];
        let kept: Vec<u64> = vec![ids("tokio-kept"), ids("smol-kept")];
        let mut flagged = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !lost.iter().all(|id| flagged.contains(id)) && std::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(2), hz.message()).await {
                Ok(Ok(Some(h))) if h.kind == "lost-waker" => flagged.extend(h.task_ids),
                Ok(Ok(Some(_))) => {}
                _ => {}
            }
        }
        assert!(
            lost.iter().all(|id| flagged.contains(id)),
            "lost wakers flagged: {flagged:?}"
        );
        assert!(
            !kept.iter().any(|id| flagged.contains(id)),
            "kept wakers are not flagged"
        );

        // The stock console client sees them too.
        let mut console = console_client(addr).await;
        let mut stream = console
            .watch_updates(capi::instrument::InstrumentRequest {})
            .await
            .expect("watch")
            .into_inner();
        let mut cv = ConsoleView::default();
        assert!(
            console_until(&mut stream, &mut cv, Duration::from_secs(5), |c| c
                .task_named("smol-kept")
                .is_some())
            .await
        );
        let (_, t, s) = cv.task_named("smol-kept").expect("smol-kept");
        assert!(
            matches!(field_value(t, "kind"), Some(capi::field::Value::StrVal(k)) if k == "wrapped")
        );
        let s = s.expect("stats");
        assert_eq!(s.waker_clones - s.waker_drops, 1);

        // Waking the kept ones completes them; the wake reaches each executor.
        release(&tokio_slot);
        release(&smol_slot);
        smol::block_on(smol_kept);
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            ["tokio-kept", "smol-kept"].iter().all(|n| {
                v.task_named(n)
                    .is_some_and(|t| t.state == TaskState::Completed)
            })
        })
        .await;
        for n in ["tokio-kept", "smol-kept"] {
            let t = v.task_named(n).expect("still retained");
            assert_eq!(t.state, TaskState::Completed, "{n}");
            assert_eq!((t.polls, t.wakes), (2, 1), "{n}");
            assert_eq!(t.live_wakers(), 0, "{n}: the wake consumed the waker");
        }

        // Dropping a polled, unfinished wrapped future cancels it.
        drop(smol_lost);
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            v.task_named("smol-lost")
                .is_some_and(|t| t.state == TaskState::Cancelled)
        })
        .await;
        assert_eq!(
            v.task_named("smol-lost").map(|t| t.state),
            Some(TaskState::Cancelled)
        );
    });
    tokio_driver.join().expect("tokio driver thread");
    drop(guard);
}
