//! Rendering shared by every subcommand that prints: text tables whose
//! columns fit their content, human durations, and JSON.
//!
//! Renderers write to any `impl Write` so the same code serves stdout, files
//! and tests (`write_*` functions, as in py-spy). They never truncate names:
//! a column is as wide as its widest cell.
//!
//! # JSON schema of a snapshot
//!
//! [`write_snapshot_json`] writes one object (one line with `compact`):
//!
//! ```text
//! {
//!   "schema": "taskscope.snapshot/1",   // bumped on incompatible changes
//!   "target": "http://127.0.0.1:6669",  // or "unix:/path"
//!   "protocol": "taskscope.v1",          // or "console-api"
//!   "taken_at": 1764000000000000000,    // ns since the Unix epoch, client clock
//!   "state": { ... }                     // taskscope_wire::model::State, as serde writes it
//! }
//! ```
//!
//! `state` has `process` (pid, executable, args, runtimes, sources),
//! `tasks` (an object keyed by task id; each task has `id`, `tokio_id`,
//! `name`, `kind`, `location` {file, line, column}, `state`
//! (`idle`|`scheduled`|`running`|`completed`|`cancelled`|`panicked`|`unknown`),
//! `polls`, `busy_ns`, `scheduled_ns`, `idle_ns`, `wakes`, `self_wakes`,
//! `waker_clones`, `waker_drops`, `backtrace` [{name, location, detail}], …),
//! `resources`, `async_ops`, `edges` [{task_id, resource_id, kind
//! (`waits`|`holds`|`frees`), op}], `hazards` [{kind, severity, task_ids,
//! summary, advice, …}] and `dropped` (events the instrumentation could not
//! keep). Durations are integer nanoseconds; a field the source did not know
//! is `null`. console-api targets carry no backtraces, hazards or edges.

use std::io::{self, Write};

use serde::Serialize;
use taskscope_wire::model::{self, Task, TaskState, Timestamp};

use crate::client::Snapshot;

/// Output format selected with `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    #[default]
    Text,
    /// JSON (schema in `taskscope snapshot --help`).
    Json,
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A text table: a header row and rows of cells; each column is as wide as
/// its widest cell. Rows may carry extra lines printed under them (e.g. a
/// backtrace), which do not affect widths.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<(Vec<String>, Vec<String>)>,
}

impl Table {
    pub fn new(headers: &[(&str, Align)]) -> Self {
        Self {
            headers: headers.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push((cells, Vec::new()));
    }

    /// Adds a row followed by `extra` lines, printed as they are.
    pub fn row_with_lines(&mut self, cells: Vec<String>, extra: Vec<String>) {
        self.rows.push((cells, extra));
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the table; every line starts with `indent`.
    pub fn write(&self, w: &mut impl Write, indent: &str) -> io::Result<()> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| width(h)).collect();
        for (cells, _) in &self.rows {
            for (i, c) in cells.iter().enumerate().take(n) {
                widths[i] = widths[i].max(width(c));
            }
        }
        let line = |cells: &[String]| -> String {
            let mut out = String::from(indent);
            for (i, (_, align)) in self.headers.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = widths[i].saturating_sub(width(cell));
                let last = i + 1 == n;
                match align {
                    Align::Left if last => out.push_str(cell),
                    Align::Left => {
                        out.push_str(cell);
                        out.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        out.extend(std::iter::repeat_n(' ', pad));
                        out.push_str(cell);
                    }
                }
                if !last {
                    out.push_str("  ");
                }
            }
            out.truncate(out.trim_end().len());
            out
        };
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        writeln!(w, "{}", line(&header))?;
        for (cells, extra) in &self.rows {
            writeln!(w, "{}", line(cells))?;
            for e in extra {
                writeln!(w, "{e}")?;
            }
        }
        Ok(())
    }
}

/// Display width in characters (names may be non-ASCII).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// `1.23s`, `45.6ms`, `789µs`, `12ns`, `3m05s`, `2h01m`.
pub fn duration(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    match ns {
        0 => "0s".to_string(),
        n if n < US => format!("{n}ns"),
        n if n < MS => format!("{:.3}µs", n as f64 / US as f64).replace(".000", ""),
        n if n < S => format!("{:.1}ms", n as f64 / MS as f64),
        n if n < 60 * S => format!("{:.2}s", n as f64 / S as f64),
        n if n < 3600 * S => format!("{}m{:02}s", n / (60 * S), (n / S) % 60),
        n => format!("{}h{:02}m", n / (3600 * S), (n / (60 * S)) % 60),
    }
}

