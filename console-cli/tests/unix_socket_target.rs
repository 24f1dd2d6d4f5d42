//! A target listening on a Unix domain socket (`unix:/path`): here a
//! console-subscriber app serving on a socket in a temporary directory.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use taskscope_cli::client::{self, ClientOptions, Protocol, Target};
use taskscope_wire::model::TaskState;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn snapshot_over_a_unix_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket: PathBuf = dir.path().join("console.sock");
    let layer = console_subscriber::ConsoleLayer::builder()
        .server_addr(console_subscriber::ServerAddr::Unix(socket.clone()))
        .publish_interval(Duration::from_millis(100))
        .spawn();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("install console-subscriber");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("app runtime");
    let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
    {
        let _enter = runtime.enter();
        tokio::task::Builder::new()
            .name("socket-listener-task")
            .spawn(async move {
                let _ = rx.await;
            })
            .expect("spawn");
    }
    support::wait_for_unix(&socket);
    std::thread::sleep(Duration::from_millis(300));

    let target_text = format!("unix:{}", socket.display());
    let target: Target = target_text.parse().expect("a unix target");
    assert_eq!(target, Target::Unix(socket.clone()));

    // The library.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let snap = client_rt
        .block_on(client::snapshot(&target, &ClientOptions::default()))
        .expect("snapshot over the Unix socket");
    assert_eq!(snap.protocol, Protocol::ConsoleApi);
    let task = snap
        .state
        .tasks
        .values()
        .find(|t| t.name.as_deref() == Some("socket-listener-task"))
        .expect("the app's task is listed");
    assert_eq!(task.state, TaskState::Idle);

    // The binary, text and JSON.
    let out = support::taskscope(&["snapshot", &target_text]);
    assert!(out.status.success(), "stderr: {}", support::stderr(&out));
    let text = support::stdout(&out);
    assert!(
        text.lines()
            .next()
            .unwrap_or_default()
            .contains(&format!("at {target_text} via console-api")),
        "{text}"
    );
    assert!(text.contains("socket-listener-task"), "{text}");

    let out = support::taskscope(&[
        "snapshot",
        &format!("unix://{}", socket.display()),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "stderr: {}", support::stderr(&out));
    let doc = support::json(&out);
    assert_eq!(doc["target"], target_text.as_str());
    assert!(support::json_tasks(&doc)
        .iter()
        .any(|(n, t)| n == "socket-listener-task" && t["state"] == "idle"));
}
