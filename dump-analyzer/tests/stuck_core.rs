//! End to end: a real tokio program gets stuck in known places, gdb takes a
//! real core, and the report must show every task at its `.await` line
//! (read from `// AWAIT:` markers in the fixture) with the right leaf, the
//! mutex deadlock cycle and the join-handle edge.

mod support;

use std::collections::HashMap;

use taskscope_dump::report::{Report, TaskReport};

fn task_by_fn<'r>(report: &'r Report, function: &str) -> Vec<&'r TaskReport> {
    report
        .tasks
        .iter()
        .filter(|t| {
            t.chain
                .frames
                .first()
                .is_some_and(|f| f.function == function)
        })
        .collect()
}

fn line_of(t: &TaskReport) -> Option<u64> {
    t.chain.frames.first()?.location.as_ref().map(|l| l.line)
}

fn check_report(
    report: &Report,
    markers: &HashMap<String, u64>,
    flavor: &str,
    spawn_locations: bool,
) {
    let text = {
        let mut v = Vec::new();
        report.write_text(&mut v, false).expect("render");
        String::from_utf8_lossy(&v).into_owned()
    };
    assert!(
        !report.partial,
        "unexpected warnings: {:?}",
        report.warnings
    );
    assert_eq!(report.runtimes.len(), 1, "one runtime expected:\n{text}");
    assert_eq!(report.runtimes[0].flavor, flavor, "{text}");
    // tokio < 1.38 keeps no task count (one list behind a mutex).
    assert!(
        matches!(report.runtimes[0].task_count, None | Some(14)),
        "{text}"
    );
    assert_eq!(
        report.tasks.len(),
        14,
        "every spawned task must be listed:\n{text}"
    );
    for t in &report.tasks {
        assert!(t.id.is_some(), "task without id:\n{text}");
        assert_eq!(t.lifecycle, "idle", "{text}");
        assert!(t.future_type.is_some(), "{text}");
        assert_eq!(
            t.spawned_at.is_some(),
            spawn_locations,
            "spawn location (Core.spawned_at: recent tokio under tokio_unstable):\n{text}"
        );
    }

    // Hazards are precise: exactly the hand-written future that drops its
    // waker is a lost waker, and exactly the orphaned Notify is leaked.
    let lost: Vec<_> = report
        .hazards
        .iter()
        .filter(|h| h.kind == "lost-waker")
        .collect();
    let lw = task_by_fn(report, "stuck::lost_waker");
    assert_eq!(lw.len(), 1, "{text}");
    assert_eq!(line_of(lw[0]), Some(markers["lost_waker"]), "{text}");
    assert_eq!(
        lost.len(),
        1,
        "only the forgetful future loses its waker:\n{text}"
    );
    assert_eq!(lost[0].tasks, vec![lw[0].id.unwrap_or_default()], "{text}");
    let leaked: Vec<_> = report
        .hazards
        .iter()
        .filter(|h| h.kind == "leaked-task")
        .collect();
    let orphan = task_by_fn(report, "stuck::orphan_notify");
    assert_eq!(orphan.len(), 1, "{text}");
    assert_eq!(line_of(orphan[0]), Some(markers["orphan"]), "{text}");
    assert_eq!(
        orphan[0].chain.leaf.as_ref().map(|l| l.kind),
        Some("notify"),
        "{text}"
    );
    assert_eq!(leaked.len(), 1, "{text}");
    assert_eq!(
        leaked[0].tasks,
        vec![orphan[0].id.unwrap_or_default()],
        "{text}"
    );

    // The mutex chain a -> b -> c -> a.
    let lockers = task_by_fn(report, "stuck::lock_pair");
    assert_eq!(lockers.len(), 3, "{text}");
    for t in &lockers {
        assert_eq!(line_of(t), Some(markers["lock_second"]), "{text}");
        let leaf = t.chain.leaf.as_ref().expect("leaf");
        assert_eq!(leaf.kind, "mutex-lock", "{text}");
        assert_eq!(
            t.held_mutexes().len(),
            1,
            "each holds its first lock:\n{text}"
        );
    }
    let cycle = report
        .hazards
        .iter()
        .find(|h| h.kind == "deadlock-cycle")
        .unwrap_or_else(|| panic!("deadlock cycle not reported:\n{text}"));
    let mut in_cycle = cycle.tasks.clone();
    in_cycle.sort_unstable();
    let mut expected: Vec<u64> = lockers.iter().filter_map(|t| t.id).collect();
    expected.sort_unstable();
    assert_eq!(in_cycle, expected, "{text}");
    assert_eq!(
        report
            .hazards
            .iter()
            .filter(|h| h.kind == "lock-held-by-other-task")
            .count(),
        3,
        "{text}"
    );

    let expect_leaf = |function: &str, marker: &str, kind: &str| {
        let tasks = task_by_fn(report, function);
        assert_eq!(tasks.len(), 1, "{function}:\n{text}");
        assert_eq!(
            line_of(tasks[0]),
            Some(markers[marker]),
            "{function} await line:\n{text}"
        );
        let leaf = tasks[0]
            .chain
            .leaf
            .as_ref()
            .unwrap_or_else(|| panic!("{function} has no leaf:\n{text}"));
        assert_eq!(leaf.kind, kind, "{function}:\n{text}");
        tasks[0]
    };
    expect_leaf("stuck::fill_channel", "send_full", "mpsc-send");
    expect_leaf("stuck::wait_oneshot", "oneshot_recv", "oneshot-recv");
    let sleeper = expect_leaf("stuck::sleeper", "sleep", "sleep");
    assert!(
        sleeper
            .chain
            .leaf
            .as_ref()
            .and_then(|l| l.deadline_secs)
            .is_some(),
        "{text}"
    );
    // The sleeper sleeps one day from about a second before READY: relative
    // to the runtime's timer clock at the dump, it fires in just under 24 h.
    let left = sleeper
        .chain
        .leaf
        .as_ref()
        .and_then(|l| l.deadline_in_secs)
        .unwrap_or_else(|| panic!("sleep deadline not relative to the dump's time:\n{text}"));
    assert!(
        (86_400.0 - 600.0..=86_400.0).contains(&left),
        "fires in {left}s:\n{text}"
    );
    assert!(text.contains("sleeping: fires in 23h 59m"), "{text}");
    expect_leaf("stuck::timing_out", "timeout", "mpsc-recv");
    expect_leaf("stuck::large_future", "large", "oneshot-recv");
    let joiner = expect_leaf("stuck::joiner", "join_handle", "join-handle");
    assert_eq!(
        joiner.joined_task_id,
        lockers.iter().filter_map(|t| t.id).min(),
        "joined task is the first locker:\n{text}"
    );

    // Box<dyn Future>: the concrete inner async fn is found through the vtable.
    let boxed = task_by_fn(report, "stuck::boxed_dyn");
    assert_eq!(boxed.len(), 1, "{text}");
    assert_eq!(line_of(boxed[0]), Some(markers["boxed_outer"]), "{text}");
    let inner = boxed[0]
        .chain
        .frames
        .iter()
        .find(|f| f.function == "stuck::inner_boxed")
        .unwrap_or_else(|| panic!("dyn Future not resolved:\n{text}"));
    assert_eq!(
        inner.location.as_ref().map(|l| l.line),
        Some(markers["boxed_inner"]),
        "{text}"
    );
    assert_eq!(
        boxed[0].chain.leaf.as_ref().map(|l| l.kind),
        Some("oneshot-recv"),
        "{text}"
    );

    // select!: both branches decoded (recv + sleep).
    let sel = task_by_fn(report, "stuck::selecting");
    assert_eq!(sel.len(), 1, "{text}");
    let kinds: Vec<_> = sel[0].chain.frames[0]
        .branches
        .iter()
        .filter_map(|b| b.leaf.as_ref().map(|l| l.kind))
        .collect();
    assert_eq!(kinds, vec!["mpsc-recv", "sleep"], "{text}");
    // The await inside the macro is reported at the user's `select!` line,
    // not in tokio's macros/select.rs.
    assert_eq!(line_of(sel[0]), Some(markers["select"]), "{text}");
    assert!(
        !text.contains("macros/select.rs") && !text.contains("macros/join.rs"),
        "await points inside tokio's macros map to the user's line:\n{text}"
    );
    // join!: the sleeper branch and the async block awaiting a oneshot.
    let join = task_by_fn(report, "stuck::joining");
    assert_eq!(join.len(), 1, "{text}");
    let kinds: Vec<_> = join[0].chain.frames[0]
        .branches
        .iter()
        .filter_map(|b| b.leaf.as_ref().map(|l| l.kind))
        .collect();
    assert_eq!(kinds, vec!["sleep", "oneshot-recv"], "{text}");
    assert_eq!(line_of(join[0]), Some(markers["join"]), "{text}");
    let block = join[0].chain.frames[0].branches[1]
        .frames
        .iter()
        .find(|f| f.kind == "async block")
        .unwrap_or_else(|| panic!("join! async block missing:\n{text}"));
    assert_eq!(
        block.location.as_ref().map(|l| l.line),
        Some(markers["join"]),
        "{text}"
    );
}

