//! Poll timing: `blocking-poll`, `never-yielded`, `scheduling-delay`,
//! `self-wake-loop`.
//!
//! # How it decides
//!
//! * **`never-yielded`**: the task is `Running`, has at most one poll, and
//!   that poll has run for `never_yielded_ms` (`now − last_poll_started`;
//!   `busy_ns` when the start is unknown). It replaces `blocking-poll` for
//!   the same task.
//! * **`blocking-poll`**: the longest poll (`max_poll_ns`, or the current
//!   poll of a `Running` task) is at least `blocking_poll_ms`. `blocking`
//!   tasks (`spawn_blocking`) are meant to block and are skipped. The
//!   location is the last poll's innermost location, else the innermost
//!   backtrace frame, else the spawn site.
//! * **`scheduling-delay`**: needs both halves of the catalogue trigger, per
//!   runtime: a task that waited at least `scheduling_delay_ms` to be polled
//!   **and** a task of the same runtime whose poll held a worker at least as
//!   long. Live: a `Scheduled` task woken that long ago while a `Running`
//!   task is inside a poll that long. History: `scheduled_histogram.max_ns`
//!   over the threshold while some task's `max_poll_ns` is too. One finding
//!   per runtime names the poll(s) that held the thread (the location) and
//!   every starved task. A delay without a long poll (plain overload) is not
//!   this hazard and is not reported.
//! * **`self-wake-loop`**: `wakes ≥ self_wake_min_wakes` and
//!   `self_wakes / wakes > self_wake_ratio`.
//!
//! # Known limits
//!
//! A CPU-bound loop that calls `yield_now()` on purpose is a self-wake loop
//! by these numbers; disable the kind or raise the ratio if that is the
//! design. Time spent in a poll is measured by the instrumentation clock; a
//! process paused in a debugger inflates it.

use std::collections::BTreeMap;

use crate::histogram::bucket_upper;
use crate::model::{Hazard, RuntimeId, Severity, Task, TaskId, TaskState};

use super::{
    current_poll_ns, describe, fmt_ns, ms, parked_location, poll_location, Cx, HazardKind,
};

/// The per-task part of [`super::detect`]'s single pass over the tasks,
/// plus the per-runtime grouping `scheduling-delay` finishes with.
pub(crate) struct Pass {
    never: bool,
    blocking: bool,
    selfwake: bool,
    delay: Option<BTreeMap<Option<RuntimeId>, Runtime>>,
}

impl Pass {
    pub(crate) fn new(cx: &Cx<'_>) -> Option<Self> {
        let never = cx.on(HazardKind::NeverYielded);
        let blocking = cx.on(HazardKind::BlockingPoll);
        let selfwake = cx.on(HazardKind::SelfWakeLoop);
        let delay = cx.on(HazardKind::SchedulingDelay).then(BTreeMap::new);
        (never || blocking || selfwake || delay.is_some()).then_some(Self {
            never,
            blocking,
            selfwake,
            delay,
        })
    }

    pub(crate) fn task(&mut self, cx: &Cx<'_>, task: &Task, out: &mut Vec<Hazard>) {
        if task.kind == "blocking" {
            return; // spawn_blocking: meant to block, holds no worker
        }
        let reported_never = self.never && never_yielded(cx, task, out);
        if self.blocking && !reported_never {
            blocking_poll(cx, task, out);
        }
        if self.selfwake {
            self_wake_loop(cx, task, out);
        }
        if let Some(runtimes) = &mut self.delay {
            collect_delay(cx, task, runtimes);
        }
    }

    pub(crate) fn finish(self, cx: &Cx<'_>, out: &mut Vec<Hazard>) {
        if let Some(runtimes) = self.delay {
            scheduling_delay(cx, runtimes, out);
        }
    }
}

