//! The recorder: complete after the guard drops, even when the server
//! could not bind its port.

mod support;

use std::time::Duration;

use taskscope_wire::model::{State, TaskState};

#[test]
fn a_recording_is_complete_after_the_guard_drops_even_when_the_port_is_taken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("run.tsrec");
    // Someone else holds the port.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").to_string();

    let guard = taskscope::Builder::default()
        .bind(&taken)
        .record(&path)
        .publish_interval(Duration::from_millis(100))
        .init();
    assert_eq!(guard.local_addr(), None, "the port is taken: no server");

    let rt = support::runtime();
    rt.block_on(async {
        for i in 0..50 {
            tokio::task::Builder::new()
                .name(&format!("rec-early-{i}"))
                .spawn(async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                })
                .expect("spawn")
                .await
                .expect("join");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Parked for good once its first poll has run.
        let (polled_tx, polled_rx) = tokio::sync::oneshot::channel();
        tokio::task::Builder::new()
            .name("rec-parked")
            .spawn(async move {
                let _ = polled_tx.send(());
                std::future::pending::<()>().await
            })
            .expect("spawn");
        polled_rx.await.expect("rec-parked was polled");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Finishes right before the guard drops: only the final publish
        // can carry it.
        tokio::task::Builder::new()
            .name("rec-last")
            .spawn(async {})
            .expect("spawn")
            .await
            .expect("join");
    });
    drop(guard);

    let (updates, err) = taskscope_wire::recording::read_recording(&path);
    assert!(err.is_none(), "recording ends cleanly: {err:?}");
    assert!(
        updates.len() >= 3,
        "a full state, deltas and the final one: {}",
        updates.len()
    );
    let first = &updates[0];
    assert!(first.full, "first frame is a full state");
    let process = first
        .process
        .as_ref()
        .expect("first frame carries process info");
    assert_eq!(process.pid, std::process::id());
    assert!(!process.executable.is_empty());

    let mut state = State::default();
    for u in updates {
        state.apply(u);
    }
    let named = |n: &str| state.tasks.values().find(|t| t.name.as_deref() == Some(n));
    for i in 0..50 {
        let t =
            named(&format!("rec-early-{i}")).unwrap_or_else(|| panic!("rec-early-{i} recorded"));
        assert_eq!(t.state, TaskState::Completed);
        assert_eq!(t.polls, 2, "sleep once: two polls");
    }
    assert_eq!(named("rec-parked").map(|t| t.state), Some(TaskState::Idle));
    // The first frame was written before any task existed; what the app
    // turned out to use reaches the recording later (detectors trust waker
    // counts only from a known source).
    let process = state.process.as_ref().expect("process info");
    assert!(
        process.sources.iter().any(|s| s == "tracing"),
        "{:?}",
        process.sources
    );
    assert!(!process.runtimes.is_empty(), "the runtime is recorded");
    assert_eq!(
        named("rec-last").map(|t| t.state),
        Some(TaskState::Completed),
        "the final publish on guard drop carries the last task"
    );
    drop(rt);
    drop(squatter);
}

/// Set in the environment of the child process the two tests below start.
const CHILD_MARKER: &str = "TASKSCOPE_TEST_RECORDING_CHILD";

/// Runs in a child process only (see below): `init()` from the environment,
/// one named task, the guard dropped at the end as in a `main`.
#[test]
#[ignore = "run in a child process by the TASKSCOPE_RECORD tests below"]
fn recording_child_process() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        return;
    }
    let guard = taskscope::init();
    support::runtime().block_on(async {
        tokio::task::Builder::new()
            .name("env-recorded")
            .spawn(async { tokio::task::yield_now().await })
            .expect("spawn")
            .await
            .expect("join");
    });
    drop(guard);
}

/// Starts this test binary again with `env`, running only the child test;
/// returns the child's process id.
fn run_child(env: &[(&str, &std::path::Path)]) -> u32 {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", "recording_child_process", "--ignored"])
        .stdout(std::process::Stdio::null())
        .env(CHILD_MARKER, "1")
        .env("TASKSCOPE_BIND", "off")
        .env_remove("TASKSCOPE_RECORD")
        .env_remove("TASKSCOPE_RECORD_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the child");
    let pid = child.id();
    let status = child.wait().expect("wait for the child");
    assert!(status.success(), "the child test passed: {status}");
    pid
}

fn assert_recorded_task(path: &std::path::Path) {
    let (updates, err) = taskscope_wire::recording::read_recording(path);
    assert!(err.is_none(), "{} ends cleanly: {err:?}", path.display());
    let mut state = State::default();
    for u in updates {
        state.apply(u);
    }
    let task = state
        .tasks
        .values()
        .find(|t| t.name.as_deref() == Some("env-recorded"))
        .unwrap_or_else(|| panic!("{} holds the child's task", path.display()));
    assert_eq!(task.state, TaskState::Completed);
}

#[test]
fn taskscope_record_dir_names_the_file_after_the_executable_and_pid() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A directory that does not exist yet is created.
    let rec_dir = dir.path().join("recordings");
    let pid = run_child(&[("TASKSCOPE_RECORD_DIR", &rec_dir)]);
    let exe = std::env::current_exe().expect("the test binary's path");
    let stem = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("a UTF-8 test binary name");
    let expected = rec_dir.join(format!("{stem}-{pid}.tsrec"));
    let found: Vec<_> = std::fs::read_dir(&rec_dir)
        .expect("the recording directory exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(found, vec![expected.clone()], "exactly one recording");
    assert_recorded_task(&expected);
}

#[test]
fn taskscope_record_replaces_pid_in_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pattern = dir.path().join("app-{pid}.tsrec");
    let pid = run_child(&[("TASKSCOPE_RECORD", &pattern)]);
    let expected = dir.path().join(format!("app-{pid}.tsrec"));
    assert!(expected.exists(), "{} was written", expected.display());
    assert_recorded_task(&expected);
}
