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
        tokio::task::Builder::new()
            .name("rec-parked")
            .spawn(std::future::pending::<()>())
            .expect("spawn");
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
    assert_eq!(
        named("rec-last").map(|t| t.state),
        Some(TaskState::Completed),
        "the final publish on guard drop carries the last task"
    );
    drop(rt);
    drop(squatter);
}
