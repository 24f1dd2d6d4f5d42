//! The hazard detectors through their public API: a whole program's state
//! with planted hazards and healthy twins, configuration files, Graphviz
//! export, fingerprint stability across ticks, and the cost at 100k tasks.

use std::collections::BTreeSet;
use std::time::Instant;

use taskscope_wire::hazards::{self, cycle_dot, detect, Catalogue, HazardConfig, HazardKind};
use taskscope_wire::histogram::Histogram;
use taskscope_wire::model::{
    EdgeKind, Hazard, Location, ProcessInfo, Resource, Runtime, RuntimeFlavor, Severity, State,
    Task, TaskState, Timestamp, WaitEdge,
};

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const NOW: Timestamp = Timestamp(1_750_000_000 * SEC);

fn ago(ns: u64) -> Timestamp {
    Timestamp(NOW.0 - ns)
}

fn process() -> ProcessInfo {
    ProcessInfo {
        pid: 4242,
        executable: "/srv/app".into(),
        sources: vec!["tracing".into()],
        runtimes: vec![Runtime {
            id: 1,
            name: "main".into(),
            flavor: RuntimeFlavor::MultiThread,
            workers: 4,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A healthy task: parked on something that holds its waker.
fn healthy(id: u64) -> Task {
    let mut poll = Histogram::default();
    poll.record_n(40_000, 20);
    Task {
        id,
        runtime_id: Some(1),
        name: Some(format!("conn-{id}")),
        kind: "task".into(),
        location: Some(Location::new("src/server.rs", 40 + (id % 7) as u32, 13)),
        state: TaskState::Idle,
        polls: 20,
        wakes: 19,
        self_wakes: 1,
        waker_clones: 20,
        waker_drops: 19,
        busy_ns: 800_000,
        max_poll_ns: 90_000,
        future_size: Some(1_024),
        original_future_size: Some(1_024),
        created_at: Some(ago(30 * SEC)),
        last_wake: Some(ago(3 * SEC)),
        last_poll_started: Some(ago(3 * SEC - MS)),
        last_poll_ended: Some(ago(3 * SEC - MS - 40_000)),
        poll_histogram: Some(poll),
        ..Default::default()
    }
}

fn mutex(id: u64, line: u32) -> Resource {
    Resource {
        id,
        kind: "Sync".into(),
        concrete_type: "Mutex".into(),
        location: Some(Location::new("src/state.rs", line, 17)),
        ..Default::default()
    }
}

fn edge(task: u64, resource: u64, kind: EdgeKind, since: Timestamp) -> WaitEdge {
    WaitEdge {
        task_id: task,
        resource_id: resource,
        kind,
        op: if kind == EdgeKind::Waits {
            "lock".into()
        } else {
            "guard".into()
        },
        since: Some(since),
    }
}

/// A program with one of every live-detectable hazard and a healthy twin
/// next to each.
fn program() -> State {
    let mut s = State {
        process: Some(process()),
        updated_at: Some(NOW),
        ..Default::default()
    };
    let mut put = |t: Task| {
        s.tasks.insert(t.id, t);
    };
    for id in 1..=50 {
        put(healthy(id));
    }

    // lost-waker: a hand-written stream returned Pending without the waker.
    let mut t = healthy(100);
    t.name = Some("ticker".into());
    t.waker_clones = 0;
    t.waker_drops = 0;
    t.backtrace = vec![taskscope_wire::model::Frame {
        name: "Ticker::poll_next".into(),
        location: Some(Location::new("src/ticker.rs", 57, 9)),
        detail: String::new(),
    }];
    put(t);
    // twin (tokio-rs/console#345): same counts, but it spawned a detached
    // child that is still running and awaits its JoinHandle.
    let mut t = healthy(101);
    t.name = Some("supervisor".into());
    t.waker_clones = 0;
    t.waker_drops = 0;
    put(t);
    let mut child = healthy(102);
    child.parent_id = Some(101);
    child.name = Some("worker".into());
    put(child);

    // blocking-poll, and the scheduling delay it caused right now.
    let mut t = healthy(110);
    t.name = Some("report".into());
    t.state = TaskState::Running;
    t.polls = 7;
    t.last_poll_started = Some(ago(400 * MS));
    t.last_poll_location = Some(Location::new("src/report.rs", 88, 21));
    put(t);
    let mut t = healthy(111);
    t.state = TaskState::Scheduled;
    t.last_wake = Some(ago(300 * MS));
    put(t);
    // twin: woken 2 ms ago, not starved.
    let mut t = healthy(112);
    t.state = TaskState::Scheduled;
    t.last_wake = Some(ago(2 * MS));
    put(t);

    // never-yielded; twin: a long-lived task that yields.
    let mut t = healthy(120);
    t.name = Some("crunch".into());
    t.state = TaskState::Running;
    t.polls = 1;
    t.runtime_id = Some(9); // alone on its runtime: no scheduling delay
    t.last_poll_ended = None;
    t.last_poll_started = Some(ago(3 * SEC));
    put(t);
    let mut t = healthy(121);
    t.polls = 90_000;
    t.busy_ns = 120 * SEC;
    put(t);

    // self-wake-loop; twin: woken by others.
    let mut t = healthy(130);
    t.name = Some("spinner".into());
    t.wakes = 10_000;
    t.self_wakes = 9_990;
    put(t);

    // deadlock: 140 holds m1 waits m2, 141 holds m2 waits m1.
    // twin chain: 143 waits m3 held by 144, which waits on nothing.
    for id in [140, 141, 143, 144] {
        put(healthy(id));
    }
    s.resources.insert(1001, mutex(1001, 10));
    s.resources.insert(1002, mutex(1002, 11));
    s.resources.insert(1003, mutex(1003, 12));
    s.edges.extend([
        edge(140, 1001, EdgeKind::Holds, ago(9 * SEC)),
        edge(140, 1002, EdgeKind::Waits, ago(8 * SEC)),
        edge(141, 1002, EdgeKind::Holds, ago(9 * SEC)),
        edge(141, 1001, EdgeKind::Waits, ago(8 * SEC)),
        edge(144, 1003, EdgeKind::Holds, ago(SEC)),
        edge(143, 1003, EdgeKind::Waits, ago(SEC)),
    ]);

    // futurelock: 150 holds m4 and waits for it again.
    put(healthy(150));
    s.resources.insert(1004, mutex(1004, 13));
    s.edges.extend([
        edge(150, 1004, EdgeKind::Holds, ago(6 * SEC)),
        edge(150, 1004, EdgeKind::Waits, ago(5 * SEC)),
    ]);

    // large-future (tokio boxed it); twin: small.
    let mut t = healthy(160);
    t.location = Some(Location::new("src/big.rs", 3, 5));
    t.future_size = Some(16);
    t.original_future_size = Some(64 * 1024);
    put(t);

    // cancelled-midway (info); twin: completed.
    let mut t = healthy(170);
    t.state = TaskState::Cancelled;
    t.completed_at = Some(ago(SEC));
    put(t);
    let mut t = healthy(171);
    t.state = TaskState::Completed;
    t.completed_at = Some(ago(SEC));
    put(t);
    s
}

fn by_kind<'a>(found: &'a [Hazard], kind: &str) -> Vec<&'a Hazard> {
    found.iter().filter(|h| h.kind == kind).collect()
}

#[test]
fn every_planted_hazard_is_found_and_no_twin_is() {
    let state = program();
    let found = detect(&state, &HazardConfig::default(), NOW);
    let flagged: BTreeSet<u64> = found
        .iter()
        .flat_map(|h| h.task_ids.iter().copied())
        .collect();
    let expected: BTreeSet<u64> = [100, 110, 111, 120, 130, 140, 141, 150, 160, 170].into();
    assert_eq!(flagged, expected, "{found:#?}");

    let kinds: BTreeSet<&str> = found.iter().map(|h| h.kind.as_str()).collect();
    let expected_kinds: BTreeSet<&str> = [
        "lost-waker",
        "blocking-poll",
        "scheduling-delay",
        "never-yielded",
        "self-wake-loop",
        "deadlock-cycle",
        "futurelock",
        "large-future",
        "cancelled-midway",
    ]
    .into();
    assert_eq!(kinds, expected_kinds);

    let lost = by_kind(&found, "lost-waker");
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].task_ids, [100]);
    assert_eq!(
        lost[0].await_point,
        Some(Location::new("src/ticker.rs", 57, 9))
    );
    assert!(lost[0].summary.contains("`ticker`"), "{}", lost[0].summary);

    let delay = by_kind(&found, "scheduling-delay");
    assert_eq!(delay.len(), 1);
    assert_eq!(
        delay[0].location,
        Some(Location::new("src/report.rs", 88, 21)),
        "points at the poll that held the thread"
    );
    assert!(
        delay[0].summary.contains("`report`"),
        "{}",
        delay[0].summary
    );

    let dl = by_kind(&found, "deadlock-cycle");
    assert_eq!(dl[0].task_ids, [140, 141]);
    assert_eq!(dl[0].resource_ids, [1001, 1002]);
    assert_eq!(dl[0].severity, Severity::Error);

    for h in &found {
        let info = Catalogue.get(&h.kind).expect("every finding is catalogued");
        assert_eq!(h.advice, info.advice);
        assert_eq!(h.doc_anchor, info.doc_anchor);
        assert_eq!(h.detected_at, Some(NOW));
        assert!(!h.summary.is_empty() && !h.evidence.is_empty(), "{h:#?}");
        assert!(h.fingerprint.starts_with(&h.kind), "{}", h.fingerprint);
        assert!(
            h.location.as_ref().is_some_and(Location::is_known),
            "every finding here has a source line: {h:#?}"
        );
    }
}

