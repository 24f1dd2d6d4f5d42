//! Waker accounting: `lost-waker`, `waker-dropped-unwoken`, `leaked-task`.
//!
//! # How it decides
//!
//! A task is *parked without a waker* when all of these hold:
//!
//! * it is `Idle` (not scheduled, not running, not finished), has been
//!   polled at least once, and is not a `blocking` or `block_on` task (those
//!   are not woken through a task waker);
//! * its waker counts are trustworthy: the process reports a source that
//!   counts waker clones and drops (`tracing`, `wrapper`, `console-api`; a
//!   hooks-only source sees no wakers), no task events were dropped
//!   (`state.dropped.task_events == 0`: one lost `waker.clone` makes every
//!   count wrong — the tokio-console "thousands of lost wakers at once"
//!   failure), and drops do not exceed clones;
//! * clones − drops == 0 (a wake by value must count as a drop);
//! * its last poll ended at least `lost_waker_grace_ms` ago and no wake came
//!   after it (otherwise the state is stale, not hung);
//! * no live task names it as parent. A task that spawned a child and awaits
//!   its `JoinHandle` is woken through the child's join waker, and waker
//!   events emitted around a spawn have been attributed to the parent
//!   (tokio-console's detached-child false positive): not evidence enough.
//!
//! Then the wait edges decide:
//!
//! * no `Waits` edge → **`lost-waker`**: the task returned `Pending` and
//!   nothing holds its waker; except when the waker was cloned and the
//!   task was never woken (`wakes == 0`): then every clone was dropped
//!   without a wake, by something untracked (a hand-written registry) →
//!   **`waker-dropped-unwoken`**;
//! * `Waits` edges, every one of them on a resource that has been dropped →
//!   **`waker-dropped-unwoken`** (when the waker was cloned at least once):
//!   the resource took the waker and went away without waking it;
//! * any `Waits` edge on a live resource → nothing: the resource may hold
//!   the waker without a counted clone.
//!
//! **`leaked-task`** covers long-idle tasks (`leaked_task_idle_ms`) that the
//! two above did not claim, with evidence that no waker path exists:
//!
//! * post-mortem: the dump analyzer found no reachable waker for the task and
//!   set the field [`WAKER_PATH_FIELD`] to `"none"`; or
//! * every resource it waits on is held or freed only by tasks that are no
//!   longer live (e.g. a permit or guard leaked with `mem::forget`, whose
//!   `Holds` edge outlived its task).
//!
//! # Known limits
//!
//! Every verdict needs `last_poll_ended`: a dump that carries no poll times
//! (a bare tokio walk without the taskscope registry) yields no waker
//! findings, because "idle for T" cannot be shown.
//!
//! A lost waker in a task that also has a live child, or that waits on a
//! tracked live resource, is not reported (precision over recall). A task
//! woken only by a raw `Waker` that was never cloned (`wake_by_ref` on the
//! borrowed waker from another thread is impossible, so this is rare) would
//! look lost; such code is unsound to begin with.

use crate::model::{EdgeKind, Hazard, Severity, State, Task, TaskId, TaskState};

use super::{describe, fmt_ns, ms, parked_location, Cx, HazardKind};

/// Field the dump analyzer sets to `"none"` when no waker referencing the
/// task is reachable from any live resource or the runtime.
pub const WAKER_PATH_FIELD: &str = "taskscope.waker_path";

/// The per-task part of [`super::detect`]'s single pass over the tasks:
/// collects parked tasks and the parents of live tasks, and judges the
/// (few) parked tasks once the pass is over.
pub(crate) struct Pass<'a> {
    lost: bool,
    dropped: bool,
    leaked: bool,
    counts_trusted: bool,
    parked: Vec<(&'a Task, u64)>,
    parents: Vec<TaskId>,
}

