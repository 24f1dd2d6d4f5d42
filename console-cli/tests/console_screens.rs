//! Whole-screen snapshots of every console view, drawn into a ratatui
//! `TestBackend` after scripted key sequences through the real key map.
//! Times come from the synthetic app's clock, so screens are deterministic.
//! Review changes with `cargo insta review` (or INSTA_UPDATE=always).

mod console_fixture;

use std::time::Duration;

use console_fixture::*;
use taskscope_cli::console::{ConsoleState, Timeline};
use taskscope_wire::model::{TaskState, Timestamp};

const W: u16 = 140;
const H: u16 = 34;

fn snap(name: &str, console: &mut ConsoleState) -> String {
    let text = screen(console, W, H);
    insta::assert_snapshot!(name, text);
    text
}

#[test]
fn tasks_view() {
    let mut c = live_console(&app_state());
    let text = snap("tasks", &mut c);
    assert!(text.contains(" DEADLOCK "), "{text}");
    assert!(text.contains("transfer-a-to-b → transfer-b-to-a → transfer-a-to-b"));
    assert!(text.contains("taskscope.v1 · connected"));
    assert!(
        text.contains("runtime (R):"),
        "two runtimes: selector shown"
    );
}

#[test]
fn tasks_sorted_and_filtered() {
    let mut c = live_console(&app_state());
    press(&mut c, "9/con|pro⏎");
    let text = snap("tasks_sorted_by_polls_filtered", &mut c);
    assert!(text.contains("POLLS↓"), "{text}");
    assert!(text.contains("filter /con|pro/"), "{text}");
    assert!(text.contains("Tasks (2 of 8)"), "{text}");
    assert!(!text.contains("lost-waker "), "filtered out: {text}");
}

#[test]
fn filter_being_typed() {
    let mut c = live_console(&app_state());
    press(&mut c, "/trans");
    let text = snap("filter_typing", &mut c);
    assert!(text.contains("/trans▏"), "{text}");
}

#[test]
fn bad_filter_is_an_error_line() {
    let mut c = live_console(&app_state());
    press(&mut c, "/([⏎");
    let text = snap("filter_error", &mut c);
    assert!(text.contains("error: filter /([/ is not a regex"), "{text}");
}

#[test]
fn task_details_with_backtrace_and_histograms() {
    let mut c = live_console(&app_state());
    press(&mut c, "/consumer⏎⏎");
    let text = snap("task_details_consumer", &mut c);
    for expected in [
        "Task consumer",
        "reserve_stock",
        "at src/stock.rs:20:5",
        "p50",
        "parent task: producer",
        "Sender|Receiver",
        "shard=eu-west",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
}

#[test]
fn task_details_of_a_deadlocked_task() {
    let mut c = live_console(&app_state());
    press(&mut c, "/transfer-a⏎⏎↓");
    let text = snap("task_details_deadlocked", &mut c);
    assert!(text.contains("waits on (lock): Sync Mutex"), "{text}");
    assert!(text.contains("held by transfer-b-to-a"), "{text}");
    assert!(text.contains("deadlock-cycle"), "{text}");
}

#[test]
fn resource_details_after_following_a_link() {
    let mut c = live_console(&app_state());
    press(&mut c, "/transfer-a⏎⏎↓⏎");
    let text = snap("resource_details", &mut c);
    assert!(text.contains("Resource Sync Mutex"), "{text}");
    assert!(text.contains("▶ held by transfer-b-to-a (id 4)"), "{text}");
    assert!(
        text.contains("waited on by transfer-a-to-b (id 3)"),
        "{text}"
    );
}

#[test]
fn resources_view() {
    let mut c = live_console(&app_state());
    press(&mut c, "r");
    let text = snap("resources", &mut c);
    assert!(text.contains("Sender|Receiver"), "{text}");
    assert!(text.contains("capacity=8"), "{text}");
}

#[test]
fn problems_view() {
    let mut c = live_console(&app_state());
    press(&mut c, "P");
    let text = snap("problems", &mut c);
    assert!(text.contains("Problems ("), "{text}");
    assert!(text.contains("Evidence"), "{text}");
    assert!(text.contains("Advice"), "{text}");
    assert!(
        text.contains("docs: wire-protocol/docs/hazards.md#"),
        "{text}"
    );
    // Walk to the lost waker finding.
    let lost = c
        .hazards()
        .iter()
        .position(|h| h.kind == "lost-waker")
        .expect("a lost-waker finding");
    c.apply(taskscope_cli::console::Action::Top);
    for _ in 0..lost {
        press(&mut c, "↓");
    }
    let text = snap("problems_lost_waker", &mut c);
    assert!(text.contains("returned Pending"), "{text}");
}

#[test]
fn help_overlay_on_tasks_and_details() {
    let mut c = live_console(&app_state());
    press(&mut c, "?");
    let text = snap("help_tasks", &mut c);
    assert!(text.contains("help — ? or Esc closes"), "{text}");
    assert!(text.contains("write the deadlock cycle"), "{text}");
    press(&mut c, "⎋⏎?");
    let text = snap("help_task_details", &mut c);
    assert!(text.contains("logical backtrace"), "{text}");
}

#[test]
fn runtime_selected() {
    let mut c = live_console(&app_state());
    press(&mut c, "RR");
    let text = snap("runtime_metrics", &mut c);
    assert!(text.contains("metrics-exporter"), "{text}");
    assert!(!text.contains("producer"), "{text}");
}

#[test]
fn reconnecting_and_paused_status() {
    let mut c = live_console(&app_state());
    c.disconnected(
        4,
        Duration::from_millis(800),
        "lost the connection to http://127.0.0.1:6669 (connection reset) — did the app exit?",
    );
    press(&mut c, "p");
    let text = snap("reconnecting_paused", &mut c);
    assert!(text.contains("disconnected, retry 4 in 800.0 ms"), "{text}");
    assert!(text.contains("error: lost the connection"), "{text}");
    assert!(text.contains("PAUSED"), "{text}");
}

#[test]
fn replay_timeline() {
    let base = app_state();
    let mut updates = full_updates(&base);
    for i in 0..30u64 {
        let t = task(300 + i, &format!("job-{i}"), 100, TaskState::Idle);
        updates.push(delta(&[t], Timestamp(NOW.0 + (i + 1) * SEC)));
    }
    let mut c = ConsoleState::replay("shop.tsrec", Timeline::new(updates));
    c.advance(Duration::from_secs(12));
    press(&mut c, " +");
    let text = snap("replay_paused_at_12s", &mut c);
    assert!(text.contains("⏸ paused"), "{text}");
    assert!(text.contains("00:12.0 / 00:30.0"), "{text}");
    assert!(text.contains("job-11"), "{text}");
    assert!(!text.contains("job-12"), "{text}");
}

#[test]
fn tiny_terminals_do_not_crash_any_view() {
    for keys in ["", "?", "/transfer-a⏎⏎", "/transfer-a⏎⏎↓⏎", "r", "P", "/x"] {
        let mut c = live_console(&app_state());
        press(&mut c, keys);
        for (w, h) in [(1, 1), (20, 6), (40, 3), (80, 10)] {
            let text = screen(&mut c, w, h);
            assert_eq!(text.lines().count(), h as usize, "{keys:?} at {w}x{h}");
        }
    }
}
