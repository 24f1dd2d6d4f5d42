//! The console's state: everything the screen shows, and nothing about how.
//!
//! # Shape
//! * [`ConsoleState`] owns the target's model (a [`LiveState`] fed by
//!   [`WatchEvent`]s, or a replay [`Timeline`]), the connection status, the
//!   stack of [`Screen`]s, the task table's sort, filter and runtime choice,
//!   and the selection of each screen.
//! * [`ConsoleState::apply`] performs an [`Action`] (from `input.rs`) and
//!   returns an [`Effect`] when the outside world must act (quit, write a
//!   `.dot` file); it never does I/O itself.
//! * Row lists (the filtered, sorted tasks and resources) are cached: events
//!   only mark them stale, and [`ConsoleState::refresh`] rebuilds them once
//!   before a frame. Drawing a frame then costs the visible rows only, so
//!   100k+ tasks stay responsive.
//!
//! There is no wall clock in here: durations are judged against the model's
//! `updated_at` (the app's clock), replay time comes from the caller.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use taskscope_wire::hazards::{self, HazardConfig};
use taskscope_wire::model::{Hazard, ResourceId, RuntimeId, State, Task, TaskId, Timestamp};

use crate::client::{LiveState, Protocol, WatchEvent};

use super::replay::Timeline;

/// The hazard id of a deadlock cycle.
pub const DEADLOCK_CYCLE: &str = "deadlock-cycle";
/// Rows moved by PageUp / PageDown.
pub const PAGE: usize = 20;
/// Reconnect delays: the first, and the cap.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Hazards are also detected client-side (console-api targets carry none)
/// at most this often in the app's time, per 50k live tasks.
pub const DETECT_EVERY_NS: u64 = 1_000_000_000;

/// Delay before reconnect attempt `attempt` (1-based): 100 ms, doubling,
/// capped at 5 s.
pub fn backoff_delay(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(factor).min(BACKOFF_MAX)
}

/// One screen of the view stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Tasks,
    /// One task; `selected` is the highlighted link (parent, resources).
    Task {
        id: TaskId,
        selected: usize,
    },
    Resources,
    /// One resource; `selected` is the highlighted task link.
    Resource {
        id: ResourceId,
        selected: usize,
    },
    /// The problem view: every hazard finding.
    Hazards,
}

/// Columns of the task table, in display order. Digits `1`..`0` sort by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskColumn {
    Id,
    State,
    Name,
    Total,
    Busy,
    Scheduled,
    Idle,
    Polls,
    Wakers,
    Warnings,
    Location,
}

impl TaskColumn {
    pub const ALL: [TaskColumn; 11] = [
        TaskColumn::Warnings,
        TaskColumn::Id,
        TaskColumn::State,
        TaskColumn::Name,
        TaskColumn::Total,
        TaskColumn::Busy,
        TaskColumn::Scheduled,
        TaskColumn::Idle,
        TaskColumn::Polls,
        TaskColumn::Wakers,
        TaskColumn::Location,
    ];

    pub fn title(self) -> &'static str {
        match self {
            TaskColumn::Id => "ID",
            TaskColumn::State => "STATE",
            TaskColumn::Name => "NAME",
            TaskColumn::Total => "TOTAL",
            TaskColumn::Busy => "BUSY",
            TaskColumn::Scheduled => "SCHED",
            TaskColumn::Idle => "IDLE",
            TaskColumn::Polls => "POLLS",
            TaskColumn::Wakers => "WAKERS",
            TaskColumn::Warnings => "WARN",
            TaskColumn::Location => "LOCATION",
        }
    }

    /// The key that sorts by this column.
    pub fn key(self) -> char {
        match self {
            TaskColumn::Warnings => '1',
            TaskColumn::Id => '2',
            TaskColumn::State => '3',
            TaskColumn::Name => '4',
            TaskColumn::Total => '5',
            TaskColumn::Busy => '6',
            TaskColumn::Scheduled => '7',
            TaskColumn::Idle => '8',
            TaskColumn::Polls => '9',
            TaskColumn::Wakers => '0',
            TaskColumn::Location => 'l',
        }
    }

    pub fn from_key(c: char) -> Option<Self> {
        Self::ALL.into_iter().find(|col| col.key() == c)
    }

    /// Numbers read best largest first; text and ids smallest first.
    fn default_descending(self) -> bool {
        !matches!(
            self,
            TaskColumn::Id | TaskColumn::Name | TaskColumn::Location | TaskColumn::State
        )
    }
}

