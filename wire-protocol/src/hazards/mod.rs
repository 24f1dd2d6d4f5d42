//! Hazard detectors: pure functions from a [`State`] to [`Hazard`] findings.
//!
//! The same code serves the live instrumentation (once per publish tick, about
//! 1 Hz, on states with 100k+ tasks), recordings being replayed, core dumps
//! read post-mortem, and CI reports. Every detector reads only the shared
//! event model ([`crate::model`]) and a [`HazardConfig`]; none does I/O or
//! keeps state between calls, except [`GrowthTracker`], which the caller keeps
//! between ticks because growth needs history.
//!
//! # Shape
//!
//! * [`detect`] runs every enabled detector and returns the findings in a
//!   deterministic order (the same state gives the same list).
//! * [`HazardConfig`] holds thresholds, per-kind enable/disable and severity
//!   overrides; it loads from the `[hazards]` table of `taskscope.toml`
//!   ([`HazardConfig::from_toml_str`]).
//! * [`catalogue()`] describes every hazard id of `shared/HAZARDS.md`: title,
//!   default severity, advice, doc anchor and where it can be detected.
//! * [`cycle_dot`] renders a `deadlock-cycle` finding as Graphviz.
//!
//! The live side, once per tick:
//!
//! ```
//! use taskscope_wire::hazards::{detect, GrowthTracker, HazardConfig};
//! use taskscope_wire::model::{State, Timestamp};
//!
//! let config = HazardConfig::from_toml_str("[hazards]\nblocking_poll_ms = 20\n")?;
//! let mut growth = GrowthTracker::new(); // kept between ticks
//! let state = State::default(); // the registry's current state
//! let now = Timestamp::now();
//! growth.observe(&state, config.growth_window_ms, now);
//! let mut findings = detect(&state, &config, now);
//! findings.extend(growth.hazards(&state, &config, now));
//! assert!(findings.is_empty());
//! # Ok::<(), taskscope_wire::hazards::ConfigError>(())
//! ```
//!
//! # Precision first
//!
//! A false positive in CI is a bug. Every detector therefore requires
//! positive evidence and stays silent when the evidence is missing or
//! contradictory: negative live-waker counts, dropped instrumentation events,
//! a state that says "idle" while the last wake is newer than the last poll,
//! wait edges that are younger than a grace period. Known blind spots are
//! listed per detector below and in each module's docs.
//!
//! # Cost
//!
//! [`detect`] is O(tasks + edges · log edges): one sorted index of the wait
//! edges is built per call (two flat sorted arrays), then a single pass over
//! the tasks feeds every per-task detector, and the wait-for graph is built
//! only from nodes that both wait and hold. Strings are only built for
//! findings.
//!
//! # Detectors and the evidence they need
//!
//! | id | module | needs |
//! |---|---|---|
//! | `lost-waker`, `waker-dropped-unwoken`, `leaked-task` | [`wakers`] | `state`, `polls`, `waker_clones`/`waker_drops` (a wake by value counts as a drop), `last_poll_ended`, `last_wake`, `parent_id`, `Waits` edges, `process.sources` |
//! | `blocking-poll`, `never-yielded`, `scheduling-delay`, `self-wake-loop` | [`timing`] | `max_poll_ns`, `last_poll_started/ended`, `state`, `last_wake`, `scheduled_histogram`, `runtime_id`, `wakes`, `self_wakes` |
//! | `cancelled-midway`, `runtime-dropped-with-tasks`, `multiple-runtimes`, `large-future`, `unpolled-future` | [`lifecycle`] | `state`, `polls`, `completed_at`, `process.runtimes` with `dropped_at`, `future_size`/`original_future_size`, `kind = "wrapped"`, `created_at` |
//! | `futurelock`, `deadlock-cycle` | [`locks`] | `Holds`/`Waits`/`Frees` edges with `since`, resource `dropped_at`; for futurelock of a sub-future: `kind = "wrapped"` futures with their own polls, `parent_id` = the task polling them |
//! | `unbounded-growth` | [`growth`] | spawn `location` of live tasks, fed tick by tick to a [`GrowthTracker`] |
//! | `nested-runtime`, `held-across-await` | [`markers`] | marker fields set by the instrumentation (see [`markers`]) or a `block_on` task whose `parent_id` is the task being polled |

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::{
    EdgeKind, Hazard, Location, ResourceId, Severity, State, Task, TaskId, Timestamp, WaitEdge,
};