fn never_yielded(cx: &Cx<'_>, task: &Task, out: &mut Vec<Hazard>) -> bool {
    if task.state != TaskState::Running || task.polls > 1 {
        return false;
    }
    let running_ns = match current_poll_ns(task, cx.now) {
        Some(ns) => ns,
        None if task.last_poll_started.is_none() => task.busy_ns,
        None => return false,
    };
    let threshold = ms(cx.config.never_yielded_ms);
    if running_ns < threshold {
        return false;
    }
    let mut f = cx.finding(HazardKind::NeverYielded, Severity::Warning);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    h.location = poll_location(task);
    h.summary = format!(
        "task {} has run for {} without yielding once",
        describe(task),
        fmt_ns(running_ns)
    );
    h.evidence = vec![
        format!("state: running, polls: {}", task.polls),
        format!(
            "inside its first poll for {} (threshold {})",
            fmt_ns(running_ns),
            fmt_ns(threshold)
        ),
    ];
    if let Some(l) = &task.last_poll_location {
        h.evidence.push(format!("last seen at {l}"));
    }
    f.push(out);
    true
}

fn blocking_poll(cx: &Cx<'_>, task: &Task, out: &mut Vec<Hazard>) {
    let threshold = ms(cx.config.blocking_poll_ms);
    let current = current_poll_ns(task, cx.now).unwrap_or(0);
    let worst = task.max_poll_ns.max(current);
    if worst < threshold {
        return;
    }
    let mut f = cx.finding(HazardKind::BlockingPoll, Severity::Warning);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    h.location = poll_location(task);
    h.await_point = super::await_point(task);
    h.summary = if current >= threshold {
        format!(
            "task {} has been inside one poll for {}, blocking its worker thread",
            describe(task),
            fmt_ns(current)
        )
    } else {
        format!(
            "task {} blocked its worker thread for {} in one poll",
            describe(task),
            fmt_ns(worst)
        )
    };
    h.evidence.push(format!(
        "longest poll: {} (threshold {})",
        fmt_ns(worst),
        fmt_ns(threshold)
    ));
    if current >= threshold {
        h.evidence
            .push(format!("the current poll has run for {}", fmt_ns(current)));
    }
    if let Some(hist) = task.poll_histogram.as_ref().filter(|h| !h.is_empty()) {
        // Buckets that reach the threshold (resolution ±20 %).
        let slow: u64 = hist
            .counts
            .iter()
            .enumerate()
            .filter(|(i, _)| bucket_upper(*i) > threshold)
            .map(|(_, c)| *c)
            .sum();
        h.evidence.push(format!(
            "about {slow} of {} polls took ≥ {}; p50 {}, p99 {}",
            hist.count,
            fmt_ns(threshold),
            fmt_ns(hist.quantile(0.5)),
            fmt_ns(hist.quantile(0.99))
        ));
    } else {
        h.evidence.push(format!(
            "polls: {}, busy: {}",
            task.polls,
            fmt_ns(task.busy_ns)
        ));
    }
    if let Some(l) = &task.last_poll_location {
        h.evidence.push(format!("last poll at {l}"));
    }
    f.push(out);
}

fn self_wake_loop(cx: &Cx<'_>, task: &Task, out: &mut Vec<Hazard>) {
    if task.wakes < cx.config.self_wake_min_wakes || task.wakes == 0 {
        return;
    }
    let ratio = task.self_wakes as f64 / task.wakes as f64;
    if ratio <= cx.config.self_wake_ratio {
        return;
    }
    let mut f = cx.finding(HazardKind::SelfWakeLoop, Severity::Warning);
    let h = &mut f.0;
    h.task_ids = vec![task.id];
    h.location = parked_location(task);
    h.await_point = super::await_point(task);
    h.summary = format!(
        "task {} woke itself in {:.0}% of its {} wakes: it is busy polling",
        describe(task),
        ratio * 100.0,
        task.wakes
    );
    h.evidence = vec![
        format!(
            "self-wakes: {} of {} wakes ({:.1}%, threshold > {:.0}% over ≥ {} wakes)",
            task.self_wakes,
            task.wakes,
            ratio * 100.0,
            cx.config.self_wake_ratio * 100.0,
            cx.config.self_wake_min_wakes
        ),
        format!("polls: {}, busy: {}", task.polls, fmt_ns(task.busy_ns)),
    ];
    f.push(out);
}