#[test]
fn fingerprints_are_stable_across_ticks() {
    let state = program();
    let a = detect(&state, &HazardConfig::default(), NOW);
    let b = detect(
        &state,
        &HazardConfig::default(),
        Timestamp(NOW.0 + 500 * MS),
    );
    let fa: Vec<&str> = a.iter().map(|h| h.fingerprint.as_str()).collect();
    let fb: Vec<&str> = b.iter().map(|h| h.fingerprint.as_str()).collect();
    assert_eq!(fa, fb);
    let unique: BTreeSet<&str> = fa.iter().copied().collect();
    assert_eq!(unique.len(), fa.len(), "one finding per situation");
}

#[test]
fn a_deadlock_exports_as_graphviz() {
    let state = program();
    let found = detect(&state, &HazardConfig::default(), NOW);
    let dl = by_kind(&found, "deadlock-cycle")[0];
    let dot = cycle_dot(&state, dl);
    for needle in [
        "\"t140\" [shape=box",
        "\"t141\" [shape=box",
        "\"r1001\" [shape=ellipse, label=\"Mutex #1001\\nsrc/state.rs:10:17\"]",
        "\"t140\" -> \"r1002\" [label=\"waits (lock)\", color=red];",
        "\"r1002\" -> \"t141\" [label=\"held by\"];",
    ] {
        assert!(dot.contains(needle), "missing {needle} in\n{dot}");
    }
    assert!(
        !dot.contains("t143"),
        "the chain twin is not part of the cycle"
    );
}

