//! End to end: an app that links taskscope's instrumentation keeps a task
//! registry whose self-describing header lives in the `taskscope_registry`
//! linker section. From a real core, `taskscope dump` must read task names,
//! the parent task and poll counts from it — with a `strip`ped binary (no
//! symbols, no DWARF) and, with DWARF, merged into the decoded tokio tasks
//! by task id. Expected lines come from `// AWAIT:` / `// SPAWN:` markers and
//! the poll count from the fixture's `WORKER_YIELDS` constant.

mod support;

use std::collections::HashMap;
use std::path::Path;

use taskscope_dump::registry::InstrumentedTask;
use taskscope_dump::report::Report;

fn markers(source: &Path, tag: &str) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(source).expect("read fixture source");
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some((_, name)) = line.split_once(tag) {
            out.insert(name.trim().to_string(), i as u64 + 1);
        }
    }
    out
}

/// `const WORKER_YIELDS: u32 = N;` in the fixture source.
fn worker_yields(source: &Path) -> u64 {
    let text = std::fs::read_to_string(source).expect("read fixture source");
    text.lines()
        .find_map(|l| l.strip_prefix("const WORKER_YIELDS: u32 = "))
        .and_then(|v| v.trim_end_matches(';').parse().ok())
        .expect("WORKER_YIELDS in the fixture")
}

fn text_of(report: &Report) -> String {
    let mut v = Vec::new();
    report.write_text(&mut v, false).expect("render");
    String::from_utf8_lossy(&v).into_owned()
}

fn named<'r>(report: &'r Report, name: &str) -> &'r InstrumentedTask {
    report
        .instrumented
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no task named {name}:\n{}", text_of(report)))
}

/// What the registry must say, whatever else the binary offers.
fn check_registry(report: &Report, yields: u64, spawns: &HashMap<String, u64>) -> (u64, u64) {
    let text = text_of(report);
    let sup = named(report, "supervisor");
    let worker = named(report, "worker");
    let (Some(sup_id), Some(worker_id)) = (sup.tokio_id, worker.tokio_id) else {
        panic!("tokio ids missing from the registry:\n{text}");
    };
    assert_eq!(
        worker.polls,
        yields + 1,
        "one poll per yield, plus the last:\n{text}"
    );
    assert_eq!(
        sup.polls, 1,
        "spawns, then parks on the JoinHandle:\n{text}"
    );
    assert_eq!(worker.state, "idle", "{text}");
    assert_eq!(worker.kind, "task", "{text}");
    assert_eq!(worker.parent_id, Some(sup.id), "{text}");
    assert_eq!(worker.parent_tokio_id, Some(sup_id), "{text}");
    assert_eq!(worker.parent_name.as_deref(), Some("supervisor"), "{text}");
    for (t, marker) in [(worker, "worker"), (sup, "supervisor")] {
        let at = t
            .spawned_at
            .as_ref()
            .unwrap_or_else(|| panic!("{marker}: no spawn location:\n{text}"));
        assert!(at.file.ends_with("src/main.rs"), "{text}");
        assert_eq!(at.line, spawns[marker], "{marker} spawn line:\n{text}");
    }
    // What the user reads.
    assert!(
        text.contains(&format!("task {worker_id} \"worker\"",)),
        "{text}"
    );
    assert!(
        text.contains(&format!("spawned by task {sup_id} \"supervisor\"")),
        "{text}"
    );
    assert!(text.contains(&format!("{} poll(s)", yields + 1)), "{text}");
    (sup_id, worker_id)
}

