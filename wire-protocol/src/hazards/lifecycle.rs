//! Task and runtime lifecycle: `cancelled-midway`,
//! `runtime-dropped-with-tasks`, `multiple-runtimes`, `large-future`,
//! `unpolled-future`.
//!
//! # How it decides
//!
//! * **`runtime-dropped-with-tasks`**: a runtime in `process.runtimes` has
//!   `dropped_at = D`, and tasks of that runtime (`runtime_id`) created before
//!   `D` were still live at `D`: they are live now, or `Cancelled` with
//!   `completed_at ≥ D`. The instrumentation must stamp `dropped_at` when
//!   shutdown *begins* (before tokio drops the tasks). `blocking` and
//!   `block_on` tasks are not counted. One finding per runtime.
//! * **`cancelled-midway`** (info): a task in state `Cancelled` with at least
//!   one poll. Tasks already counted by `runtime-dropped-with-tasks` are not
//!   repeated. The await point is where the task was parked when dropped.
//!   Who dropped it is reported when the instrumentation sets the field
//!   [`CANCELLED_BY_FIELD`] (e.g. `"abort"`, `"select!"`, `"timeout"`).
//! * **`multiple-runtimes`** (info): more than one runtime in
//!   `process.runtimes` without `dropped_at`.
//! * **`large-future`**: `max(future_size, original_future_size) ≥
//!   large_future_bytes`. tokio boxes futures above its own threshold before
//!   storing them, so `size.bytes` can be a pointer while
//!   `original_size.bytes` is the real size: both are reported. One finding
//!   per spawn site (every task spawned there is listed), so 10 000 tasks of
//!   one site are one finding.
//! * **`unpolled-future`**: an instrumented future (`kind = "wrapped"`) with
//!   `polls = 0` that is still alive `unpolled_ms` after `created_at`, or that
//!   ended (`Completed`/`Cancelled`) without a poll. Spawned tasks are always
//!   polled by their runtime and are not considered (a spawned task waiting
//!   for its first poll is a scheduling delay).

use std::collections::BTreeMap;

use crate::model::{Hazard, Location, RuntimeId, Severity, Task, TaskId, TaskState, Timestamp};

use super::{describe, fmt_bytes, fmt_ns, ms, parked_location, spawn_location, Cx, HazardKind};

/// Field naming who cancelled a task (`"abort"`, `"select!"`, `"timeout"`,
/// `"JoinSet drop"`…), when the instrumentation knows.
pub const CANCELLED_BY_FIELD: &str = "taskscope.cancelled_by";

/// The per-task part of [`super::detect`]'s single pass over the tasks,
/// plus the per-runtime and per-site groups it finishes with.
pub(crate) struct Pass<'a> {
    dropped_runtimes: Vec<(RuntimeId, Timestamp)>,
    rt_dropped: bool,
    cancelled: bool,
    large: bool,
    unpolled: bool,
    at_shutdown: BTreeMap<RuntimeId, Vec<&'a Task>>,
    large_sites: BTreeMap<SiteKey<'a>, Vec<&'a Task>>,
}

impl<'a> Pass<'a> {
    pub(crate) fn new(cx: &Cx<'a>) -> Option<Self> {
        let dropped_runtimes: Vec<(RuntimeId, Timestamp)> = cx
            .state
            .process
            .iter()
            .flat_map(|p| &p.runtimes)
            .filter_map(|r| r.dropped_at.map(|d| (r.id, d)))
            .collect();
        let rt_dropped = cx.on(HazardKind::RuntimeDroppedWithTasks) && !dropped_runtimes.is_empty();
        let cancelled = cx.on(HazardKind::CancelledMidway);
        let large = cx.on(HazardKind::LargeFuture) && cx.config.large_future_bytes > 0;
        let unpolled = cx.on(HazardKind::UnpolledFuture);
        (rt_dropped || cancelled || large || unpolled).then(|| Self {
            dropped_runtimes,
            rt_dropped,
            cancelled,
            large,
            unpolled,
            at_shutdown: BTreeMap::new(),
            large_sites: BTreeMap::new(),
        })
    }