#[test]
fn config_file_tunes_thresholds_disables_and_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("taskscope.toml");
    std::fs::write(
        &path,
        "[console]\nrefresh_ms = 250\n\n[hazards]\nblocking_poll_ms = 500\ndisable = [\"self-wake-loop\"]\n\n[hazards.severity]\ncancelled-midway = \"warning\"\n",
    )
    .expect("write config");
    let text = std::fs::read_to_string(&path).expect("read config");
    let config = HazardConfig::from_toml_str(&text).expect("valid");
    let found = detect(&program(), &config, NOW);
    assert!(by_kind(&found, "self-wake-loop").is_empty());
    assert!(
        by_kind(&found, "blocking-poll").is_empty(),
        "400 ms < 500 ms"
    );
    assert_eq!(
        by_kind(&found, "cancelled-midway")[0].severity,
        Severity::Warning
    );

    let err =
        HazardConfig::from_toml_str("[hazards]\nblocking_poll = 5\n").expect_err("unknown key");
    assert!(
        err.to_string().contains("unknown field `blocking_poll`"),
        "{err}"
    );
    let err = HazardConfig::from_toml_str("[hazards]\nblocking_poll_ms = \"10ms\"\n")
        .expect_err("wrong type");
    assert!(
        err.to_string().contains("blocking_poll_ms") || err.to_string().contains("line 2"),
        "{err}"
    );
}

#[test]
fn catalogue_lists_every_kind_with_where_it_can_be_seen() {
    let all = hazards::catalogue();
    assert_eq!(all.len(), HazardKind::ALL.len());
    let static_only: Vec<&str> = all
        .iter()
        .filter(|i| i.detection.static_)
        .map(|i| i.id)
        .collect();
    assert_eq!(static_only, ["multiple-runtimes"]);
    // Post-mortem, the dump analyzer's evidence-based findings.
    let core: Vec<&str> = all
        .iter()
        .filter(|i| i.detection.core)
        .map(|i| i.id)
        .collect();
    assert_eq!(
        core,
        [
            "lost-waker",
            "leaked-task",
            "deadlock-cycle",
            "held-across-await"
        ]
    );
}

