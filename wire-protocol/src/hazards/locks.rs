//! Locks and the wait-for graph: `futurelock`, `deadlock-cycle`, and the
//! Graphviz rendering of a cycle ([`cycle_dot`]).
//!
//! # The wait-for graph
//!
//! Nodes are live tasks and resources that have not been dropped. A `Waits`
//! edge goes task → resource; a `Holds` or `Frees` edge is read as resource →
//! task ("only this task can make the resource progress": the lock holder,
//! the sole receiver of a full channel, the task a `JoinHandle` joins).
//!
//! # How it decides
//!
//! * **`deadlock-cycle`** (error): strongly connected components of that
//!   graph (iterative Tarjan, O(nodes + edges)) with at least two tasks are
//!   candidates. A task escapes if *any* resource it waits on has no live
//!   holder/freer, or one outside the candidate set (a `select!` over two
//!   resources, a semaphore with a free-running holder, a timer, a socket).
//!   Escaping tasks are removed until nothing changes; what is left — every
//!   task waiting only on resources held by the others — is reported once,
//!   with every task and resource, if every wait in it is at least
//!   `deadlock_min_wait_ms` old (edges change one at a time; a cycle seen
//!   between two updates is not a deadlock). The fingerprint is the sorted
//!   task and resource ids.
//! * **`futurelock`**: a live task or instrumented future holds a resource,
//!   others have waited on it for `futurelock_ms`, and
//!   * **error**: the holder itself waits on it too, or the holder is a
//!     `wrapped` future and the task that polls it (its `parent_id` chain
//!     through wrapped futures) waits on it: the owner is a waiter, nothing
//!     will ever release the resource (`select! { _ = &mut fut … }` then
//!     `lock().await`);
//!   * **warning**: the holder is a `wrapped` future that has been idle for
//!     `futurelock_ms` while the task that polls it has been polled since:
//!     the task keeps running but no longer drives the future holding the
//!     lock.
//!
//!   A plain task holding a lock while parked on something else is
//!   contention (a lock held across a slow await), not futurelock, and is
//!   not reported.
//!
//! # Known limits
//!
//! A future holding a lock inside a task is only visible when the
//! instrumentation wraps it (`kind = "wrapped"` with its own polls and
//! `Holds` edge); otherwise the lock is attributed to the task and only the
//! holder-also-waits form is seen. Resources the
//! instrumentation does not track (std locks, untracked channels) are
//! invisible.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::model::{
    EdgeKind, Hazard, ResourceId, Severity, State, Task, TaskId, TaskState, WaitEdge,
};

use super::{describe, fmt_ns, ms, parked_location, Cx, HazardKind};

pub(crate) fn detect(cx: &Cx<'_>, out: &mut Vec<Hazard>) {
    if cx.state.edges.is_empty() {
        return;
    }
    if cx.on(HazardKind::Futurelock) {
        futurelock(cx, out);
    }
    if cx.on(HazardKind::DeadlockCycle) {
        deadlock_cycles(cx, out);
    }
}

fn live<'a>(cx: &Cx<'a>, id: TaskId) -> Option<&'a Task> {
    cx.task(id).filter(|t| t.state.is_live())
}

fn wait_age(cx: &Cx<'_>, e: &WaitEdge) -> Option<u64> {
    e.since.map(|s| cx.now.since(s))
}

