//! The event model every taskscope surface shares.
//!
//! The live instrumentation produces it, the wire carries it (as
//! `taskscope.v1.Update`s, see [`crate::proto`]), recordings store it, the
//! console renders it, the hazard detectors read it, and the dump analyzer
//! fills the same shapes post-mortem. It is deliberately plain data: owned
//! strings, `u64` nanoseconds, no references into any runtime.
//!
//! Times are [`Timestamp`]s (nanoseconds since the Unix epoch) and durations
//! are `u64` nanoseconds (fields end in `_ns`). In JSON every field may be
//! absent or null where the source did not know it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::histogram::Histogram;

pub type TaskId = u64;

/// Set in the [`TaskId`] of futures wrapped with `taskscope::instrument`
/// (rather than tokio tasks seen through tracing), so both share one id space.
pub const WRAPPED_ID_BIT: u64 = 1 << 62;
pub type ResourceId = u64;
pub type AsyncOpId = u64;
pub type RuntimeId = u64;

/// Nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from(std::time::SystemTime::now())
    }

    /// Nanoseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        Timestamp(
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
                .unwrap_or(0),
        )
    }
}

/// A source location.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Location {
    pub file: String,
    pub line: u32,
    /// 0 when unknown (DWARF gives await lines without columns).
    pub column: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module_path: String,
}

impl Location {
    pub fn new(file: impl Into<String>, line: u32, column: u32) -> Self {
        Self {
            file: file.into(),
            line,
            column,
            module_path: String::new(),
        }
    }

    pub fn is_known(&self) -> bool {
        !self.file.is_empty()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_known() {
            return f.write_str("<unknown>");
        }
        write!(f, "{}:{}", self.file, self.line)?;
        if self.column != 0 {
            write!(f, ":{}", self.column)?;
        }
        Ok(())
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    #[default]
    Unknown,
    /// Not running, not scheduled: waiting for a wake.
    Idle,
    /// Woken, waiting for a worker to poll it.
    Scheduled,
    Running,
    Completed,
    /// Dropped after at least one poll without returning `Ready`.
    Cancelled,
    Panicked,
}

impl TaskState {
    /// Whether the task still exists in the program.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            TaskState::Idle | TaskState::Scheduled | TaskState::Running | TaskState::Unknown
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Unknown => "unknown",
            TaskState::Idle => "idle",
            TaskState::Scheduled => "scheduled",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Cancelled => "cancelled",
            TaskState::Panicked => "panicked",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One frame of a logical async backtrace (outermost first in
/// [`Task::backtrace`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub name: String,
    pub location: Option<Location>,
    /// e.g. "awaiting batch_semaphore::Acquire", or span fields.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Process-unique id. For tokio tasks seen through tracing this is the
    /// span id — the id tokio-console shows.
    pub id: TaskId,
    /// tokio's own task id (`tokio::task::Id`), when known.
    pub tokio_id: Option<u64>,
    pub runtime_id: Option<RuntimeId>,
    pub name: Option<String>,
    /// "task", "blocking", "block_on", "local", "wrapped", ...
    pub kind: String,
    /// Spawn location.
    pub location: Option<Location>,
    /// The task that spawned this one.
    pub parent_id: Option<TaskId>,
    pub future_size: Option<u64>,
    pub original_future_size: Option<u64>,
    pub state: TaskState,
    pub polls: u64,
    pub busy_ns: u64,
    pub scheduled_ns: u64,
    pub idle_ns: u64,
    pub created_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub last_poll_started: Option<Timestamp>,
    pub last_poll_ended: Option<Timestamp>,
    pub last_wake: Option<Timestamp>,
    pub wakes: u64,
    pub self_wakes: u64,
    pub waker_clones: u64,
    pub waker_drops: u64,
    /// Wakes that arrived while the task was already scheduled or running.
    pub wakes_while_scheduled: u64,
    pub max_poll_ns: u64,
    pub fields: BTreeMap<String, String>,
    /// Logical async backtrace, outermost frame first.
    pub backtrace: Vec<Frame>,
    pub poll_histogram: Option<Histogram>,
    pub scheduled_histogram: Option<Histogram>,
    /// Innermost known location of the current or last poll.
    pub last_poll_location: Option<Location>,
}

impl Task {
    /// Live clones of the task's waker (clones minus drops). Negative values
    /// mean events were lost; callers should treat them as unknown.
    pub fn live_wakers(&self) -> i64 {
        self.waker_clones as i64 - self.waker_drops as i64
    }

    /// The id to show users: tokio's task id when known (what
    /// `tokio::task::Id`, panics, `taskscope dump` and the debuggers print),
    /// `w<n>` for a future wrapped with `taskscope::instrument`, else the
    /// process-unique id.
    pub fn display_id(&self) -> String {
        match self.tokio_id {
            Some(id) => id.to_string(),
            None if self.id & WRAPPED_ID_BIT != 0 => format!("w{}", self.id & !WRAPPED_ID_BIT),
            None => self.id.to_string(),
        }
    }