struct Case {
    /// Fixture project (`stuck`, or `stuck-tokio-1.38` with the same source).
    project: &'static str,
    variant: &'static str,
    rustflags: &'static str,
    release: bool,
    flavor_arg: &'static str,
    flavor: &'static str,
    spawn_locations: bool,
}

fn run_case(case: Case) {
    if !support::have_gcore() {
        return;
    }
    let Case {
        project,
        variant,
        rustflags,
        release,
        flavor_arg,
        flavor,
        spawn_locations,
    } = case;
    let bin = support::build_fixture(project, "stuck", variant, rustflags, release);
    let markers = support::await_markers(&support::fixtures_dir().join("stuck/src/main.rs"));
    let stuck = support::run_until_ready(&bin, &[flavor_arg]);
    let dir = tempfile::tempdir().expect("tempdir");
    let core = support::gcore(stuck.child.id(), dir.path());
    drop(stuck);
    // No --exe: the executable is found from the core's NT_FILE note.
    let report = taskscope_dump::analyze_core(&core, None).expect("analyze core");
    check_report(&report, &markers, flavor, spawn_locations);
    // The block_on future is found on the main thread's stack: in debug
    // builds from `block_on`'s frame; in release ones, where block_on is
    // partly inlined, from the location list entry of the inlined call's
    // parameter at the CFI-unwound frame's pc.
    {
        assert_eq!(
            report.block_on.len(),
            1,
            "block_on future: {:#?}",
            report.block_on
        );
        assert_eq!(
            report.block_on[0].located_by,
            if release {
                "frame-scan"
            } else {
                "dwarf-location"
            },
            "{:#?}",
            report.block_on
        );
        let main = &report.block_on[0].chain;
        assert_eq!(main.frames[0].function, "stuck::run");
        assert_eq!(
            main.frames[0].location.as_ref().map(|l| l.line),
            Some(markers["main_pending"])
        );
        assert_eq!(main.leaf.as_ref().map(|l| l.kind), Some("pending"));
        assert!(
            report.threads.iter().any(|t| t
                .frames
                .iter()
                .any(|f| f.function.as_deref() == Some("stuck::main"))),
            "the main thread's stack must unwind (CFI) down to stuck::main"
        );
    }

    // Robustness on the same real core: a truncated copy gives a partial
    // report or a clear error, never a panic.
    let bytes = std::fs::read(&core).expect("read core");
    let cut = dir.path().join("core.truncated");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write truncated core");
    match taskscope_dump::analyze_core(&cut, Some(&bin)) {
        Ok(r) => assert!(
            r.warnings.iter().any(|w| w.contains("truncated")),
            "a truncated core must be reported as such: {:?}",
            r.warnings
        ),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // A core corrupted like one taken mid-mutation: every saved pointer to
    // a task header is replaced, alternately, by a pointer to itself (a
    // cycle in the intrusive lists) and by garbage. The analysis must finish
    // (bounded walks) without panicking, and may only report fewer tasks.
    if variant == "unstable" {
        let headers: std::collections::HashSet<u64> = report
            .tasks
            .iter()
            .filter_map(|t| u64::from_str_radix(t.header.trim_start_matches("0x"), 16).ok())
            .collect();
        let mut corrupt = bytes.clone();
        let mut hits = 0u64;
        let first = headers.iter().copied().min().unwrap_or_default();
        for at in (0..corrupt.len().saturating_sub(8)).step_by(8) {
            let word = u64::from_le_bytes(corrupt[at..at + 8].try_into().unwrap_or_default());
            if headers.contains(&word) {
                hits += 1;
                // Even: every link leads back to the first task (cycles).
                // Odd: a canonical-looking pointer into nowhere.
                let value = if hits.is_multiple_of(2) {
                    first
                } else {
                    (0x4141_4141_4140 ^ (hits << 4)) & 0x7fff_ffff_fff8
                };
                corrupt[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
        assert!(hits > 0, "the core holds pointers to task headers");
        let bad = dir.path().join("core.corrupt");
        std::fs::write(&bad, &corrupt).expect("write corrupt core");
        let started = std::time::Instant::now();
        if let Ok(r) = taskscope_dump::analyze_core(&bad, Some(&bin)) {
            assert!(r.tasks.len() <= 14 * 2 + 1024);
            assert!(r.partial, "damage must be reported: {:?}", r.warnings);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "a corrupt core must not make the analysis run away"
        );
    }
    // A different binary than the one that produced the core.
    let other = std::env::current_exe().expect("test binary");
    let err = taskscope_dump::analyze_core(&core, Some(&other)).expect_err("mismatched binary");
    assert!(err.to_string().contains("build-id"), "{err}");
}

#[test]
fn tokio_latest_multi_thread_with_tokio_unstable() {
    run_case(Case {
        project: "stuck",
        variant: "unstable",
        rustflags: "--cfg tokio_unstable",
        release: false,
        flavor_arg: "multi",
        flavor: "multi-thread",
        spawn_locations: true,
    });
}

#[test]
fn tokio_latest_current_thread_without_tokio_unstable() {
    run_case(Case {
        project: "stuck",
        variant: "stable",
        rustflags: "",
        release: false,
        flavor_arg: "current",
        flavor: "current-thread",
        spawn_locations: false,
    });
}

#[test]
fn tokio_latest_release_with_debug_info_dwarf5() {
    run_case(Case {
        project: "stuck",
        variant: "release-dwarf5",
        rustflags: "-C dwarf-version=5",
        release: true,
        flavor_arg: "multi",
        flavor: "multi-thread",
        spawn_locations: false,
    });
}

#[test]
fn tokio_1_38_lts_multi_thread_with_tokio_unstable() {
    run_case(Case {
        project: "stuck-tokio-1.38",
        variant: "tokio-1.38",
        rustflags: "--cfg tokio_unstable",
        release: false,
        flavor_arg: "multi",
        flavor: "multi-thread",
        spawn_locations: false,
    });
}

#[test]
fn tokio_1_32_oldest_current_thread() {
    run_case(Case {
        project: "stuck-tokio-1.32",
        variant: "tokio-1.32",
        rustflags: "",
        release: false,
        flavor_arg: "current",
        flavor: "current-thread",
        spawn_locations: false,
    });
}

#[test]
fn not_an_elf_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("notacore");
    std::fs::write(&p, b"hello, this is not a core file").expect("write");
    let err = taskscope_dump::analyze_core(&p, None).expect_err("not an ELF");
    assert!(err.to_string().contains("not an ELF"), "{err}");
    // An ELF that is not a core (this test binary).
    let exe = std::env::current_exe().expect("test binary");
    let err = taskscope_dump::analyze_core(&exe, None).expect_err("not a core");
    assert!(err.to_string().contains("not a core"), "{err}");
    // A core of another architecture (e_machine = AArch64).
    let mut bytes = std::fs::read(&exe).expect("read test binary");
    bytes[16] = 4; // ET_CORE
    bytes[17] = 0;
    bytes[18] = 183; // EM_AARCH64
    bytes[19] = 0;
    let arm = dir.path().join("core.aarch64");
    std::fs::write(&arm, &bytes).expect("write");
    let err = taskscope_dump::analyze_core(&arm, None).expect_err("unsupported arch");
    assert!(
        err.to_string().contains("unsupported architecture"),
        "{err}"
    );
}

#[test]
fn stripped_binary_still_lists_threads() {
    if !support::have_gcore() {
        return;
    }
    let bin = support::build_fixture("stuck", "stuck", "unstable", "--cfg tokio_unstable", false);
    let dir = tempfile::tempdir().expect("tempdir");
    let stripped = dir.path().join("stuck-stripped");
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status()
        .expect("run strip");
    assert!(status.success());
    let stuck = support::run_until_ready(&bin, &["multi"]);
    let core = support::gcore(stuck.child.id(), dir.path());
    drop(stuck);
    let report = taskscope_dump::analyze_core(&core, Some(&stripped)).expect("partial report");
    assert!(report.partial);
    assert!(
        report.warnings.iter().any(|w| w.contains("debug = true")),
        "{:?}",
        report.warnings
    );
    assert!(report.tasks.is_empty());
    // .eh_frame survives strip: threads still unwind into libc and the app.
    assert_eq!(
        report.threads.len(),
        4,
        "main + 2 workers + blocking thread"
    );
    assert!(
        report.threads.iter().all(|t| t.frames.len() > 3),
        "{:#?}",
        report.threads
    );
}

#[test]
fn live_process_by_pid_uses_the_same_decoder() {
    if !support::have_gcore() {
        return;
    }
    let bin = support::build_fixture("stuck", "stuck", "unstable", "--cfg tokio_unstable", false);
    let markers = support::await_markers(&support::fixtures_dir().join("stuck/src/main.rs"));
    let stuck = support::run_until_ready(&bin, &["multi"]);
    let target = taskscope_dump::Target::Pid {
        pid: stuck.child.id(),
        exe: None,
    };
    let report = taskscope_dump::analyze(&target, &taskscope_dump::Options::default())
        .expect("analyze live process");
    drop(stuck);
    assert_eq!(report.source.kind, "process");
    check_report(&report, &markers, "multi-thread", true);
    assert_eq!(report.block_on.len(), 1);
}
