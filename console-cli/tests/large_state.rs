//! The gRPC message limit: console-api sends a console-subscriber app's whole
//! state in one message, so the client's decode limit decides how big an app
//! it can read (tonic's default 4 MiB is tokio-console's cliff). Here an app
//! whose first update outgrows 1 MiB: `--max-message-mib 1` is reported as
//! too small, in one line, and the default (64 MiB) reads it whole.

mod support;

use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt;

const TASKS: usize = 10_000;

#[test]
fn a_state_beyond_the_limit_is_reported_and_the_default_reads_it() {
    let port = support::free_port();
    let layer = console_subscriber::ConsoleLayer::builder()
        .server_addr(([127, 0, 0, 1], port))
        .publish_interval(Duration::from_millis(200))
        .spawn();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("install console-subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("app runtime");
    let (release, _) = tokio::sync::broadcast::channel::<()>(1);
    {
        let _enter = runtime.enter();
        for i in 0..TASKS {
            if i % 1_000 == 0 {
                // Let console-subscriber's bounded event queue drain.
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut rx = release.subscribe();
            tokio::task::Builder::new()
                .name(&format!("connection-handler-for-a-chatty-client-{i:05}"))
                .spawn(async move {
                    let _ = rx.recv().await;
                })
                .expect("spawn");
        }
    }
    support::wait_for_tcp(([127, 0, 0, 1], port).into());
    let target = format!("127.0.0.1:{port}");

    // Wait until console-subscriber's aggregator has taken in enough tasks
    // that its first update no longer fits 1 MiB.
    let deadline = Instant::now() + Duration::from_secs(90);
    let too_large = loop {
        let out = support::taskscope(&[
            "snapshot",
            &target,
            "--max-message-mib",
            "1",
            "--timeout",
            "20",
        ]);
        if !out.status.success() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the state stayed under 1 MiB for 90 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let err =
        support::assert_one_line_failure(&too_large, &format!("a message from http://{target} is"));
    assert!(err.contains("--max-message-mib"), "{err}");

    // The default limit (64 MiB) reads it whole.
    let out = support::taskscope(&["snapshot", &target, "--format", "json", "--timeout", "20"]);
    assert!(out.status.success(), "stderr: {}", support::stderr(&out));
    let doc = support::json(&out);
    let handlers = support::json_tasks(&doc)
        .into_iter()
        .filter(|(name, _)| name.starts_with("connection-handler-for-a-chatty-client-"))
        .count();
    assert!(handlers >= 3_000, "{handlers} handler tasks");
    drop(release);
}
