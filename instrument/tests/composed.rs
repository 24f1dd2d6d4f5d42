//! `Builder::build()`'s layer composed with another layer: the other layer
//! still sees every event, and taskscope still sees tokio's tasks.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

struct CountEvents(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountEvents {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if e.metadata().target() == "composed" {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn other_layers_keep_seeing_their_events() {
    let (layer, guard) = taskscope::Builder::default()
        .bind("127.0.0.1:0")
        .publish_interval(Duration::from_millis(100))
        .build();
    let seen = Arc::new(AtomicUsize::new(0));
    tracing_subscriber::registry()
        .with(layer)
        .with(CountEvents(seen.clone()))
        .try_init()
        .expect("install the subscriber");
    let addr = guard.local_addr().expect("listening");

    tracing::info!(target: "composed", "one");
    tracing::trace!(target: "composed", "two");
    assert_eq!(
        seen.load(Ordering::Relaxed),
        2,
        "events taskscope does not want still flow"
    );

    let rt = runtime();
    rt.block_on(async {
        tokio::task::Builder::new()
            .name("cp-task")
            .spawn(std::future::pending::<()>())
            .expect("spawn");
        let mut client = taskscope_client(addr).await;
        let v = snapshot_until(&mut client, Duration::from_secs(5), |v| {
            v.task_named("cp-task").is_some()
        })
        .await;
        assert!(v.task_named("cp-task").is_some(), "tokio tasks are seen");
    });
    drop(guard);
}
