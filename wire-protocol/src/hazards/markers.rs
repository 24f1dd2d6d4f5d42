//! Hazards seen at the moment they happen: `nested-runtime` and
//! `held-across-await`.
//!
//! Their evidence is an *event* (a `block_on` entered inside a poll, a poll
//! returning `Pending` with a sync guard alive) that the state model does not
//! keep. The instrumentation records such an event on the task as marker
//! fields, and these detectors turn markers into findings. The markers are
//! ordinary task fields, so they survive the wire, recordings and the JSON
//! output unchanged.
//!
//! # Marker convention
//!
//! | field | value | set by |
//! |---|---|---|
//! | [`NESTED_RUNTIME_FIELD`] | what was called: `"block_on"`, `"Runtime::new"`, `"park"`, `"worker of runtime 2 drives runtime 3"` | the instrumentation, on the task being polled when the call happened |
//! | [`NESTED_RUNTIME_LOCATION_FIELD`] | `file:line[:col]` of the call | same |
//! | [`HELD_ACROSS_AWAIT_FIELD`] | the guard type, e.g. `"std::sync::MutexGuard<Config>"` | a guard wrapper (or the dump analyzer, from a suspended state machine holding a guard) |
//! | [`HELD_ACROSS_AWAIT_LOCATION_FIELD`] | `file:line[:col]` of the `.await` the guard was alive across | same |
//!
//! # Structural evidence
//!
//! `nested-runtime` is also reported without markers when a task of kind
//! `block_on` has a `parent_id` naming a task that is not a `blocking` task:
//! the instrumentation sets the parent of a `block_on` to the task that was
//! being polled on that thread, so such a parent means `block_on` ran inside a
//! poll. A `block_on` inside `spawn_blocking` is legitimate and not reported.

use crate::model::{Hazard, Location, Severity, Task};

use super::{describe, poll_location, spawn_location, Cx, HazardKind};

/// Marker: a runtime was entered, created or parked inside a task poll.
pub const NESTED_RUNTIME_FIELD: &str = "taskscope.nested_runtime";
/// Marker: where that happened (`file:line[:col]`).
pub const NESTED_RUNTIME_LOCATION_FIELD: &str = "taskscope.nested_runtime.location";
/// Marker: a synchronous guard was alive when a poll returned `Pending`.
pub const HELD_ACROSS_AWAIT_FIELD: &str = "taskscope.held_across_await";
/// Marker: the await point the guard was held across (`file:line[:col]`).
pub const HELD_ACROSS_AWAIT_LOCATION_FIELD: &str = "taskscope.held_across_await.location";

/// Parses `file:line[:col]` (the file may itself contain `:`).
pub fn parse_location(s: &str) -> Option<Location> {
    let mut parts = s.rsplitn(3, ':');
    let last = parts.next()?;
    let mid = parts.next()?;
    match parts.next() {
        Some(file) if !file.is_empty() => match (mid.parse::<u32>(), last.parse::<u32>()) {
            (Ok(line), Ok(col)) => Some(Location::new(file, line, col)),
            // `C:\x.rs:12` style: the third part belongs to the file
            (Err(_), Ok(line)) => Some(Location::new(format!("{file}:{mid}"), line, 0)),
            _ => None,
        },
        _ => {
            let line = last.parse().ok()?;
            (!mid.is_empty()).then(|| Location::new(mid, line, 0))
        }
    }
}

/// The per-task part of [`super::detect`]'s single pass over the tasks.
pub(crate) struct Pass {
    nested: bool,
    held: bool,
}

impl Pass {
    pub(crate) fn new(cx: &Cx<'_>) -> Option<Self> {
        let nested = cx.on(HazardKind::NestedRuntime);
        let held = cx.on(HazardKind::HeldAcrossAwait);
        (nested || held).then_some(Self { nested, held })
    }

    pub(crate) fn task(&self, cx: &Cx<'_>, task: &Task, out: &mut Vec<Hazard>) {
        if self.nested {
            nested_runtime(cx, task, out);
        }
        if self.held {
            held_across_await(cx, task, out);
        }
    }
}

fn nested_runtime(cx: &Cx<'_>, task: &Task, out: &mut Vec<Hazard>) {
    let marker = task.fields.get(NESTED_RUNTIME_FIELD);
    let parent = if task.kind == "block_on" {
        task.parent_id
            .and_then(|p| cx.task(p))
            .filter(|p| p.kind != "blocking" && p.id != task.id)
    } else {
        None
    };
    if marker.is_none() && parent.is_none() {
        return;
    }
    let mut f = cx.finding(HazardKind::NestedRuntime, Severity::Error);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    let marked_at = task
        .fields
        .get(NESTED_RUNTIME_LOCATION_FIELD)
        .and_then(|s| parse_location(s));
    match (marker, parent) {
        (Some(what), _) => {
            h.location = marked_at.clone().or_else(|| poll_location(task));
            h.summary = format!("{what} was called inside a poll of task {}", describe(task));
            h.evidence.push(format!(
                "{what} ran while the thread was inside this task's poll"
            ));
        }
        (None, Some(p)) => {
            h.task_ids.insert(0, p.id);
            h.location = spawn_location(task).or_else(|| poll_location(p));
            let other_rt = match (p.runtime_id, task.runtime_id) {
                (Some(a), Some(b)) if a != b => {
                    format!(": a worker of runtime #{a} drives runtime #{b}")
                }
                _ => String::new(),
            };
            h.summary = format!(
                "block_on ran inside a poll of task {}{other_rt}",
                describe(p)
            );
            h.evidence.push(format!(
                "block_on task {} has parent {} (state {}), which is not a spawn_blocking task",
                describe(task),
                describe(p),
                p.state
            ));
        }
        (None, None) => return,
    }
    if let Some(l) = &marked_at {
        h.evidence.push(format!("called at {l}"));
    }
    f.push(out);
}