pub mod catalogue;
pub mod growth;
pub mod lifecycle;
pub mod locks;
pub mod markers;
pub mod timing;
pub mod wakers;

pub use catalogue::{catalogue, Catalogue, Detection, HazardInfo, HazardKind};
pub use growth::GrowthTracker;
pub use locks::cycle_dot;

const MS: u64 = 1_000_000;

/// Thresholds and switches for the detectors.
///
/// Loads from the `[hazards]` table of `taskscope.toml`; every key is
/// optional and unknown keys are errors:
///
/// ```toml
/// [hazards]
/// blocking_poll_ms = 20
/// disable = ["multiple-runtimes"]
///
/// [hazards.severity]
/// large-future = "error"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HazardConfig {
    /// `lost-waker`/`waker-dropped-unwoken`: how long a task must have been
    /// parked without a live waker before it is reported (absorbs the delay
    /// between a poll ending and its waker events arriving).
    pub lost_waker_grace_ms: u64,
    /// `blocking-poll`: one poll at least this long.
    pub blocking_poll_ms: u64,
    /// `scheduling-delay`: a woken task waited at least this long to be polled.
    pub scheduling_delay_ms: u64,
    /// `never-yielded`: a first poll that has run at least this long.
    pub never_yielded_ms: u64,
    /// `self-wake-loop`: reported when self-wakes / wakes is above this ratio…
    pub self_wake_ratio: f64,
    /// …over at least this many wakes.
    pub self_wake_min_wakes: u64,
    /// `leaked-task`: idle at least this long with no waker path.
    pub leaked_task_idle_ms: u64,
    /// `futurelock`: the lock holder has not been polled, and waiters have
    /// waited, at least this long.
    pub futurelock_ms: u64,
    /// `deadlock-cycle`: every wait in the cycle is at least this old (a
    /// cycle seen between two edge updates is not reported).
    pub deadlock_min_wait_ms: u64,
    /// `large-future`: future size at spawn, in bytes.
    pub large_future_bytes: u64,
    /// `unbounded-growth`: the window over which live tasks per spawn site
    /// must keep growing…
    pub growth_window_ms: u64,
    /// …by at least this many tasks.
    pub growth_min_increase: u64,
    /// `unpolled-future`: an instrumented future alive this long without a
    /// poll.
    pub unpolled_ms: u64,
    /// Hazard ids that are never reported.
    pub disable: Vec<HazardKind>,
    /// Severity overrides by hazard id.
    pub severity: BTreeMap<HazardKind, Severity>,
}

impl Default for HazardConfig {
    fn default() -> Self {
        Self {
            lost_waker_grace_ms: 1_000,
            blocking_poll_ms: 10,
            scheduling_delay_ms: 50,
            never_yielded_ms: 1_000,
            self_wake_ratio: 0.5,
            self_wake_min_wakes: 100,
            leaked_task_idle_ms: 60_000,
            futurelock_ms: 2_000,
            deadlock_min_wait_ms: 500,
            large_future_bytes: 16 * 1024,
            growth_window_ms: 60_000,
            growth_min_increase: 100,
            unpolled_ms: 1_000,
            disable: Vec::new(),
            severity: BTreeMap::new(),
        }
    }
}

/// Why a `[hazards]` table could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not TOML, or a key/value the `[hazards]` table does not accept (the
    /// message names the key, its line and column, and the accepted keys).
    #[error("taskscope.toml: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value of the right type outside its valid range.
    #[error("taskscope.toml: [hazards] {key} = {value}: {reason}")]
    InvalidValue {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    hazards: HazardConfig,
    // Other tables of taskscope.toml belong to other components.
    #[serde(flatten)]
    _rest: BTreeMap<String, toml::Value>,
}

