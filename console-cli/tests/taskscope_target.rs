//! `taskscope snapshot` against an app instrumented with the `taskscope`
//! crate: the taskscope.v1 path (process identity, wait edges), and the
//! same app seen through console-api, as tokio-console sees it.

mod support;

use support::task;

use std::future::Future;
use std::panic::Location;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use taskscope_cli::client::{self, ClientOptions, Protocol, Target};
use taskscope_wire::model::{EdgeKind, TaskState};

struct App {
    target: Target,
    waiter_at: &'static Location<'static>,
    // The guard is not `Sync`; a static needs it to be.
    _guard: std::sync::Mutex<taskscope::Guard>,
    _inbox: tokio::sync::mpsc::Sender<u32>,
    _runtime: tokio::runtime::Runtime,
}

#[track_caller]
fn spawn_named<F>(name: &str, fut: F) -> &'static Location<'static>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let at = Location::caller();
    tokio::task::Builder::new()
        .name(name)
        .spawn(fut)
        .expect("spawn a named task");
    at
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let guard = taskscope::Builder::default()
            .bind("127.0.0.1:0")
            .publish_interval(Duration::from_millis(100))
            .init();
        let addr = guard
            .local_addr()
            .expect("taskscope listens on an ephemeral port");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("app runtime");
        let (inbox, mut inbox_rx) = tokio::sync::mpsc::channel::<u32>(4);
        let lock = Arc::new(tokio::sync::Mutex::new(0_u32));
        let waiter_at = {
            let _enter = runtime.enter();
            spawn_named("inbox-reader", async move {
                while inbox_rx.recv().await.is_some() {}
            });
            let held = lock.clone();
            spawn_named("lock-holder", async move {
                let _guard = held.lock().await;
                std::future::pending::<()>().await;
            });
            std::thread::sleep(Duration::from_millis(100));
            spawn_named("lock-waiter", async move {
                let _guard = lock.lock().await;
            })
        };
        support::wait_for_tcp(addr);
        std::thread::sleep(Duration::from_millis(500));
        App {
            target: addr.to_string().parse().expect("target"),
            waiter_at,
            _guard: std::sync::Mutex::new(guard),
            _inbox: inbox,
            _runtime: runtime,
        }
    })
}

#[tokio::test]
async fn library_speaks_taskscope_v1() {
    let app = app();
    let snap = client::snapshot(&app.target, &ClientOptions::default())
        .await
        .expect("snapshot of the taskscope app");
    assert_eq!(snap.protocol, Protocol::Taskscope);
    let process = snap
        .state
        .process
        .as_ref()
        .expect("taskscope.v1 says who the process is");
    assert_eq!(process.pid, std::process::id());
    assert!(
        process.sources.iter().any(|s| s == "tracing"),
        "{:?}",
        process.sources
    );

    assert_eq!(task(&snap.state, "inbox-reader").state, TaskState::Idle);
    let waiter = task(&snap.state, "lock-waiter");
    let holder = task(&snap.state, "lock-holder");
    assert_eq!(waiter.state, TaskState::Idle);
    let location = waiter.location.as_ref().expect("spawn location");
    assert!(
        location.file.ends_with("taskscope_target.rs") && location.line == app.waiter_at.line(),
        "{location:?}"
    );

    // The waiter waits on the very Mutex the holder holds.
    let waits_on: Vec<u64> = snap
        .state
        .edges_of(waiter.id, EdgeKind::Waits)
        .map(|e| e.resource_id)
        .collect();
    let held: Vec<u64> = snap
        .state
        .edges_of(holder.id, EdgeKind::Holds)
        .map(|e| e.resource_id)
        .collect();
    let mutex = waits_on
        .iter()
        .find(|id| held.contains(id))
        .unwrap_or_else(|| {
            panic!(
                "waiter waits on {waits_on:?}, holder holds {held:?}; edges {:?}",
                snap.state.edges
            )
        });
    let resource = &snap.state.resources[mutex];
    assert!(resource.concrete_type.contains("Mutex"), "{resource:?}");
}

#[tokio::test]
async fn the_same_app_through_console_api() {
    let app = app();
    let options = ClientOptions {
        protocol: Some(Protocol::ConsoleApi),
        ..ClientOptions::default()
    };
    let snap = client::snapshot(&app.target, &options)
        .await
        .expect("console-api snapshot");
    assert_eq!(snap.protocol, Protocol::ConsoleApi);
    let waiter = task(&snap.state, "lock-waiter");
    assert_eq!(waiter.state, TaskState::Idle, "{waiter:?}");
    assert!(task(&snap.state, "inbox-reader").polls >= 1);
}

#[test]
fn binary_shows_who_waits_on_what() {
    let app = app();
    let target = app.target.to_string();
    let out = support::taskscope(&["snapshot", &target]);
    assert!(out.status.success(), "stderr: {}", support::stderr(&out));
    let text = support::stdout(&out);
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.starts_with(&format!("pid {} (", std::process::id())),
        "{header}"
    );
    assert!(
        header.contains(&format!("at {target} via taskscope.v1")),
        "{header}"
    );
    // The waiter's row is followed by the line saying what it waits on.
    let lines: Vec<&str> = text.lines().collect();
    let row = lines
        .iter()
        .position(|l| l.contains("lock-waiter"))
        .unwrap_or_else(|| panic!("no lock-waiter row:\n{text}"));
    let after: Vec<&&str> = lines[row + 1..]
        .iter()
        .take_while(|l| l.starts_with("    "))
        .collect();
    assert!(
        after.iter().any(|l| l.contains("waits on Mutex")),
        "lines under lock-waiter: {after:?}\n{text}"
    );
    assert!(
        lines[row].contains(&format!("taskscope_target.rs:{}", app.waiter_at.line())),
        "{}",
        lines[row]
    );

    let out = support::taskscope(&["snapshot", &target, "--format", "json"]);
    let doc = support::json(&out);
    assert_eq!(doc["protocol"], "taskscope.v1");
    assert_eq!(doc["state"]["process"]["pid"], std::process::id());
    assert!(support::json_tasks(&doc)
        .iter()
        .any(|(n, t)| n == "lock-holder" && t["state"] == "idle"));
}

#[tokio::test]
async fn watch_gets_the_full_state_then_deltas() {
    use futures::StreamExt;
    use taskscope_cli::client::{LiveState, WatchEvent};

    let app = app();
    let options = ClientOptions {
        watch_interval: Duration::from_millis(100),
        ..ClientOptions::default()
    };
    let mut events = Box::pin(client::watch(app.target.clone(), options));
    let first = events.next().await.expect("an event").expect("connected");
    assert!(
        matches!(
            first,
            WatchEvent::Connected {
                protocol: Protocol::Taskscope
            }
        ),
        "{first:?}"
    );
    let mut live = LiveState::new(Protocol::Taskscope);
    live.apply(first);
    // Apply updates until the full state is in, then a few deltas more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut updates = 0;
    while updates < 4 || live.state().tasks.is_empty() {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("updates keep coming")
            .expect("the stream goes on")
            .expect("an update");
        assert!(matches!(event, WatchEvent::Taskscope(_)), "{event:?}");
        live.apply(event);
        updates += 1;
    }
    assert_eq!(task(live.state(), "lock-waiter").state, TaskState::Idle);
    assert_eq!(
        live.state().process.as_ref().map(|p| p.pid),
        Some(std::process::id())
    );
}