fn held_across_await(cx: &Cx<'_>, task: &Task, out: &mut Vec<Hazard>) {
    let Some(guard) = task.fields.get(HELD_ACROSS_AWAIT_FIELD) else {
        return;
    };
    let at = task
        .fields
        .get(HELD_ACROSS_AWAIT_LOCATION_FIELD)
        .and_then(|s| parse_location(s));
    let mut f = cx.finding(HazardKind::HeldAcrossAwait, Severity::Warning);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    h.await_point = at.clone().or_else(|| super::await_point(task));
    h.location = h.await_point.clone().or_else(|| spawn_location(task));
    h.summary = match &at {
        Some(l) => format!(
            "task {} holds a {guard} across the .await at {l}",
            describe(task)
        ),
        None => format!("task {} holds a {guard} across an .await", describe(task)),
    };
    h.evidence
        .push(format!("a {guard} was alive when a poll returned Pending"));
    if matches!(task.kind.as_str(), "task" | "local") && task.runtime_id.is_some() {
        h.evidence
            .push("while it is held, other tasks that take it block their worker thread".into());
    }
    // One finding per task and await point.
    h.fingerprint = match &at {
        Some(l) => format!("{}:{l}", super::fingerprint(&h.kind, &[task.id], &[])),
        None => super::fingerprint(&h.kind, &[task.id], &[]),
    };
    f.push(out);
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{detect, HazardConfig};
    use super::*;
    use crate::model::{State, TaskState};

    fn only(s: &State, kind: &str) -> Vec<Hazard> {
        detect(s, &HazardConfig::default(), NOW)
            .into_iter()
            .filter(|h| h.kind == kind)
            .collect()
    }

    fn running(id: u64) -> Task {
        let mut t = idle_task(id, 0.0);
        t.waker_clones = 1;
        t
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            parse_location("src/a.rs:12:5"),
            Some(Location::new("src/a.rs", 12, 5))
        );
        assert_eq!(
            parse_location("src/a.rs:12"),
            Some(Location::new("src/a.rs", 12, 0))
        );
        assert_eq!(
            parse_location("C:\\x\\a.rs:12"),
            Some(Location::new("C:\\x\\a.rs", 12, 0))
        );
        assert_eq!(parse_location("nonsense"), None);
        assert_eq!(parse_location(":12"), None);
    }

    #[test]
    fn marker_reports_nested_runtime_at_the_call() {
        let mut s = state();
        let mut t = running(1);
        t.fields
            .insert(NESTED_RUNTIME_FIELD.into(), "block_on".into());
        t.fields.insert(
            NESTED_RUNTIME_LOCATION_FIELD.into(),
            "src/sync.rs:8:13".into(),
        );
        add(&mut s, t);
        add(&mut s, running(2)); // twin without marker
        let found = only(&s, "nested-runtime");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].task_ids, [1]);
        assert_eq!(found[0].location, Some(Location::new("src/sync.rs", 8, 13)));
        assert_eq!(found[0].severity, Severity::Error);
    }

    #[test]
    fn block_on_inside_a_task_poll_but_not_inside_spawn_blocking() {
        let mut s = state();
        let mut outer = running(1);
        outer.state = TaskState::Running;
        outer.runtime_id = Some(1);
        add(&mut s, outer);
        let mut inner = running(2);
        inner.kind = "block_on".into();
        inner.parent_id = Some(1);
        inner.runtime_id = Some(2);
        add(&mut s, inner);
        let found = only(&s, "nested-runtime");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].task_ids, [1, 2]);
        assert!(
            found[0]
                .summary
                .contains("worker of runtime #1 drives runtime #2"),
            "{}",
            found[0].summary
        );
        s.tasks.get_mut(&1).expect("outer").kind = "blocking".into();
        assert!(only(&s, "nested-runtime").is_empty());
    }

    #[test]
    fn guard_marker_reports_held_across_await() {
        let mut s = state();
        let mut t = running(1);
        t.fields.insert(
            HELD_ACROSS_AWAIT_FIELD.into(),
            "std::sync::MutexGuard<u32>".into(),
        );
        t.fields.insert(
            HELD_ACROSS_AWAIT_LOCATION_FIELD.into(),
            "src/cache.rs:20:30".into(),
        );
        add(&mut s, t);
        add(&mut s, running(2));
        let found = only(&s, "held-across-await");
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].await_point,
            Some(Location::new("src/cache.rs", 20, 30))
        );
        assert!(found[0].summary.contains("MutexGuard<u32>"));
        assert_eq!(
            found[0].fingerprint,
            "held-across-await:t1:src/cache.rs:20:30"
        );
    }
}