#[test]
fn registry_names_parents_and_polls_with_and_without_dwarf() {
    if !support::have_gcore() {
        return;
    }
    let (bin, source) = support::instrumented_fixture();
    let awaits = support::await_markers(&source);
    let spawns = markers(&source, "// SPAWN: ");
    let yields = worker_yields(&source);
    let stuck = support::run_until_ready(&bin, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let core = support::gcore(stuck.child.id(), dir.path());
    drop(stuck);

    // Stripped: no symbols, no DWARF; the section survives.
    let stripped = dir.path().join("instrumented-stripped");
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status()
        .expect("run strip");
    assert!(status.success());
    let report = taskscope_dump::analyze_core(&core, Some(&stripped)).expect("partial report");
    let text = text_of(&report);
    assert!(report.partial, "no DWARF is reported:\n{text}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("debug = true") && w.contains("registry")),
        "{:?}",
        report.warnings
    );
    assert!(report.tasks.is_empty(), "no DWARF, no decoded chains");
    // The six named tasks, the two `forgetful` wrappers, the block_on
    // future and the two worker threads (tokio runs them as blocking tasks).
    assert!(
        text.contains("Instrumented tasks (11, from taskscope's registry)"),
        "{text}"
    );
    assert!(
        report
            .instrumented
            .iter()
            .any(|t| t.kind == "block_on" && t.polls >= 1),
        "{text}"
    );
    let (sup_id, worker_id) = check_registry(&report, yields, &spawns);

    // With DWARF: the same facts, merged into the decoded tokio tasks.
    let report = taskscope_dump::analyze_core(&core, None).expect("full report");
    let text = text_of(&report);
    assert!(!report.partial, "{:?}", report.warnings);
    assert_eq!(
        check_registry(&report, yields, &spawns),
        (sup_id, worker_id)
    );
    let task = |id: u64| {
        report
            .tasks
            .iter()
            .find(|t| t.id == Some(id))
            .unwrap_or_else(|| panic!("tokio task {id} not decoded:\n{text}"))
    };
    let worker = task(worker_id);
    let merged = worker
        .instrumented
        .as_ref()
        .unwrap_or_else(|| panic!("registry not merged into task {worker_id}:\n{text}"));
    assert_eq!(merged.name.as_deref(), Some("worker"));
    assert_eq!(merged.polls, yields + 1);
    // tokio's `tracing` feature wraps each task in `Instrumented`; the
    // async fn sits just inside.
    let frame = worker
        .chain
        .frames
        .iter()
        .find(|f| f.function == "instrumented::worker")
        .unwrap_or_else(|| panic!("worker's async fn frame:\n{text}"));
    assert_eq!(
        frame.location.as_ref().map(|l| l.line),
        Some(awaits["worker_parked"]),
        "{text}"
    );
    // The block_on future was polled: the polled copy is reported, not a
    // moved-from one left in an outer frame.
    let main = report
        .block_on
        .iter()
        .find(|b| b.future_type.starts_with("instrumented::main"))
        .unwrap_or_else(|| panic!("block_on future of main:\n{text}"));
    assert_eq!(
        main.chain.frames[0].location.as_ref().map(|l| l.line),
        Some(awaits["main_pending"]),
        "{text}"
    );
    // taskscope's block_on record is matched to it by its spawn line, a
    // line of the main thread's stack.
    let record = main
        .instrumented
        .as_ref()
        .unwrap_or_else(|| panic!("block_on record not matched:\n{text}"));
    assert_eq!(record.kind, "block_on");
    assert!(record.polls >= 1, "{text}");
    let sup = task(sup_id);
    assert_eq!(
        sup.instrumented.as_ref().and_then(|i| i.name.as_deref()),
        Some("supervisor")
    );
    assert_eq!(sup.joined_task_id, Some(worker_id), "{text}");
    // `worker` parks on `pending()`, which drops its waker: a lost waker,
    // and the registry's waker counts back the evidence.
    let lost = report
        .hazards
        .iter()
        .find(|h| h.kind == "lost-waker" && h.tasks.contains(&worker_id))
        .unwrap_or_else(|| panic!("lost waker of worker:\n{text}"));
    assert_eq!(lost.tasks, vec![worker_id], "{text}");
    assert!(
        lost.evidence
            .iter()
            .any(|e| e.contains("taskscope's registry counted") && e.contains("none alive")),
        "{text}"
    );
    // Merged tasks are shown once, with their chain, not again below.
    // Left there: the worker threads, which tokio runs as blocking tasks
    // (kept in no runtime's task list), and the two `forgetful` wrappers.
    let rest = text
        .split_once("Instrumented tasks (4, from taskscope's registry)")
        .and_then(|(_, rest)| rest.split_once("Block-on futures"))
        .map(|(section, _)| section)
        .unwrap_or_else(|| panic!("unmerged registry tasks are listed:\n{text}"));
    assert!(!rest.contains("\"worker\""), "{text}");
    assert!(
        text.contains(&format!("task {worker_id} \"worker\"  idle")),
        "{text}"
    );
}
