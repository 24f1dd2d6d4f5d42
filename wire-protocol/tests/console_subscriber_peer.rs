//! `ConsoleState` against the reference peer: a real tokio app instrumented
//! with the real console-subscriber, served over gRPC on 127.0.0.1 and read
//! with console-api's own client — what `taskscope console` does with a plain
//! console-subscriber target.

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskscope_wire::console::ConsoleState;
use taskscope_wire::console_api::instrument::instrument_client::InstrumentClient;
use taskscope_wire::console_api::instrument::{InstrumentRequest, TaskDetailsRequest};
use taskscope_wire::console_api::Id;
use taskscope_wire::model::{EdgeKind, State, Task, TaskState};
use tracing_subscriber::prelude::*;

fn task_named<'a>(state: &'a State, name: &str) -> Option<&'a Task> {
    state
        .tasks
        .values()
        .find(|t| t.name.as_deref() == Some(name))
}

/// What a user would look for in the console: both named tasks, the ticker
/// polled repeatedly, and the waiter parked on the mutex.
fn app_is_visible(state: &State) -> bool {
    let (Some(ticker), Some(waiter)) = (task_named(state, "ticker"), task_named(state, "waiter"))
    else {
        return false;
    };
    ticker.polls >= 5
        && state.edges_of(waiter.id, EdgeKind::Waits).any(|e| {
            state
                .resources
                .get(&e.resource_id)
                .is_some_and(|r| r.concrete_type == "Mutex")
        })
}

#[test]
fn console_state_follows_a_real_console_subscriber_app() {
    let (layer, server) = console_subscriber::ConsoleLayer::builder()
        .publish_interval(Duration::from_millis(30))
        .build();
    tracing_subscriber::registry().with(layer).init();
    let parts = server.into_parts();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(parts.aggregator.run());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(parts.instrument_server)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        // The app: a ticker that polls often, and a waiter stuck on a mutex
        // whose guard we hold.
        let mutex = Arc::new(tokio::sync::Mutex::new(0u32));
        let guard = mutex.clone().lock_owned().await;
        let ticker = tokio::task::Builder::new()
            .name("ticker")
            .spawn(async {
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .expect("spawn ticker");
        let waiter_mutex = mutex.clone();
        let waiter = tokio::task::Builder::new()
            .name("waiter")
            .spawn(async move {
                *waiter_mutex.lock().await += 1;
            })
            .expect("spawn waiter");
        let ticker_tokio_id = ticker.id().to_string();
        let waiter_tokio_id = waiter.id().to_string();

        let mut client = InstrumentClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to console-subscriber");
        let mut updates = client
            .watch_updates(InstrumentRequest {})
            .await
            .expect("watch updates")
            .into_inner();
        let mut cs = ConsoleState::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !app_is_visible(cs.state()) {
            assert!(
                Instant::now() < deadline,
                "app never became visible: {:#?}",
                cs.state()
                    .tasks
                    .values()
                    .map(|t| (&t.name, t.polls))
                    .collect::<Vec<_>>()
            );
            let update = tokio::time::timeout(Duration::from_secs(5), updates.message())
                .await
                .expect("an update within 5 s")
                .expect("stream ok")
                .expect("stream open");
            cs.apply_update(update);
        }

        let state = cs.state();
        let t = task_named(state, "ticker").expect("ticker");
        assert_eq!(t.tokio_id.map(|id| id.to_string()), Some(ticker_tokio_id));
        assert!(t.wakes >= 4, "ticker woken by its timer: {}", t.wakes);
        assert!(t.state.is_live());
        let loc = t.location.as_ref().expect("spawn location");
        assert!(loc.file.ends_with("console_subscriber_peer.rs"), "{loc}");
        let w = task_named(state, "waiter").expect("waiter");
        assert_eq!(w.tokio_id.map(|id| id.to_string()), Some(waiter_tokio_id));
        assert_eq!(w.state, TaskState::Idle, "parked on the mutex");
        assert!(w.live_wakers() >= 1, "the mutex holds the waiter's waker");
        assert_eq!(
            state.process.as_ref().map(|p| p.sources.clone()),
            Some(vec!["console-api".to_string()])
        );

        // Task details: the ticker's poll-time histogram, decoded from HdrHistogram.
        let mut details = client
            .watch_task_details(TaskDetailsRequest {
                id: Some(Id { id: t.id }),
            })
            .await
            .expect("watch details")
            .into_inner();
        let ticker_id = t.id;
        let d = tokio::time::timeout(Duration::from_secs(5), details.message())
            .await
            .expect("details within 5 s")
            .expect("stream ok")
            .expect("stream open");
        cs.apply_task_details(d);
        let t = &cs.state().tasks[&ticker_id];
        let h = t.poll_histogram.as_ref().expect("poll histogram");
        assert!(h.count >= 5, "{} polls in the histogram", h.count);
        assert!(h.min_ns > 0 && h.min_ns <= h.quantile(0.5) && h.quantile(0.5) <= h.max_ns);
        assert_eq!(t.max_poll_ns, h.max_ns);

        // Releasing the mutex lets the waiter finish; the console sees it
        // completed and the wait edge gone.
        drop(guard);
        waiter.await.expect("waiter finishes");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = cs.state();
            let w = task_named(state, "waiter").expect("waiter retained");
            if w.state == TaskState::Completed {
                assert!(w.completed_at.is_some());
                assert_eq!(state.edges_of(w.id, EdgeKind::Waits).count(), 0);
                break;
            }
            assert!(Instant::now() < deadline, "waiter never completed");
            let update = tokio::time::timeout(Duration::from_secs(5), updates.message())
                .await
                .expect("an update within 5 s")
                .expect("stream ok")
                .expect("stream open");
            cs.apply_update(update);
        }
        ticker.abort();
    });
}