/// What the user asked for (see `input.rs` for the keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Quit,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    /// Open the selected row or follow the selected link.
    Enter,
    /// Close the help, or leave the current screen.
    Back,
    ShowTasks,
    ShowResources,
    ShowHazards,
    ToggleHelp,
    SortBy(TaskColumn),
    InvertSort,
    StartFilter,
    FilterChar(char),
    FilterBackspace,
    FilterCommit,
    FilterCancel,
    /// Live: freeze the screen (updates are kept and applied on resume).
    /// Replay: play/pause the timeline.
    TogglePause,
    NextRuntime,
    ExportDot,
    SeekBack,
    SeekForward,
    StepBack,
    StepForward,
    Faster,
    Slower,
}

/// What the event loop must do after an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    None,
    Quit,
    /// Write `contents` to `path`, then report with
    /// [`ConsoleState::set_message`].
    WriteDot {
        path: PathBuf,
        contents: String,
    },
}

/// How keys are read right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    Normal,
    /// Typing a `/` filter.
    Filter,
    /// The `?` overlay is open.
    Help,
}

/// The link to the live target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    Connecting {
        attempt: u32,
    },
    Connected {
        protocol: Protocol,
    },
    /// The last attempt failed; the next one starts after `retry_in`.
    Reconnecting {
        attempt: u32,
        retry_in: Duration,
        error: String,
    },
    /// Replaying a recording.
    Replay,
}

/// Where the model comes from.
#[derive(Debug)]
enum Source {
    Live(Box<LiveState>),
    Replay(Box<Timeline>),
}

/// The `/` filter: the committed regex, and the text being typed.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub regex: Option<Regex>,
    /// `Some` while typing.
    pub editing: Option<String>,
    /// Why the last typed text was not accepted.
    pub error: Option<String>,
}

impl Filter {
    pub fn text(&self) -> &str {
        self.regex.as_ref().map_or("", Regex::as_str)
    }
}

/// The console's whole state. See the module docs.
#[derive(Debug)]
pub struct ConsoleState {
    source: Source,
    target: String,
    connection: Connection,
    /// Events received while paused, applied on resume.
    held: Vec<WatchEvent>,
    paused: bool,
    screens: Vec<Screen>,
    help: bool,
    sort: TaskColumn,
    descending: bool,
    filter: Filter,
    runtime: Option<RuntimeId>,
    task_selected: usize,
    resource_selected: usize,
    hazard_selected: usize,
    task_rows: Vec<TaskId>,
    /// The (filtered) task ids the rows were last sorted from, in id order,
    /// and that sort's result as indexes into them (ascending): while the
    /// set stays the same, the next sort is handed the keys in this order,
    /// and merely confirms it (one comparison per row) unless a key moved.
    sort_basis: Vec<TaskId>,
    sort_order: Vec<u32>,
    resource_rows: Vec<ResourceId>,
    /// Indexes into [`ConsoleState::hazards`] per task.
    task_hazards: HashMap<TaskId, Vec<usize>>,
    stale: bool,
    /// Sort, filter or runtime changed: only the row lists are rebuilt.
    rows_stale: bool,
    /// Counts and runtimes, cached per refresh (not per frame).
    live_tasks: usize,
    live_resources: usize,
    runtimes: Vec<(RuntimeId, String)>,
    /// Hazards shown: the target's merged with those detected here, and
    /// the app time of the detection.
    detected: Option<(Vec<Hazard>, Timestamp)>,
    message: Option<String>,
    error: Option<String>,
    dot_dir: PathBuf,
}

impl ConsoleState {
    /// A console for a live target (its name as the user gave it).
    pub fn live(target: impl Into<String>) -> Self {
        Self::new(
            target.into(),
            Source::Live(Box::new(LiveState::new(Protocol::Taskscope))),
            Connection::Connecting { attempt: 1 },
        )
    }

    /// A console replaying `timeline`, read from `path`.
    pub fn replay(path: impl Into<String>, timeline: Timeline) -> Self {
        Self::new(
            path.into(),
            Source::Replay(Box::new(timeline)),
            Connection::Replay,
        )
    }

