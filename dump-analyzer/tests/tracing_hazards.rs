//! End to end, on a real core of an app built the way real apps are: tokio
//! with its `tracing` feature under `tokio_unstable` (every task's future is
//! a `tracing::instrument::Instrumented<…>`) and taskscope linked in. Two
//! tasks deadlock on each other's mutex with guards that shadow the `Arc`
//! they came from (a local rustc's debug info does not describe), and a
//! future wrapped with `taskscope::instrument` loses its waker while the
//! wrapper still keeps a copy of it. The dump must report the cycle, who
//! holds what, and the lost waker, with the lines of the fixture's
//! `// AWAIT:` markers.

mod support;

use taskscope_dump::report::{Report, TaskReport};

fn text_of(report: &Report) -> String {
    let mut v = Vec::new();
    report.write_text(&mut v, false).expect("render");
    String::from_utf8_lossy(&v).into_owned()
}

fn named<'r>(report: &'r Report, name: &str, text: &str) -> &'r TaskReport {
    report
        .tasks
        .iter()
        .find(|t| t.instrumented.as_ref().and_then(|i| i.name.as_deref()) == Some(name))
        .unwrap_or_else(|| panic!("no decoded task named {name}:\n{text}"))
}

#[test]
fn shadowed_guards_deadlock_and_wrapped_lost_waker_through_instrumented() {
    if !support::have_gcore() {
        return;
    }
    let (bin, source) = support::instrumented_fixture();
    let awaits = support::await_markers(&source);
    let stuck = support::run_until_ready(&bin, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let core = support::gcore(stuck.child.id(), dir.path());
    drop(stuck);

    let report = taskscope_dump::analyze_core(&core, None).expect("report");
    let text = text_of(&report);
    assert!(!report.partial, "{:?}", report.warnings);

    let ab = named(&report, "transfer-a-to-b", &text);
    let ba = named(&report, "transfer-b-to-a", &text);
    let (Some(ab_id), Some(ba_id)) = (ab.id, ba.id) else {
        panic!("transfer tasks without ids:\n{text}");
    };
    for t in [ab, ba] {
        assert!(
            t.future_type
                .as_deref()
                .is_some_and(|f| f.starts_with("tracing::instrument::Instrumented<")),
            "tokio's tracing feature wraps the task:\n{text}"
        );
        assert_eq!(
            t.await_point().map(|l| l.line),
            Some(awaits["transfer_second_lock"]),
            "{text}"
        );
        let leaf = t.chain.leaf.as_ref().expect("leaf");
        assert_eq!(leaf.kind, "mutex-lock", "{text}");
    }
    // Each holds the mutex the other waits for (the guard found although
    // the debug info lost the shadowed local).
    let waits = |t: &TaskReport| t.chain.leaf.as_ref().and_then(|l| l.resource);
    assert_eq!(
        ab.held_mutexes(),
        waits(ba).into_iter().collect::<Vec<_>>(),
        "{text}"
    );
    assert_eq!(
        ba.held_mutexes(),
        waits(ab).into_iter().collect::<Vec<_>>(),
        "{text}"
    );
    assert!(text.contains("holds tokio::sync::Mutex"), "{text}");

    let cycle = report
        .hazards
        .iter()
        .find(|h| h.kind == "deadlock-cycle")
        .unwrap_or_else(|| panic!("no deadlock cycle:\n{text}"));
    let mut members = cycle.tasks.clone();
    members.sort_unstable();
    let mut expected = vec![ab_id, ba_id];
    expected.sort_unstable();
    assert_eq!(members, expected, "{text}");
    let line = format!("src/main.rs:{}", awaits["transfer_second_lock"]);
    assert!(
        cycle
            .evidence
            .iter()
            .any(|e| e.contains("\"transfer-a-to-b\"") && e.contains(&line)),
        "the cycle names the tasks and their await:\n{text}"
    );
    let held = report
        .hazards
        .iter()
        .filter(|h| h.kind == "lock-held-by-other-task")
        .count();
    assert_eq!(held, 2, "{text}");

    // The wrapped futures that forget their waker (one with state, one
    // zero-sized: then the wrapper ends the chain).
    for name in ["forgetful", "forgetful-zst"] {
        let forgetful = named(&report, name, &text);
        let id = forgetful.id.expect("forgetful's id");
        assert_eq!(
            forgetful.state.ref_count, 2,
            "the owned-task list and the wrapper's own copy of the waker:\n{text}"
        );
        let lost = report
            .hazards
            .iter()
            .find(|h| h.kind == "lost-waker" && h.tasks == vec![id])
            .unwrap_or_else(|| panic!("lost waker of {name}:\n{text}"));
        assert!(
            lost.evidence
                .iter()
                .any(|e| e.contains("nothing outside the task can reach it")),
            "{text}"
        );
        assert!(
            lost.evidence
                .iter()
                .any(|e| e.contains(&format!("wrapper \"{name}\"")) && e.contains("none alive")),
            "{text}"
        );
    }
    // Nothing else is a lost waker: the deadlocked tasks' wakers sit in
    // the mutexes' wait lists.
    assert!(
        !report
            .hazards
            .iter()
            .any(|h| h.kind == "lost-waker"
                && (h.tasks.contains(&ab_id) || h.tasks.contains(&ba_id))),
        "{text}"
    );
}
