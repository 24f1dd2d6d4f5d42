//! The console's state model driven by synthetic taskscope.v1 updates and
//! the real key map: sorting, filtering, navigation, pause, runtimes,
//! deadlock export, reconnect status, replay.

mod console_fixture;

use std::time::Duration;

use console_fixture::*;
use taskscope_cli::client::{Protocol, WatchEvent};
use taskscope_cli::console::state::{Action, Connection, Screen, TaskColumn};
use taskscope_cli::console::{ConsoleState, Effect, Timeline};
use taskscope_wire::model::{TaskState, Timestamp};

fn names(console: &ConsoleState) -> Vec<String> {
    console
        .task_rows()
        .iter()
        .map(|id| console.model().tasks[id].display_name())
        .collect()
}

#[test]
fn tasks_with_findings_come_first_and_columns_sort_both_ways() {
    let mut c = live_console(&app_state());
    let kinds: Vec<&str> = c.hazards().iter().map(|h| h.kind.as_str()).collect();
    assert!(kinds.contains(&"deadlock-cycle"), "{kinds:?}");
    assert!(kinds.contains(&"lost-waker"), "{kinds:?}");
    let first_two: Vec<String> = names(&c).into_iter().take(2).collect();
    assert!(
        first_two.contains(&"transfer-a-to-b".to_string()),
        "tasks in the cycle lead: {first_two:?}"
    );

    press(&mut c, "9"); // polls, largest first
    assert_eq!(c.sort(), (TaskColumn::Polls, true));
    let polls: Vec<u64> = c
        .task_rows()
        .iter()
        .map(|id| c.model().tasks[id].polls)
        .collect();
    assert!(polls.windows(2).all(|w| w[0] >= w[1]), "{polls:?}");
    press(&mut c, "9"); // again: reversed
    let polls: Vec<u64> = c
        .task_rows()
        .iter()
        .map(|id| c.model().tasks[id].polls)
        .collect();
    assert!(polls.windows(2).all(|w| w[0] <= w[1]), "{polls:?}");

    press(&mut c, "4"); // name, A→Z
    assert_eq!(names(&c)[0], "consumer");
}

#[test]
fn regex_filter_matches_name_location_and_fields() {
    let mut c = live_console(&app_state());
    press(&mut c, "/transfer-.*⏎");
    assert_eq!(names(&c), ["transfer-a-to-b", "transfer-b-to-a"]);
    press(&mut c, "/metrics\\.rs⏎");
    assert_eq!(names(&c), ["metrics-exporter"], "location matches");
    press(&mut c, "/shard=eu⏎");
    assert_eq!(names(&c), ["consumer"], "fields match as key=value");

    // A broken regex keeps the filter in force and says why.
    press(&mut c, "/([⏎");
    assert_eq!(names(&c), ["consumer"]);
    let err = c.filter().error.clone().expect("an error for a bad regex");
    assert!(err.contains("not a regex"), "{err}");

    // Esc on the task list clears the filter.
    press(&mut c, "⎋");
    assert_eq!(c.task_rows().len(), app_state().tasks.len());
}

#[test]
fn selection_follows_the_task_across_updates() {
    let state = app_state();
    let mut c = live_console(&state);
    press(&mut c, "4g↓↓"); // by name, from the top: consumer, doomed-download, lost-waker
    let selected = c.task_rows()[c.task_selected()];
    assert_eq!(c.model().tasks[&selected].display_name(), "lost-waker");

    // An update adds tasks that sort before it.
    let new: Vec<_> = (100..105)
        .map(|i| task(i, &format!("aaa-{i}"), 10, TaskState::Idle))
        .collect();
    c.apply_event(WatchEvent::Taskscope(Box::new(delta(&new, ago(0.0)))));
    c.refresh();
    assert_eq!(c.task_rows().len(), state.tasks.len() + 5);
    let selected = c.task_rows()[c.task_selected()];
    assert_eq!(c.model().tasks[&selected].display_name(), "lost-waker");
}

#[test]
fn a_new_sort_of_the_same_tasks_follows_keys_that_changed() {
    // The rows are re-sorted from the last order while the task set stays
    // the same; a key that moved (more polls, a new name) must still move
    // its task.
    let state = app_state();
    let mut c = live_console(&state);
    press(&mut c, "9"); // polls, largest first
    let last = *c.task_rows().last().expect("rows");
    let mut busier = state.tasks[&last].clone();
    busier.polls = 1_000_000;
    c.apply_event(WatchEvent::Taskscope(Box::new(delta(&[busier], ago(0.0)))));
    c.refresh();
    assert_eq!(c.task_rows().len(), state.tasks.len(), "the same tasks");
    assert_eq!(c.task_rows()[0], last, "the busiest task leads now");

    press(&mut c, "4"); // name, A→Z
    let last = *c.task_rows().last().expect("rows");
    let mut renamed = c.model().tasks[&last].clone();
    renamed.name = Some("aaa-renamed".into());
    c.apply_event(WatchEvent::Taskscope(Box::new(delta(&[renamed], ago(0.0)))));
    c.refresh();
    assert_eq!(names(&c)[0], "aaa-renamed");
    let sorted = names(&c);
    let mut expected = sorted.clone();
    expected.sort();
    assert_eq!(sorted, expected, "still sorted by name");
}