impl HazardConfig {
    /// Loads the `[hazards]` table of a whole `taskscope.toml` (other tables
    /// are ignored; a file without `[hazards]` gives the defaults).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text)?;
        file.hazards.validate()?;
        Ok(file.hazards)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.self_wake_ratio > 0.0 && self.self_wake_ratio < 1.0) {
            return Err(ConfigError::InvalidValue {
                key: "self_wake_ratio",
                value: self.self_wake_ratio.to_string(),
                reason: "must be between 0 and 1 (exclusive)",
            });
        }
        if self.growth_window_ms == 0 {
            return Err(ConfigError::InvalidValue {
                key: "growth_window_ms",
                value: "0".into(),
                reason: "the growth window must be longer than 0 ms",
            });
        }
        if self.self_wake_min_wakes == 0 {
            return Err(ConfigError::InvalidValue {
                key: "self_wake_min_wakes",
                value: "0".into(),
                reason: "at least one wake is needed to compute a ratio",
            });
        }
        Ok(())
    }

    /// Whether `kind` is reported.
    pub fn enabled(&self, kind: HazardKind) -> bool {
        !self.disable.contains(&kind)
    }

    /// The severity `kind` is reported with when the detector would use
    /// `default`.
    pub fn severity_for(&self, kind: HazardKind, default: Severity) -> Severity {
        self.severity.get(&kind).copied().unwrap_or(default)
    }
}

/// Runs every enabled detector over `state` as of `now` (the instrumented
/// process's clock; pass `state.updated_at` for recordings and dumps).
///
/// `unbounded-growth` needs history and is reported by
/// [`GrowthTracker::hazards`] instead.
pub fn detect(state: &State, config: &HazardConfig, now: Timestamp) -> Vec<Hazard> {
    let cx = Cx::new(state, config, now);
    let mut out = Vec::new();
    // One pass over the tasks feeds every per-task detector: with 100k
    // tasks the walk itself (cache misses on large `Task`s) is the cost.
    let mut wakers = wakers::Pass::new(&cx);
    let mut timing = timing::Pass::new(&cx);
    let mut lifecycle = lifecycle::Pass::new(&cx);
    let markers = markers::Pass::new(&cx);
    if wakers.is_some() || timing.is_some() || lifecycle.is_some() || markers.is_some() {
        let mut any_wrapped = false;
        for task in state.tasks.values() {
            any_wrapped |= task.kind == "wrapped";
            if let Some(p) = &mut wakers {
                p.task(&cx, task);
            }
            if let Some(p) = &mut timing {
                p.task(&cx, task, &mut out);
            }
            if let Some(p) = &mut lifecycle {
                p.task(&cx, task, &mut out);
            }
            if let Some(p) = &markers {
                p.task(&cx, task, &mut out);
            }
        }
        let _ = cx.any_wrapped.set(any_wrapped);
    }
    if let Some(p) = wakers {
        p.finish(&cx, &mut out);
    }
    if let Some(p) = timing {
        p.finish(&cx, &mut out);
    }
    if let Some(p) = lifecycle {
        p.finish(&cx, &mut out);
    }
    lifecycle::detect_process(&cx, &mut out);
    locks::detect(&cx, &mut out);
    out
}

/// What every detector gets: the state, the config, the clock and an index
/// of the wait edges.
pub(crate) struct Cx<'a> {
    pub state: &'a State,
    pub config: &'a HazardConfig,
    pub now: Timestamp,
    index: EdgeIndex,
    /// Whether any task is an instrumented (`wrapped`) future.
    any_wrapped: std::cell::OnceCell<bool>,
}

impl<'a> Cx<'a> {
    pub(crate) fn new(state: &'a State, config: &'a HazardConfig, now: Timestamp) -> Self {
        Self {
            state,
            config,
            now,
            index: EdgeIndex::build(state),
            any_wrapped: std::cell::OnceCell::new(),
        }
    }

    /// A context for detectors that read no edges (skips the index).
    pub(crate) fn without_edges(
        state: &'a State,
        config: &'a HazardConfig,
        now: Timestamp,
    ) -> Self {
        Self {
            state,
            config,
            now,
            index: EdgeIndex::default(),
            any_wrapped: std::cell::OnceCell::new(),
        }
    }

    pub(crate) fn on(&self, kind: HazardKind) -> bool {
        self.config.enabled(kind)
    }

