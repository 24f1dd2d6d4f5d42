//! `taskscope snapshot` against a plain console-subscriber 0.5 app: the
//! console-api fallback, through the client library and the built binary.
//!
//! The app lives in this test process: console-subscriber is the global
//! tracing subscriber, serving on an ephemeral port, with named tokio tasks
//! in known states.

mod support;

use support::task;

use std::future::Future;
use std::panic::Location;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use taskscope_cli::client::{self, ClientOptions, LiveState, Protocol, Target, WatchEvent};
use taskscope_wire::model::{Task, TaskState};
use tracing_subscriber::layer::SubscriberExt;

struct App {
    target: Target,
    inbox_at: &'static Location<'static>,
    heartbeat_at: &'static Location<'static>,
    one_shot_at: &'static Location<'static>,
    _inbox: tokio::sync::mpsc::Sender<u32>,
    _runtime: tokio::runtime::Runtime,
}

#[track_caller]
fn spawn_named<F>(
    name: &str,
    fut: F,
) -> (
    tokio::task::JoinHandle<F::Output>,
    &'static Location<'static>,
)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let at = Location::caller();
    let handle = tokio::task::Builder::new()
        .name(name)
        .spawn(fut)
        .expect("spawn a named task");
    (handle, at)
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let port = support::free_port();
        let layer = console_subscriber::ConsoleLayer::builder()
            .server_addr(([127, 0, 0, 1], port))
            .publish_interval(Duration::from_millis(100))
            .retention(Duration::from_secs(300))
            .spawn();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("install console-subscriber as the global subscriber");

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("build the app's runtime");
        let (inbox, mut inbox_rx) = tokio::sync::mpsc::channel::<u32>(4);
        let _enter = runtime.enter();
        let (_, inbox_at) = spawn_named("inbox-reader", async move {
            while inbox_rx.recv().await.is_some() {}
        });
        let (_, heartbeat_at) = spawn_named("heartbeat-10ms", async {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            loop {
                interval.tick().await;
            }
        });
        let (job, one_shot_at) = spawn_named("one-shot-job", async { 7_u32 });
        assert_eq!(runtime.block_on(job).expect("one-shot-job completes"), 7);
        drop(_enter);

        support::wait_for_tcp(([127, 0, 0, 1], port).into());
        // Let the heartbeat tick a few times and console-subscriber publish.
        std::thread::sleep(Duration::from_millis(300));
        App {
            target: format!("127.0.0.1:{port}").parse().expect("a valid target"),
            inbox_at,
            heartbeat_at,
            one_shot_at,
            _inbox: inbox,
            _runtime: runtime,
        }
    })
}

fn assert_spawned_at(t: &Task, at: &Location<'_>) {
    let loc = t
        .location
        .as_ref()
        .unwrap_or_else(|| panic!("{} has no spawn location", t.display_name()));
    assert!(
        loc.file.ends_with("console_subscriber_target.rs"),
        "{}: spawn file {}",
        t.display_name(),
        loc.file
    );
    assert_eq!(loc.line, at.line(), "{}: spawn line", t.display_name());
}

#[tokio::test]
async fn library_reads_a_console_subscriber_app() {
    let app = app();
    let snap = client::snapshot(&app.target, &ClientOptions::default())
        .await
        .expect("snapshot of the console-subscriber app");
    assert_eq!(snap.protocol, Protocol::ConsoleApi);
    let sources = snap
        .state
        .process
        .as_ref()
        .map(|p| p.sources.clone())
        .unwrap_or_default();
    assert_eq!(sources, vec!["console-api".to_string()]);

    let inbox = task(&snap.state, "inbox-reader");
    assert_eq!(
        inbox.state,
        TaskState::Idle,
        "a task parked on recv() is idle"
    );
    assert!(inbox.polls >= 1);
    assert!(
        inbox.tokio_id.is_some(),
        "tokio's task id comes from the task.id field"
    );
    assert!(
        inbox.live_wakers() >= 1,
        "the channel holds the reader's waker: {inbox:?}"
    );
    assert_spawned_at(inbox, app.inbox_at);

    let heartbeat = task(&snap.state, "heartbeat-10ms");
    assert!(
        heartbeat.polls >= 5,
        "ticked every 10 ms for 300 ms: {} polls",
        heartbeat.polls
    );
    assert!(heartbeat.wakes >= 4, "{} wakes", heartbeat.wakes);
    assert_spawned_at(heartbeat, app.heartbeat_at);

    assert!(
        snap.state
            .tasks
            .values()
            .all(|t| t.name.as_deref() != Some("one-shot-job")),
        "completed tasks are left out by default"
    );
}

