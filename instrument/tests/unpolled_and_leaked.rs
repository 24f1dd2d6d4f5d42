//! Evidence that exists before (or after) anything runs: a wrapped future
//! that is created and never polled is a task from its creation, and a
//! tokio mutex whose guard was leaked with `mem::forget` keeps its `Holds`
//! edge after the holder has finished. Both end up as hazards.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use taskscope_wire::model::{EdgeKind, TaskState};

#[test]
fn an_unpolled_future_and_a_leaked_guard_are_visible_and_reported() {
    let hazards = taskscope_wire::hazards::HazardConfig {
        unpolled_ms: 100,
        leaked_task_idle_ms: 300,
        ..Default::default()
    };
    let guard = taskscope::Builder::default()
        .bind("127.0.0.1:0")
        .publish_interval(Duration::from_millis(100))
        .retention(Duration::from_millis(500))
        .hazard_config(hazards)
        .init();
    let addr = guard.local_addr().expect("listening");
    let rt = runtime();
    rt.block_on(async move {
        let mut client = taskscope_client(addr).await;

        // Futures are lazy: this one is created and never polled.
        let line = line!() + 1;
        let lazy = taskscope::instrument(async { 1 + 1 }).named("never-polled");
        let lazy_id = lazy.task_id().expect("registered at creation");
        let polled = taskscope::instrument(async { 2 + 2 }).named("polled-once");
        assert_eq!(polled.await, 4);

        // A guard leaked by a task that then finished; a second task waits.
        let session = Arc::new(tokio::sync::Mutex::new(0u32));
        let s = session.clone();
        let holder = tokio::task::Builder::new()
            .name("forgets-guard")
            .spawn(async move { std::mem::forget(s.lock().await) })
            .expect("spawn");
        let _ = holder.await;
        let s = session.clone();
        let waiter = tokio::task::Builder::new()
            .name("waits-forever")
            .spawn(async move { *s.lock().await += 1 })
            .expect("spawn");

        let v = snapshot_until(&mut client, Duration::from_secs(10), |v| {
            v.task_named("never-polled").is_some()
                && v.task_named("forgets-guard")
                    .is_some_and(|t| t.state == TaskState::Completed)
                && v.edges.iter().any(|e| e.kind == EdgeKind::Holds)
                && v.edges.iter().any(|e| e.kind == EdgeKind::Waits)
        })
        .await;
        let t = v.task_named("never-polled").expect("published unpolled");
        assert_eq!(t.id, lazy_id);
        assert_eq!(t.kind, "wrapped");
        assert_eq!((t.state, t.polls), (TaskState::Idle, 0));
        let loc = t.location.as_ref().expect("creation site");
        assert!(loc.file.ends_with("unpolled_and_leaked.rs"), "{loc:?}");
        assert_eq!(loc.line, line, "the line that called instrument");
        let p = v.task_named("polled-once").expect("polled-once");
        assert_eq!((p.state, p.polls), (TaskState::Completed, 1));

        let h = v.task_named("forgets-guard").expect("holder");
        let w = v.task_named("waits-forever").expect("waiter");
        let holds = v
            .edges
            .iter()
            .find(|e| e.task_id == h.id && e.kind == EdgeKind::Holds)
            .expect("the finished holder still holds the mutex");
        assert!(
            v.edges.iter().any(|e| e.task_id == w.id
                && e.kind == EdgeKind::Waits
                && e.resource_id == holds.resource_id),
            "the waiter waits on the leaked mutex: {:?}",
            v.edges
        );

        // Both are reported, each on its own task.
        let mut hz = client
            .watch_hazards(taskscope_wire::proto::WatchHazardsRequest {})
            .await
            .expect("watch hazards")
            .into_inner();
        let (mut unpolled, mut leaked) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        while (unpolled.is_empty() || leaked.is_empty()) && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(2), hz.message()).await {
                Ok(Ok(Some(f))) if f.kind == "unpolled-future" => unpolled.extend(f.task_ids),
                Ok(Ok(Some(f))) if f.kind == "leaked-task" => leaked.extend(f.task_ids),
                _ => {}
            }
        }
        assert_eq!(unpolled, [lazy_id], "only the never-polled future");
        assert_eq!(leaked, [w.id], "only the task waiting on the leaked guard");

        // Dropping the unpolled future ends it like any other, and it is
        // evicted after the retention period.
        drop(lazy);
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            v.task_named("never-polled")
                .is_some_and(|t| t.state == TaskState::Cancelled)
        })
        .await;
        let t = v.task_named("never-polled").expect("retained after drop");
        assert_eq!((t.state, t.polls), (TaskState::Cancelled, 0));
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            v.task_named("never-polled").is_none()
        })
        .await;
        assert!(v.task_named("never-polled").is_none(), "evicted");
        waiter.abort();
    });
    drop(guard);
}