/// 100k tasks: 99 % healthy, planted hazards every 1 000 tasks, 50k edges.
fn big_state() -> State {
    let mut s = State {
        process: Some(process()),
        updated_at: Some(NOW),
        ..Default::default()
    };
    for id in 1..=100_000u64 {
        let mut t = healthy(id);
        match id % 1_000 {
            0 => {
                t.waker_clones = 0;
                t.waker_drops = 0;
            }
            1 => t.max_poll_ns = 80 * MS,
            _ => {}
        }
        s.tasks.insert(id, t);
    }
    // Chains of lock waits (no cycles): task 2k waits on the mutex task 2k+1 holds.
    for k in 1..25_000u64 {
        let r = 1_000_000 + k;
        s.resources.insert(r, mutex(r, 1));
        s.edges
            .push(edge(2 * k + 1, r, EdgeKind::Holds, ago(2 * SEC)));
        s.edges.push(edge(2 * k, r, EdgeKind::Waits, ago(2 * SEC)));
    }
    s
}

#[test]
fn one_hundred_thousand_tasks_fast_and_precise() {
    let state = big_state();
    let config = HazardConfig::default();
    // Best of several runs: the machine is shared, the minimum is the cost.
    let mut found = Vec::new();
    let mut took = std::time::Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        found = detect(&state, &config, NOW);
        took = took.min(start.elapsed());
    }
    println!(
        "detect over {} tasks / {} edges: {took:?} (best of 5)",
        state.tasks.len(),
        state.edges.len()
    );

    let lost = by_kind(&found, "lost-waker");
    // ids ≡ 0 mod 1000, except those whose waits make them ambiguous
    // (even ids < 50 000 wait on a mutex).
    let expected_lost: Vec<u64> = (1..=100u64)
        .map(|k| k * 1_000)
        .filter(|id| *id >= 50_000)
        .collect();
    assert_eq!(
        lost.iter().map(|h| h.task_ids[0]).collect::<Vec<_>>(),
        expected_lost
    );
    assert_eq!(by_kind(&found, "blocking-poll").len(), 100);
    assert_eq!(
        found.len(),
        expected_lost.len() + 100,
        "nothing else: {:#?}",
        &found[..found.len().min(5)]
    );

    if cfg!(debug_assertions) {
        assert!(took.as_secs_f64() < 2.0, "debug build took {took:?}");
    } else {
        assert!(took.as_millis() < 50, "release build took {took:?}");
    }
}

#[test]
fn lost_event_storm_is_not_thousands_of_lost_wakers() {
    // tokio-rs/console#237: when waker events are dropped, counts are wrong
    // for everyone; taskscope reports nothing rather than thousands.
    let mut state = big_state();
    for t in state.tasks.values_mut() {
        t.waker_drops = t.waker_clones; // what missing clone events look like
    }
    state.dropped.task_events = 12_345;
    let found = detect(&state, &HazardConfig::default(), NOW);
    assert!(by_kind(&found, "lost-waker").is_empty());
    assert!(by_kind(&found, "waker-dropped-unwoken").is_empty());
}

/// A process at shutdown / in a dump: the hazards that need lifecycle,
/// post-mortem or marker evidence, each next to a clean twin.
fn shutdown_program() -> State {
    let mut p = process();
    p.runtimes[0].dropped_at = Some(ago(SEC));
    p.runtimes.push(Runtime {
        id: 2,
        name: "reqwest-blocking".into(),
        flavor: RuntimeFlavor::CurrentThread,
        workers: 1,
        ..Default::default()
    });
    p.runtimes.push(Runtime {
        id: 3,
        name: "metrics".into(),
        flavor: RuntimeFlavor::CurrentThread,
        workers: 1,
        ..Default::default()
    });
    let mut s = State {
        process: Some(p),
        updated_at: Some(NOW),
        ..Default::default()
    };
    let mut put = |t: Task| {
        s.tasks.insert(t.id, t);
    };
    // Cancelled by the runtime drop (counted once, in the runtime finding);
    // twin: completed before.
    let mut t = healthy(1);
    t.state = TaskState::Cancelled;
    t.completed_at = Some(ago(SEC / 2));
    put(t);
    let mut t = healthy(2);
    t.state = TaskState::Completed;
    t.completed_at = Some(ago(5 * SEC));
    put(t);

    // waker-dropped-unwoken: its oneshot was dropped with its waker.
    let mut t = healthy(10);
    t.runtime_id = Some(2);
    t.waker_drops = t.waker_clones;
    put(t);
    s.resources.insert(
        500,
        Resource {
            id: 500,
            kind: "Sync".into(),
            concrete_type: "oneshot::Receiver".into(),
            dropped_at: Some(ago(2 * SEC)),
            ..Default::default()
        },
    );
    s.edges.push(edge(10, 500, EdgeKind::Waits, ago(3 * SEC)));

    // leaked-task (post-mortem marker), idle 10 minutes; twin idle 10 s.
    let mut t = healthy(20);
    t.runtime_id = Some(3);
    t.last_wake = Some(ago(601 * SEC));
    t.last_poll_started = Some(ago(600 * SEC + MS));
    t.last_poll_ended = Some(ago(600 * SEC));
    t.fields
        .insert(hazards::wakers::WAKER_PATH_FIELD.into(), "none".into());
    put(t);
    let mut t = healthy(21);
    t.runtime_id = Some(3);
    t.fields
        .insert(hazards::wakers::WAKER_PATH_FIELD.into(), "none".into());
    put(t);

    // unpolled wrapped future; twin: polled.
    let mut t = healthy(30);
    t.runtime_id = Some(3);
    t.kind = "wrapped".into();
    t.polls = 0;
    put(t);
    let mut t = healthy(31);
    t.runtime_id = Some(3);
    t.kind = "wrapped".into();
    put(t);

    // nested-runtime and held-across-await markers; twin without markers.
    let mut t = healthy(40);
    t.runtime_id = Some(3);
    t.fields.insert(
        hazards::markers::NESTED_RUNTIME_FIELD.into(),
        "block_on".into(),
    );
    t.fields.insert(
        hazards::markers::NESTED_RUNTIME_LOCATION_FIELD.into(),
        "src/client.rs:19:22".into(),
    );
    t.fields.insert(
        hazards::markers::HELD_ACROSS_AWAIT_FIELD.into(),
        "std::sync::MutexGuard<Cache>".into(),
    );
    t.fields.insert(
        hazards::markers::HELD_ACROSS_AWAIT_LOCATION_FIELD.into(),
        "src/cache.rs:61:40".into(),
    );
    put(t);
    let mut t = healthy(41);
    t.runtime_id = Some(3);
    put(t);
    s
}