    fn new(target: String, source: Source, connection: Connection) -> Self {
        Self {
            source,
            target,
            connection,
            held: Vec::new(),
            paused: false,
            screens: vec![Screen::Tasks],
            help: false,
            sort: TaskColumn::Warnings,
            descending: true,
            filter: Filter::default(),
            runtime: None,
            task_selected: 0,
            resource_selected: 0,
            hazard_selected: 0,
            task_rows: Vec::new(),
            sort_basis: Vec::new(),
            sort_order: Vec::new(),
            resource_rows: Vec::new(),
            task_hazards: HashMap::new(),
            stale: true,
            rows_stale: true,
            live_tasks: 0,
            live_resources: 0,
            runtimes: Vec::new(),
            detected: None,
            message: None,
            error: None,
            dot_dir: PathBuf::from("."),
        }
    }

    /// Where `D` writes `.dot` files (default: the current directory).
    pub fn set_dot_dir(&mut self, dir: impl Into<PathBuf>) {
        self.dot_dir = dir.into();
    }

    // ---- what views read ----

    /// The model shown (frozen while paused).
    pub fn model(&self) -> &State {
        match &self.source {
            Source::Live(live) => live.state(),
            Source::Replay(t) => t.state(),
        }
    }

    /// The hazards shown: the target's, or detected here for console-api
    /// targets.
    pub fn hazards(&self) -> &[Hazard] {
        match &self.detected {
            Some((h, _)) => h,
            None => &self.model().hazards,
        }
    }

    /// Hazards naming `task`.
    pub fn hazards_of(&self, task: TaskId) -> impl Iterator<Item = &Hazard> {
        let all = self.hazards();
        self.task_hazards
            .get(&task)
            .into_iter()
            .flatten()
            .filter_map(move |&i| all.get(i))
    }