/// Order in which task states are listed: the ones that need attention first.
fn state_rank(s: TaskState) -> u8 {
    match s {
        TaskState::Running => 0,
        TaskState::Scheduled => 1,
        TaskState::Idle => 2,
        TaskState::Unknown => 3,
        TaskState::Panicked => 4,
        TaskState::Cancelled => 5,
        TaskState::Completed => 6,
    }
}

/// Tasks sorted by state (running, scheduled, idle, …, completed), then id.
pub fn sorted_tasks(state: &model::State) -> Vec<&Task> {
    let mut tasks: Vec<&Task> = state.tasks.values().collect();
    tasks.sort_by_key(|t| (state_rank(t.state), t.id));
    tasks
}

fn opt_location(l: &Option<model::Location>) -> String {
    match l {
        Some(l) if l.is_known() => location(l),
        _ => "-".to_string(),
    }
}

/// `file:line[:col]`, with dependency paths shortened from
/// `~/.cargo/registry/src/index.crates.io-…/tokio-1.54.1/src/…` to
/// `tokio-1.54.1/src/…`.
pub fn location(l: &model::Location) -> String {
    const REGISTRY: &str = "/.cargo/registry/src/";
    let text = l.to_string();
    match text.find(REGISTRY) {
        Some(i) => {
            let rest = &text[i + REGISTRY.len()..];
            // Skip the index directory (`index.crates.io-<hash>/`).
            match rest.find('/') {
                Some(j) => rest[j + 1..].to_string(),
                None => text,
            }
        }
        None => text,
    }
}

/// `live (clones-drops)`; `?` when events were lost and the count is negative.
fn wakers(t: &Task) -> String {
    let live = t.live_wakers();
    let live = if live < 0 {
        "?".to_string()
    } else {
        live.to_string()
    };
    format!("{live} ({}-{})", t.waker_clones, t.waker_drops)
}

/// The snapshot header: one line naming the process, protocol and counts.
pub fn snapshot_header(snapshot: &Snapshot) -> String {
    let state = &snapshot.state;
    let mut out = String::new();
    match &state.process {
        Some(p) if p.pid != 0 => {
            out.push_str(&format!("pid {}", p.pid));
            if !p.executable.is_empty() {
                out.push_str(&format!(" ({})", p.executable));
            }
        }
        _ => out.push_str("pid unknown"),
    }
    out.push_str(&format!(
        " at {} via {}",
        snapshot.target, snapshot.protocol
    ));
    let count = |s: TaskState| state.tasks.values().filter(|t| t.state == s).count();
    let live = state.live_tasks().count();
    out.push_str(&format!(
        " — {} tasks ({live} live: {} running, {} scheduled, {} idle",
        state.tasks.len(),
        count(TaskState::Running),
        count(TaskState::Scheduled),
        count(TaskState::Idle),
    ));
    let ended = state.tasks.len() - live;
    if ended > 0 {
        out.push_str(&format!("; {ended} ended"));
    }
    out.push_str(&format!(
        "), {} resources, {} hazards, {} dropped events",
        state.resources.len(),
        state.hazards.len(),
        state.dropped.total()
    ));
    out
}