#[test]
fn shutdown_post_mortem_and_marker_hazards() {
    let state = shutdown_program();
    let found = detect(&state, &HazardConfig::default(), NOW);
    let summary: Vec<(&str, Vec<u64>)> = found
        .iter()
        .map(|h| (h.kind.as_str(), h.task_ids.clone()))
        .collect();
    let expected: BTreeSet<(&str, Vec<u64>)> = [
        ("runtime-dropped-with-tasks", vec![1]),
        ("waker-dropped-unwoken", vec![10]),
        ("leaked-task", vec![20]),
        ("unpolled-future", vec![30]),
        ("nested-runtime", vec![40]),
        ("held-across-await", vec![40]),
        ("multiple-runtimes", vec![]),
    ]
    .into();
    assert_eq!(
        summary.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{found:#?}"
    );
    assert_eq!(summary.len(), expected.len(), "no duplicates");

    let rt = by_kind(&found, "runtime-dropped-with-tasks")[0];
    assert!(
        rt.summary
            .starts_with("runtime `main` shut down with 1 task still live"),
        "{}",
        rt.summary
    );
    let nested = by_kind(&found, "nested-runtime")[0];
    assert_eq!(
        nested.location,
        Some(Location::new("src/client.rs", 19, 22))
    );
    let multi = by_kind(&found, "multiple-runtimes")[0];
    assert!(
        multi.summary.starts_with("2 async runtimes"),
        "the dropped one is not counted: {}",
        multi.summary
    );
    let dropped = by_kind(&found, "waker-dropped-unwoken")[0];
    assert_eq!(dropped.resource_ids, [500]);
}

#[test]
fn growth_tracker_reports_a_spawn_site_that_keeps_growing() {
    let mut tracker = hazards::GrowthTracker::new();
    let config = HazardConfig::default(); // 60 s window, +100 tasks
    let mut state = State::default();
    let mut next = 0u64;
    for tick in 0..=90u64 {
        // 10 new connection tasks per second, none finish; a steady pool of
        // 50 workers next to them.
        for _ in 0..10 {
            next += 1;
            let mut t = healthy(next);
            t.location = Some(Location::new("src/accept.rs", 22, 9));
            state.tasks.insert(next, t);
        }
        if tick == 0 {
            for id in 1_000_000..1_000_050u64 {
                let mut t = healthy(id);
                t.location = Some(Location::new("src/pool.rs", 5, 5));
                state.tasks.insert(id, t);
            }
        }
        tracker.observe(
            &state,
            config.growth_window_ms,
            Timestamp(NOW.0 + tick * SEC),
        );
    }
    let found = tracker.hazards(&state, &config, Timestamp(NOW.0 + 90 * SEC));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0].location,
        Some(Location::new("src/accept.rs", 22, 9))
    );
    assert_eq!(found[0].kind, "unbounded-growth");
    assert!(
        found[0].summary.contains("grew from 310 to 910"),
        "{}",
        found[0].summary
    );
}