impl<'a> Pass<'a> {
    pub(crate) fn new(cx: &Cx<'a>) -> Option<Self> {
        let lost = cx.on(HazardKind::LostWaker);
        let dropped = cx.on(HazardKind::WakerDroppedUnwoken);
        let leaked = cx.on(HazardKind::LeakedTask);
        (lost || dropped || leaked).then(|| Self {
            lost,
            dropped,
            leaked,
            counts_trusted: waker_counts_trusted(cx.state),
            parked: Vec::new(),
            parents: Vec::new(),
        })
    }

    pub(crate) fn task(&mut self, cx: &Cx<'a>, task: &'a Task) {
        if task.state.is_live() {
            if let Some(p) = task.parent_id {
                self.parents.push(p);
            }
        }
        if let Some(idle_ns) = parked_for(cx, task) {
            let maybe_lost = self.counts_trusted && task.live_wakers() == 0;
            let maybe_leaked = self.leaked && idle_ns >= ms(cx.config.leaked_task_idle_ms);
            if maybe_lost || maybe_leaked {
                self.parked.push((task, idle_ns));
            }
        }
    }

    pub(crate) fn finish(self, cx: &Cx<'a>, out: &mut Vec<Hazard>) {
        if self.parked.is_empty() {
            return;
        }
        cx.set_parents_of_live(self.parents);
        for (task, idle_ns) in self.parked {
            let verdict = if self.counts_trusted {
                classify(cx, task, idle_ns)
            } else {
                Verdict::Unknown
            };
            match verdict {
                Verdict::Lost if self.lost => report_lost(cx, task, idle_ns, out),
                Verdict::DroppedUnwoken if self.dropped => report_dropped(cx, task, idle_ns, out),
                Verdict::Unknown if self.leaked && idle_ns >= ms(cx.config.leaked_task_idle_ms) => {
                    report_leaked(cx, task, idle_ns, out)
                }
                _ => {}
            }
        }
    }
}

/// Whether clone/drop counts can be trusted for this state.
fn waker_counts_trusted(state: &State) -> bool {
    if state.dropped.task_events > 0 {
        return false;
    }
    match &state.process {
        Some(p) if !p.sources.is_empty() => p
            .sources
            .iter()
            .any(|s| matches!(s.as_str(), "tracing" | "wrapper" | "console-api")),
        // No process info: trust counts only if some task shows them at all.
        _ => state.tasks.values().any(|t| t.waker_clones > 0),
    }
}

enum Verdict {
    Lost,
    DroppedUnwoken,
    Unknown,
}

/// How long the task has been parked (idle, polled, no wake since its last
/// poll), or `None` if it is not parked.
fn parked_for(cx: &Cx<'_>, task: &Task) -> Option<u64> {
    if task.state != TaskState::Idle
        || task.polls == 0
        || matches!(task.kind.as_str(), "blocking" | "block_on")
    {
        return None;
    }
    let ended = task.last_poll_ended?;
    if task.last_poll_started.is_some_and(|s| s > ended) {
        return None; // inside a poll: the state is stale
    }
    if task.last_wake.is_some_and(|w| w >= ended) {
        return None; // woken since: should be scheduled
    }
    Some(cx.now.since(ended))
}

fn classify(cx: &Cx<'_>, task: &Task, idle_ns: u64) -> Verdict {
    if task.waker_drops > task.waker_clones || task.live_wakers() != 0 {
        return Verdict::Unknown;
    }
    if idle_ns < ms(cx.config.lost_waker_grace_ms) || cx.has_live_child(task.id) {
        return Verdict::Unknown;
    }
    let mut waits = 0usize;
    let mut on_dropped = 0usize;
    for e in cx.edges_of(task.id, EdgeKind::Waits) {
        waits += 1;
        if cx.resource_dropped(e.resource_id) {
            on_dropped += 1;
        }
    }
    if waits == 0 {
        // Cloned, never woken, every clone dropped: each clone was dropped
        // without a wake (by whatever untracked thing held it).
        if task.waker_clones > 0 && task.wakes == 0 {
            Verdict::DroppedUnwoken
        } else {
            Verdict::Lost
        }
    } else if on_dropped == waits && task.waker_clones > 0 {
        Verdict::DroppedUnwoken
    } else {
        Verdict::Unknown
    }
}