/// Writes a snapshot as text: header, hazards, then the task table with each
/// task's logical backtrace under its row.
pub fn write_snapshot_text(w: &mut impl Write, snapshot: &Snapshot) -> io::Result<()> {
    let state = &snapshot.state;
    writeln!(w, "{}", snapshot_header(snapshot))?;
    if let Some(p) = &state.process {
        if p.sources.iter().any(|s| s == "console-api") {
            writeln!(
                w,
                "note: console-api target — no async backtraces; hazards judged by this client from console-api data (instrument the app with taskscope for more)"
            )?;
        }
    }
    if !state.hazards.is_empty() {
        writeln!(w)?;
        writeln!(w, "HAZARDS")?;
        for h in &state.hazards {
            let tasks: Vec<String> = h
                .task_ids
                .iter()
                .map(|id| match state.tasks.get(id) {
                    Some(t) => format!("{} ({})", t.display_name(), t.display_id()),
                    None => format!("task {id}"),
                })
                .collect();
            writeln!(w, "  {:<7} {}: {}", h.severity.as_str(), h.kind, h.summary)?;
            if !tasks.is_empty() {
                writeln!(w, "          tasks: {}", tasks.join(", "))?;
            }
            if let Some(l) = h.location.as_ref().filter(|l| l.is_known()) {
                writeln!(w, "          at {}", location(l))?;
            }
            if let Some(l) = h.await_point.as_ref().filter(|l| l.is_known()) {
                writeln!(w, "          parked at {}", location(l))?;
            }
            for e in &h.evidence {
                writeln!(w, "          - {e}")?;
            }
            if !h.advice.is_empty() {
                writeln!(w, "          advice: {}", h.advice)?;
            }
        }
    }
    writeln!(w)?;
    let tasks = sorted_tasks(state);
    if tasks.is_empty() {
        writeln!(w, "no tasks")?;
        return Ok(());
    }
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("TOKIO", Align::Right),
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("POLLS", Align::Right),
        ("BUSY", Align::Right),
        ("SCHED", Align::Right),
        ("IDLE", Align::Right),
        ("WAKERS", Align::Right),
        ("WAKES/SELF", Align::Right),
        ("LOCATION", Align::Left),
    ]);
    let now = state.updated_at.unwrap_or(Timestamp(0));
    for t in tasks {
        let cells = vec![
            t.id.to_string(),
            t.tokio_id.map_or("-".to_string(), |i| i.to_string()),
            t.display_name(),
            t.state.to_string(),
            t.polls.to_string(),
            duration(t.busy_ns),
            duration(t.scheduled_ns),
            duration(t.idle_ns_at(now)),
            wakers(t),
            format!("{}/{}", t.wakes, t.self_wakes),
            opt_location(&t.location),
        ];
        table.row_with_lines(cells, backtrace_lines(state, t));
    }
    table.write(w, "")
}

/// The task's logical backtrace (outermost first) and what it waits on.
fn backtrace_lines(state: &model::State, t: &Task) -> Vec<String> {
    let mut lines = Vec::new();
    for (depth, f) in t.backtrace.iter().enumerate() {
        let mut line = format!("    {}{}", "  ".repeat(depth), f.name);
        if let Some(l) = f.location.as_ref().filter(|l| l.is_known()) {
            line.push_str(&format!(" at {}", location(l)));
        }
        if !f.detail.is_empty() {
            line.push_str(&format!(" ({})", f.detail));
        }
        lines.push(line);
    }
    for e in &state.edges {
        if e.task_id != t.id {
            continue;
        }
        let what = match state.resources.get(&e.resource_id) {
            // tokio's building blocks (the semaphore inside a Mutex…) add
            // nothing to the user-visible resource that contains them.
            Some(r) if r.internal => continue,
            Some(r) => {
                let ty = if r.concrete_type.is_empty() {
                    &r.kind
                } else {
                    &r.concrete_type
                };
                match r.location.as_ref().filter(|l| l.is_known()) {
                    Some(l) => format!("{ty} {} (created at {})", r.id, location(l)),
                    None => format!("{ty} {}", r.id),
                }
            }
            None => format!("resource {}", e.resource_id),
        };
        let verb = match e.kind {
            model::EdgeKind::Waits => "waits on",
            model::EdgeKind::Holds => "holds",
            model::EdgeKind::Frees => "must act to free",
        };
        let op = if e.op.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.op)
        };
        lines.push(format!("    {verb} {what}{op}"));
    }
    lines
}

/// The JSON envelope of a snapshot (schema in the module docs).
#[derive(Debug, Serialize)]
pub struct SnapshotJson<'a> {
    pub schema: &'static str,
    pub target: String,
    pub protocol: crate::client::Protocol,
    pub taken_at: model::Timestamp,
    pub state: &'a model::State,
}

/// Schema id written in every snapshot JSON document.
pub const SNAPSHOT_SCHEMA: &str = "taskscope.snapshot/1";