    pub(crate) fn task(&self, id: TaskId) -> Option<&'a Task> {
        self.state.tasks.get(&id)
    }

    /// Edges leaving `task`, of `kind`.
    pub(crate) fn edges_of(
        &self,
        task: TaskId,
        kind: EdgeKind,
    ) -> impl Iterator<Item = &'a WaitEdge> + '_ {
        let edges = &self.state.edges;
        let key = (task, kind_rank(kind));
        let ix = &self.index.by_task;
        let start = ix.partition_point(|&(t, k, _)| (t, k) < key);
        ix[start..]
            .iter()
            .take_while(move |&&(t, k, _)| (t, k) == key)
            .map(move |&(_, _, i)| &edges[i as usize])
    }

    /// Edges touching `resource`, of `kind`.
    pub(crate) fn edges_on(
        &self,
        resource: ResourceId,
        kind: EdgeKind,
    ) -> impl Iterator<Item = &'a WaitEdge> + '_ {
        let edges = &self.state.edges;
        let key = (resource, kind_rank(kind));
        let ix = &self.index.by_resource;
        let start = ix.partition_point(|&(r, k, _)| (r, k) < key);
        ix[start..]
            .iter()
            .take_while(move |&&(r, k, _)| (r, k) == key)
            .map(move |&(_, _, i)| &edges[i as usize])
    }

    /// Whether some live task names `task` as its parent (the set is built
    /// on first use: most ticks never ask).
    pub(crate) fn has_live_child(&self, task: TaskId) -> bool {
        self.index
            .parents_of_live
            .get_or_init(|| {
                let mut p: Vec<TaskId> = self
                    .state
                    .tasks
                    .values()
                    .filter(|t| t.state.is_live())
                    .filter_map(|t| t.parent_id)
                    .collect();
                p.sort_unstable();
                p.dedup();
                p
            })
            .binary_search(&task)
            .is_ok()
    }

    /// Whether the state has instrumented (`wrapped`) futures.
    pub(crate) fn any_wrapped(&self) -> bool {
        *self
            .any_wrapped
            .get_or_init(|| self.state.tasks.values().any(|t| t.kind == "wrapped"))
    }

    /// The wait edges grouped by resource, in resource id order.
    pub(crate) fn runs_by_resource(&self) -> Runs<'_> {
        Runs {
            keyed: &self.index.by_resource,
        }
    }

    /// The wait edges grouped by task, in task id order.
    pub(crate) fn runs_by_task(&self) -> Runs<'_> {
        Runs {
            keyed: &self.index.by_task,
        }
    }

    /// The edge an index entry points at.
    pub(crate) fn edge(&self, entry: &(u64, u8, u32)) -> &'a WaitEdge {
        &self.state.edges[entry.2 as usize]
    }

    /// Provides the parent ids of every live task, collected during the
    /// single pass, so [`Cx::has_live_child`] needs no pass of its own.
    pub(crate) fn set_parents_of_live(&self, mut parents: Vec<TaskId>) {
        parents.sort_unstable();
        parents.dedup();
        // Already built means it was built from the same state: keep it.
        let _ = self.index.parents_of_live.set(parents);
    }

    /// Whether the resource is known to have been dropped by `now`.
    pub(crate) fn resource_dropped(&self, id: ResourceId) -> bool {
        self.state
            .resources
            .get(&id)
            .and_then(|r| r.dropped_at)
            .is_some_and(|d| d <= self.now)
    }

    /// A new finding of `kind` with the catalogue's advice and anchor, the
    /// configured severity, and `detected_at = now`. Call [`Finding::push`]
    /// to compute the fingerprint and emit it.
    pub(crate) fn finding(&self, kind: HazardKind, severity: Severity) -> Finding {
        let info = kind.info();
        Finding(Hazard {
            kind: info.id.to_string(),
            severity: self.config.severity_for(kind, severity),
            advice: info.advice.to_string(),
            doc_anchor: info.doc_anchor.to_string(),
            detected_at: Some(self.now),
            ..Hazard::default()
        })
    }
}

/// A hazard under construction.
pub(crate) struct Finding(pub Hazard);

impl Finding {
    /// Emits the finding with the default fingerprint (kind + sorted ids).
    pub(crate) fn push(mut self, out: &mut Vec<Hazard>) {
        if self.0.fingerprint.is_empty() {
            self.0.fingerprint = fingerprint(&self.0.kind, &self.0.task_ids, &self.0.resource_ids);
        }
        out.push(self.0);
    }
}