fn waker_evidence(task: &Task, idle_ns: u64) -> Vec<String> {
    vec![
        format!(
            "waker clones: {}, drops: {} → {} live",
            task.waker_clones,
            task.waker_drops,
            task.live_wakers()
        ),
        format!("state: {}, polls: {}", task.state, task.polls),
        format!(
            "parked since its last poll ended {} ago, no wake since",
            fmt_ns(idle_ns)
        ),
    ]
}

fn report_lost(cx: &Cx<'_>, task: &Task, idle_ns: u64, out: &mut Vec<Hazard>) {
    let mut f = cx.finding(HazardKind::LostWaker, Severity::Error);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    h.await_point = super::await_point(task);
    h.location = parked_location(task);
    h.summary = format!(
        "task {} returned Pending and nothing holds its waker: it can never be woken",
        describe(task)
    );
    h.evidence = waker_evidence(task, idle_ns);
    if task.waker_clones == 0 {
        h.evidence
            .push("its waker was never cloned: the pending poll did not store `cx.waker()`".into());
    }
    h.evidence
        .push("no wait edge on any tracked resource, no live child task".into());
    f.push(out);
}

fn report_dropped(cx: &Cx<'_>, task: &Task, idle_ns: u64, out: &mut Vec<Hazard>) {
    let mut f = cx.finding(HazardKind::WakerDroppedUnwoken, Severity::Error);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    h.await_point = super::await_point(task);
    h.location = parked_location(task);
    h.evidence = waker_evidence(task, idle_ns);
    let mut names = Vec::new();
    for e in cx.edges_of(task.id, EdgeKind::Waits) {
        h.resource_ids.push(e.resource_id);
        if let Some(r) = cx.state.resources.get(&e.resource_id) {
            let at = r
                .location
                .as_ref()
                .map(|l| format!(" created at {l}"))
                .unwrap_or_default();
            h.evidence.push(format!(
                "waits ({}) on {} #{}{at}, dropped without waking it",
                e.op, r.concrete_type, r.id
            ));
            names.push(format!("{} #{}", r.concrete_type, r.id));
        }
    }
    h.summary = if names.is_empty() {
        h.evidence.push(format!(
            "never woken (wakes: 0), yet its waker was cloned {} time(s) and every clone was dropped",
            task.waker_clones
        ));
        h.evidence.push(
            "no wait edge on any tracked resource: the holder was a hand-written future, registry or callback list"
                .into(),
        );
        format!(
            "task {} stored its waker, then every copy was dropped without a wake: it can never be woken",
            describe(task)
        )
    } else {
        format!(
            "task {} is pending on {} which was dropped with its waker, without a wake",
            describe(task),
            names.join(", ")
        )
    };
    f.push(out);
}

