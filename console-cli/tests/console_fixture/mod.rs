//! A synthetic but realistic app state for the console tests: two
//! runtimes, a producer/consumer pair over a channel, two transfers
//! deadlocked on each other's Mutex (edges old enough for the detector), a
//! blocking poll, a lost waker, a cancelled task, backtraces and
//! histograms. Every time is fixed, so screens are deterministic.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::time::Duration;

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use taskscope_cli::client::{Protocol, WatchEvent};
use taskscope_cli::console::state::{Action, ConsoleState};
use taskscope_cli::console::{input, view};
use taskscope_wire::histogram::Histogram;
use taskscope_wire::model::{
    EdgeKind, Frame, Location, ProcessInfo, Resource, Runtime, RuntimeFlavor, State, Task,
    TaskState, Timestamp, WaitEdge,
};
use taskscope_wire::proto;
use taskscope_wire::state::full_state_updates;

pub const SEC: u64 = 1_000_000_000;
pub const NOW: Timestamp = Timestamp(1_700_000_000 * SEC);
pub const TARGET: &str = "http://127.0.0.1:6669";

pub fn ago(secs: f64) -> Timestamp {
    Timestamp(NOW.0 - (secs * SEC as f64) as u64)
}

fn loc(file: &str, line: u32) -> Option<Location> {
    Some(Location::new(file, line, 5))
}

pub fn task(id: u64, name: &str, line: u32, state: TaskState) -> Task {
    Task {
        id,
        name: Some(name.to_string()),
        kind: "task".into(),
        runtime_id: Some(1),
        location: loc("src/main.rs", line),
        state,
        polls: id * 3,
        busy_ns: id * 1_000_000,
        scheduled_ns: id * 100_000,
        idle_ns: 60 * SEC - id * 1_100_000,
        created_at: Some(ago(60.0)),
        last_poll_started: Some(ago(5.1)),
        last_poll_ended: Some(ago(5.0)),
        last_wake: Some(ago(5.2)),
        wakes: id * 3,
        waker_clones: 1,
        waker_drops: 0,
        max_poll_ns: 80_000,
        ..Task::default()
    }
}

fn histogram(samples: &[(u64, u64)]) -> Histogram {
    let mut h = Histogram::default();
    for &(ns, n) in samples {
        h.record_n(ns, n);
    }
    h
}

/// The app state every console test starts from.
pub fn app_state() -> State {
    let mut tasks = BTreeMap::new();
    let mut add = |t: Task| {
        tasks.insert(t.id, t);
    };
    let mut producer = task(1, "producer", 40, TaskState::Idle);
    producer.backtrace = vec![Frame {
        name: "produce_orders".into(),
        location: loc("src/orders.rs", 12),
        detail: "awaiting mpsc::Sender::send".into(),
    }];
    add(producer);
    let mut consumer = task(2, "consumer", 41, TaskState::Idle);
    consumer.parent_id = Some(1);
    consumer.backtrace = vec![
        Frame {
            name: "handle_order".into(),
            location: loc("src/orders.rs", 30),
            detail: "order.id=7".into(),
        },
        Frame {
            name: "check_stock".into(),
            location: loc("src/stock.rs", 8),
            detail: String::new(),
        },
        Frame {
            name: "reserve_stock".into(),
            location: loc("src/stock.rs", 20),
            detail: "awaiting Sleep".into(),
        },
    ];
    consumer.max_poll_ns = 250_000;
    consumer.poll_histogram = Some(histogram(&[(20_000, 40), (60_000, 25), (250_000, 5)]));
    consumer.scheduled_histogram = Some(histogram(&[(5_000, 50), (40_000, 20)]));
    consumer
        .fields
        .insert("shard".to_string(), "eu-west".to_string());
    add(consumer);
    add(task(3, "transfer-a-to-b", 50, TaskState::Idle));
    add(task(4, "transfer-b-to-a", 51, TaskState::Idle));
    let mut renderer = task(5, "report-renderer", 60, TaskState::Idle);
    renderer.max_poll_ns = 200 * 1_000_000;
    renderer.poll_histogram = Some(histogram(&[(30_000, 10), (200_000_000, 3)]));
    add(renderer);
    let mut lost = task(6, "lost-waker", 70, TaskState::Idle);
    lost.kind = "wrapped".into();
    lost.polls = 1;
    lost.waker_clones = 0;
    lost.wakes = 0;
    lost.last_wake = None;
    lost.last_poll_ended = Some(ago(30.0));
    lost.last_poll_started = Some(ago(30.1));
    add(lost);
    let mut doomed = task(7, "doomed-download", 80, TaskState::Cancelled);
    doomed.completed_at = Some(ago(2.0));
    doomed.polls = 1;
    add(doomed);
    let mut other = task(8, "metrics-exporter", 90, TaskState::Scheduled);
    other.runtime_id = Some(2);
    other.location = loc("src/metrics.rs", 15);
    add(other);

    let mut resources = BTreeMap::new();
    for (id, ty, line) in [(10, "Mutex", 20), (11, "Mutex", 21)] {
        resources.insert(
            id,
            Resource {
                id,
                kind: "Sync".into(),
                concrete_type: ty.into(),
                location: loc("src/bank.rs", line),
                attributes: [("locked".to_string(), "true".to_string())].into(),
                ..Resource::default()
            },
        );
    }
    resources.insert(
        12,
        Resource {
            id: 12,
            kind: "Sync".into(),
            concrete_type: "Sender|Receiver".into(),
            location: loc("src/orders.rs", 5),
            attributes: [("capacity".to_string(), "8".to_string())].into(),
            ..Resource::default()
        },
    );
    let edge = |task_id, resource_id, kind, op: &str, secs| WaitEdge {
        task_id,
        resource_id,
        kind,
        op: op.into(),
        since: Some(ago(secs)),
    };
    let edges = vec![
        edge(3, 10, EdgeKind::Holds, "lock", 58.0),
        edge(3, 11, EdgeKind::Waits, "lock", 57.0),
        edge(4, 11, EdgeKind::Holds, "lock", 58.0),
        edge(4, 10, EdgeKind::Waits, "lock", 57.0),
        edge(1, 12, EdgeKind::Waits, "send", 0.2),
        edge(2, 12, EdgeKind::Frees, "recv", 0.2),
    ];
    State {
        process: Some(ProcessInfo {
            pid: 4242,
            executable: "shop".into(),
            sources: vec!["tracing".into()],
            runtimes: vec![
                Runtime {
                    id: 1,
                    name: "main".into(),
                    flavor: RuntimeFlavor::MultiThread,
                    workers: 4,
                    ..Runtime::default()
                },
                Runtime {
                    id: 2,
                    name: "metrics".into(),
                    flavor: RuntimeFlavor::CurrentThread,
                    workers: 1,
                    ..Runtime::default()
                },
            ],
            ..ProcessInfo::default()
        }),
        tasks,
        resources,
        edges,
        updated_at: Some(NOW),
        ..State::default()
    }
}