/// All edges of one task or resource, split by kind (index entries; see
/// [`Cx::edge`]).
pub(crate) struct Run<'x> {
    pub id: u64,
    pub waits: &'x [(u64, u8, u32)],
    pub holds: &'x [(u64, u8, u32)],
    pub frees: &'x [(u64, u8, u32)],
}

impl Run<'_> {
    /// Whether some edge says who holds or frees this (resource) / what this
    /// task holds or frees.
    pub(crate) fn can_be_freed(&self) -> bool {
        !self.holds.is_empty() || !self.frees.is_empty()
    }
}

/// Iterator over the [`Run`]s of a sorted index: one linear walk.
pub(crate) struct Runs<'x> {
    keyed: &'x [(u64, u8, u32)],
}

impl<'x> Iterator for Runs<'x> {
    type Item = Run<'x>;

    fn next(&mut self) -> Option<Run<'x>> {
        let id = self.keyed.first()?.0;
        let len = self.keyed.iter().take_while(|e| e.0 == id).count();
        let (run, rest) = self.keyed.split_at(len);
        self.keyed = rest;
        let w = run.partition_point(|e| e.1 < 1);
        let h = run.partition_point(|e| e.1 < 2);
        Some(Run {
            id,
            waits: &run[..w],
            holds: &run[w..h],
            frees: &run[h..],
        })
    }
}

/// `(id, kind, index into state.edges)`, sorted, built once per [`detect`]
/// call: lookups touch only this contiguous array.
type Keyed = Vec<(u64, u8, u32)>;

/// Sorted views of `state.edges`, built once per [`detect`] call.
#[derive(Default)]
struct EdgeIndex {
    by_task: Keyed,
    by_resource: Keyed,
    /// Sorted, de-duplicated ids of tasks that have a live child task.
    parents_of_live: std::cell::OnceCell<Vec<TaskId>>,
}

fn kind_rank(kind: EdgeKind) -> u8 {
    match kind {
        EdgeKind::Waits => 0,
        EdgeKind::Holds => 1,
        EdgeKind::Frees => 2,
    }
}

impl EdgeIndex {
    fn build(state: &State) -> Self {
        // More than u32::MAX edges cannot come from one process snapshot;
        // index only the first u32::MAX if it ever did.
        let edges = &state.edges[..state.edges.len().min(u32::MAX as usize)];
        let mut by_task: Keyed = Vec::with_capacity(edges.len());
        let mut by_resource: Keyed = Vec::with_capacity(edges.len());
        for (i, e) in edges.iter().enumerate() {
            by_task.push((e.task_id, kind_rank(e.kind), i as u32));
            by_resource.push((e.resource_id, kind_rank(e.kind), i as u32));
        }
        by_task.sort_unstable();
        by_resource.sort_unstable();
        Self {
            by_task,
            by_resource,
            parents_of_live: std::cell::OnceCell::new(),
        }
    }
}

/// The stable identity of a finding: its kind and its sorted task and
/// resource ids, e.g. `deadlock-cycle:t3,7:r12,15`.
pub fn fingerprint(kind: &str, task_ids: &[TaskId], resource_ids: &[ResourceId]) -> String {
    let mut t = task_ids.to_vec();
    t.sort_unstable();
    t.dedup();
    let mut r = resource_ids.to_vec();
    r.sort_unstable();
    r.dedup();
    let mut s = String::with_capacity(kind.len() + 8 * (t.len() + r.len()) + 6);
    s.push_str(kind);
    s.push_str(":t");
    join_ids(&mut s, &t);
    if !r.is_empty() {
        s.push_str(":r");
        join_ids(&mut s, &r);
    }
    s
}

fn join_ids(s: &mut String, ids: &[u64]) {
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{id}");
    }
}

/// Where the task is parked: its innermost backtrace frame with a known
/// location, else the innermost location of its last poll.
pub fn await_point(task: &Task) -> Option<Location> {
    task.backtrace
        .iter()
        .rev()
        .find_map(|f| f.location.as_ref().filter(|l| l.is_known()))
        .or(task.last_poll_location.as_ref().filter(|l| l.is_known()))
        .cloned()
}

/// The user's line for a parked task: its await point, else its spawn site.
pub(crate) fn parked_location(task: &Task) -> Option<Location> {
    await_point(task).or_else(|| spawn_location(task))
}