/// Per runtime: starved tasks and the polls that held the workers.
#[derive(Default)]
struct Runtime {
    starved_now: Vec<(TaskId, u64)>,
    culprits_now: Vec<(TaskId, u64)>,
    starved_hist: Vec<(TaskId, u64)>,
    culprits_hist: Vec<(TaskId, u64)>,
}

fn collect_delay(cx: &Cx<'_>, task: &Task, runtimes: &mut BTreeMap<Option<RuntimeId>, Runtime>) {
    let threshold = ms(cx.config.scheduling_delay_ms);
    if matches!(task.kind.as_str(), "blocking") {
        return; // runs on the blocking pool, holds no worker
    }
    if task.state == TaskState::Scheduled {
        if let Some(w) = task.last_wake {
            let waited = cx.now.since(w);
            if waited >= threshold {
                runtimes
                    .entry(task.runtime_id)
                    .or_default()
                    .starved_now
                    .push((task.id, waited));
            }
        }
    }
    if let Some(cur) = current_poll_ns(task, cx.now).filter(|&c| c >= threshold) {
        runtimes
            .entry(task.runtime_id)
            .or_default()
            .culprits_now
            .push((task.id, cur));
    }
    if let Some(hist) = &task.scheduled_histogram {
        if hist.max_ns >= threshold {
            runtimes
                .entry(task.runtime_id)
                .or_default()
                .starved_hist
                .push((task.id, hist.max_ns));
        }
    }
    if task.max_poll_ns >= threshold {
        runtimes
            .entry(task.runtime_id)
            .or_default()
            .culprits_hist
            .push((task.id, task.max_poll_ns));
    }
}

fn scheduling_delay(
    cx: &Cx<'_>,
    runtimes: BTreeMap<Option<RuntimeId>, Runtime>,
    out: &mut Vec<Hazard>,
) {
    let threshold = ms(cx.config.scheduling_delay_ms);
    for (rt, mut r) in runtimes {
        // A task cannot starve itself.
        let (mut starved, mut culprits, live) =
            if !r.culprits_now.is_empty() && !r.starved_now.is_empty() {
                (
                    std::mem::take(&mut r.starved_now),
                    std::mem::take(&mut r.culprits_now),
                    true,
                )
            } else {
                (
                    std::mem::take(&mut r.starved_hist),
                    std::mem::take(&mut r.culprits_hist),
                    false,
                )
            };
        if culprits.len() == 1 {
            let only = culprits[0].0;
            starved.retain(|(id, _)| *id != only);
        }
        if starved.is_empty() || culprits.is_empty() {
            continue;
        }
        culprits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        culprits.truncate(3);
        starved.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        report_delay(cx, rt, &starved, &culprits, live, threshold, out);
    }
}