#[test]
fn enter_walks_from_a_blocked_task_to_the_resource_and_its_holder() {
    let mut c = live_console(&app_state());
    press(&mut c, "/transfer-a⏎⏎");
    assert_eq!(c.screen(), Screen::Task { id: 3, selected: 0 });
    // Links: the Mutex it holds (10) then the one it waits on (11).
    let links = c.task_links(3);
    assert_eq!(links.len(), 2, "{links:?}");
    press(&mut c, "↓⏎");
    assert_eq!(
        c.screen(),
        Screen::Resource {
            id: 11,
            selected: 0
        }
    );
    // The first link of a resource is its holder.
    press(&mut c, "⏎");
    assert_eq!(c.screen(), Screen::Task { id: 4, selected: 0 });
    press(&mut c, "⎋⎋⎋");
    assert_eq!(c.screen(), Screen::Tasks);
}

#[test]
fn pause_holds_updates_and_resume_applies_them() {
    let mut c = live_console(&app_state());
    press(&mut c, "p");
    assert!(c.is_paused());
    let new = [task(200, "late-task", 99, TaskState::Idle)];
    c.apply_event(WatchEvent::Taskscope(Box::new(delta(&new, ago(0.0)))));
    c.refresh();
    assert!(!c.model().tasks.contains_key(&200), "paused: screen frozen");
    assert_eq!(c.held_events(), 1);
    press(&mut c, " ");
    assert!(!c.is_paused());
    assert!(c.model().tasks.contains_key(&200));
    assert!(names(&c).contains(&"late-task".to_string()));
}

#[test]
fn runtime_selector_limits_the_table() {
    let mut c = live_console(&app_state());
    assert_eq!(c.runtimes().len(), 2);
    press(&mut c, "R");
    assert_eq!(c.runtime(), Some(1));
    assert!(!names(&c).contains(&"metrics-exporter".to_string()));
    press(&mut c, "R");
    assert_eq!(names(&c), ["metrics-exporter"]);
    press(&mut c, "R");
    assert_eq!(c.runtime(), None, "wraps to all");
}

#[test]
fn d_exports_the_cycle_as_graphviz() {
    let mut c = live_console(&app_state());
    let effects = press(&mut c, "D");
    let Some(Effect::WriteDot { path, contents }) = effects.last() else {
        panic!("no .dot to write: {effects:?}");
    };
    assert_eq!(path.extension().and_then(|e| e.to_str()), Some("dot"));
    assert!(contents.starts_with("digraph"), "{contents}");
    assert!(contents.contains("transfer-a-to-b"), "{contents}");
    assert!(contents.contains("transfer-b-to-a"), "{contents}");

    // Without a cycle there is nothing to write, and the user is told.
    let mut state = app_state();
    state.edges.retain(|e| e.task_id != 4);
    let mut c = live_console(&state);
    assert_eq!(press(&mut c, "D"), [Effect::None]);
    assert_eq!(c.message(), Some("no deadlock cycle to export"));
}

#[test]
fn reconnect_status_and_a_new_connection_start_fresh() {
    let mut c = live_console(&app_state());
    c.disconnected(3, Duration::from_millis(400), "lost the connection");
    assert_eq!(
        c.connection(),
        &Connection::Reconnecting {
            attempt: 3,
            retry_in: Duration::from_millis(400),
            error: "lost the connection".into()
        }
    );
    assert!(c.model().tasks.len() > 1, "the last state stays visible");
    c.apply_event(WatchEvent::Connected {
        protocol: Protocol::ConsoleApi,
    });
    assert_eq!(
        c.connection(),
        &Connection::Connected {
            protocol: Protocol::ConsoleApi
        }
    );
    c.refresh();
    assert_eq!(
        c.task_rows().len(),
        0,
        "a reconnect waits for the new state"
    );
}

#[test]
fn replay_plays_seeks_and_every_view_reads_the_replayed_state() {
    // Second by second, one new task per update.
    let base = app_state();
    let mut updates = full_updates(&base);
    for i in 0..20u64 {
        let t = task(300 + i, &format!("job-{i}"), 100, TaskState::Idle);
        updates.push(delta(&[t], Timestamp(NOW.0 + (i + 1) * SEC)));
    }
    let mut c = ConsoleState::replay("shop.tsrec", Timeline::new(updates));
    c.refresh();
    let n0 = base.tasks.len();
    assert_eq!(c.task_rows().len(), n0, "opens on the first full state");
    assert!(!c.is_paused(), "plays at once");
    c.advance(Duration::from_millis(3_500));
    c.refresh();
    assert_eq!(c.task_rows().len(), n0 + 3);
    press(&mut c, " ");
    assert!(c.is_paused());
    c.advance(Duration::from_secs(5));
    c.refresh();
    assert_eq!(c.task_rows().len(), n0 + 3, "paused: time stands still");
    press(&mut c, "→"); // +5 s
    assert_eq!(c.task_rows().len(), n0 + 8);
    press(&mut c, ",,"); // two updates back
    assert_eq!(c.task_rows().len(), n0 + 6);
    press(&mut c, "←");
    assert_eq!(c.task_rows().len(), n0 + 1);
    press(&mut c, "++");
    assert_eq!(c.timeline().map(Timeline::speed), Some(4.0));
    // Views work on the replayed state: the cycle is found there too.
    assert!(c.deadlock().is_some());
    press(&mut c, "/job-⏎");
    assert_eq!(names(&c), ["job-0"]);
    press(&mut c, "⏎");
    assert_eq!(
        c.screen(),
        Screen::Task {
            id: 300,
            selected: 0
        }
    );
    assert_eq!(act(&mut c, Action::Quit), Effect::Quit);
}