/// The user's line for something that happened inside a poll: the last poll's
/// location, else the innermost backtrace frame, else the spawn site.
pub(crate) fn poll_location(task: &Task) -> Option<Location> {
    task.last_poll_location
        .as_ref()
        .filter(|l| l.is_known())
        .cloned()
        .or_else(|| await_point(task))
        .or_else(|| spawn_location(task))
}

pub(crate) fn spawn_location(task: &Task) -> Option<Location> {
    task.location.as_ref().filter(|l| l.is_known()).cloned()
}

/// `name (spawned at file:line)`, for summaries and evidence.
pub(crate) fn describe(task: &Task) -> String {
    match spawn_location(task) {
        Some(l) => format!("`{}` (spawned at {l})", task.display_name()),
        None => format!("`{}`", task.display_name()),
    }
}

/// The nanoseconds a task's current poll has lasted, if it is inside one.
pub(crate) fn current_poll_ns(task: &Task, now: Timestamp) -> Option<u64> {
    if task.state != crate::model::TaskState::Running {
        return None;
    }
    let started = task.last_poll_started?;
    match task.last_poll_ended {
        Some(ended) if ended >= started => None,
        _ => Some(now.since(started)),
    }
}

/// Human duration: `850 µs`, `12.3 ms`, `2.50 s`, `3.0 min`.
pub fn fmt_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < MS {
        format!("{:.0} µs", ns as f64 / 1e3)
    } else if ns < 1_000 * MS {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns < 120_000 * MS {
        format!("{:.2} s", ns as f64 / 1e9)
    } else {
        format!("{:.1} min", ns as f64 / 60e9)
    }
}

/// Human size: `512 B`, `40.0 KiB`.
pub(crate) fn fmt_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

