//! Console frame cost at scale: a model with 1M synthetic tasks (and some
//! resources, edges and hazards), drawn into a 200×60 ratatui `TestBackend`.
//!
//! Prints, as min / median of several runs:
//! * frame: `refresh` (no-op, rows cached) + drawing the task table;
//! * key→frame for a sort key (`8`: by idle time) and for a filter
//!   (`/worker-1.*7` Enter): the action, the row rebuild and one frame;
//! * the first refresh after a new update (the per-update cost);
//! * update→frame on a live console sorted by name: an update that changes
//!   one task (the set of tasks stays), then the refresh and one frame —
//!   what an app whose tasks are mostly parked costs the console each
//!   second.
//!
//! Run: `cargo bench -p taskscope-cli --bench console_frame` (TASKS=100000
//! to change the size). Target: frame ≤ 16 ms.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use taskscope_cli::client::{Protocol, WatchEvent};
use taskscope_cli::console::state::{Action, ConsoleState, TaskColumn};
use taskscope_cli::console::{view, Timeline};
use taskscope_wire::model::{
    EdgeKind, Hazard, Location, Resource, Severity, State, Task, TaskState, Timestamp, WaitEdge,
};
use taskscope_wire::proto;
use taskscope_wire::state::full_state_updates;

const SEC: u64 = 1_000_000_000;

fn synthetic(n: u64) -> State {
    let now = Timestamp(1_700_000_000 * SEC);
    let mut tasks = BTreeMap::new();
    for id in 1..=n {
        let state = match id % 5 {
            0 => TaskState::Running,
            1 => TaskState::Scheduled,
            _ => TaskState::Idle,
        };
        tasks.insert(
            id,
            Task {
                id,
                name: Some(format!("worker-{}-{}", id % 97, id)),
                kind: "task".into(),
                location: Some(Location::new(
                    format!("src/service/handler_{}.rs", id % 13),
                    (id % 500) as u32 + 1,
                    9,
                )),
                state,
                polls: id * 7 % 10_007,
                busy_ns: id * 1_337 % (5 * SEC),
                scheduled_ns: id * 7_919 % SEC,
                idle_ns: id * 104_729 % (60 * SEC),
                created_at: Some(Timestamp(now.0 - (id % 3_600) * SEC)),
                waker_clones: id % 4,
                waker_drops: id % 3,
                ..Task::default()
            },
        );
    }
    let mut resources = BTreeMap::new();
    let mut edges = Vec::new();
    for r in 1..=1_000u64 {
        resources.insert(
            r,
            Resource {
                id: r,
                kind: "Sync".into(),
                concrete_type: "Mutex".into(),
                ..Resource::default()
            },
        );
        edges.push(WaitEdge {
            task_id: r * 3,
            resource_id: r,
            kind: EdgeKind::Holds,
            op: "lock".into(),
            since: None,
        });
        edges.push(WaitEdge {
            task_id: r * 3 + 1,
            resource_id: r,
            kind: EdgeKind::Waits,
            op: "lock".into(),
            since: None,
        });
    }
    let hazards = (0..200u64)
        .map(|i| Hazard {
            kind: "blocking-poll".into(),
            severity: Severity::Warning,
            task_ids: vec![i * 11 + 1],
            summary: format!("task {} blocked its worker", i * 11 + 1),
            fingerprint: format!("blocking-poll:{i}"),
            ..Hazard::default()
        })
        .collect();
    State {
        tasks,
        resources,
        edges,
        hazards,
        updated_at: Some(now),
        ..State::default()
    }
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(v[0]), ms(v[v.len() / 2]))
}

fn main() {
    let n: u64 = std::env::var("TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let started = Instant::now();
    let model = synthetic(n);
    let updates = full_state_updates(&model, model.updated_at.unwrap_or(Timestamp(0)), 0);
    let mut state = ConsoleState::replay("synthetic", Timeline::new(updates));
    let first = Instant::now();
    state.refresh();
    let first_refresh = first.elapsed();
    // Paused: the bench drives the state, not the replay clock.
    state.apply(Action::TogglePause);
    println!(
        "console_frame: {} tasks built in {:.1} s; first refresh (hazard detection, sort, index) {:.1} ms",
        state.model().tasks.len(),
        started.elapsed().as_secs_f64(),
        first_refresh.as_secs_f64() * 1e3
    );

    let mut terminal = match Terminal::new(TestBackend::new(200, 60)) {
        Ok(t) => t,
        Err(e) => panic!("TestBackend: {e}"),
    };
    let mut frame = |state: &mut ConsoleState| {
        let t = Instant::now();
        state.refresh();
        if let Err(e) = terminal.draw(|f| view::draw(state, f.area(), f.buffer_mut())) {
            panic!("draw: {e}");
        }
        t.elapsed()
    };

    let runs = 7;
    let mut frames = Vec::new();
    for _ in 0..runs * 3 {
        state.apply(Action::Down);
        frames.push(frame(&mut state));
    }
    let mut sorts = Vec::new();
    for i in 0..runs {
        let col = if i % 2 == 0 {
            TaskColumn::Idle
        } else {
            TaskColumn::Polls
        };
        let t = Instant::now();
        state.apply(Action::SortBy(col));
        frame(&mut state);
        sorts.push(t.elapsed());
    }
    let mut filters = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        state.apply(Action::StartFilter);
        for c in format!("worker-{}.*7", i % 9 + 1).chars() {
            state.apply(Action::FilterChar(c));
        }
        state.apply(Action::FilterCommit);
        frame(&mut state);
        filters.push(t.elapsed());
        state.apply(Action::Back);
    }
    let at = model.updated_at.unwrap_or(Timestamp(0));
    let mut live = ConsoleState::live("synthetic");
    live.apply_event(WatchEvent::Connected {
        protocol: Protocol::Taskscope,
    });
    for u in full_state_updates(&model, at, 0) {
        live.apply_event(WatchEvent::Taskscope(Box::new(u)));
    }
    live.apply(Action::SortBy(TaskColumn::Name));
    frame(&mut live);
    let mut updates = Vec::new();
    for task in model.tasks.values().cycle().take(runs) {
        let mut changed = task.clone();
        changed.polls += 1;
        let update = proto::Update {
            at: Some(at.into()),
            tasks: vec![proto::Task::from(&changed)],
            ..proto::Update::default()
        };
        let t = Instant::now();
        live.apply_event(WatchEvent::Taskscope(Box::new(update)));
        frame(&mut live);
        updates.push(t.elapsed());
    }
    let (fmin, fmed) = stats(frames);
    let (smin, smed) = stats(sorts);
    let (lmin, lmed) = stats(filters);
    println!(
        "{:<34} {:>9} {:>9}",
        "200x60 TestBackend", "min ms", "median ms"
    );
    println!("{:<34} {:>9.2} {:>9.2}", "frame (task table)", fmin, fmed);
    println!("{:<34} {:>9.2} {:>9.2}", "key→frame: sort", smin, smed);
    println!(
        "{:<34} {:>9.2} {:>9.2}",
        "key→frame: regex filter", lmin, lmed
    );
    let (umin, umed) = stats(updates);
    println!(
        "{:<34} {:>9.2} {:>9.2}",
        "update→frame: same tasks, by name", umin, umed
    );
    println!(
        "frame target ≤ 16 ms: {}",
        if fmed <= 16.0 { "met" } else { "MISSED" }
    );
}