    /// The name to show: the task's name, else its kind and id.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!(
                "{}#{}",
                if self.kind.is_empty() {
                    "task"
                } else {
                    &self.kind
                },
                self.display_id()
            ),
        }
    }

    /// Time spent neither polled nor waiting to be polled, up to `now` or
    /// completion: the total minus busy and scheduled time, as tokio-console
    /// counts it (so a task parked for a minute shows a minute of idle time
    /// even when no event about it arrived meanwhile).
    pub fn idle_ns_at(&self, now: Timestamp) -> u64 {
        if self.created_at.is_none() {
            return self.idle_ns;
        }
        self.total_ns(now)
            .saturating_sub(self.busy_ns)
            .saturating_sub(self.scheduled_ns)
    }

    /// Total time since creation, up to `now` or completion.
    pub fn total_ns(&self, now: Timestamp) -> u64 {
        match (self.created_at, self.completed_at) {
            (Some(c), Some(d)) => d.since(c),
            (Some(c), None) => now.since(c),
            _ => self.busy_ns + self.scheduled_ns + self.idle_ns,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub id: ResourceId,
    /// "Sync", "Timer", "Net", "Channel", ...
    pub kind: String,
    /// e.g. "Mutex", "Semaphore", "Sender|Receiver", "Sleep".
    pub concrete_type: String,
    pub location: Option<Location>,
    pub attributes: BTreeMap<String, String>,
    pub parent_id: Option<ResourceId>,
    pub created_at: Option<Timestamp>,
    pub dropped_at: Option<Timestamp>,
    pub internal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// The task is parked on the resource.
    Waits,
    /// The task holds the resource (lock guard, permit, sole sender…).
    Holds,
    /// The task must act for the resource to make progress (receiver of a
    /// full channel, the task a JoinHandle joins).
    Frees,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitEdge {
    pub task_id: TaskId,
    pub resource_id: ResourceId,
    pub kind: EdgeKind,
    /// e.g. "acquire", "send", "recv".
    pub op: String,
    pub since: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncOp {
    pub id: AsyncOpId,
    pub resource_id: Option<ResourceId>,
    pub task_id: Option<TaskId>,
    pub source: String,
    pub polls: u64,
    pub ready: bool,
    pub created_at: Option<Timestamp>,
    pub dropped_at: Option<Timestamp>,
    pub attributes: BTreeMap<String, String>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finding from the hazard catalogue (`shared/HAZARDS.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hazard {
    /// Stable id, e.g. "lost-waker".
    pub kind: String,
    pub severity: Severity,
    pub task_ids: Vec<TaskId>,
    pub resource_ids: Vec<ResourceId>,
    /// The user's source line the finding points at.
    pub location: Option<Location>,
    /// Where the task is parked, when known.
    pub await_point: Option<Location>,
    pub summary: String,
    pub evidence: Vec<String>,
    pub advice: String,
    pub doc_anchor: String,
    pub detected_at: Option<Timestamp>,
    /// Stable identity for de-duplication.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeFlavor {
    #[default]
    Unknown,
    CurrentThread,
    MultiThread,
    Other,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub id: RuntimeId,
    pub name: String,
    pub flavor: RuntimeFlavor,
    pub workers: u32,
    pub created_at: Option<Timestamp>,
    pub dropped_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub executable: String,
    pub args: Vec<String>,
    pub started_at: Option<Timestamp>,
    pub taskscope_version: String,
    pub runtimes: Vec<Runtime>,
    /// "tracing", "wrapper", "hooks", or "console-api" for a plain
    /// console-subscriber target.
    pub sources: Vec<String>,
}

/// Events the instrumentation dropped because a bounded buffer was full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounters {
    pub task_events: u64,
    pub resource_events: u64,
    pub async_op_events: u64,
    pub recording_frames: u64,
    pub hazards: u64,
    pub backtrace_frames: u64,
}

impl DropCounters {
    pub fn total(&self) -> u64 {
        self.task_events
            + self.resource_events
            + self.async_op_events
            + self.recording_frames
            + self.hazards
            + self.backtrace_frames
    }
}

/// Everything known about one instrumented process at one moment: what a
/// client builds by applying updates in order, and what detectors and views
/// read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub process: Option<ProcessInfo>,
    pub tasks: BTreeMap<TaskId, Task>,
    pub resources: BTreeMap<ResourceId, Resource>,
    pub async_ops: BTreeMap<AsyncOpId, AsyncOp>,
    pub edges: Vec<WaitEdge>,
    /// De-duplicated by fingerprint, in order of first detection.
    pub hazards: Vec<Hazard>,
    pub dropped: DropCounters,
    /// Time of the last applied update (the instrumented process's clock).
    pub updated_at: Option<Timestamp>,
    pub paused: bool,
}

impl State {
    /// Tasks that still exist in the program.
    pub fn live_tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().filter(|t| t.state.is_live())
    }

    /// Edges of `kind` touching `resource`.
    pub fn edges_on(
        &self,
        resource: ResourceId,
        kind: EdgeKind,
    ) -> impl Iterator<Item = &WaitEdge> {
        self.edges
            .iter()
            .filter(move |e| e.resource_id == resource && e.kind == kind)
    }

    /// Edges of `kind` leaving `task`.
    pub fn edges_of(&self, task: TaskId, kind: EdgeKind) -> impl Iterator<Item = &WaitEdge> {
        self.edges
            .iter()
            .filter(move |e| e.task_id == task && e.kind == kind)
    }
}