    /// The first deadlock cycle, if any.
    pub fn deadlock(&self) -> Option<&Hazard> {
        self.hazards().iter().find(|h| h.kind == DEADLOCK_CYCLE)
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub fn timeline(&self) -> Option<&Timeline> {
        match &self.source {
            Source::Replay(t) => Some(t),
            Source::Live(_) => None,
        }
    }

    pub fn is_paused(&self) -> bool {
        match &self.source {
            Source::Replay(t) => !t.is_playing(),
            Source::Live(_) => self.paused,
        }
    }

    /// The task whose details (poll- and scheduled-time histograms) must be
    /// fetched separately: the open task of a console-api target, which
    /// sends histograms only on a per-task stream.
    pub fn wants_task_details(&self) -> Option<TaskId> {
        let console_api = matches!(
            self.connection,
            Connection::Connected {
                protocol: Protocol::ConsoleApi
            }
        );
        match self.screen() {
            Screen::Task { id, .. } if console_api => Some(id),
            _ => None,
        }
    }

    /// Events waiting for resume.
    pub fn held_events(&self) -> usize {
        self.held.len()
    }

    pub fn screen(&self) -> Screen {
        *self.screens.last().unwrap_or(&Screen::Tasks)
    }

    /// The screens under the current one, bottom first.
    pub fn screens(&self) -> &[Screen] {
        &self.screens
    }

    pub fn help_open(&self) -> bool {
        self.help
    }

    pub fn input_mode(&self) -> InputMode {
        if self.filter.editing.is_some() {
            InputMode::Filter
        } else if self.help {
            InputMode::Help
        } else {
            InputMode::Normal
        }
    }

    pub fn sort(&self) -> (TaskColumn, bool) {
        (self.sort, self.descending)
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The runtime the task table is limited to.
    pub fn runtime(&self) -> Option<RuntimeId> {
        self.runtime
    }

    /// Runtimes to choose from: those the process reports, else those tasks
    /// name (as of the last [`refresh`](Self::refresh)).
    pub fn runtimes(&self) -> &[(RuntimeId, String)] {
        &self.runtimes
    }

    /// Live tasks and live resources (as of the last refresh).
    pub fn live_counts(&self) -> (usize, usize) {
        (self.live_tasks, self.live_resources)
    }

    fn collect_runtimes(&self) -> Vec<(RuntimeId, String)> {
        let model = self.model();
        let mut out: Vec<(RuntimeId, String)> = model
            .process
            .iter()
            .flat_map(|p| &p.runtimes)
            .filter(|r| r.dropped_at.is_none())
            .map(|r| (r.id, r.name.clone()))
            .collect();
        if out.is_empty() {
            let mut ids: Vec<RuntimeId> =
                model.tasks.values().filter_map(|t| t.runtime_id).collect();
            ids.sort_unstable();
            ids.dedup();
            out = ids.into_iter().map(|id| (id, String::new())).collect();
        }
        out
    }

    /// The filtered, sorted task ids (call [`refresh`](Self::refresh) first).
    pub fn task_rows(&self) -> &[TaskId] {
        &self.task_rows
    }

    pub fn resource_rows(&self) -> &[ResourceId] {
        &self.resource_rows
    }

    pub fn task_selected(&self) -> usize {
        self.task_selected
    }

    pub fn resource_selected(&self) -> usize {
        self.resource_selected
    }

    pub fn hazard_selected(&self) -> usize {
        self.hazard_selected
    }

    /// An informational line (e.g. where the `.dot` went).
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The last error worth showing (malformed message, bad regex, I/O).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub fn set_message(&mut self, text: impl Into<String>) {
        self.message = Some(text.into());
        self.error = None;
    }

    pub fn set_error(&mut self, text: impl Into<String>) {
        self.error = Some(text.into());
    }

    /// The links of a task's detail screen, in display order: its parent,
    /// then each resource it waits on, holds or frees.
    pub fn task_links(&self, id: TaskId) -> Vec<Link> {
        let model = self.model();
        let mut links = Vec::new();
        if let Some(parent) = model.tasks.get(&id).and_then(|t| t.parent_id) {
            if model.tasks.contains_key(&parent) {
                links.push(Link::Task(parent));
            }
        }
        for e in model.edges.iter().filter(|e| e.task_id == id) {
            let link = Link::Resource(e.resource_id);
            if !links.contains(&link) {
                links.push(link);
            }
        }
        links
    }

    /// The task links of a resource's detail screen: holders, then waiters,
    /// then tasks that can free it.
    pub fn resource_links(&self, id: ResourceId) -> Vec<(taskscope_wire::model::EdgeKind, TaskId)> {
        use taskscope_wire::model::EdgeKind;
        let model = self.model();
        let mut out = Vec::new();
        for kind in [EdgeKind::Holds, EdgeKind::Frees, EdgeKind::Waits] {
            for e in model.edges_on(id, kind) {
                if !out.iter().any(|&(k, t)| k == kind && t == e.task_id) {
                    out.push((kind, e.task_id));
                }
            }
        }
        out
    }

    // ---- feeding ----

    /// Applies one event from the live target. Cheap: row lists are
    /// rebuilt by the next [`refresh`](Self::refresh).
    pub fn apply_event(&mut self, event: WatchEvent) {
        let Source::Live(live) = &mut self.source else {
            return;
        };
        if let WatchEvent::Connected { protocol } = &event {
            self.connection = Connection::Connected {
                protocol: *protocol,
            };
            self.error = None;
            self.detected = None;
            // A reconnect starts from a new full state; what was held is stale.
            self.held.clear();
            live.apply(event);
            self.stale = true;
            return;
        }
        if self.paused {
            self.held.push(event);
            return;
        }
        live.apply(event);
        self.stale = true;
    }

    /// The connection was lost (or never made); attempt `attempt` follows
    /// after `retry_in`.
    pub fn disconnected(&mut self, attempt: u32, retry_in: Duration, error: impl Into<String>) {
        self.connection = Connection::Reconnecting {
            attempt,
            retry_in,
            error: error.into(),
        };
    }

    /// Attempt `attempt` to connect has started.
    pub fn connecting(&mut self, attempt: u32) {
        self.connection = Connection::Connecting { attempt };
    }

    /// Advances replay playback by `elapsed` wall time.
    pub fn advance(&mut self, elapsed: Duration) -> bool {
        match &mut self.source {
            Source::Replay(t) => {
                let changed = t.advance(elapsed);
                self.stale |= changed;
                changed
            }
            Source::Live(_) => false,
        }
    }

    /// Rebuilds what changed since the last call: after new updates the
    /// counts, hazards and row lists; after a sort, filter or runtime change
    /// the row lists only.
    pub fn refresh(&mut self) {
        if !self.stale {
            if self.rows_stale {
                self.rows_stale = false;
                self.rebuild_task_rows();
                self.rebuild_resource_rows();
                self.clamp_selections();
            }
            return;
        }
        self.stale = false;
        self.rows_stale = false;
        self.runtimes = self.collect_runtimes();
        let model = self.model();
        let live_tasks = model.live_tasks().count();
        let live_resources = model
            .resources
            .values()
            .filter(|r| r.dropped_at.is_none())
            .count();
        (self.live_tasks, self.live_resources) = (live_tasks, live_resources);
        self.detect_if_needed();
        self.index_hazards();
        self.rebuild_task_rows();
        self.rebuild_resource_rows();
        self.clamp_selections();
    }

    /// Runs the hazard detectors here too, at most once per
    /// [`DETECT_EVERY_NS`] of the app's time, and merges their findings with
    /// the target's (by fingerprint): console-api targets have no detectors,
    /// and a taskscope target's may judge from fewer events than the
    /// console has.
    fn detect_if_needed(&mut self) {
        let model = self.model();
        let now = model.updated_at.unwrap_or(Timestamp(0));
        // Detection walks every task: with many, run it less often so the
        // screen stays responsive (1 s per 50k live tasks).
        let every = DETECT_EVERY_NS.saturating_mul((self.live_tasks / 50_000).max(1) as u64);
        let due = match &self.detected {
            Some((_, at)) => now.since(*at) >= every || now < *at,
            None => true,
        };
        if !due {
            // Keep the target's newest findings in front of the cached ones.
            let merged = self
                .detected
                .as_ref()
                .map(|(cached, at)| (merge_hazards(&model.hazards, cached.clone()), *at));
            self.detected = merged;
            return;
        }
        let found = hazards::detect(model, &HazardConfig::default(), now);
        let merged = merge_hazards(&model.hazards, found);
        self.detected = Some((merged, now));
    }

    fn index_hazards(&mut self) {
        let mut index: HashMap<TaskId, Vec<usize>> = HashMap::new();
        for (i, h) in self.hazards().iter().enumerate() {
            for &t in &h.task_ids {
                index.entry(t).or_default().push(i);
            }
        }
        self.task_hazards = index;
    }

    fn rebuild_task_rows(&mut self) {
        let selected_id = self.task_rows.get(self.task_selected).copied();
        let model = self.model();
        let now = model.updated_at.unwrap_or(Timestamp(0));
        let runtime = self.runtime;
        let regex = self.filter.regex.as_ref();
        let tasks: Vec<&Task> = model
            .tasks
            .values()
            .filter(|t| runtime.is_none_or(|r| t.runtime_id == Some(r)))
            .filter(|t| regex.is_none_or(|re| task_matches(t, re)))
            .collect();
        let index = &self.task_hazards;
        let warnings = |t: &Task| {
            if index.is_empty() {
                0
            } else {
                index.get(&t.id).map_or(0, Vec::len)
            }
        };
        // With 100k tasks and nothing new, re-sorting from scratch after
        // every update (once a second) cost a debug build most of a core.
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        let previous = (ids == self.sort_basis).then_some(self.sort_order.as_slice());
        let order = sorted_order(&tasks, previous, self.sort, now, &warnings);
        let mut rows: Vec<TaskId> = order.iter().map(|&i| tasks[i as usize].id).collect();
        drop(tasks);
        self.sort_basis = ids;
        self.sort_order = order;
        if self.descending {
            rows.reverse();
        }
        if let Some(id) = selected_id {
            if let Some(i) = rows.iter().position(|&r| r == id) {
                self.task_selected = i;
            }
        }
        self.task_rows = rows;
    }

    fn rebuild_resource_rows(&mut self) {
        let selected_id = self.resource_rows.get(self.resource_selected).copied();
        let regex = self.filter.regex.as_ref();
        let rows: Vec<ResourceId> = self
            .model()
            .resources
            .values()
            .filter(|r| r.dropped_at.is_none())
            .filter(|r| {
                regex.is_none_or(|re| {
                    re.is_match(&r.concrete_type)
                        || re.is_match(&r.kind)
                        || r.location
                            .as_ref()
                            .is_some_and(|l| re.is_match(&l.to_string()))
                        || r.attributes
                            .iter()
                            .any(|(k, v)| re.is_match(k) || re.is_match(v))
                })
            })
            .map(|r| r.id)
            .collect();
        if let Some(id) = selected_id {
            if let Some(i) = rows.iter().position(|&r| r == id) {
                self.resource_selected = i;
            }
        }
        self.resource_rows = rows;
    }

    fn clamp_selections(&mut self) {
        self.task_selected = self
            .task_selected
            .min(self.task_rows.len().saturating_sub(1));
        self.resource_selected = self
            .resource_selected
            .min(self.resource_rows.len().saturating_sub(1));
        self.hazard_selected = self
            .hazard_selected
            .min(self.hazards().len().saturating_sub(1));
    }

    // ---- actions ----

    /// Performs `action`; see [`Effect`].
    pub fn apply(&mut self, action: Action) -> Effect {
        self.refresh();
        let effect = self.perform(action);
        self.refresh();
        effect
    }

    fn perform(&mut self, action: Action) -> Effect {
        match action {
            Action::Quit => return Effect::Quit,
            Action::ToggleHelp => self.help = !self.help,
            Action::Back => {
                let on_list = matches!(self.screen(), Screen::Tasks | Screen::Resources);
                if self.help {
                    self.help = false;
                } else if on_list && (self.filter.regex.is_some() || self.filter.error.is_some()) {
                    self.filter = Filter::default();
                    self.rows_stale = true;
                } else if self.screens.len() > 1 {
                    self.screens.pop();
                }
            }
            Action::Up => self.move_selection(-1),
            Action::Down => self.move_selection(1),
            Action::PageUp => self.move_selection(-(PAGE as i64)),
            Action::PageDown => self.move_selection(PAGE as i64),
            Action::Top => self.move_selection(i64::MIN / 2),
            Action::Bottom => self.move_selection(i64::MAX / 2),
            Action::Enter => self.enter(),
            Action::ShowTasks => self.show(Screen::Tasks),
            Action::ShowResources => self.show(Screen::Resources),
            Action::ShowHazards => self.show(Screen::Hazards),
            Action::SortBy(col) if col == self.sort => self.invert_sort(),
            Action::SortBy(col) => {
                self.sort = col;
                self.descending = col.default_descending();
                self.rows_stale = true;
            }
            Action::InvertSort => self.invert_sort(),
            Action::StartFilter => {
                self.filter.editing = Some(String::new());
                self.filter.error = None;
            }
            Action::FilterChar(c) => {
                if let Some(text) = &mut self.filter.editing {
                    text.push(c);
                }
            }
            Action::FilterBackspace => {
                if let Some(text) = &mut self.filter.editing {
                    text.pop();
                }
            }
            Action::FilterCancel => self.filter.editing = None,
            Action::FilterCommit => self.commit_filter(),
            Action::TogglePause => match &mut self.source {
                Source::Replay(t) => {
                    t.toggle_play();
                    self.stale = true;
                }
                Source::Live(_) => {
                    self.paused = !self.paused;
                    if !self.paused {
                        self.resume();
                    }
                }
            },
            Action::NextRuntime => self.next_runtime(),
            Action::ExportDot => return self.export_dot(),
            Action::SeekBack
            | Action::SeekForward
            | Action::StepBack
            | Action::StepForward
            | Action::Faster
            | Action::Slower => {
                if let Source::Replay(t) = &mut self.source {
                    match action {
                        Action::SeekBack => t.seek_back(),
                        Action::SeekForward => t.seek_forward(),
                        Action::StepBack => t.step_back(),
                        Action::StepForward => t.step_forward(),
                        Action::Faster => t.faster(),
                        _ => t.slower(),
                    }
                    self.stale = true;
                }
            }
        }
        Effect::None
    }

    /// Reversing needs no re-sort: ties are broken by id both ways. The
    /// selected task stays selected.
    fn invert_sort(&mut self) {
        self.descending = !self.descending;
        self.task_rows.reverse();
        self.task_selected = self
            .task_rows
            .len()
            .saturating_sub(1)
            .saturating_sub(self.task_selected);
    }

    fn resume(&mut self) {
        if let Source::Live(live) = &mut self.source {
            for event in self.held.drain(..) {
                live.apply(event);
            }
            self.stale = true;
        }
    }

    fn show(&mut self, screen: Screen) {
        self.help = false;
        if self.screen() != screen {
            self.screens.push(screen);
        }
    }

    fn commit_filter(&mut self) {
        let Some(text) = self.filter.editing.take() else {
            return;
        };
        if text.is_empty() {
            self.filter.regex = None;
            self.filter.error = None;
        } else {
            match Regex::new(&text) {
                Ok(re) => {
                    self.filter.regex = Some(re);
                    self.filter.error = None;
                }
                Err(e) => {
                    let first = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    self.filter.error = Some(format!("filter /{text}/ is not a regex: {first}"));
                }
            }
        }
        self.task_selected = 0;
        self.resource_selected = 0;
        self.rows_stale = true;
    }

    fn next_runtime(&mut self) {
        let runtimes = self.runtimes.clone();
        if runtimes.len() < 2 {
            self.runtime = None;
            self.set_message("only one runtime: nothing to choose");
            return;
        }
        self.runtime = match self.runtime {
            None => Some(runtimes[0].0),
            Some(cur) => runtimes
                .iter()
                .position(|(id, _)| *id == cur)
                .and_then(|i| runtimes.get(i + 1))
                .map(|(id, _)| *id),
        };
        self.task_selected = 0;
        self.rows_stale = true;
    }

    fn move_selection(&mut self, delta: i64) {
        match self.screen() {
            Screen::Task { id, .. } => {
                let len = self.task_links(id).len();
                if let Some(Screen::Task { selected, .. }) = self.screens.last_mut() {
                    step(selected, delta, len);
                }
            }
            Screen::Resource { id, .. } => {
                let len = self.resource_links(id).len();
                if let Some(Screen::Resource { selected, .. }) = self.screens.last_mut() {
                    step(selected, delta, len);
                }
            }
            Screen::Resources => {
                step(&mut self.resource_selected, delta, self.resource_rows.len());
            }
            Screen::Hazards => {
                let len = self.hazards().len();
                step(&mut self.hazard_selected, delta, len);
            }
            Screen::Tasks => step(&mut self.task_selected, delta, self.task_rows.len()),
        }
    }

    fn enter(&mut self) {
        match self.screen() {
            Screen::Tasks => {
                if let Some(&id) = self.task_rows.get(self.task_selected) {
                    self.screens.push(Screen::Task { id, selected: 0 });
                }
            }
            Screen::Resources => {
                if let Some(&id) = self.resource_rows.get(self.resource_selected) {
                    self.screens.push(Screen::Resource { id, selected: 0 });
                }
            }
            Screen::Task { id, selected } => match self.task_links(id).get(selected) {
                Some(Link::Task(t)) => self.screens.push(Screen::Task {
                    id: *t,
                    selected: 0,
                }),
                Some(Link::Resource(r)) => self.screens.push(Screen::Resource {
                    id: *r,
                    selected: 0,
                }),
                None => {}
            },
            Screen::Resource { id, selected } => {
                if let Some(&(_, t)) = self.resource_links(id).get(selected) {
                    self.screens.push(Screen::Task { id: t, selected: 0 });
                }
            }
            Screen::Hazards => {
                let target = self.hazards().get(self.hazard_selected).and_then(|h| {
                    h.task_ids
                        .first()
                        .map(|&t| Screen::Task { id: t, selected: 0 })
                        .or_else(|| {
                            h.resource_ids
                                .first()
                                .map(|&r| Screen::Resource { id: r, selected: 0 })
                        })
                });
                if let Some(screen) = target {
                    self.screens.push(screen);
                }
            }
        }
    }

    /// The cycle to export: the selected finding in the problem view if it
    /// is a cycle, else the first cycle.
    fn export_dot(&mut self) -> Effect {
        let selected = (self.screen() == Screen::Hazards)
            .then(|| self.hazards().get(self.hazard_selected))
            .flatten()
            .filter(|h| h.kind == DEADLOCK_CYCLE);
        let Some(hazard) = selected.or_else(|| self.deadlock()) else {
            self.set_message("no deadlock cycle to export");
            return Effect::None;
        };
        let contents = hazards::cycle_dot(self.model(), hazard);
        let name: String = hazard
            .fingerprint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = if name.is_empty() {
            "cycle".into()
        } else {
            name
        };
        Effect::WriteDot {
            path: self.dot_dir.join(format!("taskscope-{name}.dot")),
            contents,
        }
    }
}

/// The target's hazards and those found here that it did not report, most
/// severe first (in order of detection within a severity).
fn merge_hazards(target: &[Hazard], local: Vec<Hazard>) -> Vec<Hazard> {
    let mut out = target.to_vec();
    for h in local {
        if !out.iter().any(|o| o.fingerprint == h.fingerprint) {
            out.push(h);
        }
    }
    out.sort_by_key(|h| std::cmp::Reverse(h.severity));
    out
}

/// A navigable reference on a detail screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Task(TaskId),
    Resource(ResourceId),
}

fn step(selected: &mut usize, delta: i64, len: usize) {
    if len == 0 {
        *selected = 0;
        return;
    }
    let next = (*selected as i64)
        .saturating_add(delta)
        .clamp(0, len as i64 - 1);
    *selected = next as usize;
}

/// Whether the filter matches the task's name, spawn location
/// (`file:line:column`), kind or a field (`key=value`).
pub fn task_matches(task: &Task, re: &Regex) -> bool {
    use std::fmt::Write;
    if task.name.as_deref().is_some_and(|n| re.is_match(n)) || re.is_match(&task.kind) {
        return true;
    }
    thread_local! {
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        if let Some(l) = &task.location {
            buf.clear();
            let _ = write!(buf, "{l}");
            if re.is_match(&buf) {
                return true;
            }
        }
        task.fields.iter().any(|(k, v)| {
            buf.clear();
            let _ = write!(buf, "{k}={v}");
            re.is_match(&buf)
        })
    })
}