/// `state` as the taskscope.v1 full-state updates a server would send.
pub fn full_updates(state: &State) -> Vec<proto::Update> {
    full_state_updates(state, state.updated_at.unwrap_or(NOW), 0)
}

/// A console connected to a live taskscope.v1 target showing `state`.
pub fn live_console(state: &State) -> ConsoleState {
    let mut console = ConsoleState::live(TARGET);
    console.apply_event(WatchEvent::Connected {
        protocol: Protocol::Taskscope,
    });
    for u in full_updates(state) {
        console.apply_event(WatchEvent::Taskscope(Box::new(u)));
    }
    console.refresh();
    console
}

/// A delta update replacing `tasks`, at `at`.
pub fn delta(tasks: &[Task], at: Timestamp) -> proto::Update {
    proto::Update {
        at: Some(at.into()),
        tasks: tasks.iter().map(proto::Task::from).collect(),
        ..proto::Update::default()
    }
}

/// Types `keys` (each char a key press; `⏎` Enter, `⎋` Esc, `↓` `↑` arrows,
/// `←` `→` seek) through the real key map.
pub fn press(console: &mut ConsoleState, keys: &str) -> Vec<taskscope_cli::console::Effect> {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    let mut effects = Vec::new();
    for c in keys.chars() {
        let code = match c {
            '⏎' => KeyCode::Enter,
            '⎋' => KeyCode::Esc,
            '↓' => KeyCode::Down,
            '↑' => KeyCode::Up,
            '←' => KeyCode::Left,
            '→' => KeyCode::Right,
            '⌫' => KeyCode::Backspace,
            c => KeyCode::Char(c),
        };
        let key = KeyEvent::new(code, KeyModifiers::NONE);
        let replay = console.timeline().is_some();
        if let Some(action) = input::action_for(key, console.input_mode(), replay) {
            effects.push(console.apply(action));
        }
    }
    effects
}

/// Applies `action` directly.
pub fn act(console: &mut ConsoleState, action: Action) -> taskscope_cli::console::Effect {
    console.apply(action)
}

/// The screen as text, one line per row, trailing spaces trimmed.
pub fn screen(console: &mut ConsoleState, width: u16, height: u16) -> String {
    console.refresh();
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a TestBackend");
    terminal
        .draw(|f| view::draw(console, f.area(), f.buffer_mut()))
        .expect("drawing into a TestBackend");
    let buf = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long replay tests let the clock run.
pub const TICK: Duration = Duration::from_millis(500);