    pub(crate) fn task(&mut self, cx: &Cx<'a>, task: &'a Task, out: &mut Vec<Hazard>) {
        let shutdown_victim = self.rt_dropped && live_at_shutdown(task, &self.dropped_runtimes);
        if shutdown_victim {
            if let Some(rt) = task.runtime_id {
                self.at_shutdown.entry(rt).or_default().push(task);
            }
        }
        if self.cancelled
            && !shutdown_victim
            && task.state == TaskState::Cancelled
            && task.polls >= 1
        {
            cancelled_midway(cx, task, out);
        }
        if self.large && future_size(task) >= cx.config.large_future_bytes {
            let key = match spawn_location(task) {
                Some(_) => SiteKey::Site(task.location.as_ref()),
                None => SiteKey::Task(task.id),
            };
            self.large_sites.entry(key).or_default().push(task);
        }
        if self.unpolled {
            unpolled_future(cx, task, out);
        }
    }

    pub(crate) fn finish(self, cx: &Cx<'a>, out: &mut Vec<Hazard>) {
        for (rt, tasks) in &self.at_shutdown {
            runtime_dropped(cx, *rt, tasks, out);
        }
        for tasks in self.large_sites.values() {
            large_future(cx, tasks, out);
        }
    }
}

/// Process-level: `multiple-runtimes`.
pub(crate) fn detect_process(cx: &Cx<'_>, out: &mut Vec<Hazard>) {
    if cx.on(HazardKind::MultipleRuntimes) {
        multiple_runtimes(cx, out);
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SiteKey<'a> {
    Site(Option<&'a Location>),
    Task(TaskId),
}

fn future_size(task: &Task) -> u64 {
    task.future_size
        .unwrap_or(0)
        .max(task.original_future_size.unwrap_or(0))
}

fn live_at_shutdown(task: &Task, dropped: &[(RuntimeId, Timestamp)]) -> bool {
    let Some(rt) = task.runtime_id else {
        return false;
    };
    let Some(&(_, at)) = dropped.iter().find(|(id, _)| *id == rt) else {
        return false;
    };
    if matches!(task.kind.as_str(), "blocking" | "block_on") {
        return false;
    }
    if task.created_at.is_some_and(|c| c > at) {
        return false;
    }
    match task.state {
        TaskState::Idle | TaskState::Scheduled | TaskState::Running => true,
        TaskState::Cancelled => task.completed_at.is_some_and(|c| c >= at),
        _ => false,
    }
}

fn cancelled_midway(cx: &Cx<'_>, task: &Task, out: &mut Vec<Hazard>) {
    let mut f = cx.finding(HazardKind::CancelledMidway, Severity::Info);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    h.await_point = super::await_point(task);
    h.location = parked_location(task);
    let by = task.fields.get(CANCELLED_BY_FIELD);
    let at = h
        .await_point
        .as_ref()
        .map(|l| format!(" at the await point {l}"))
        .unwrap_or_default();
    h.summary = match by {
        Some(by) => format!(
            "task {} was cancelled by {by} after {} polls{at}",
            describe(task),
            task.polls
        ),
        None => format!(
            "task {} was dropped after {} polls, before it finished{at}",
            describe(task),
            task.polls
        ),
    };
    h.evidence
        .push(format!("state: cancelled, polls: {}", task.polls));
    if let (Some(c), Some(d)) = (task.created_at, task.completed_at) {
        h.evidence.push(format!(
            "dropped {} after it was spawned",
            fmt_ns(d.since(c))
        ));
    }
    if let Some(by) = by {
        h.evidence.push(format!("cancelled by: {by}"));
    }
    h.evidence
        .push("code after that await point never ran".into());
    f.push(out);
}

fn runtime_dropped(cx: &Cx<'_>, rt: RuntimeId, tasks: &[&Task], out: &mut Vec<Hazard>) {
    let runtime = cx
        .state
        .process
        .as_ref()
        .and_then(|p| p.runtimes.iter().find(|r| r.id == rt));
    let name = match runtime {
        Some(r) if !r.name.is_empty() => format!("runtime `{}`", r.name),
        _ => format!("runtime #{rt}"),
    };
    let mut f = cx.finding(HazardKind::RuntimeDroppedWithTasks, Severity::Warning);
    let h = &mut f.0;
    h.task_ids = tasks.iter().map(|t| t.id).collect();
    h.location = tasks.iter().find_map(|t| spawn_location(t));
    let names: Vec<String> = tasks
        .iter()
        .take(3)
        .map(|t| format!("`{}`", t.display_name()))
        .collect();
    h.summary = format!(
        "{name} shut down with {} task{} still live: {}{}",
        tasks.len(),
        if tasks.len() == 1 { "" } else { "s" },
        names.join(", "),
        if tasks.len() > 3 { ", …" } else { "" }
    );
    if let Some(d) = runtime.and_then(|r| r.dropped_at) {
        let since = runtime
            .and_then(|r| r.created_at)
            .map(|c| format!(", {} after it started running tasks", fmt_ns(d.since(c))))
            .unwrap_or_default();
        h.evidence
            .push(format!("{name} began shutting down{since}"));
    }
    for t in tasks.iter().take(10) {
        let at = super::await_point(t)
            .map(|l| format!(", parked at {l}"))
            .unwrap_or_default();
        let how = if t.state == TaskState::Cancelled {
            "was dropped by the shutdown".to_string()
        } else {
            format!("was {}", t.state)
        };
        h.evidence.push(format!(
            "{} {how} after {} poll{}{at}: code after that point never ran",
            describe(t),
            t.polls,
            if t.polls == 1 { "" } else { "s" }
        ));
    }
    if tasks.len() > 10 {
        h.evidence
            .push(format!("… and {} more tasks", tasks.len() - 10));
    }
    f.push(out);
}

fn large_future(cx: &Cx<'_>, tasks: &[&Task], out: &mut Vec<Hazard>) {
    let Some(first) = tasks.first() else {
        return;
    };
    let biggest = tasks.iter().map(|t| future_size(t)).max().unwrap_or(0);
    let mut f = cx.finding(HazardKind::LargeFuture, Severity::Warning);
    let h = &mut f.0;
    h.task_ids = tasks.iter().map(|t| t.id).collect();
    h.location = spawn_location(first);
    h.summary = match &h.location {
        Some(l) => format!(
            "the future spawned at {l} is {} ({} task{})",
            fmt_bytes(biggest),
            tasks.len(),
            if tasks.len() == 1 { "" } else { "s" }
        ),
        None => format!(
            "task {} has a {} future",
            describe(first),
            fmt_bytes(biggest)
        ),
    };
    h.evidence.push(format!(
        "future size: {biggest} bytes (threshold {} bytes)",
        cx.config.large_future_bytes
    ));
    if let (Some(stored), Some(orig)) = (first.future_size, first.original_future_size) {
        if orig > stored {
            h.evidence.push(format!(
                "tokio boxed it: the task stores {stored} bytes, the future itself is {orig} bytes"
            ));
        }
    }
    if tasks.len() > 1 {
        h.evidence
            .push(format!("{} tasks spawned from this site", tasks.len()));
    }
    // One finding per site: the fingerprint is the site, not the task set.
    h.fingerprint = match &h.location {
        Some(l) => format!("{}:{l}", h.kind),
        None => super::fingerprint(&h.kind, &h.task_ids, &[]),
    };
    f.push(out);
}

fn unpolled_future(cx: &Cx<'_>, task: &Task, out: &mut Vec<Hazard>) {
    if task.kind != "wrapped" || task.polls != 0 {
        return;
    }
    let threshold = ms(cx.config.unpolled_ms);
    let (alive, finished) = match task.state {
        TaskState::Completed | TaskState::Cancelled => (
            match (task.created_at, task.completed_at) {
                (Some(c), Some(d)) => d.since(c),
                _ => 0,
            },
            true,
        ),
        TaskState::Idle | TaskState::Scheduled | TaskState::Unknown => match task.created_at {
            Some(c) => (cx.now.since(c), false),
            None => return,
        },
        _ => return,
    };
    if !finished && alive < threshold {
        return;
    }
    let mut f = cx.finding(HazardKind::UnpolledFuture, Severity::Warning);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    h.location = spawn_location(task);
    h.summary = if finished {
        format!(
            "future {} was dropped without ever being polled",
            describe(task)
        )
    } else {
        format!(
            "future {} has existed for {} and was never polled",
            describe(task),
            fmt_ns(alive)
        )
    };
    h.evidence.push(format!("polls: 0, state: {}", task.state));
    h.evidence.push(if finished {
        format!("lived {} and was dropped", fmt_ns(alive))
    } else {
        format!(
            "alive for {} (threshold {})",
            fmt_ns(alive),
            fmt_ns(threshold)
        )
    });
    f.push(out);
}

fn multiple_runtimes(cx: &Cx<'_>, out: &mut Vec<Hazard>) {
    let Some(p) = &cx.state.process else {
        return;
    };
    let alive: Vec<_> = p
        .runtimes
        .iter()
        .filter(|r| r.dropped_at.is_none())
        .collect();
    if alive.len() < 2 {
        return;
    }
    let mut f = cx.finding(HazardKind::MultipleRuntimes, Severity::Info);
    let h = &mut f.0;
    h.summary = format!("{} async runtimes are alive in this process", alive.len());
    for r in &alive {
        let name = if r.name.is_empty() {
            format!("#{}", r.id)
        } else {
            format!("`{}` (#{})", r.name, r.id)
        };
        h.evidence.push(format!(
            "runtime {name}: {:?}, {} worker{}",
            r.flavor,
            r.workers,
            if r.workers == 1 { "" } else { "s" }
        ));
    }
    // Where each runtime after the first showed up: its first task (a
    // `block_on` or a spawn) — the closest evidence of where it was built.
    let mut newer: Vec<_> = alive.iter().map(|r| r.id).collect();
    newer.sort_unstable();
    for rt in newer.into_iter().skip(1) {
        let first = cx
            .state
            .tasks
            .values()
            .filter(|t| t.runtime_id == Some(rt) && t.kind != "blocking")
            .filter(|t| t.location.as_ref().is_some_and(|l| l.is_known()))
            // The runtime's own worker threads are not where the user built it.
            .min_by_key(|t| (t.kind != "block_on", t.created_at, t.id));
        if let Some(t) = first {
            let loc = t.location.clone().unwrap_or_default();
            h.evidence.push(format!(
                "runtime #{rt} first ran {} `{}` at {}:{}",
                if t.kind == "block_on" {
                    "block_on"
                } else {
                    "task"
                },
                t.display_name(),
                loc.file,
                loc.line
            ));
            if h.location.is_none() {
                h.location = Some(loc);
            }
        }
    }
    let ids: Vec<u64> = alive.iter().map(|r| r.id).collect();
    h.fingerprint = format!(
        "{}:rt{}",
        h.kind,
        ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    );
    f.push(out);
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{detect, HazardConfig};
    use super::*;
    use crate::model::{Runtime, RuntimeFlavor, State};

    fn only(s: &State, kind: &str) -> Vec<Hazard> {
        detect(s, &HazardConfig::default(), NOW)
            .into_iter()
            .filter(|h| h.kind == kind)
            .collect()
    }

    fn cancelled(id: TaskId, polls: u64) -> Task {
        let mut t = idle_task(id, 2.0);
        t.state = TaskState::Cancelled;
        t.polls = polls;
        t.completed_at = Some(at(1.0));
        t
    }

    #[test]
    fn cancelled_after_a_poll_is_reported_with_its_await_point() {
        let mut s = state();
        let mut t = cancelled(1, 2);
        t.last_poll_location = Some(Location::new("src/io.rs", 33, 0));
        t.fields.insert(CANCELLED_BY_FIELD.into(), "timeout".into());
        add(&mut s, t);
        add(&mut s, cancelled(2, 0)); // twin: never polled, nothing ran midway
        let found = only(&s, "cancelled-midway");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].task_ids, [1]);
        assert_eq!(found[0].severity, Severity::Info);
        assert!(
            found[0].summary.contains("by timeout"),
            "{}",
            found[0].summary
        );
        assert_eq!(
            found[0].await_point,
            Some(Location::new("src/io.rs", 33, 0))
        );
    }

    #[test]
    fn runtime_drop_with_live_tasks_is_one_finding() {
        let mut s = state();
        s.process.as_mut().expect("p").runtimes = vec![Runtime {
            id: 1,
            name: "main".into(),
            dropped_at: Some(at(1.5)),
            ..Default::default()
        }];
        for id in 1..=3 {
            let mut t = cancelled(id, 1);
            t.runtime_id = Some(1);
            add(&mut s, t);
        }
        let mut done = cancelled(4, 1);
        done.runtime_id = Some(1);
        done.state = TaskState::Completed;
        add(&mut s, done); // twin: finished before the drop
        let mut early = cancelled(5, 1);
        early.runtime_id = Some(1);
        early.completed_at = Some(at(3.0)); // aborted before shutdown
        add(&mut s, early);
        let found = detect(&s, &HazardConfig::default(), NOW);
        let rt: Vec<_> = found
            .iter()
            .filter(|h| h.kind == "runtime-dropped-with-tasks")
            .collect();
        assert_eq!(rt.len(), 1);
        assert_eq!(rt[0].task_ids, [1, 2, 3]);
        assert!(
            rt[0]
                .summary
                .contains("runtime `main` shut down with 3 tasks"),
            "{}",
            rt[0].summary
        );
        let midway: Vec<_> = found
            .iter()
            .filter(|h| h.kind == "cancelled-midway")
            .collect();
        assert_eq!(
            midway.len(),
            1,
            "only the early abort is a separate cancellation"
        );
        assert_eq!(midway[0].task_ids, [5]);
    }

    #[test]
    fn large_futures_group_by_spawn_site_and_note_boxing() {
        let mut s = state();
        for id in 1..=3 {
            let mut t = idle_task(id, 0.0);
            t.waker_clones = 1;
            t.location = Some(Location::new("src/big.rs", 5, 9));
            t.future_size = Some(8);
            t.original_future_size = Some(40 * 1024);
            add(&mut s, t);
        }
        let mut small = idle_task(4, 0.0);
        small.waker_clones = 1;
        small.future_size = Some(16 * 1024 - 1);
        add(&mut s, small);
        let found = only(&s, "large-future");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].task_ids, [1, 2, 3]);
        assert_eq!(found[0].fingerprint, "large-future:src/big.rs:5:9");
        assert!(found[0]
            .evidence
            .iter()
            .any(|e| e.contains("tokio boxed it")));
        s.tasks.get_mut(&4).expect("t").future_size = Some(16 * 1024);
        assert_eq!(
            only(&s, "large-future").len(),
            2,
            "16 KiB is at the threshold"
        );
    }

    #[test]
    fn unpolled_wrapped_future() {
        let mut s = state();
        let mut t = idle_task(1, 0.0);
        t.kind = "wrapped".into();
        t.polls = 0;
        t.created_at = Some(at(2.0));
        t.last_poll_ended = None;
        t.last_poll_started = None;
        add(&mut s, t.clone());
        let mut fresh = t.clone();
        fresh.id = 2;
        fresh.created_at = Some(at(0.5));
        add(&mut s, fresh);
        let mut spawned = t.clone();
        spawned.id = 3;
        spawned.kind = "task".into();
        spawned.state = TaskState::Scheduled;
        add(&mut s, spawned);
        let mut dropped = t;
        dropped.id = 4;
        dropped.created_at = Some(at(0.2));
        dropped.completed_at = Some(at(0.1));
        dropped.state = TaskState::Completed;
        add(&mut s, dropped);
        let found = only(&s, "unpolled-future");
        assert_eq!(
            found.iter().map(|h| h.task_ids[0]).collect::<Vec<_>>(),
            [1, 4]
        );
        assert!(found[1]
            .summary
            .contains("dropped without ever being polled"));
    }

    #[test]
    fn multiple_live_runtimes_is_info() {
        let mut s = state();
        let rt = |id, dropped: Option<Timestamp>| Runtime {
            id,
            flavor: RuntimeFlavor::CurrentThread,
            workers: 1,
            dropped_at: dropped,
            ..Default::default()
        };
        s.process.as_mut().expect("p").runtimes = vec![rt(1, None), rt(2, Some(at(1.0)))];
        assert!(only(&s, "multiple-runtimes").is_empty());
        s.process.as_mut().expect("p").runtimes.push(rt(3, None));
        let found = only(&s, "multiple-runtimes");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, Severity::Info);
        assert_eq!(found[0].fingerprint, "multiple-runtimes:rt1,3");
    }
}