fn report_delay(
    cx: &Cx<'_>,
    rt: Option<RuntimeId>,
    starved: &[(TaskId, u64)],
    culprits: &[(TaskId, u64)],
    live: bool,
    threshold: u64,
    out: &mut Vec<Hazard>,
) {
    let name = |id: TaskId| {
        cx.task(id)
            .map(describe)
            .unwrap_or_else(|| format!("task #{id}"))
    };
    let (top, top_ns) = culprits[0];
    let mut f = cx.finding(HazardKind::SchedulingDelay, Severity::Warning);
    let h = &mut f.0;
    h.location = cx.task(top).and_then(poll_location);
    h.await_point = cx.task(starved[0].0).and_then(super::await_point);
    let rt_name = rt
        .and_then(|id| {
            cx.state
                .process
                .as_ref()
                .and_then(|p| p.runtimes.iter().find(|r| r.id == id))
                .map(|r| {
                    if r.name.is_empty() {
                        format!("runtime #{id}")
                    } else {
                        format!("runtime `{}`", r.name)
                    }
                })
        })
        .unwrap_or_else(|| "the runtime".into());
    let verb = if live { "is holding" } else { "held" };
    h.summary = if starved.len() == 1 {
        format!(
            "task {} waited {} to be polled while {} {verb} a worker in a {} poll",
            name(starved[0].0),
            fmt_ns(starved[0].1),
            name(top),
            fmt_ns(top_ns)
        )
    } else {
        format!(
            "{} tasks on {rt_name} waited up to {} to be polled while {} {verb} a worker in a {} poll",
            starved.len(),
            fmt_ns(starved[0].1),
            name(top),
            fmt_ns(top_ns)
        )
    };
    for (id, ns) in culprits {
        let at = cx
            .task(*id)
            .and_then(poll_location)
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        h.evidence.push(if live {
            format!(
                "{} has been inside one poll for {}{at}",
                name(*id),
                fmt_ns(*ns)
            )
        } else {
            format!("{} had a poll of {}{at}", name(*id), fmt_ns(*ns))
        });
    }
    for (id, ns) in starved.iter().take(10) {
        h.evidence.push(if live {
            format!(
                "{} woken {} ago, still not polled (threshold {})",
                name(*id),
                fmt_ns(*ns),
                fmt_ns(threshold)
            )
        } else {
            format!(
                "{} waited up to {} between wake and poll (threshold {})",
                name(*id),
                fmt_ns(*ns),
                fmt_ns(threshold)
            )
        });
    }
    if starved.len() > 10 {
        h.evidence
            .push(format!("… and {} more starved tasks", starved.len() - 10));
    }
    // The fingerprint follows the poll(s) that held the thread: the set of
    // starved tasks changes from tick to tick.
    let culprit_ids: Vec<TaskId> = culprits.iter().map(|c| c.0).collect();
    h.fingerprint = match rt {
        Some(rt) => format!("{}:rt{rt}", super::fingerprint(&h.kind, &culprit_ids, &[])),
        None => super::fingerprint(&h.kind, &culprit_ids, &[]),
    };
    h.task_ids = culprit_ids;
    h.task_ids.extend(starved.iter().map(|s| s.0));
    f.push(out);
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{detect, HazardConfig};
    use crate::histogram::Histogram;
    use crate::model::{Hazard, Location, State, Task, TaskState};

    fn busy(id: u64, polls: u64, running_for_secs: f64) -> Task {
        let mut t = idle_task(id, 0.0);
        t.state = TaskState::Running;
        t.polls = polls;
        t.waker_clones = 1;
        t.last_poll_ended = Some(at(running_for_secs + 0.001));
        t.last_poll_started = Some(at(running_for_secs));
        t.last_wake = Some(at(running_for_secs + 0.002));
        t.max_poll_ns = 1_000;
        t
    }

    fn only(s: &State, kind: &str) -> Vec<Hazard> {
        detect(s, &HazardConfig::default(), NOW)
            .into_iter()
            .filter(|h| h.kind == kind)
            .collect()
    }

    #[test]
    fn first_poll_running_long_never_yielded() {
        let mut s = state();
        add(&mut s, busy(1, 1, 2.0));
        let found = detect(&s, &HazardConfig::default(), NOW);
        assert_eq!(
            kinds(&found),
            ["never-yielded"],
            "replaces blocking-poll: {found:#?}"
        );
        assert!(found[0].summary.contains("2.00 s"), "{}", found[0].summary);
        // twin: a long-lived task that yields (many polls) is not never-yielded
        let mut s = state();
        let mut t = busy(1, 5_000, 0.001);
        t.busy_ns = 30_000_000_000;
        add(&mut s, t);
        assert!(detect(&s, &HazardConfig::default(), NOW).is_empty());
    }

    #[test]
    fn never_yielded_boundary() {
        let mut s = state();
        add(&mut s, busy(1, 1, 0.999));
        assert!(only(&s, "never-yielded").is_empty());
        let mut s = state();
        add(&mut s, busy(1, 1, 1.0));
        assert_eq!(only(&s, "never-yielded").len(), 1);
    }

    #[test]
    fn blocking_poll_threshold_and_location() {
        let mut s = state();
        let mut t = busy(1, 10, 0.0);
        t.state = TaskState::Idle;
        t.waker_clones = 1;
        t.max_poll_ns = 9_999_999;
        t.last_poll_location = Some(Location::new("src/db.rs", 42, 9));
        add(&mut s, t.clone());
        assert!(only(&s, "blocking-poll").is_empty(), "just under 10 ms");
        t.max_poll_ns = 10_000_000;
        let mut hist = Histogram::default();
        hist.record_n(20_000, 9);
        hist.record(10_000_000);
        t.poll_histogram = Some(hist);
        add(&mut s, t);
        let found = only(&s, "blocking-poll");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].location, Some(Location::new("src/db.rs", 42, 9)));
        assert!(
            found[0]
                .evidence
                .iter()
                .any(|e| e.contains("about 1 of 10 polls")),
            "{:?}",
            found[0].evidence
        );
    }

    #[test]
    fn spawn_blocking_tasks_may_block() {
        let mut s = state();
        let mut t = busy(1, 1, 5.0);
        t.kind = "blocking".into();
        t.max_poll_ns = 5_000_000_000;
        add(&mut s, t);
        assert!(detect(&s, &HazardConfig::default(), NOW).is_empty());
    }

    #[test]
    fn scheduling_delay_names_the_blocking_poll() {
        let mut s = state();
        let mut hog = busy(1, 3, 0.5);
        hog.runtime_id = Some(1);
        hog.name = Some("hog".into());
        hog.last_poll_location = Some(Location::new("src/hog.rs", 7, 1));
        add(&mut s, hog);
        let mut starved = idle_task(2, 0.0);
        starved.runtime_id = Some(1);
        starved.state = TaskState::Scheduled;
        starved.waker_clones = 1;
        starved.last_poll_ended = Some(at(0.4));
        starved.last_poll_started = Some(at(0.41));
        starved.last_wake = Some(at(0.3));
        add(&mut s, starved);
        let found = only(&s, "scheduling-delay");
        assert_eq!(found.len(), 1, "{found:#?}");
        let h = &found[0];
        assert_eq!(h.task_ids, [1, 2]);
        assert_eq!(h.location, Some(Location::new("src/hog.rs", 7, 1)));
        assert!(
            h.summary.contains("task-2") && h.summary.contains("`hog`"),
            "{}",
            h.summary
        );
        assert_eq!(h.fingerprint, "scheduling-delay:t1:rt1");

        // twin: the hog runs on another runtime: no finding
        s.tasks.get_mut(&1).expect("hog").runtime_id = Some(2);
        assert!(only(&s, "scheduling-delay").is_empty());
    }

    #[test]
    fn scheduling_delay_without_a_long_poll_is_load_not_a_hazard() {
        let mut s = state();
        let mut t = idle_task(2, 0.0);
        t.waker_clones = 1;
        let mut hist = Histogram::default();
        hist.record(200_000_000);
        t.scheduled_histogram = Some(hist);
        add(&mut s, t.clone());
        assert!(only(&s, "scheduling-delay").is_empty());
        // history: another task had a 300 ms poll on the same runtime
        let mut hog = idle_task(3, 0.0);
        hog.waker_clones = 1;
        hog.max_poll_ns = 300_000_000;
        add(&mut s, hog);
        let found = only(&s, "scheduling-delay");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].task_ids, [3, 2]);
    }

    #[test]
    fn self_wake_loop_needs_majority_and_volume() {
        let mut s = state();
        let mut t = idle_task(1, 0.0);
        t.waker_clones = 1;
        t.wakes = 100;
        t.self_wakes = 51;
        add(&mut s, t.clone());
        assert_eq!(only(&s, "self-wake-loop").len(), 1);
        t.self_wakes = 50; // exactly half: not "more than 50 %"
        add(&mut s, t.clone());
        assert!(only(&s, "self-wake-loop").is_empty());
        t.wakes = 99;
        t.self_wakes = 99; // too few wakes to judge
        add(&mut s, t);
        assert!(only(&s, "self-wake-loop").is_empty());
    }
}