/// The order of `tasks` (which come in id order) by `column`, ascending,
/// ties broken by id so that it is stable: indexes into `tasks`. Numeric
/// columns sort packed `u128` keys (value, then index): no pointer chasing
/// in the comparisons, which keeps 1M tasks fast. `previous`, a permutation
/// of those indexes (the last order, for the same tasks), is the order the
/// keys are handed to the sort in: when it still holds, the sort only
/// checks it, one comparison per task.
fn sorted_order(
    tasks: &[&Task],
    previous: Option<&[u32]>,
    column: TaskColumn,
    now: Timestamp,
    warnings: &dyn Fn(&Task) -> usize,
) -> Vec<u32> {
    let n = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
    let all: Vec<u32>;
    let order = match previous {
        Some(p) if p.len() == tasks.len() => p,
        _ => {
            all = (0..n).collect();
            &all
        }
    };
    // An index stands for the id in every tie-break: `tasks` is in id
    // order.
    fn by<K: Ord>(order: &[u32], key: impl Fn(u32) -> K) -> Vec<u32> {
        let mut keys: Vec<(K, u32)> = order.iter().map(|&i| (key(i), i)).collect();
        keys.sort_unstable();
        keys.into_iter().map(|k| k.1).collect()
    }
    // Numeric keys and the index packed into one integer: one comparison
    // instead of a tuple's chain.
    fn packed(order: &[u32], key: impl Fn(u32) -> u64) -> Vec<u32> {
        let mut keys: Vec<u128> = order
            .iter()
            .map(|&i| (u128::from(key(i)) << 32) | u128::from(i))
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(|k| k as u32).collect()
    }
    let t = |i: u32| tasks[i as usize];
    match column {
        TaskColumn::Id => packed(order, |i| t(i).tokio_id.unwrap_or(u64::MAX)),
        TaskColumn::State => packed(order, |i| t(i).state as u64),
        TaskColumn::Total => packed(order, |i| t(i).total_ns(now)),
        TaskColumn::Busy => packed(order, |i| t(i).busy_ns),
        TaskColumn::Scheduled => packed(order, |i| t(i).scheduled_ns),
        TaskColumn::Idle => packed(order, |i| t(i).idle_ns_at(now)),
        TaskColumn::Polls => packed(order, |i| t(i).polls),
        // Order-preserving map of i64 onto u64.
        TaskColumn::Wakers => packed(order, |i| (t(i).live_wakers() as u64) ^ (1 << 63)),
        // Findings, then live before finished, then smallest id first once
        // reversed (the index is complemented).
        TaskColumn::Warnings => by(order, |i| {
            let w = u32::try_from(warnings(t(i))).unwrap_or(u32::MAX);
            (w, t(i).state.is_live(), u32::MAX - i)
        }),
        TaskColumn::Name => by(order, |i| t(i).name.as_deref().unwrap_or("")),
        TaskColumn::Location => by(order, |i| match &t(i).location {
            Some(l) => (l.file.as_str(), l.line),
            None => ("", 0),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_and_caps_at_5s() {
        let delays: Vec<u64> = (1..=9)
            .map(|a| backoff_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn selection_stays_in_bounds() {
        let mut sel = 0;
        step(&mut sel, -1, 3);
        assert_eq!(sel, 0);
        step(&mut sel, 10, 3);
        assert_eq!(sel, 2);
        step(&mut sel, 1, 0);
        assert_eq!(sel, 0);
    }
}