fn futurelock(cx: &Cx<'_>, out: &mut Vec<Hazard>) {
    let threshold = ms(cx.config.futurelock_ms);
    let old_enough = |w: &WaitEdge| wait_age(cx, w).is_some_and(|a| a >= threshold);
    let mut holders: Vec<TaskId> = Vec::new();
    // One linear walk over the edges grouped by resource.
    for run in cx.runs_by_resource() {
        if run.holds.is_empty() || !run.waits.iter().any(|w| old_enough(cx.edge(w))) {
            continue;
        }
        holders.clear();
        holders.extend(run.holds.iter().map(|h| cx.edge(h).task_id));
        holders.sort_unstable();
        holders.dedup();
        let any_wrapped = cx.any_wrapped();
        let mut dropped = None;
        for &holder_id in &holders {
            let self_wait = run
                .waits
                .iter()
                .map(|w| cx.edge(w))
                .any(|w| w.task_id == holder_id && old_enough(w));
            if !self_wait && !any_wrapped {
                continue; // only a wrapped future can be the non-waiting holder
            }
            if *dropped.get_or_insert_with(|| cx.resource_dropped(run.id)) {
                break;
            }
            let Some(holder) = live(cx, holder_id) else {
                continue;
            };
            if !self_wait && holder.kind != "wrapped" {
                continue; // a task holding a lock while parked: contention, not futurelock
            }
            let Some(hold) = run
                .holds
                .iter()
                .map(|h| cx.edge(h))
                .find(|h| h.task_id == holder_id)
            else {
                continue;
            };
            let waiters: Vec<(&WaitEdge, u64)> = run
                .waits
                .iter()
                .map(|w| cx.edge(w))
                .filter(|w| live(cx, w.task_id).is_some())
                .filter_map(|w| wait_age(cx, w).filter(|&a| a >= threshold).map(|a| (w, a)))
                .collect();
            if waiters.is_empty() {
                continue;
            }
            if let Some((_, age)) = waiters.iter().find(|(w, _)| w.task_id == holder.id) {
                report_futurelock(cx, holder, hold, &waiters, Why::HolderWaits(*age), out);
                continue;
            }
            let enclosing = enclosing_tasks(cx, holder);
            if let Some(owner) = enclosing
                .iter()
                .find(|t| waiters.iter().any(|(w, _)| w.task_id == t.id))
            {
                report_futurelock(cx, holder, hold, &waiters, Why::OwnerWaits(owner), out);
                continue;
            }
            // The future is not polled while the task that owns it keeps running.
            let (Some(ended), Some(parent)) = (holder.last_poll_ended, enclosing.first()) else {
                continue;
            };
            if holder.state != TaskState::Idle
                || holder.last_poll_started.is_some_and(|s| s > ended)
                || cx.now.since(ended) < threshold
            {
                continue;
            }
            if parent.last_poll_started.is_some_and(|s| s > ended) {
                report_futurelock(cx, holder, hold, &waiters, Why::NotPolled(parent), out);
            }
        }
    }
}

/// The tasks that poll `future` (an instrumented `wrapped` future): its
/// parent, and on up while the parents are wrapped futures too, ending with
/// the first real task.
fn enclosing_tasks<'a>(cx: &Cx<'a>, future: &Task) -> Vec<&'a Task> {
    let mut out = Vec::new();
    let mut cur = future;
    for _ in 0..64 {
        if cur.kind != "wrapped" {
            break;
        }
        let Some(parent) = cur.parent_id.and_then(|p| cx.task(p)) else {
            break;
        };
        if parent.id == future.id || out.iter().any(|t: &&Task| t.id == parent.id) {
            break;
        }
        out.push(parent);
        cur = parent;
    }
    out
}

