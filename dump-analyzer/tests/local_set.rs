//! Tasks outside the runtime's owned list: `spawn_local` tasks of a
//! `LocalSet` (found through the block_on future that drives it), the
//! block_on future itself, and a blocking-pool thread, on a real core.

mod support;

#[test]
fn local_set_block_on_and_blocking_pool() {
    if !support::have_gcore() {
        return;
    }
    let bin = support::build_fixture("local", "local", "stable", "", false);
    let markers = support::await_markers(&support::fixtures_dir().join("local/src/main.rs"));
    let stuck = support::run_until_ready(&bin, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let core = support::gcore(stuck.child.id(), dir.path());
    drop(stuck);
    let report = taskscope_dump::analyze_core(&core, None).expect("analyze");
    let mut text = Vec::new();
    report.write_text(&mut text, false).expect("render");
    let text = String::from_utf8_lossy(&text);

    let flavors: Vec<_> = report.runtimes.iter().map(|r| r.flavor).collect();
    assert_eq!(flavors, vec!["current-thread", "local-set"], "{text}");
    let local_id = &report.runtimes[1].id;
    let local_tasks: Vec<_> = report
        .tasks
        .iter()
        .filter(|t| &t.runtime == local_id)
        .collect();
    assert_eq!(local_tasks.len(), 4, "{text}");
    let find = |f: &str| {
        local_tasks
            .iter()
            .find(|t| t.chain.frames.first().is_some_and(|fr| fr.function == f))
            .unwrap_or_else(|| panic!("{f} missing:\n{text}"))
    };
    let waiter = find("local::local_waiter");
    assert_eq!(
        waiter.await_point().map(|l| l.line),
        Some(markers["local_recv"]),
        "{text}"
    );
    assert_eq!(
        waiter.chain.leaf.as_ref().map(|l| l.kind),
        Some("oneshot-recv"),
        "{text}"
    );
    let sleeper = find("local::local_sleeper");
    assert_eq!(
        sleeper.await_point().map(|l| l.line),
        Some(markers["local_sleep"]),
        "{text}"
    );
    assert_eq!(
        sleeper.chain.leaf.as_ref().map(|l| l.kind),
        Some("sleep"),
        "{text}"
    );

    // tracing's Instrumented wrapper is looked through, down to the Notify.
    let inst = local_tasks
        .iter()
        .find(|t| {
            t.future_type
                .as_deref()
                .is_some_and(|f| f.starts_with("tracing::instrument::Instrumented<"))
        })
        .unwrap_or_else(|| panic!("instrumented task missing:\n{text}"));
    let names: Vec<_> = inst
        .chain
        .frames
        .iter()
        .map(|f| f.function.as_str())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "Instrumented + the async fn, no storage wrappers: {names:?}"
    );
    assert_eq!(names[1], "local::instrumented_wait", "{text}");
    assert_eq!(
        inst.await_point().map(|l| l.line),
        Some(markers["instrumented"]),
        "{text}"
    );
    assert_eq!(
        inst.chain.leaf.as_ref().map(|l| l.kind),
        Some("notify"),
        "{text}"
    );

    // futures' Map combinator: followed through its Incomplete state.
    let mapped = local_tasks
        .iter()
        .find(|t| {
            t.chain
                .frames
                .iter()
                .any(|f| f.function == "local::mapped_wait")
        })
        .unwrap_or_else(|| panic!("mapped task missing:\n{text}"));
    assert!(
        mapped.chain.frames[0]
            .function
            .starts_with("futures_util::future::future::Map<"),
        "{text}"
    );
    assert_eq!(
        mapped.await_point().map(|l| l.line),
        Some(markers["mapped"]),
        "{text}"
    );
    assert_eq!(
        mapped.chain.leaf.as_ref().map(|l| l.kind),
        Some("oneshot-recv"),
        "{text}"
    );

    // The block_on future: LocalSet::run_until around the user's block.
    assert_eq!(report.block_on.len(), 1, "{text}");
    let user = report.block_on[0]
        .chain
        .frames
        .iter()
        .find(|f| f.function == "local::main::{async_block_env#0}")
        .unwrap_or_else(|| panic!("user block missing:\n{text}"));
    assert_eq!(
        user.location.as_ref().map(|l| l.line),
        Some(markers["local_main"]),
        "{text}"
    );

    // The blocking-pool thread names the closure it runs.
    assert!(
        report.threads.iter().any(|t| t
            .role
            .as_deref()
            .is_some_and(|r| r.starts_with("blocking-pool thread running local::main"))),
        "{text}"
    );
}
