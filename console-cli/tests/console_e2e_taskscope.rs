//! End to end: the real `taskscope console` binary in tmux against a live
//! taskscope-instrumented tokio app running in this test process (real gRPC
//! on 127.0.0.1, ephemeral port), then against the recording that app
//! wrote; and `taskscope demo` opening the console on its embedded app.

mod console_tmux;

use std::sync::Arc;
use std::time::Duration;

use console_tmux::{tmux_available, Tmux};

const BIN: &str = env!("CARGO_BIN_EXE_taskscope");
const WAIT: Duration = Duration::from_secs(30);

fn spawn_named<F>(name: &str, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::task::Builder::new()
        .name(name)
        .spawn(fut)
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
}

#[test]
fn console_on_a_live_app_then_on_its_recording() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let recording = dir.path().join("app.tsrec");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the app's runtime");
    let guard = {
        let _enter = runtime.enter();
        taskscope::Builder::default()
            .bind("127.0.0.1:0")
            .record(&recording)
            .publish_interval(Duration::from_millis(100))
            .init()
    };
    let addr = guard.local_addr().expect("taskscope listens");
    {
        let _enter = runtime.enter();
        spawn_named("e2e-heartbeat", async {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
            }
        });
        let lock = Arc::new(tokio::sync::Mutex::new(0_u32));
        let held = lock.clone();
        spawn_named("e2e-lock-holder", async move {
            let _guard = held.lock().await;
            std::future::pending::<()>().await;
        });
        spawn_named("e2e-lock-waiter", async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _guard = lock.lock().await;
        });
    }

    let target = format!("http://{addr}");
    let tmux = Tmux::start(BIN, &["console", &target], dir.path());
    let screen = tmux.wait_for(
        &[
            "e2e-heartbeat",
            "e2e-lock-holder",
            "e2e-lock-waiter",
            "taskscope.v1 · connected",
        ],
        WAIT,
    );
    assert!(
        screen.contains(&target),
        "the status line names the target:\n{screen}"
    );

    // Filter, then open the waiter: its details show the Mutex it waits on.
    tmux.keys(&["/"]);
    tmux.type_text("lock-waiter");
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for(&["filter /lock-waiter/"], WAIT);
    assert!(!screen.contains("e2e-heartbeat"), "filtered out:\n{screen}");
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["Task e2e-lock-waiter", "Backtrace", "Links"], WAIT);
    tmux.keys(&["?"]);
    tmux.wait_for(&["help — ? or Esc closes"], WAIT);
    // One Esc closes the help, one leaves the task, one clears the filter
    // (apart, so the terminal does not read Esc+key as Alt+key).
    for _ in 0..3 {
        tmux.keys(&["Escape"]);
        std::thread::sleep(Duration::from_millis(300));
    }
    tmux.wait_for(&["e2e-heartbeat"], WAIT);
    tmux.keys(&["r"]);
    tmux.wait_for(&["Resources (", "Mutex", "console_e2e_taskscope.rs"], WAIT);
    tmux.keys(&["q"]);
    tmux.wait_for(&["[exited with status 0]"], WAIT);
    drop(tmux);

    // Stop the app so the recording is complete, then replay it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(guard);
    let rec = recording.to_string_lossy().into_owned();
    let tmux = Tmux::start(BIN, &["console", &rec], dir.path());
    let screen = tmux.wait_for(&["e2e-heartbeat", "recording", "update "], WAIT);
    assert!(
        screen.contains("/ "),
        "timeline shows position / length:\n{screen}"
    );
    tmux.keys(&["Space"]);
    tmux.wait_for(&["⏸ paused"], WAIT);
    tmux.keys(&[","]);
    tmux.keys(&["P"]);
    tmux.wait_for(&["Problems ("], WAIT);
    tmux.keys(&["q"]);
    tmux.wait_for(&["[exited with status 0]"], WAIT);
}

#[test]
fn demo_opens_the_console_with_the_deadlock_banner() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let tmux = Tmux::start(BIN, &["demo", "--bind", "127.0.0.1:0"], dir.path());
    tmux.wait_for(
        &[
            "producer",
            "consumer",
            "report-renderer",
            "lost-waker",
            "transfer-a-to-b",
            "cancelled",
        ],
        WAIT,
    );
    let screen = tmux.wait_for(&[" DEADLOCK ", "transfer-b-to-a"], WAIT);
    assert!(screen.contains("D: write .dot"), "{screen}");
    tmux.keys(&["D"]);
    let screen = tmux.wait_for(&["wrote ./taskscope-"], WAIT);
    assert!(screen.contains(".dot"), "{screen}");
    let dot = std::fs::read_dir(dir.path())
        .expect("read the temp dir")
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "dot"))
        .expect("a .dot file in the working directory");
    let text = std::fs::read_to_string(dot.path()).expect("read the .dot");
    assert!(text.starts_with("digraph"), "{text}");
    assert!(text.contains("transfer-a-to-b"), "{text}");
    tmux.keys(&["P"]);
    tmux.wait_for(
        &["deadlock-cycle", "blocking-poll", "lost-waker", "Advice"],
        WAIT,
    );
    tmux.keys(&["q"]);
    tmux.wait_for(&["[exited with status 0]"], WAIT);
}

#[test]
fn a_target_that_speaks_garbage_is_an_error_line_not_a_crash() {
    if !tmux_available() {
        return;
    }
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = listener.local_addr().expect("local address");
    // Answers every connection with bytes that are not HTTP/2, then hangs up.
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0_u8; 256];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ngarbage");
        }
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let tmux = Tmux::start(BIN, &["console", &addr.to_string()], dir.path());
    let screen = tmux.wait_for(&["error: ", "disconnected, retry"], WAIT);
    assert!(!screen.contains("panicked"), "{screen}");
    assert!(
        !screen.contains("[exited"),
        "the console keeps running:\n{screen}"
    );
    // Still responsive: the help opens.
    tmux.keys(&["?"]);
    tmux.wait_for(&["help — ? or Esc closes"], WAIT);
    tmux.keys(&["q"]);
    tmux.wait_for(&["[exited with status 0]"], WAIT);
}