enum Why<'a> {
    /// The holder itself waits on the resource.
    HolderWaits(u64),
    /// The task that polls the holding future waits on the resource.
    OwnerWaits(&'a Task),
    /// The holding future has not been polled since its task last ran.
    NotPolled(&'a Task),
}

fn resource_name(cx: &Cx<'_>, id: ResourceId) -> String {
    match cx.state.resources.get(&id) {
        Some(r) => {
            let ty = if r.concrete_type.is_empty() {
                &r.kind
            } else {
                &r.concrete_type
            };
            match &r.location {
                Some(l) if l.is_known() => format!("{ty} #{id} (created at {l})"),
                _ => format!("{ty} #{id}"),
            }
        }
        None => format!("resource #{id}"),
    }
}

fn report_futurelock(
    cx: &Cx<'_>,
    holder: &Task,
    hold: &WaitEdge,
    waiters: &[(&WaitEdge, u64)],
    why: Why<'_>,
    out: &mut Vec<Hazard>,
) {
    let fatal = !matches!(why, Why::NotPolled(_));
    let mut f = cx.finding(
        HazardKind::Futurelock,
        if fatal {
            Severity::Error
        } else {
            Severity::Warning
        },
    );
    let h = &mut f.0;
    let rname = resource_name(cx, hold.resource_id);
    h.resource_ids = vec![hold.resource_id];
    h.task_ids = vec![holder.id];
    h.task_ids.extend(
        waiters
            .iter()
            .map(|(w, _)| w.task_id)
            .filter(|&t| t != holder.id),
    );
    h.await_point = super::await_point(holder);
    h.location = parked_location(holder);
    let held_for = wait_age(cx, hold)
        .map(|a| format!(" for {}", fmt_ns(a)))
        .unwrap_or_default();
    let idle = holder.last_poll_ended.map(|e| cx.now.since(e)).unwrap_or(0);
    h.summary = match &why {
        Why::HolderWaits(age) => format!(
            "task {} waits on {rname} that it holds itself (for {}): it can never get it",
            describe(holder),
            fmt_ns(*age)
        ),
        Why::OwnerWaits(owner) => format!(
            "task {} waits on {rname}, held by its own future {} that it no longer polls: it can never get it",
            describe(owner),
            describe(holder)
        ),
        Why::NotPolled(owner) => format!(
            "future {} holds {rname} but task {} has not polled it for {} while {} task{} wait on it",
            describe(holder),
            describe(owner),
            fmt_ns(idle),
            waiters.len(),
            if waiters.len() == 1 { "" } else { "s" }
        ),
    };
    h.evidence.push(format!(
        "{} holds {rname} ({}){held_for}",
        describe(holder),
        hold.op
    ));
    match &why {
        Why::HolderWaits(_) => h
            .evidence
            .push("the holder is also a waiter: a future inside it that holds the lock is not being polled".into()),
        Why::OwnerWaits(owner) => h.evidence.push(format!(
            "{} is the task that polls this future, and it waits on the same resource",
            describe(owner)
        )),
        Why::NotPolled(owner) => h.evidence.push(format!(
            "the future's last poll ended {} ago; {} has been polled since (select! over `&mut fut`?)",
            fmt_ns(idle),
            describe(owner)
        )),
    }
    for (w, age) in waiters
        .iter()
        .filter(|(w, _)| w.task_id != holder.id)
        .take(10)
    {
        let name = cx
            .task(w.task_id)
            .map(describe)
            .unwrap_or_else(|| format!("task #{}", w.task_id));
        h.evidence
            .push(format!("{name} has waited ({}) for {}", w.op, fmt_ns(*age)));
    }
    h.fingerprint = super::fingerprint(&h.kind, &[holder.id], &[hold.resource_id]);
    f.push(out);
}

/// The wait-for graph in compressed adjacency form. Nodes `0..tasks.len()`
/// are tasks, the rest resources.
struct Graph {
    tasks: Vec<TaskId>,
    resources: Vec<ResourceId>,
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Graph {
    fn build(cx: &Cx<'_>) -> Self {
        // Only nodes with both an incoming and an outgoing arc can be on a
        // cycle: a resource that is waited on and held/freed, a task that
        // waits and holds/frees. Two linear walks over the index find them
        // before any task is looked up.
        let cyclable_resources: Vec<ResourceId> = cx
            .runs_by_resource()
            .filter(|r| !r.waits.is_empty() && r.can_be_freed())
            .map(|r| r.id)
            .collect();
        let mut usable: Vec<&WaitEdge> = Vec::new();
        if !cyclable_resources.is_empty() {
            for run in cx.runs_by_task() {
                if run.waits.is_empty() || !run.can_be_freed() {
                    continue;
                }
                let edges = run
                    .waits
                    .iter()
                    .chain(run.holds)
                    .chain(run.frees)
                    .map(|e| cx.edge(e));
                let start = usable.len();
                usable.extend(
                    edges.filter(|e| cyclable_resources.binary_search(&e.resource_id).is_ok()),
                );
                if live(cx, run.id).is_none() {
                    usable.truncate(start);
                }
            }
            usable.retain(|e| !cx.resource_dropped(e.resource_id));
        }
        let mut tasks: Vec<TaskId> = usable.iter().map(|e| e.task_id).collect();
        tasks.sort_unstable();
        tasks.dedup();
        let mut resources: Vec<ResourceId> = usable.iter().map(|e| e.resource_id).collect();
        resources.sort_unstable();
        resources.dedup();
        let nt = tasks.len();
        // Both ids come from `usable`, so the searches always succeed.
        let t_ix = |t: TaskId| tasks.binary_search(&t).unwrap_or(0) as u32;
        let r_ix = |r: ResourceId| (nt + resources.binary_search(&r).unwrap_or(0)) as u32;
        let mut arcs: Vec<(u32, u32)> = usable
            .iter()
            .map(|e| match e.kind {
                EdgeKind::Waits => (t_ix(e.task_id), r_ix(e.resource_id)),
                EdgeKind::Holds | EdgeKind::Frees => (r_ix(e.resource_id), t_ix(e.task_id)),
            })
            .collect();
        arcs.sort_unstable();
        arcs.dedup();
        let n = nt + resources.len();
        let mut offsets = vec![0u32; n + 1];
        for (from, _) in &arcs {
            offsets[*from as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let targets = arcs.into_iter().map(|(_, to)| to).collect();
        Self {
            tasks,
            resources,
            offsets,
            targets,
        }
    }

    fn len(&self) -> usize {
        self.tasks.len() + self.resources.len()
    }

    fn succ(&self, n: u32) -> &[u32] {
        &self.targets[self.offsets[n as usize] as usize..self.offsets[n as usize + 1] as usize]
    }

    /// Strongly connected components with more than one node (iterative
    /// Tarjan).
    fn sccs(&self) -> Vec<Vec<u32>> {
        const UNSEEN: u32 = u32::MAX;
        let n = self.len();
        let mut index = vec![UNSEEN; n];
        let mut low = vec![0u32; n];
        let mut on_stack = vec![false; n];
        let mut stack: Vec<u32> = Vec::new();
        let mut call: Vec<(u32, usize)> = Vec::new();
        let mut next = 0u32;
        let mut out = Vec::new();
        for root in 0..n as u32 {
            if index[root as usize] != UNSEEN {
                continue;
            }
            call.push((root, 0));
            while let Some(&mut (v, ref mut i)) = call.last_mut() {
                let vu = v as usize;
                if *i == 0 && index[vu] == UNSEEN {
                    index[vu] = next;
                    low[vu] = next;
                    next += 1;
                    stack.push(v);
                    on_stack[vu] = true;
                }
                let succ = self.succ(v);
                if *i < succ.len() {
                    let w = succ[*i];
                    *i += 1;
                    let wu = w as usize;
                    if index[wu] == UNSEEN {
                        call.push((w, 0));
                    } else if on_stack[wu] {
                        low[vu] = low[vu].min(index[wu]);
                    }
                    continue;
                }
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    let p = parent as usize;
                    low[p] = low[p].min(low[vu]);
                }
                if low[vu] == index[vu] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w as usize] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if comp.len() > 1 {
                        out.push(comp);
                    }
                }
            }
        }
        out
    }
}

fn deadlock_cycles(cx: &Cx<'_>, out: &mut Vec<Hazard>) {
    let graph = Graph::build(cx);
    let min_wait = ms(cx.config.deadlock_min_wait_ms);
    let mut found: Vec<(Vec<TaskId>, Vec<ResourceId>)> = Vec::new();
    for comp in graph.sccs() {
        let mut members: BTreeSet<TaskId> = comp
            .iter()
            .filter(|&&n| (n as usize) < graph.tasks.len())
            .map(|&n| graph.tasks[n as usize])
            .collect();
        // Remove tasks that can be freed from outside the set, to a fixpoint.
        loop {
            let escaping: Vec<TaskId> = members
                .iter()
                .copied()
                .filter(|&t| !blocked_by(cx, t, &members))
                .collect();
            if escaping.is_empty() {
                break;
            }
            for t in escaping {
                members.remove(&t);
            }
        }
        if members.len() < 2 {
            continue;
        }
        let young = members.iter().any(|&t| {
            cx.edges_of(t, EdgeKind::Waits)
                .any(|e| wait_age(cx, e).is_some_and(|a| a < min_wait))
        });
        if young {
            continue;
        }
        let mut resources: Vec<ResourceId> = members
            .iter()
            .flat_map(|&t| {
                cx.edges_of(t, EdgeKind::Waits)
                    .map(|e| e.resource_id)
                    .filter(move |&r| !wait_through_parent(cx, t, r))
            })
            .collect();
        resources.sort_unstable();
        resources.dedup();
        found.push((members.into_iter().collect(), resources));
    }
    found.sort();
    for (tasks, resources) in found {
        report_cycle(cx, tasks, resources, out);
    }
}

/// Whether every resource `task` waits on can only be freed by `members`.
/// Whether `task`'s wait on `resource` is part of a wait on its parent
/// resource that the task also has: tokio's `Mutex`/`RwLock` wait through
/// an internal semaphore (a child resource nobody "holds"); the parent's
/// holder decides, so the child wait is not a way out of a cycle. When the
/// instrumentation does not know the parent, an `internal` resource's wait
/// is taken as part of the task's wait on a public resource, if it has one
/// (internal resources only exist inside public ones).
fn wait_through_parent(cx: &Cx<'_>, task: TaskId, resource: ResourceId) -> bool {
    let Some(r) = cx.state.resources.get(&resource) else {
        return false;
    };
    match r.parent_id {
        Some(p) => cx
            .edges_of(task, EdgeKind::Waits)
            .any(|e| e.resource_id == p),
        None if r.internal => cx.edges_of(task, EdgeKind::Waits).any(|e| {
            e.resource_id != resource
                && cx
                    .state
                    .resources
                    .get(&e.resource_id)
                    .is_some_and(|o| !o.internal)
        }),
        None => false,
    }
}

fn blocked_by(cx: &Cx<'_>, task: TaskId, members: &BTreeSet<TaskId>) -> bool {
    let mut waits = 0;
    for w in cx.edges_of(task, EdgeKind::Waits) {
        if wait_through_parent(cx, task, w.resource_id) {
            continue;
        }
        waits += 1;
        if cx.resource_dropped(w.resource_id) {
            return false;
        }
        let mut freers = 0;
        for f in cx
            .edges_on(w.resource_id, EdgeKind::Holds)
            .chain(cx.edges_on(w.resource_id, EdgeKind::Frees))
        {
            if live(cx, f.task_id).is_none() {
                continue;
            }
            if !members.contains(&f.task_id) {
                return false;
            }
            freers += 1;
        }
        if freers == 0 {
            return false;
        }
    }
    waits > 0
}

/// The holders/freers of `resource` that are in `members`, other than `not`
/// when possible.
fn freer_in(
    cx: &Cx<'_>,
    resource: ResourceId,
    members: &[TaskId],
    not: TaskId,
) -> Option<(TaskId, EdgeKind)> {
    let mut best: Option<(TaskId, EdgeKind)> = None;
    for f in cx
        .edges_on(resource, EdgeKind::Holds)
        .chain(cx.edges_on(resource, EdgeKind::Frees))
    {
        if members.binary_search(&f.task_id).is_err() {
            continue;
        }
        let better = match best {
            None => true,
            Some((b, _)) => f.task_id != not && (b == not || f.task_id < b),
        };
        if better {
            best = Some((f.task_id, f.kind));
        }
    }
    best
}

fn report_cycle(
    cx: &Cx<'_>,
    tasks: Vec<TaskId>,
    resources: Vec<ResourceId>,
    out: &mut Vec<Hazard>,
) {
    let name = |id: TaskId| {
        cx.task(id)
            .map(|t| format!("`{}`", t.display_name()))
            .unwrap_or_else(|| format!("task #{id}"))
    };
    // Walk one cycle from the smallest task: follow a wait to a holder.
    let mut steps: Vec<(TaskId, &WaitEdge, TaskId, EdgeKind)> = Vec::new();
    let mut visited: Vec<TaskId> = Vec::new();
    let mut cur = tasks[0];
    for _ in 0..=tasks.len() {
        if let Some(pos) = visited.iter().position(|&v| v == cur) {
            steps.drain(..pos);
            break;
        }
        visited.push(cur);
        let mut waits: Vec<&WaitEdge> = cx.edges_of(cur, EdgeKind::Waits).collect();
        waits.sort_by_key(|e| e.resource_id);
        let Some((edge, (next, how))) = waits
            .iter()
            .find_map(|e| freer_in(cx, e.resource_id, &tasks, cur).map(|n| (*e, n)))
        else {
            break;
        };
        steps.push((cur, edge, next, how));
        cur = next;
    }
    let mut f = cx.finding(HazardKind::DeadlockCycle, Severity::Error);
    let h = &mut f.0;
    let first = cx.task(tasks[0]);
    h.await_point = first.and_then(super::await_point);
    h.location = first.and_then(parked_location);
    let chain: Vec<String> = steps
        .iter()
        .map(|(t, e, _, _)| format!("{} waits on {}", name(*t), resource_name(cx, e.resource_id)))
        .collect();
    h.summary = if chain.is_empty() {
        format!("deadlock: {} tasks wait on each other", tasks.len())
    } else {
        let back = steps.first().map(|s| name(s.0)).unwrap_or_default();
        format!("deadlock: {}, held by {back}", chain.join(", held by "))
    };
    for (t, e, next, how) in &steps {
        let age = wait_age(cx, e)
            .map(|a| format!(" for {}", fmt_ns(a)))
            .unwrap_or_default();
        let at = cx
            .task(*t)
            .and_then(super::await_point)
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        let role = match how {
            EdgeKind::Frees => "which only",
            _ => "held by",
        };
        let tail = match how {
            EdgeKind::Frees => " can free",
            _ => "",
        };
        h.evidence.push(format!(
            "{}{at} has waited ({}){age} on {}, {role} {}{tail}",
            name(*t),
            e.op,
            resource_name(cx, e.resource_id),
            name(*next)
        ));
    }
    let in_cycle: Vec<TaskId> = steps.iter().map(|s| s.0).collect();
    let others: Vec<String> = tasks
        .iter()
        .filter(|t| !in_cycle.contains(t))
        .map(|&t| name(t))
        .collect();
    if !others.is_empty() {
        h.evidence.push(format!(
            "also blocked only by this cycle: {}",
            others.join(", ")
        ));
    }
    h.task_ids = tasks;
    h.resource_ids = resources;
    f.push(out);
}

/// Renders a finding (normally a `deadlock-cycle`) as a Graphviz digraph:
/// its tasks as boxes, its resources as ellipses, and the wait edges between
/// them (`waits` task → resource, `held by`/`freed by` resource → task).
pub fn cycle_dot(state: &State, hazard: &Hazard) -> String {
    let tasks: BTreeSet<TaskId> = hazard.task_ids.iter().copied().collect();
    let resources: BTreeSet<ResourceId> = hazard.resource_ids.iter().copied().collect();
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", esc(&hazard.fingerprint));
    s.push_str("  rankdir=LR;\n  node [fontname=\"monospace\"];\n");
    if !hazard.summary.is_empty() {
        let _ = writeln!(s, "  label=\"{}\";\n  labelloc=t;", esc(&hazard.summary));
    }
    for id in &tasks {
        let label = match state.tasks.get(id) {
            Some(t) => {
                let mut l = t.display_name();
                if let Some(at) = super::await_point(t).or_else(|| super::spawn_location(t)) {
                    let _ = write!(l, "\n{at}");
                }
                l
            }
            None => format!("task #{id}"),
        };
        let _ = writeln!(s, "  \"t{id}\" [shape=box, label=\"{}\"];", esc(&label));
    }
    for id in &resources {
        let label = match state.resources.get(id) {
            Some(r) => {
                let ty = if r.concrete_type.is_empty() {
                    &r.kind
                } else {
                    &r.concrete_type
                };
                let mut l = format!("{ty} #{id}");
                if let Some(at) = r.location.as_ref().filter(|l| l.is_known()) {
                    let _ = write!(l, "\n{at}");
                }
                l
            }
            None => format!("resource #{id}"),
        };
        let _ = writeln!(s, "  \"r{id}\" [shape=ellipse, label=\"{}\"];", esc(&label));
    }
    let mut edges: Vec<&WaitEdge> = state
        .edges
        .iter()
        .filter(|e| tasks.contains(&e.task_id) && resources.contains(&e.resource_id))
        .collect();
    edges.sort_by_key(|e| (e.task_id, e.resource_id, e.kind));
    for e in edges {
        let (from, to, label, style) = match e.kind {
            EdgeKind::Waits => (
                format!("t{}", e.task_id),
                format!("r{}", e.resource_id),
                format!("waits ({})", e.op),
                ", color=red",
            ),
            EdgeKind::Holds => (
                format!("r{}", e.resource_id),
                format!("t{}", e.task_id),
                "held by".to_string(),
                "",
            ),
            EdgeKind::Frees => (
                format!("r{}", e.resource_id),
                format!("t{}", e.task_id),
                "freed by".to_string(),
                ", style=dashed",
            ),
        };
        let _ = writeln!(
            s,
            "  \"{from}\" -> \"{to}\" [label=\"{}\"{style}];",
            esc(&label)
        );
    }
    s.push_str("}\n");
    s
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{detect, HazardConfig};
    use super::*;
    use crate::model::Timestamp;

    fn only(s: &State, kind: &str) -> Vec<Hazard> {
        detect(s, &HazardConfig::default(), NOW)
            .into_iter()
            .filter(|h| h.kind == kind)
            .collect()
    }

    fn waiting(id: TaskId) -> Task {
        let mut t = idle_task(id, 3.0);
        t.waker_clones = 1;
        t
    }

    /// t1 holds r10 and waits r11; t2 holds r11 and waits r10.
    fn two_task_cycle() -> State {
        let mut s = state();
        add(&mut s, waiting(1));
        add(&mut s, waiting(2));
        s.resources.insert(10, mutex(10));
        s.resources.insert(11, mutex(11));
        s.edges.push(edge(1, 10, EdgeKind::Holds, 5.0));
        s.edges.push(edge(1, 11, EdgeKind::Waits, 3.0));
        s.edges.push(edge(2, 11, EdgeKind::Holds, 5.0));
        s.edges.push(edge(2, 10, EdgeKind::Waits, 3.0));
        s
    }

    #[test]
    fn two_task_lock_inversion_is_one_cycle() {
        let s = two_task_cycle();
        let found = only(&s, "deadlock-cycle");
        assert_eq!(found.len(), 1, "{found:#?}");
        let h = &found[0];
        assert_eq!(h.task_ids, [1, 2]);
        assert_eq!(h.resource_ids, [10, 11]);
        assert_eq!(h.fingerprint, "deadlock-cycle:t1,2:r10,11");
        assert!(
            h.summary
                .starts_with("deadlock: `task-1` waits on Mutex #11"),
            "{}",
            h.summary
        );
        assert_eq!(h.evidence.len(), 2, "{:?}", h.evidence);
        let dot = cycle_dot(&s, h);
        assert!(
            dot.starts_with("digraph \"deadlock-cycle:t1,2:r10,11\" {"),
            "{dot}"
        );
        assert!(
            dot.contains("\"t1\" -> \"r11\" [label=\"waits (acquire)\", color=red];"),
            "{dot}"
        );
        assert!(
            dot.contains("\"r10\" -> \"t1\" [label=\"held by\"];"),
            "{dot}"
        );
        assert!(dot.trim_end().ends_with('}'));
    }

    #[test]
    fn chain_without_cycle_is_not_a_deadlock() {
        let mut s = two_task_cycle();
        s.edges
            .retain(|e| !(e.task_id == 2 && e.kind == EdgeKind::Waits));
        assert!(only(&s, "deadlock-cycle").is_empty());
    }

    #[test]
    fn waits_through_a_mutex_internal_semaphore_do_not_escape() {
        // tokio's Mutex waits through its internal semaphore, a child
        // resource with no holder; the cycle is still a deadlock.
        let mut s = two_task_cycle();
        for (task, mutex_id, sem) in [(1, 11, 21), (2, 10, 20)] {
            let mut r = mutex(sem);
            r.concrete_type = "Semaphore".into();
            r.internal = true;
            r.parent_id = Some(mutex_id);
            s.resources.insert(sem, r);
            s.edges.push(edge(task, sem, EdgeKind::Waits, 3.0));
        }
        let found = only(&s, "deadlock-cycle");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(
            found[0].resource_ids,
            [10, 11],
            "child waits are not listed"
        );
        // Same without parent ids: internal resources are part of the
        // public resource the task waits on.
        let mut s = two_task_cycle();
        for (task, sem) in [(1, 21), (2, 20)] {
            let mut r = mutex(sem);
            r.concrete_type = "Semaphore".into();
            r.internal = true;
            s.resources.insert(sem, r);
            s.edges.push(edge(task, sem, EdgeKind::Waits, 3.0));
        }
        assert_eq!(only(&s, "deadlock-cycle").len(), 1);
        // A child resource whose parent the task does not wait on still
        // counts as a way out.
        let mut s = two_task_cycle();
        let mut r = mutex(30);
        r.parent_id = Some(99);
        s.resources.insert(30, r);
        s.edges.push(edge(2, 30, EdgeKind::Waits, 3.0));
        assert!(only(&s, "deadlock-cycle").is_empty());
    }

    #[test]
    fn escape_through_a_free_holder_or_second_resource() {
        // Semaphore r11 is also held by t3, which waits on nothing: it will
        // release, so t1 and then t2 can proceed.
        let mut s = two_task_cycle();
        add(&mut s, waiting(3));
        s.edges.push(edge(3, 11, EdgeKind::Holds, 5.0));
        assert!(only(&s, "deadlock-cycle").is_empty());
        // t2 also waits on a timer nobody holds (select!): it can escape.
        let mut s = two_task_cycle();
        s.resources.insert(12, mutex(12));
        s.edges.push(edge(2, 12, EdgeKind::Waits, 3.0));
        assert!(only(&s, "deadlock-cycle").is_empty());
    }

    #[test]
    fn young_cycles_and_finished_tasks_are_not_reported() {
        let mut s = two_task_cycle();
        s.edges[1].since = Some(at(0.1));
        assert!(
            only(&s, "deadlock-cycle").is_empty(),
            "0.1 s old: edges may be mid-update"
        );
        let mut s = two_task_cycle();
        s.tasks.get_mut(&2).expect("t2").state = TaskState::Completed;
        assert!(only(&s, "deadlock-cycle").is_empty());
    }

    #[test]
    fn three_task_cycle_through_a_join_handle_and_stable_fingerprint() {
        // t1 -waits-> r20 (JoinHandle) -freed by-> t2 -waits-> r21 -held by-> t3 -waits-> r22 -held by-> t1
        let mut s = state();
        for id in 1..=3 {
            add(&mut s, waiting(id));
        }
        for r in 20..=22 {
            s.resources.insert(r, mutex(r));
        }
        s.edges.push(edge(1, 20, EdgeKind::Waits, 2.0));
        s.edges.push(edge(2, 20, EdgeKind::Frees, 2.0));
        s.edges.push(edge(2, 21, EdgeKind::Waits, 2.0));
        s.edges.push(edge(3, 21, EdgeKind::Holds, 2.0));
        s.edges.push(edge(3, 22, EdgeKind::Waits, 2.0));
        s.edges.push(edge(1, 22, EdgeKind::Holds, 2.0));
        let a = only(&s, "deadlock-cycle");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].task_ids, [1, 2, 3]);
        assert!(
            a[0].evidence[0].contains("which only `task-2` can free"),
            "{:?}",
            a[0].evidence
        );
        s.edges.reverse();
        let b = detect(
            &s,
            &HazardConfig::default(),
            Timestamp(NOW.0 + 1_000_000_000),
        );
        let b: Vec<_> = b
            .into_iter()
            .filter(|h| h.kind == "deadlock-cycle")
            .collect();
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
        assert_eq!(a[0].summary, b[0].summary, "the walk is order-independent");
    }

    #[test]
    fn holder_waiting_on_its_own_lock_is_a_fatal_futurelock() {
        let mut s = state();
        add(&mut s, waiting(1));
        add(&mut s, waiting(2));
        s.resources.insert(10, mutex(10));
        s.edges.push(edge(1, 10, EdgeKind::Holds, 4.0));
        s.edges.push(edge(1, 10, EdgeKind::Waits, 3.0));
        s.edges.push(edge(2, 10, EdgeKind::Waits, 3.0));
        let found = detect(&s, &HazardConfig::default(), NOW);
        assert_eq!(kinds(&found), ["futurelock"], "not also a deadlock-cycle");
        assert_eq!(found[0].severity, Severity::Error);
        assert_eq!(found[0].task_ids, [1, 2]);
        assert_eq!(found[0].fingerprint, "futurelock:t1:r10");
        // under the threshold: nothing yet
        s.edges[1].since = Some(at(1.0));
        s.edges[2].since = Some(at(1.0));
        assert!(only(&s, "futurelock").is_empty());
    }

    #[test]
    fn unpolled_wrapped_future_holding_a_lock_is_a_futurelock() {
        let mut s = state();
        // task 1 polls wrapped future 3, which took mutex 10 and was last
        // polled 3 s ago; task 1 has been polled since (0.5 s ago).
        let mut task = waiting(1);
        task.last_poll_started = Some(at(0.5));
        task.last_poll_ended = Some(at(0.4));
        add(&mut s, task);
        let mut fut = waiting(3);
        fut.kind = "wrapped".into();
        fut.parent_id = Some(1);
        add(&mut s, fut);
        add(&mut s, waiting(2));
        s.resources.insert(10, mutex(10));
        s.edges.push(edge(3, 10, EdgeKind::Holds, 4.0));
        s.edges.push(edge(2, 10, EdgeKind::Waits, 2.5));
        let found = only(&s, "futurelock");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].severity, Severity::Warning);
        assert_eq!(found[0].task_ids, [3, 2]);
        assert!(
            found[0].summary.contains("task `task-1`"),
            "{}",
            found[0].summary
        );
        // the owning task itself now waits on the lock: fatal
        s.edges.push(edge(1, 10, EdgeKind::Waits, 2.5));
        let found = only(&s, "futurelock");
        assert_eq!(found[0].severity, Severity::Error);
        assert!(
            found[0].summary.contains("held by its own future"),
            "{}",
            found[0].summary
        );
    }

    #[test]
    fn plain_holder_parked_elsewhere_is_contention_not_futurelock() {
        let mut s = state();
        add(&mut s, waiting(1)); // idle 3 s holding the lock, e.g. across an HTTP call
        add(&mut s, waiting(2));
        s.resources.insert(10, mutex(10));
        s.edges.push(edge(1, 10, EdgeKind::Holds, 4.0));
        s.edges.push(edge(2, 10, EdgeKind::Waits, 2.5));
        assert!(only(&s, "futurelock").is_empty());
        // a wrapped future whose task has not run since is also just parked
        let mut s2 = s.clone();
        s2.tasks.get_mut(&1).expect("t1").kind = "wrapped".into();
        s2.tasks.get_mut(&1).expect("t1").parent_id = Some(5);
        let mut owner = waiting(5);
        owner.last_poll_started = Some(at(3.5));
        add(&mut s2, owner);
        assert!(only(&s2, "futurelock").is_empty());
    }

    #[test]
    fn dot_escapes_labels() {
        let mut s = two_task_cycle();
        s.tasks.get_mut(&1).expect("t1").name = Some("say \"hi\"".into());
        let h = &only(&s, "deadlock-cycle")[0];
        let dot = cycle_dot(&s, h);
        assert!(
            dot.contains("label=\"say \\\"hi\\\"\\nsrc/main.rs:11:5\""),
            "{dot}"
        );
    }
}