/// Writes a snapshot as JSON: pretty, or one line when `compact` (for
/// streams of snapshots, one per line).
pub fn write_snapshot_json(
    w: &mut impl Write,
    snapshot: &Snapshot,
    compact: bool,
) -> io::Result<()> {
    let doc = SnapshotJson {
        schema: SNAPSHOT_SCHEMA,
        target: snapshot.target.to_string(),
        protocol: snapshot.protocol,
        taken_at: model::Timestamp::now(),
        state: &snapshot.state,
    };
    write_json(w, &doc, compact)
}

/// Writes any serializable value as JSON followed by a newline.
pub fn write_json(w: &mut impl Write, value: &impl Serialize, compact: bool) -> io::Result<()> {
    if compact {
        serde_json::to_writer(&mut *w, value)?;
    } else {
        serde_json::to_writer_pretty(&mut *w, value)?;
    }
    writeln!(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(12), "12ns");
        assert_eq!(duration(1_500), "1.500µs");
        assert_eq!(duration(2_000), "2µs");
        assert_eq!(duration(45_600_000), "45.6ms");
        assert_eq!(duration(1_230_000_000), "1.23s");
        assert_eq!(duration(185_000_000_000), "3m05s");
        assert_eq!(duration(7_260_000_000_000), "2h01m");
    }

    /// A state with everything the text view can show: a hazard, a
    /// backtrace, wait edges (one on an internal resource, hidden), a
    /// completed task, unknown fields.
    fn rich_snapshot() -> Snapshot {
        use model::{EdgeKind, Frame, Hazard, Location, ProcessInfo, Resource, Severity, WaitEdge};
        let mut state = model::State {
            process: Some(ProcessInfo {
                pid: 4242,
                executable: "/srv/orders".into(),
                sources: vec!["tracing".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let task = |id, name: &str, st, line| Task {
            id,
            tokio_id: Some(id + 100),
            name: Some(name.into()),
            kind: "task".into(),
            location: Some(Location::new("src/main.rs", line, 5)),
            state: st,
            polls: 3,
            busy_ns: 1_500_000,
            scheduled_ns: 20_000,
            idle_ns: 2_000_000_000,
            waker_clones: 2,
            waker_drops: 1,
            wakes: 2,
            self_wakes: 1,
            ..Default::default()
        };
        let mut waiter = task(7, "order-consumer-with-a-long-name", TaskState::Idle, 40);
        waiter.backtrace = vec![
            Frame {
                name: "handle_order".into(),
                location: Some(Location::new("src/orders.rs", 12, 0)),
                detail: "order.id=9".into(),
            },
            Frame {
                name: "reserve_stock".into(),
                location: Some(Location::new("src/orders.rs", 30, 0)),
                detail: String::new(),
            },
        ];
        state.tasks.insert(7, waiter);
        state
            .tasks
            .insert(3, task(3, "ticker", TaskState::Running, 20));
        state
            .tasks
            .insert(9, task(9, "done", TaskState::Completed, 50));
        let mut anonymous = task(12, "", TaskState::Scheduled, 60);
        anonymous.name = None;
        anonymous.tokio_id = None;
        anonymous.location = None;
        state.tasks.insert(12, anonymous);
        state.resources.insert(
            1,
            Resource {
                id: 1,
                kind: "Sync".into(),
                concrete_type: "Mutex".into(),
                location: Some(Location::new("src/orders.rs", 5, 17)),
                ..Default::default()
            },
        );
        state.resources.insert(
            2,
            Resource {
                id: 2,
                kind: "Sync".into(),
                concrete_type: "Semaphore".into(),
                internal: true,
                ..Default::default()
            },
        );
        let edge = |resource_id, kind, op: &str| WaitEdge {
            task_id: 7,
            resource_id,
            kind,
            op: op.into(),
            since: None,
        };
        state.edges = vec![
            edge(1, EdgeKind::Waits, "lock"),
            edge(2, EdgeKind::Waits, "acquire"),
        ];
        state.hazards.push(Hazard {
            kind: "lost-waker".into(),
            severity: Severity::Error,
            task_ids: vec![7],
            location: Some(Location::new("src/main.rs", 40, 5)),
            await_point: Some(Location::new("src/orders.rs", 30, 0)),
            summary: "task is pending and nobody holds its waker".into(),
            evidence: vec!["0 live wakers".into()],
            advice: "store cx.waker() before returning Pending".into(),
            ..Default::default()
        });
        state.dropped.task_events = 5;
        Snapshot {
            target: "127.0.0.1:6669".parse().expect("valid target"),
            protocol: crate::client::Protocol::Taskscope,
            state,
        }
    }

    #[test]
    fn text_snapshot_shows_hazards_backtraces_and_waits() {
        let mut out = Vec::new();
        write_snapshot_text(&mut out, &rich_snapshot()).expect("write to a Vec");
        let text = String::from_utf8(out).expect("utf8");
        let expected = "\
pid 4242 (/srv/orders) at http://127.0.0.1:6669 via taskscope.v1 — 4 tasks (3 live: 1 running, 1 scheduled, 1 idle; 1 ended), 2 resources, 1 hazards, 5 dropped events

HAZARDS
  error   lost-waker: task is pending and nobody holds its waker
          tasks: order-consumer-with-a-long-name (107)
          at src/main.rs:40:5
          parked at src/orders.rs:30
          - 0 live wakers
          advice: store cx.waker() before returning Pending

ID  TOKIO  NAME                             STATE      POLLS   BUSY  SCHED   IDLE   WAKERS  WAKES/SELF  LOCATION
 3    103  ticker                           running        3  1.5ms   20µs  2.00s  1 (2-1)         2/1  src/main.rs:20:5
12      -  task#12                          scheduled      3  1.5ms   20µs  2.00s  1 (2-1)         2/1  -
 7    107  order-consumer-with-a-long-name  idle           3  1.5ms   20µs  2.00s  1 (2-1)         2/1  src/main.rs:40:5
    handle_order at src/orders.rs:12 (order.id=9)
      reserve_stock at src/orders.rs:30
    waits on Mutex 1 (created at src/orders.rs:5:17) (lock)
 9    109  done                             completed      3  1.5ms   20µs  2.00s  1 (2-1)         2/1  src/main.rs:50:5
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn json_snapshot_is_the_documented_envelope() {
        let mut out = Vec::new();
        write_snapshot_json(&mut out, &rich_snapshot(), true).expect("write to a Vec");
        assert_eq!(
            out.iter().filter(|b| **b == b'\n').count(),
            1,
            "compact is one line"
        );
        let doc: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(doc["schema"], SNAPSHOT_SCHEMA);
        assert_eq!(doc["target"], "http://127.0.0.1:6669");
        assert_eq!(doc["protocol"], "taskscope.v1");
        assert!(doc["taken_at"].as_u64().is_some_and(|t| t > 0));
        let task = &doc["state"]["tasks"]["7"];
        assert_eq!(task["name"], "order-consumer-with-a-long-name");
        assert_eq!(task["state"], "idle");
        assert_eq!(task["backtrace"][1]["name"], "reserve_stock");
        assert_eq!(doc["state"]["hazards"][0]["kind"], "lost-waker");
        assert_eq!(doc["state"]["edges"][0]["kind"], "waits");
        // Round-trips into the model.
        let state: model::State =
            serde_json::from_value(doc["state"].clone()).expect("a model::State");
        assert_eq!(state, rich_snapshot().state);
    }

    #[test]
    fn dependency_paths_are_shortened() {
        let l = model::Location::new(
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/time/interval.rs",
            135,
            25,
        );
        assert_eq!(location(&l), "tokio-1.54.1/src/time/interval.rs:135:25");
        let own = model::Location::new("src/main.rs", 7, 0);
        assert_eq!(location(&own), "src/main.rs:7");
    }

    #[test]
    fn columns_fit_the_widest_cell_and_never_truncate() {
        let mut t = Table::new(&[
            ("ID", Align::Right),
            ("NAME", Align::Left),
            ("N", Align::Right),
        ]);
        t.row(vec![
            "1".into(),
            "a-rather-long-task-name".into(),
            "7".into(),
        ]);
        t.row_with_lines(
            vec!["123".into(), "x".into(), "10".into()],
            vec!["    frame".into()],
        );
        let mut out = Vec::new();
        t.write(&mut out, "").expect("write to a Vec");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            " ID  NAME                      N\n  1  a-rather-long-task-name   7\n123  x                        10\n    frame\n"
        );
    }
}