pub(crate) const fn ms(v: u64) -> u64 {
    v.saturating_mul(MS)
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Builders for synthetic states shared by the unit tests.
    use super::*;
    use crate::model::{Resource, TaskState};

    pub const SEC: u64 = 1_000_000_000;
    /// A fixed "now" far from the epoch so subtractions never saturate.
    pub const NOW: Timestamp = Timestamp(1_700_000_000 * SEC);

    pub fn at(secs_ago: f64) -> Timestamp {
        Timestamp(NOW.0 - (secs_ago * SEC as f64) as u64)
    }

    pub fn state() -> State {
        State {
            process: Some(crate::model::ProcessInfo {
                sources: vec!["tracing".into()],
                ..Default::default()
            }),
            updated_at: Some(NOW),
            ..Default::default()
        }
    }

    /// A task idle for `idle_secs`, polled 3 times, woken before its last poll.
    pub fn idle_task(id: TaskId, idle_secs: f64) -> Task {
        Task {
            id,
            name: Some(format!("task-{id}")),
            kind: "task".into(),
            location: Some(Location::new("src/main.rs", 10 + id as u32, 5)),
            state: TaskState::Idle,
            polls: 3,
            wakes: 2,
            created_at: Some(at(idle_secs + 10.0)),
            last_wake: Some(at(idle_secs + 0.5)),
            last_poll_started: Some(at(idle_secs + 0.1)),
            last_poll_ended: Some(at(idle_secs)),
            max_poll_ns: 50_000,
            ..Default::default()
        }
    }

    pub fn add(state: &mut State, task: Task) {
        state.tasks.insert(task.id, task);
    }

    pub fn mutex(id: ResourceId) -> Resource {
        Resource {
            id,
            kind: "Sync".into(),
            concrete_type: "Mutex".into(),
            location: Some(Location::new("src/lock.rs", id as u32, 1)),
            ..Default::default()
        }
    }

    pub fn edge(
        task: TaskId,
        resource: ResourceId,
        kind: EdgeKind,
        since_secs_ago: f64,
    ) -> WaitEdge {
        WaitEdge {
            task_id: task,
            resource_id: resource,
            kind,
            op: match kind {
                EdgeKind::Waits => "acquire".into(),
                EdgeKind::Holds => "guard".into(),
                EdgeKind::Frees => "join".into(),
            },
            since: Some(at(since_secs_ago)),
        }
    }

    pub fn kinds(hazards: &[Hazard]) -> Vec<&str> {
        hazards.iter().map(|h| h.kind.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

    #[test]
    fn fingerprint_sorts_and_dedups_ids() {
        assert_eq!(
            fingerprint("deadlock-cycle", &[7, 3, 7], &[15, 12]),
            "deadlock-cycle:t3,7:r12,15"
        );
        assert_eq!(fingerprint("lost-waker", &[42], &[]), "lost-waker:t42");
    }

    #[test]
    fn defaults_match_the_catalogue() {
        let c = HazardConfig::default();
        assert_eq!(c.blocking_poll_ms, 10);
        assert_eq!(c.never_yielded_ms, 1_000);
        assert_eq!(c.large_future_bytes, 16_384);
        assert_eq!(c.self_wake_ratio, 0.5);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn loads_hazards_table_and_ignores_other_tables() {
        let c = HazardConfig::from_toml_str(
            r#"
            [console]
            theme = "dark"

            [hazards]
            blocking_poll_ms = 25
            disable = ["multiple-runtimes"]

            [hazards.severity]
            large-future = "error"
            "#,
        )
        .expect("valid config");
        assert_eq!(c.blocking_poll_ms, 25);
        assert_eq!(c.never_yielded_ms, 1_000, "unset keys keep defaults");
        assert!(!c.enabled(HazardKind::MultipleRuntimes));
        assert_eq!(
            c.severity_for(HazardKind::LargeFuture, Severity::Warning),
            Severity::Error
        );
        assert_eq!(
            HazardConfig::from_toml_str("").expect("empty file"),
            HazardConfig::default()
        );
    }

    #[test]
    fn unknown_keys_and_ids_are_clear_errors() {
        let err =
            HazardConfig::from_toml_str("[hazards]\nblocking_pol_ms = 3\n").expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("blocking_pol_ms"), "{msg}");
        assert!(
            msg.contains("blocking_poll_ms"),
            "lists accepted keys: {msg}"
        );
        assert!(msg.contains("line 2"), "points at the line: {msg}");

        let err = HazardConfig::from_toml_str("[hazards]\ndisable = [\"lost-wakers\"]\n")
            .expect_err("bad id");
        let msg = err.to_string();
        assert!(
            msg.contains("lost-wakers") && msg.contains("lost-waker"),
            "{msg}"
        );

        let err =
            HazardConfig::from_toml_str("[hazards]\nself_wake_ratio = 1.5\n").expect_err("range");
        assert!(err.to_string().contains("self_wake_ratio = 1.5"), "{err}");
    }

    #[test]
    fn disabled_kinds_are_not_reported_and_severity_overrides_apply() {
        let mut s = state();
        let mut t = idle_task(1, 5.0);
        t.max_poll_ns = 200 * 1_000_000;
        add(&mut s, t);
        let found = detect(&s, &HazardConfig::default(), NOW);
        assert!(kinds(&found).contains(&"blocking-poll"), "{found:#?}");

        let config = HazardConfig {
            disable: vec![HazardKind::BlockingPoll],
            severity: [(HazardKind::LostWaker, Severity::Info)]
                .into_iter()
                .collect(),
            ..HazardConfig::default()
        };
        let found = detect(&s, &config, NOW);
        assert!(!kinds(&found).contains(&"blocking-poll"));
        let lost = found
            .iter()
            .find(|h| h.kind == "lost-waker")
            .expect("lost-waker still on");
        assert_eq!(lost.severity, Severity::Info);
    }

    #[test]
    fn locations_prefer_the_innermost_frame() {
        let mut t = idle_task(1, 1.0);
        assert_eq!(
            parked_location(&t),
            t.location.clone(),
            "falls back to the spawn site"
        );
        t.backtrace = vec![
            crate::model::Frame {
                name: "outer".into(),
                location: Some(Location::new("src/a.rs", 1, 1)),
                detail: String::new(),
            },
            crate::model::Frame {
                name: "inner".into(),
                location: Some(Location::new("src/b.rs", 2, 0)),
                detail: String::new(),
            },
            crate::model::Frame::default(),
        ];
        assert_eq!(await_point(&t), Some(Location::new("src/b.rs", 2, 0)));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_ns(850_000), "850 µs");
        assert_eq!(fmt_ns(12_345_678), "12.3 ms");
        assert_eq!(fmt_ns(2_500_000_000), "2.50 s");
        assert_eq!(fmt_bytes(40 * 1024), "40.0 KiB");
    }
}