#[tokio::test]
async fn include_completed_keeps_finished_tasks() {
    let app = app();
    let options = ClientOptions {
        include_completed: true,
        ..ClientOptions::default()
    };
    let snap = client::snapshot(&app.target, &options)
        .await
        .expect("snapshot");
    let job = task(&snap.state, "one-shot-job");
    assert_eq!(job.state, TaskState::Completed);
    assert_spawned_at(job, app.one_shot_at);
}

#[tokio::test]
async fn task_details_bring_poll_histograms() {
    let app = app();
    let options = ClientOptions {
        task_details: true,
        ..ClientOptions::default()
    };
    let snap = client::snapshot(&app.target, &options)
        .await
        .expect("snapshot with details");
    let heartbeat = task(&snap.state, "heartbeat-10ms");
    let histogram = heartbeat
        .poll_histogram
        .as_ref()
        .expect("console-subscriber's task details carry a poll-time histogram");
    assert!(histogram.count >= 5, "{histogram:?}");
}

#[tokio::test]
async fn watch_streams_updates_that_advance_the_state() {
    let app = app();
    let mut events = Box::pin(client::watch(app.target.clone(), ClientOptions::default()));
    let first = events.next().await.expect("an event").expect("connected");
    assert!(
        matches!(
            first,
            WatchEvent::Connected {
                protocol: Protocol::ConsoleApi
            }
        ),
        "{first:?}"
    );
    let mut live = LiveState::new(Protocol::ConsoleApi);
    live.apply(first);
    let full = events
        .next()
        .await
        .expect("an event")
        .expect("the first update");
    live.apply(full);
    let polls_before = task(live.state(), "heartbeat-10ms").polls;
    assert_eq!(task(live.state(), "inbox-reader").state, TaskState::Idle);
    // console-subscriber publishes every 100 ms; the heartbeat polls every 10 ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while task(live.state(), "heartbeat-10ms").polls <= polls_before {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("heartbeat polls grow within 5 s")
            .expect("the stream goes on")
            .expect("an update");
        live.apply(event);
    }
}

#[test]
fn binary_prints_a_text_table() {
    let app = app();
    let target = app.target.to_string();
    let out = support::taskscope(&["snapshot", &target]);
    let text = support::stdout(&out);
    assert!(out.status.success(), "stderr: {}", support::stderr(&out));
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.contains(&format!("at {target} via console-api")),
        "{header}"
    );
    assert!(header.contains("tasks"), "{header}");
    for (name, at) in [
        ("inbox-reader", app.inbox_at),
        ("heartbeat-10ms", app.heartbeat_at),
    ] {
        let row = text
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{text}"));
        assert!(
            row.contains(&format!("console_subscriber_target.rs:{}", at.line())),
            "{row}"
        );
    }
    let inbox_row = text
        .lines()
        .find(|l| l.contains("inbox-reader"))
        .unwrap_or_default();
    assert!(inbox_row.contains(" idle "), "{inbox_row}");
    assert!(
        !text.contains("one-shot-job"),
        "completed tasks only with --include-completed:\n{text}"
    );

    let out = support::taskscope(&["snapshot", &target, "--include-completed"]);
    let text = support::stdout(&out);
    let job_row = text
        .lines()
        .find(|l| l.contains("one-shot-job"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(job_row.contains("completed"), "{job_row}");
}

#[test]
fn binary_prints_json_with_the_tasks() {
    let app = app();
    let out = support::taskscope(&["snapshot", &app.target.to_string(), "--format", "json"]);
    assert!(out.status.success(), "stderr: {}", support::stderr(&out));
    let doc = support::json(&out);
    assert_eq!(doc["schema"], "taskscope.snapshot/1");
    assert_eq!(doc["protocol"], "console-api");
    assert_eq!(doc["state"]["process"]["sources"][0], "console-api");
    let tasks = support::json_tasks(&doc);
    let (_, inbox) = tasks
        .iter()
        .find(|(n, _)| n == "inbox-reader")
        .unwrap_or_else(|| panic!("no inbox-reader in {doc}"));
    assert_eq!(inbox["state"], "idle");
    assert_eq!(inbox["location"]["line"], app.inbox_at.line());
    assert!(inbox["location"]["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("console_subscriber_target.rs")));
    assert!(inbox["polls"].as_u64().is_some_and(|p| p >= 1));
}
