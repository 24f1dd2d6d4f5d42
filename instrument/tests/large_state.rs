//! More live tasks than fit in one 4 MiB message: every task still arrives,
//! chunked, on both protocols.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use console_api as capi;
use support::*;

const TASKS: usize = 30_000;

#[test]
fn thirty_thousand_live_tasks_arrive_in_bounded_chunks() {
    let guard = taskscope::Builder::default()
        .bind("127.0.0.1:0")
        .publish_interval(Duration::from_millis(200))
        .init();
    let addr = guard.local_addr().expect("listening");
    let rt = runtime();
    rt.block_on(async {
        let gate = Arc::new(tokio::sync::Notify::new());
        for i in 0..TASKS {
            let g = gate.clone();
            tokio::task::Builder::new()
                .name(&format!("bulk-{i:05}-with-a-longish-descriptive-name"))
                .spawn(async move { g.notified().await })
                .expect("spawn");
        }

        let mut client = taskscope_client(addr).await;
        let mut stream = client
            .snapshot(taskscope_wire::proto::SnapshotRequest {
                max_chunk_bytes: 256 * 1024,
                include_completed: false,
            })
            .await
            .expect("snapshot")
            .into_inner();
        let mut view = TaskscopeView::default();
        while let Some(u) = stream.message().await.expect("chunk") {
            view.apply(u);
        }
        let names: HashSet<&str> = view
            .tasks
            .values()
            .filter_map(|t| t.name.as_deref())
            .filter(|n| n.starts_with("bulk-"))
            .collect();
        assert_eq!(names.len(), TASKS, "every task arrives");
        assert!(view.full_chunks > 10, "split into chunks: {}", view.full_chunks);
        assert!(view.max_update_bytes <= 300 * 1024, "chunks stay near the limit: {}", view.max_update_bytes);

        // The stock console client (4 MiB decode limit) gets them all too.
        let mut console = console_client(addr).await;
        let mut updates = console
            .watch_updates(capi::instrument::InstrumentRequest {})
            .await
            .expect("watch")
            .into_inner();
        let mut cv = ConsoleView::default();
        let all = console_until(&mut updates, &mut cv, Duration::from_secs(20), |v| {
            v.tasks
                .values()
                .filter(|t| matches!(field_value(t, "task.name"), Some(capi::field::Value::StrVal(n)) if n.starts_with("bulk-")))
                .count()
                == TASKS
        })
        .await;
        assert!(all, "console got {} tasks", cv.tasks.len());
        assert!(cv.max_message_bytes < 4 << 20, "{}", cv.max_message_bytes);
        assert_eq!(cv.orphan_stats, 0);
        gate.notify_waiters();
    });
    drop(guard);
}
