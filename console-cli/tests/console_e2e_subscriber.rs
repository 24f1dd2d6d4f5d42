//! End to end: the real `taskscope console` binary in tmux against a plain
//! `console-subscriber` app in this test process. The console starts
//! first, shows the failed connection and its backoff, then connects when
//! the app comes up (console-api, hazards detected client-side, a task's
//! histograms fetched over its details stream).

mod console_tmux;

use std::time::Duration;

use console_tmux::{tmux_available, Tmux};
use tracing_subscriber::layer::SubscriberExt;

const BIN: &str = env!("CARGO_BIN_EXE_taskscope");
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn console_reconnects_to_a_console_subscriber_app() {
    if !tmux_available() {
        return;
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("a temp dir");
    let target = format!("127.0.0.1:{port}");
    let tmux = Tmux::start(BIN, &["console", &target], dir.path());
    let screen = tmux.wait_for(&["disconnected, retry", "connection refused"], WAIT);
    assert!(
        screen.contains(&format!("http://127.0.0.1:{port}")),
        "{screen}"
    );

    let layer = console_subscriber::ConsoleLayer::builder()
        .server_addr(([127, 0, 0, 1], port))
        .publish_interval(Duration::from_millis(100))
        .spawn();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("install console-subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the app's runtime");
    {
        let _enter = runtime.enter();
        tokio::task::Builder::new()
            .name("subscriber-app-ticker-with-a-long-name")
            .spawn(async {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                loop {
                    tick.tick().await;
                }
            })
            .expect("spawn the ticker");
        tokio::task::Builder::new()
            .name("subscriber-app-sleeper")
            .spawn(tokio::time::sleep(Duration::from_secs(600)))
            .expect("spawn the sleeper");
    }

    // Backoff is capped at 5 s, so the console finds the app quickly.
    let screen = tmux.wait_for(
        &[
            "subscriber-app-ticker-with-a-long-name",
            "subscriber-app-sleeper",
            "console-api · connected",
        ],
        WAIT,
    );
    assert!(!screen.contains("disconnected"), "{screen}");
    tmux.keys(&["4"]);
    tmux.wait_for(&["NAME↑"], WAIT);
    // A task's histograms come over console-api's per-task details stream.
    tmux.keys(&["/"]);
    tmux.type_text("ticker");
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["filter /ticker/"], WAIT);
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for(
        &[
            "Task subscriber-app-ticker-with-a-long-name",
            "poll time",
            "p50",
            "samples",
        ],
        WAIT,
    );
    assert!(screen.contains("scheduled time"), "{screen}");
    tmux.keys(&["q"]);
    tmux.wait_for(&["[exited with status 0]"], WAIT);
    runtime.shutdown_background();
}