fn report_leaked(cx: &Cx<'_>, task: &Task, idle_ns: u64, out: &mut Vec<Hazard>) {
    let mut evidence = vec![
        format!("state: {}, polls: {}", task.state, task.polls),
        format!(
            "idle for {} (threshold {})",
            fmt_ns(idle_ns),
            fmt_ns(ms(cx.config.leaked_task_idle_ms))
        ),
    ];
    let mut resource_ids = Vec::new();
    if task
        .fields
        .get(WAKER_PATH_FIELD)
        .is_some_and(|v| v == "none")
    {
        evidence.push(
            "post-mortem: no waker for this task is reachable from any resource or the runtime"
                .into(),
        );
    } else {
        // Every waited resource must be held/freed only by tasks that are gone.
        let mut waits = 0usize;
        for e in cx.edges_of(task.id, EdgeKind::Waits) {
            waits += 1;
            let mut freers = 0usize;
            for fe in cx
                .edges_on(e.resource_id, EdgeKind::Holds)
                .chain(cx.edges_on(e.resource_id, EdgeKind::Frees))
            {
                freers += 1;
                match cx.task(fe.task_id) {
                    Some(t) if t.state.is_live() => return,
                    Some(t) => evidence.push(format!(
                        "waits ({}) on resource #{} whose only holder {} is {}",
                        e.op,
                        e.resource_id,
                        describe(t),
                        t.state
                    )),
                    None => evidence.push(format!(
                        "waits ({}) on resource #{} held by task #{} which no longer exists",
                        e.op, e.resource_id, fe.task_id
                    )),
                }
            }
            if freers == 0 {
                return; // could be woken from outside any task (I/O, timer, thread)
            }
            resource_ids.push(e.resource_id);
        }
        if waits == 0 {
            return;
        }
    }
    let mut f = cx.finding(HazardKind::LeakedTask, Severity::Warning);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    h.resource_ids = resource_ids;
    h.await_point = super::await_point(task);
    h.location = parked_location(task);
    h.summary = format!(
        "task {} has been idle for {} and nothing can wake it",
        describe(task),
        fmt_ns(idle_ns)
    );
    h.evidence = evidence;
    f.push(out);
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{detect, HazardConfig};
    use super::*;
    use crate::model::{EdgeKind, Task};

    fn run(s: &crate::model::State) -> Vec<Hazard> {
        detect(s, &HazardConfig::default(), NOW)
    }

    #[test]
    fn idle_task_without_waker_is_lost() {
        let mut s = state();
        add(&mut s, idle_task(1, 5.0));
        let found = run(&s);
        assert_eq!(kinds(&found), ["lost-waker"]);
        let h = &found[0];
        assert_eq!(h.task_ids, [1]);
        assert!(h.summary.contains("task-1"), "{}", h.summary);
        assert!(
            h.evidence.iter().any(|e| e.contains("0 live")),
            "{:?}",
            h.evidence
        );
        assert_eq!(h.location, s.tasks[&1].location);
        assert_eq!(h.fingerprint, "lost-waker:t1");
    }

    #[test]
    fn task_holding_a_waker_clone_is_not_lost() {
        let mut s = state();
        let mut t = idle_task(1, 5.0);
        t.waker_clones = 3;
        t.waker_drops = 2;
        add(&mut s, t);
        assert!(run(&s).is_empty());
    }

    #[test]
    fn parent_of_a_detached_live_child_is_not_lost() {
        // tokio-rs/console#345: a task that spawned a child and awaits it.
        let mut s = state();
        add(&mut s, idle_task(1, 5.0));
        let mut child = idle_task(2, 0.0);
        child.state = TaskState::Running;
        child.parent_id = Some(1);
        child.waker_clones = 1;
        add(&mut s, child);
        assert!(run(&s).is_empty(), "{:#?}", run(&s));
    }

    #[test]
    fn waits_on_live_resource_is_not_lost() {
        let mut s = state();
        add(&mut s, idle_task(1, 5.0));
        s.resources.insert(9, mutex(9));
        s.edges.push(edge(1, 9, EdgeKind::Waits, 5.0));
        assert!(run(&s).is_empty());
    }

    #[test]
    fn grace_period_and_stale_states_are_respected() {
        let mut s = state();
        add(&mut s, idle_task(1, 0.5)); // parked only 0.5 s
        let mut woken = idle_task(2, 5.0);
        woken.last_wake = Some(at(1.0)); // woken after its last poll
        add(&mut s, woken);
        let mut negative = idle_task(3, 5.0);
        negative.waker_drops = 1; // drop without clone: events were lost
        add(&mut s, negative);
        assert!(run(&s).is_empty(), "{:#?}", run(&s));
        let found = detect(
            &s,
            &HazardConfig {
                lost_waker_grace_ms: 400,
                ..Default::default()
            },
            NOW,
        );
        assert_eq!(found.iter().map(|h| h.task_ids[0]).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn dropped_events_or_hooks_only_sources_silence_waker_hazards() {
        let mut s = state();
        add(&mut s, idle_task(1, 5.0));
        s.dropped.task_events = 10;
        assert!(run(&s).is_empty());
        s.dropped.task_events = 0;
        s.process.as_mut().expect("process").sources = vec!["hooks".into()];
        assert!(run(&s).is_empty());
    }

    #[test]
    fn cloned_never_woken_and_all_dropped_is_dropped_unwoken() {
        // A hand-written registry stored the waker, then was cleared.
        let mut s = state();
        let mut t = idle_task(1, 5.0);
        t.polls = 1;
        t.wakes = 0;
        t.waker_clones = 1;
        t.waker_drops = 1;
        add(&mut s, t);
        let found = run(&s);
        assert_eq!(kinds(&found), ["waker-dropped-unwoken"]);
        assert!(
            found[0].summary.contains("every copy was dropped"),
            "{}",
            found[0].summary
        );
        // twin: woken before, so some drop may be a wake: stays lost-waker
        s.tasks.get_mut(&1).expect("t").wakes = 1;
        assert_eq!(kinds(&run(&s)), ["lost-waker"]);
        // never cloned: lost-waker
        let t = s.tasks.get_mut(&1).expect("t");
        t.wakes = 0;
        t.waker_clones = 0;
        t.waker_drops = 0;
        assert_eq!(kinds(&run(&s)), ["lost-waker"]);
    }

    #[test]
    fn waker_taken_by_a_dropped_resource_is_dropped_unwoken() {
        let mut s = state();
        let mut t = idle_task(1, 5.0);
        t.waker_clones = 4;
        t.waker_drops = 4;
        add(&mut s, t);
        let mut r = mutex(9);
        r.concrete_type = "oneshot::Receiver".into();
        r.dropped_at = Some(at(3.0));
        s.resources.insert(9, r);
        s.edges.push(edge(1, 9, EdgeKind::Waits, 5.0));
        let found = run(&s);
        assert_eq!(kinds(&found), ["waker-dropped-unwoken"]);
        assert_eq!(found[0].resource_ids, [9]);
        assert!(
            found[0].summary.contains("oneshot::Receiver #9"),
            "{}",
            found[0].summary
        );
        // twin: the resource is still alive
        s.resources.get_mut(&9).expect("r").dropped_at = None;
        assert!(run(&s).is_empty());
    }

    #[test]
    fn leaked_task_waits_on_guard_of_a_finished_task() {
        let mut s = state();
        let mut t = idle_task(1, 120.0);
        t.waker_clones = 1; // the mutex holds its waker
        add(&mut s, t);
        let mut holder = idle_task(2, 200.0);
        holder.state = TaskState::Completed;
        add(&mut s, holder);
        s.resources.insert(9, mutex(9));
        s.edges.push(edge(1, 9, EdgeKind::Waits, 120.0));
        s.edges.push(edge(2, 9, EdgeKind::Holds, 200.0));
        let found = run(&s);
        assert_eq!(kinds(&found), ["leaked-task"], "{found:#?}");
        assert_eq!(found[0].resource_ids, [9]);
        // twin: the holder is alive, so it can still release the lock
        s.tasks.get_mut(&2).expect("holder").state = TaskState::Idle;
        assert!(!kinds(&run(&s)).contains(&"leaked-task"));
    }

    #[test]
    fn leaked_task_from_post_mortem_marker_only_after_idle_threshold() {
        let mut s = state();
        s.process = None; // a dump: no waker counts at all
        let mut t: Task = idle_task(1, 30.0);
        t.fields.insert(WAKER_PATH_FIELD.into(), "none".into());
        add(&mut s, t);
        assert!(run(&s).is_empty(), "30 s < 60 s threshold");
        s.tasks.get_mut(&1).expect("t").last_poll_ended = Some(at(61.0));
        s.tasks.get_mut(&1).expect("t").last_poll_started = Some(at(61.1));
        s.tasks.get_mut(&1).expect("t").last_wake = Some(at(61.5));
        assert_eq!(kinds(&run(&s)), ["leaked-task"]);
    }
}
