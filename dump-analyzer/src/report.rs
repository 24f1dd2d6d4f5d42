//! The report: what a dump contains, in a serialisable form (the JSON
//! schema, `schema = "taskscope-dump/1"`; every field but `schema` may be
//! absent or empty), plus the text renderer and post-mortem hazards.
//!
//! JSON schema (version 1), top level:
//! - `schema`: `"taskscope-dump/1"`
//! - `source`: `{kind: "core"|"process", path?, pid?, command?, executable, build_id?, build_id_checked}`
//! - `warnings`: `[string]` — what could not be read and why
//! - `runtimes`: `[{id, flavor: "multi-thread"|"current-thread", workers?, task_count?, threads: [tid]}]`
//! - `threads`: `[{tid, pc, function?, role?, registers, frames: [{pc, function?, location?, module?, noise}]}]`
//! - `tasks`: `[{header, runtime, id?, lifecycle, state: {raw, running, complete, notified,
//!   join_interest, join_waker, cancelled, ref_count}, stage?, future_type?, spawned_at?: {file, line, column?},
//!   chain: {frames: [{function, kind, state?, location?: {file, line}, branches?: [chain],
//!   holds?: ["0x…"], holds_undescribed?: ["0x…"], shared?: [{address, strong}],
//!   private_wakers?: ["0x…"]}], leaf?: {kind, description, resource?: "0x…",
//!   joined_task_header?: "0x…", deadline_secs?, deadline_in_secs?, type_name}}, joined_task_id?,
//!   instrumented?: {…as in `instrumented`}}]`
//! - `block_on`: `[{thread, future_type, chain, located_by: "dwarf-location"|"frame-scan"}]` —
//!   futures driven by `block_on`
//! - `instrumented`: `[{id, tokio_id?, name?, kind, source: "tracing"|"wrapper", state,
//!   spawned_at?, parent_id?, parent_tokio_id?, parent_name?, polls, busy_ns, scheduled_ns,
//!   max_poll_ns, wakes, self_wakes, waker_clones, waker_drops, created_at_ns?,
//!   last_poll_ended_ns?, last_wake_ns?, record}]` — every task of taskscope's registry
//!   (apps linking taskscope; read without DWARF), also merged into `tasks` by tokio id
//! - `partial`: `true` when `warnings` says something could not be read
//! - `hazards`: `[{kind, tasks: [id], resource?, message, evidence: [string]}]`

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use crate::elf::{Executable, Registers, ThreadRecord};
use crate::future::{Chain, Frame};
use crate::registry::InstrumentedTask;
use crate::tokio::{RawTask, RuntimeInfo, SourceLocation, TaskState};

pub const SCHEMA: &str = "taskscope-dump/1";

#[derive(Debug, Clone, serde::Serialize)]
pub struct Source {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub executable: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    pub build_id_checked: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RuntimeReport {
    pub id: String,
    pub flavor: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_count: Option<u64>,
    pub threads: Vec<u32>,
}

impl From<&RuntimeInfo> for RuntimeReport {
    fn from(rt: &RuntimeInfo) -> Self {
        RuntimeReport {
            id: format!("{:#x}", rt.handle),
            flavor: rt.flavor.as_str(),
            workers: rt.workers,
            task_count: rt.task_count,
            threads: rt.threads.clone(),
        }
    }
}

/// One frame of an OS thread's stack.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StackFrame {
    pub pc: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<SourceLocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Executor, runtime or libc plumbing (folded in the text report).
    pub noise: bool,
}

pub fn is_noise_frame(function: &str, module: &str) -> bool {
    crate::unwind::is_noise(function, module)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ThreadReport {
    pub tid: u32,
    pub pc: String,
    /// Innermost symbolized function.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub registers: Registers,
    /// Innermost first; unwound with `.eh_frame`.
    pub frames: Vec<StackFrame>,
    /// What the thread does for the runtime: `worker`, `blocking-pool`,
    /// `block_on`, when recognisable from its stack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl ThreadReport {
    /// Recognises tokio's thread roles from the symbolized stack; for the
    /// blocking pool, names the user closure being run.
    pub fn classify(&mut self) {
        let has = |needle: &str| {
            self.frames
                .iter()
                .any(|f| f.function.as_deref().is_some_and(|n| n.contains(needle)))
        };
        let user = self
            .frames
            .iter()
            .find(|f| !f.noise && f.function.is_some())
            .and_then(|f| f.function.clone());
        // Workers run inside the blocking pool's threads: check them first.
        self.role = if has("multi_thread::worker::run") {
            Some("tokio worker thread".to_string())
        } else if has("tokio::runtime::blocking::pool::Inner::run") {
            Some(match user {
                Some(u) => format!("blocking-pool thread running {u}"),
                None => "blocking-pool thread (idle)".to_string(),
            })
        } else if has("block_on") {
            Some("block_on".to_string())
        } else {
            None
        };
    }
}

impl ThreadReport {
    pub fn basic(t: &ThreadRecord, exe: &Executable, bias: u64) -> Self {
        let function = exe
            .symbol_for(t.registers.rip.wrapping_sub(bias))
            .map(|s| s.name.clone());
        ThreadReport {
            tid: t.tid,
            pc: format!("{:#x}", t.registers.rip),
            function,
            registers: t.registers,
            frames: Vec::new(),
            role: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskReport {
    pub header: String,
    pub runtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub lifecycle: &'static str,
    pub state: TaskState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub future_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spawned_at: Option<SourceLocation>,
    pub chain: Chain,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_task_id: Option<u64>,
    /// What taskscope's registry knows of this task (same tokio id): name,
    /// parent task, poll statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumented: Option<InstrumentedTask>,
}

impl TaskReport {
    pub fn new(t: &RawTask, chain: Chain) -> Self {
        TaskReport {
            header: format!("{:#x}", t.header),
            runtime: format!("{:#x}", t.runtime),
            id: t.id,
            lifecycle: t.state.lifecycle(),
            state: t.state,
            stage: t.stage.clone(),
            future_type: t.future_type.clone(),
            spawned_at: t.spawned_at.clone(),
            chain,
            joined_task_id: None,
            instrumented: None,
        }
    }

    /// Mutexes held by a live guard anywhere in this task's chain.
    pub fn held_mutexes(&self) -> Vec<u64> {
        let mut frames = Vec::new();
        collect_frames(&self.chain.frames, &mut frames);
        frames
            .iter()
            .flat_map(|f| f.holds.iter().chain(&f.holds_undescribed).copied())
            .collect()
    }

    /// The innermost `.await` in the user's code (not in a dependency or
    /// the standard library), else the innermost one.
    pub fn await_point(&self) -> Option<&SourceLocation> {
        let user = |l: &&SourceLocation| {
            !l.file.contains("/.cargo/registry/") && !l.file.contains("/rustc/")
        };
        let locs = || {
            self.chain
                .frames
                .iter()
                .rev()
                .filter_map(|f| f.location.as_ref())
        };
        locs().find(user).or_else(|| locs().next())
    }

    fn label(&self) -> String {
        let base = match self.id {
            Some(id) => format!("task {id}"),
            None => format!("task @{}", self.header),
        };
        match self.instrumented.as_ref().and_then(|i| i.name.as_ref()) {
            Some(name) => format!("{base} \"{name}\""),
            None => base,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HazardReport {
    /// Stable id from the hazard catalogue (`deadlock-cycle`, ...).
    pub kind: &'static str,
    pub tasks: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub message: String,
    pub evidence: Vec<String>,
    /// Where in the user's code the hazard is, when that is not the first
    /// task's innermost await (a guard held by an outer frame).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<SourceLocation>,
}

/// A future driven by `block_on` on some thread (not a runtime task).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockOnReport {
    pub thread: u32,
    pub future_type: String,
    pub chain: Chain,
    /// `dwarf-location`: a variable's DWARF location at an unwound frame's
    /// pc; `frame-scan`: the one suspended copy of the future's type in
    /// `block_on`'s stack frame, when optimisation left the copy it polls
    /// without a location.
    pub located_by: &'static str,
    /// taskscope's record of this `block_on` (spawned at a line of this
    /// thread's stack), when the app links taskscope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumented: Option<InstrumentedTask>,
}

/// Everything found in one dump.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub source: Source,
    /// `true` when something could not be read (no debug info, truncated
    /// core, corrupt lists): see `warnings`. The CLI then exits with 2.
    pub partial: bool,
    pub warnings: Vec<String>,
    pub runtimes: Vec<RuntimeReport>,
    pub threads: Vec<ThreadReport>,
    pub tasks: Vec<TaskReport>,
    /// Futures driven by `block_on`, found on thread stacks.
    pub block_on: Vec<BlockOnReport>,
    /// Tasks of taskscope's registry, when the app links taskscope.
    pub instrumented: Vec<InstrumentedTask>,
    pub hazards: Vec<HazardReport>,
}

impl Report {
    pub fn new(source: Source) -> Self {
        Report {
            schema: SCHEMA,
            source,
            partial: false,
            warnings: Vec::new(),
            runtimes: Vec::new(),
            threads: Vec::new(),
            tasks: Vec::new(),
            block_on: Vec::new(),
            instrumented: Vec::new(),
            hazards: Vec::new(),
        }
    }

    /// Resolves cross-task references and derives hazards.
    pub fn finish(&mut self) {
        let by_header: HashMap<String, u64> = self
            .tasks
            .iter()
            .filter_map(|t| Some((t.header.clone(), t.id?)))
            .collect();
        for t in &mut self.tasks {
            if let Some(h) = t.chain.leaf.as_ref().and_then(|l| l.joined_task_header) {
                t.joined_task_id = by_header.get(&format!("{h:#x}")).copied();
            }
        }
        // Merge taskscope's registry into the decoded tasks by tokio id.
        let by_tokio_id: HashMap<u64, &InstrumentedTask> = self
            .instrumented
            .iter()
            .filter_map(|i| Some((i.tokio_id?, i)))
            .collect();
        for t in &mut self.tasks {
            if let Some(i) = t.id.and_then(|id| by_tokio_id.get(&id)) {
                t.instrumented = Some((*i).clone());
            }
        }
        // taskscope records a `block_on` future as spawned where the user
        // called `block_on`: a line of the thread's stack identifies it.
        let same_file = |a: &str, b: &str| {
            let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            long == short || long.ends_with(&format!("/{short}"))
        };
        for b in &mut self.block_on {
            let Some(thread) = self.threads.iter().find(|t| t.tid == b.thread) else {
                continue;
            };
            let on_stack = |at: &SourceLocation| {
                thread.frames.iter().any(|f| {
                    f.location
                        .as_ref()
                        .is_some_and(|l| l.line == at.line && same_file(&l.file, &at.file))
                })
            };
            let found: Vec<&InstrumentedTask> = self
                .instrumented
                .iter()
                .filter(|i| i.kind == "block_on" && i.spawned_at.as_ref().is_some_and(on_stack))
                .collect();
            if let [one] = found.as_slice() {
                b.instrumented = Some((*one).clone());
            }
        }
        // Guards rustc's debug info lost (shadowed locals): an undescribed
        // word of a task's state that is the address of a mutex another
        // task waits to lock.
        let contended: std::collections::HashSet<u64> = self
            .tasks
            .iter()
            .filter_map(|t| t.chain.leaf.as_ref())
            .filter(|l| l.kind == "mutex-lock")
            .filter_map(|l| l.resource)
            .collect();
        for t in &mut self.tasks {
            let own = t.chain.leaf.as_ref().and_then(|l| l.resource);
            mark_undescribed_holds(&mut t.chain.frames, &contended, own);
        }
        self.hazards = hazards(&self.tasks, &self.instrumented);
        self.partial = !self.warnings.is_empty();
    }

    pub fn write_json<W: Write>(&self, out: W) -> io::Result<()> {
        serde_json::to_writer_pretty(out, self).map_err(io::Error::other)
    }

    /// Human-readable report. `coalesce` groups tasks whose chains are
    /// identical (same frames, await lines and leaf kind).
    pub fn write_text<W: Write>(&self, out: W, coalesce: bool) -> io::Result<()> {
        self.write_text_with(
            out,
            TextOptions {
                coalesce,
                full_stacks: false,
            },
        )
    }

    /// Text report with all options.
    pub fn write_text_with<W: Write>(&self, mut out: W, options: TextOptions) -> io::Result<()> {
        let coalesce = options.coalesce;
        let s = &self.source;
        match (&s.path, s.pid) {
            (Some(p), Some(pid)) => writeln!(out, "core {p} (pid {pid})")?,
            (Some(p), None) => writeln!(out, "core {p}")?,
            (None, Some(pid)) => writeln!(out, "live process {pid}")?,
            (None, None) => {}
        }
        if let Some(c) = &s.command {
            writeln!(out, "command: {c}")?;
        }
        let id = match (&s.build_id, s.build_id_checked) {
            (Some(b), true) => format!(" (build-id {b}, matches the core)"),
            (Some(b), false) => format!(" (build-id {b})"),
            _ => String::new(),
        };
        writeln!(out, "executable: {}{id}", s.executable)?;
        for w in &self.warnings {
            writeln!(out, "warning: {w}")?;
        }
        writeln!(out)?;
        writeln!(out, "Runtimes ({})", self.runtimes.len())?;
        for rt in &self.runtimes {
            let workers = rt
                .workers
                .map(|w| format!(", {w} worker threads"))
                .unwrap_or_default();
            let count = rt
                .task_count
                .map(|c| format!(", {c} tasks"))
                .unwrap_or_default();
            let threads: Vec<String> = rt.threads.iter().map(u32::to_string).collect();
            writeln!(
                out,
                "  runtime {} {}{workers}{count} (seen from threads {})",
                rt.id,
                rt.flavor,
                threads.join(", ")
            )?;
        }
        writeln!(out)?;
        writeln!(out, "Threads ({})", self.threads.len())?;
        for t in &self.threads {
            let rt = self
                .runtimes
                .iter()
                .find(|r| r.threads.contains(&t.tid))
                .map(|r| format!("  (runtime {})", r.id))
                .unwrap_or_default();
            let role = t
                .role
                .as_deref()
                .map(|r| format!("  {r}"))
                .unwrap_or_default();
            writeln!(out, "  thread {}{rt}{role}", t.tid)?;
            write_stack(&mut out, &t.frames, options.full_stacks)?;
        }
        writeln!(out)?;
        writeln!(out, "Tasks ({})", self.tasks.len())?;
        if coalesce {
            let mut groups: BTreeMap<String, Vec<&TaskReport>> = BTreeMap::new();
            for t in &self.tasks {
                groups.entry(chain_key(t)).or_default().push(t);
            }
            let mut groups: Vec<_> = groups.into_values().collect();
            groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
            for g in groups {
                let ids: Vec<String> = g.iter().take(8).map(|t| t.label()).collect();
                let more = if g.len() > 8 {
                    format!(", … {} more", g.len() - 8)
                } else {
                    String::new()
                };
                writeln!(out, "  {} task(s): {}{more}", g.len(), ids.join(", "))?;
                write_task_body(&mut out, g[0], "    ")?;
            }
        } else {
            for t in &self.tasks {
                let flags = state_flags(&t.state);
                writeln!(
                    out,
                    "  {}  {}{}  {}",
                    t.label(),
                    t.lifecycle,
                    flags,
                    t.future_type.as_deref().unwrap_or("<unknown future type>")
                )?;
                write_task_body(&mut out, t, "    ")?;
            }
        }
        // Registry tasks not shown above (all of them when the binary has
        // no DWARF): names, parents and statistics without a decoded chain.
        let shown: std::collections::HashSet<u64> =
            self.tasks.iter().filter_map(|t| t.id).collect();
        let rest: Vec<&InstrumentedTask> = self
            .instrumented
            .iter()
            .filter(|i| i.tokio_id.is_none_or(|id| !shown.contains(&id)))
            .filter(|i| {
                !self.block_on.iter().any(|b| {
                    b.instrumented
                        .as_ref()
                        .is_some_and(|m| m.record == i.record)
                })
            })
            .collect();
        if !rest.is_empty() {
            writeln!(out)?;
            writeln!(
                out,
                "Instrumented tasks ({}, from taskscope's registry)",
                rest.len()
            )?;
            for i in rest {
                writeln!(out, "  {}  {}  ({})", i.label(), i.state, i.kind)?;
                write_instrumented(&mut out, i, "    ")?;
            }
        }
        if !self.block_on.is_empty() {
            writeln!(out)?;
            writeln!(out, "Block-on futures ({})", self.block_on.len())?;
            for b in &self.block_on {
                writeln!(out, "  thread {}  block_on({})", b.thread, b.future_type)?;
                if let Some(i) = &b.instrumented {
                    writeln!(out, "    taskscope: {}  {}", i.label(), i.state)?;
                    write_instrumented(&mut out, i, "    ")?;
                }
                if b.located_by == "frame-scan" {
                    writeln!(
                        out,
                        "    (optimised build: DWARF has no location for the copy block_on polls; \
                         found as the only suspended {} in its stack frame)",
                        b.future_type
                    )?;
                }
                write_chain(&mut out, &b.chain, "    ")?;
            }
        }
        writeln!(out)?;
        writeln!(out, "Hazards ({})", self.hazards.len())?;
        for h in &self.hazards {
            writeln!(out, "  {}: {}", h.kind, h.message)?;
            for e in &h.evidence {
                writeln!(out, "    - {e}")?;
            }
        }
        Ok(())
    }
}

/// Options of the text renderer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOptions {
    /// Group tasks with identical chains.
    pub coalesce: bool,
    /// Print every thread frame instead of folding runtime plumbing.
    pub full_stacks: bool,
}

fn write_stack<W: Write>(out: &mut W, frames: &[StackFrame], full: bool) -> io::Result<()> {
    let mut folded = 0usize;
    let flush = |out: &mut W, folded: &mut usize| -> io::Result<()> {
        if *folded > 0 {
            writeln!(out, "      … {} runtime/library frame(s)", *folded)?;
            *folded = 0;
        }
        Ok(())
    };
    for f in frames {
        if f.noise && !full {
            folded += 1;
            continue;
        }
        flush(out, &mut folded)?;
        let name = f.function.as_deref().unwrap_or("??");
        let at = match (&f.location, &f.module) {
            (Some(l), _) => format!("  at {l}"),
            (None, Some(m)) => format!("  in {}", m.rsplit('/').next().unwrap_or(m)),
            _ => String::new(),
        };
        writeln!(out, "      {} {name}{at}", f.pc)?;
    }
    flush(out, &mut folded)?;
    if frames.is_empty() {
        writeln!(out, "      (stack not available)")?;
    }
    Ok(())
}

fn state_flags(s: &TaskState) -> String {
    let mut f = format!(" refs={}", s.ref_count);
    if s.join_interest {
        f.push_str(" join-interest");
    }
    if s.join_waker {
        f.push_str(" join-waker");
    }
    if s.cancelled {
        f.push_str(" cancelled");
    }
    f
}

fn chain_key(t: &TaskReport) -> String {
    let mut k = String::new();
    fn frames(fs: &[Frame], k: &mut String) {
        for f in fs {
            k.push_str(&f.function);
            if let Some(l) = &f.location {
                k.push_str(&format!("@{}", l));
            }
            k.push('|');
            for b in &f.branches {
                k.push('[');
                frames(&b.frames, k);
                k.push(']');
            }
        }
    }
    frames(&t.chain.frames, &mut k);
    if let Some(l) = &t.chain.leaf {
        k.push_str(l.kind);
    }
    k
}

/// Every frame of a chain, branches included, outermost first.
fn collect_frames<'a>(frames: &'a [Frame], out: &mut Vec<&'a Frame>) {
    for f in frames {
        out.push(f);
        for b in &f.branches {
            collect_frames(&b.frames, out);
        }
    }
}

fn write_chain<W: Write>(out: &mut W, chain: &Chain, indent: &str) -> io::Result<()> {
    for f in &chain.frames {
        let at = f
            .location
            .as_ref()
            .map(|l| format!("  at {l}"))
            .unwrap_or_default();
        writeln!(out, "{indent}{}{at}", f.title())?;
        for line in f.held() {
            writeln!(out, "{indent}  {line}")?;
        }
        for (i, b) in f.branches.iter().enumerate() {
            writeln!(out, "{indent}  branch {i}:")?;
            write_chain(out, b, &format!("{indent}    "))?;
        }
    }
    if let Some(l) = &chain.leaf {
        writeln!(out, "{indent}└─ {}", l.description)?;
    }
    Ok(())
}

fn write_instrumented<W: Write>(out: &mut W, i: &InstrumentedTask, indent: &str) -> io::Result<()> {
    if let Some(loc) = &i.spawned_at {
        writeln!(out, "{indent}spawned at {loc}")?;
    }
    if let Some(p) = i.parent_line() {
        writeln!(out, "{indent}{p}")?;
    }
    writeln!(out, "{indent}{}", i.stats_line())
}

fn write_task_body<W: Write>(out: &mut W, t: &TaskReport, indent: &str) -> io::Result<()> {
    if let Some(loc) = &t.spawned_at {
        writeln!(out, "{indent}spawned at {loc}")?;
    }
    if let Some(i) = &t.instrumented {
        if t.spawned_at.is_none() {
            if let Some(loc) = &i.spawned_at {
                writeln!(out, "{indent}spawned at {loc}")?;
            }
        }
        if let Some(p) = i.parent_line() {
            writeln!(out, "{indent}{p}")?;
        }
        writeln!(out, "{indent}taskscope: {}", i.stats_line())?;
    }
    if t.stage.as_deref().is_some_and(|s| s != "running") {
        writeln!(
            out,
            "{indent}future {}",
            t.stage.as_deref().unwrap_or_default()
        )?;
    }
    write_chain(out, &t.chain, indent)?;
    if let Some(j) = t.joined_task_id {
        writeln!(out, "{indent}   (joined task: task {j})")?;
    }
    Ok(())
}

/// Moves the undescribed words of `frames` that are contended mutexes
/// (other than the one the task itself waits for) into `holds_undescribed`.
fn mark_undescribed_holds(
    frames: &mut [Frame],
    contended: &std::collections::HashSet<u64>,
    own: Option<u64>,
) {
    for f in frames {
        let found: Vec<u64> = f
            .undescribed_words
            .iter()
            .copied()
            .filter(|w| contended.contains(w) && Some(*w) != own && !f.holds.contains(w))
            .collect();
        f.holds_undescribed = found;
        for b in &mut f.branches {
            mark_undescribed_holds(&mut b.frames, contended, own);
        }
    }
}

/// Post-mortem hazards derived from the decoded chains, each with the
/// evidence that supports it.
fn hazards(tasks: &[TaskReport], registry: &[InstrumentedTask]) -> Vec<HazardReport> {
    let mut out = Vec::new();
    // Who holds each mutex (a guard is a live local of that task).
    let mut holders: HashMap<u64, Vec<&TaskReport>> = HashMap::new();
    for t in tasks {
        for m in t.held_mutexes() {
            holders.entry(m).or_default().push(t);
        }
    }
    // Wait-for edges: waiter -> task that must act.
    let mut edges: HashMap<u64, (u64, String)> = HashMap::new();
    for t in tasks {
        let (Some(id), Some(leaf)) = (t.id, &t.chain.leaf) else {
            continue;
        };
        match leaf.kind {
            "mutex-lock" => {
                let Some(m) = leaf.resource else { continue };
                for h in holders.get(&m).into_iter().flatten() {
                    let Some(hid) = h.id else { continue };
                    if hid == id {
                        continue;
                    }
                    let frame = h
                        .chain
                        .frames
                        .iter()
                        .find(|f| f.holds.contains(&m) || f.holds_undescribed.contains(&m));
                    let at = frame
                        .and_then(|f| f.location.as_ref())
                        .map(|l| format!(", parked at {l}"))
                        .unwrap_or_default();
                    let how = match frame {
                        Some(f) if !f.holds.contains(&m) => format!(
                            "{} keeps a guard for {m:#x} across its await{at}: rustc's debug \
                             info does not describe that local (a shadowed name), but a word of \
                             {}'s saved state that no variable covers is the mutex's address",
                            h.label(),
                            f.function
                        ),
                        _ => format!(
                            "{} keeps a MutexGuard for {m:#x} across its await{at}",
                            h.label()
                        ),
                    };
                    out.push(HazardReport {
                        kind: "lock-held-by-other-task",
                        tasks: vec![id, hid],
                        resource: Some(format!("{m:#x}")),
                        message: format!(
                            "{} waits to lock mutex {m:#x}, whose guard is a live local of {}",
                            t.label(),
                            h.label()
                        ),
                        evidence: vec![
                            format!(
                                "{} is suspended in Mutex::lock at {}",
                                t.label(),
                                t.await_point().map(ToString::to_string).unwrap_or_default()
                            ),
                            how,
                        ],
                        location: None,
                    });
                    edges.insert(id, (hid, format!("mutex {m:#x}")));
                }
            }
            "join-handle" => {
                if let Some(j) = t.joined_task_id {
                    edges.insert(id, (j, format!("JoinHandle of task {j}")));
                }
            }
            _ => {}
        }
    }
    // Lost waker: idle, not notified, and the ref count leaves room for no
    // Waker. tokio counts one reference for the owned-task list, one for a
    // live JoinHandle (join interest) and one per Waker clone. A clone that
    // a wrapper of the task's own future keeps in an Arc nobody else holds
    // (taskscope's waker shim) cannot wake it from outside either.
    for t in tasks {
        let s = &t.state;
        if t.lifecycle != "idle" || s.notified || t.stage.as_deref() != Some("running") {
            continue;
        }
        let Some(id) = t.id else { continue };
        let private: Vec<&Frame> = t
            .chain
            .frames
            .iter()
            .filter(|f| {
                f.private_wakers
                    .iter()
                    .any(|p| format!("{p:#x}") == t.header)
            })
            .collect();
        let private_refs: u64 = private
            .iter()
            .map(|f| {
                f.private_wakers
                    .iter()
                    .filter(|p| format!("{:#x}", **p) == t.header)
                    .count() as u64
            })
            .sum();
        let baseline = 1 + u64::from(s.join_interest) + private_refs;
        if s.ref_count > baseline {
            continue;
        }
        let at = t
            .await_point()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        let on = t
            .chain
            .leaf
            .as_ref()
            .map(|l| l.description.clone())
            .unwrap_or_else(|| "an unknown future".into());
        let mut counted = vec!["1 (owned-task list)".to_string()];
        if s.join_interest {
            counted.push("1 (JoinHandle)".into());
        }
        for f in &private {
            counted.push(format!("1 (the waker kept by {})", f.function));
        }
        let mut evidence = vec![
            format!("state word {:#x}: idle, not notified, not running", s.raw),
            format!(
                "reference count {} = {} — no Waker clone outside the task holds a reference",
                s.ref_count,
                counted.join(" + ")
            ),
        ];
        for f in &private {
            evidence.push(format!(
                "{} keeps its own copy of the task's waker where nothing outside the task \
                 can reach it (an Arc with strong count 1 and no Weak, or taskscope's task \
                 record with every waker it handed out dropped)",
                f.function
            ));
        }
        evidence.push(format!(
            "innermost future: {on} (returned Pending without storing cx.waker()?)"
        ));
        // taskscope's registry, when linked in, counted the wakers too: the
        // task's own record (tokio's waker) and the records of futures
        // wrapped with `taskscope::instrument` inside it (the wrapper's).
        let wrapped: Vec<String> = t
            .chain
            .frames
            .iter()
            .flat_map(|f| f.wrapper_records.iter().map(|a| format!("{a:#x}")))
            .collect();
        let records = t.instrumented.iter().chain(registry.iter().filter(|i| {
            i.source == "wrapper" && (wrapped.contains(&i.record) || i.parent_tokio_id == Some(id))
        }));
        for i in records {
            let live = i.waker_clones.saturating_sub(i.waker_drops);
            let whose = if i.source == "wrapper" {
                match &i.name {
                    Some(n) => format!("the waker taskscope's wrapper \"{n}\" hands its future"),
                    None => "the waker taskscope's wrapper hands its future".to_string(),
                }
            } else {
                "the task's waker".to_string()
            };
            let verdict = if live == 0 {
                "none alive, which agrees".to_string()
            } else if i.source != "wrapper" && live as usize <= private.len() {
                format!("{live} alive: the one the wrapper keeps for itself")
            } else {
                format!("{live} unaccounted for (a clone outside tokio's count?)")
            };
            evidence.push(format!(
                "taskscope's registry counted {} clone(s) and {} drop(s) of {whose} over {} poll(s): {verdict}",
                i.waker_clones, i.waker_drops, i.polls
            ));
        }
        out.push(HazardReport {
            kind: "lost-waker",
            tasks: vec![id],
            resource: None,
            message: format!(
                "{} is parked{at} and no waker for it exists: nothing can ever wake it",
                t.label()
            ),
            evidence,
            location: None,
        });
    }
    // Parked on a resource only this task can reach (an Arc with one owner,
    // held by the waiting task itself).
    for t in tasks {
        let (Some(id), Some(leaf)) = (t.id, &t.chain.leaf) else {
            continue;
        };
        let Some(resource) = leaf.resource else {
            continue;
        };
        if !matches!(
            leaf.kind,
            "notify" | "semaphore-acquire" | "mutex-lock" | "oneshot-recv"
        ) {
            continue;
        }
        let owner = t.chain.frames.iter().find(|f| {
            f.shared
                .iter()
                .any(|(d, strong)| *d == resource && *strong == 1)
        });
        if let Some(f) = owner {
            out.push(HazardReport {
                kind: "leaked-task",
                tasks: vec![id],
                resource: Some(format!("{resource:#x}")),
                message: format!(
                    "{} is parked on a resource nobody else references ({}): it can never be woken",
                    t.label(),
                    leaf.description
                ),
                evidence: vec![
                    format!(
                        "the resource at {resource:#x} lives in an Arc whose strong count is 1"
                    ),
                    format!(
                        "that only Arc is a local of {} in this very task",
                        f.function
                    ),
                ],
                location: None,
            });
        }
    }
    // Synchronous guards saved across an await: the lock stays taken while
    // the task is parked, and whoever takes it next blocks its thread.
    for t in tasks {
        let Some(id) = t.id else { continue };
        let mut frames: Vec<&Frame> = Vec::new();
        collect_frames(&t.chain.frames, &mut frames);
        for f in frames {
            for g in &f.sync_guards {
                let at = f
                    .location
                    .as_ref()
                    .map(|l| format!(" at {l}"))
                    .unwrap_or_default();
                let mut evidence = vec![format!(
                    "a {} is a local of {} saved across its await{at} ({})",
                    g.display_name(),
                    f.function,
                    f.state.as_deref().unwrap_or("suspended")
                )];
                match (g.lock, g.lock_word) {
                    (Some(l), Some(w)) => evidence.push(format!(
                        "the lock it guards, at {l:#x}, is taken (state word {w:#x})"
                    )),
                    (Some(l), None) => evidence.push(format!("it guards the lock at {l:#x}")),
                    _ => {}
                }
                evidence.push(if g.type_name.starts_with("core::cell::") {
                    "while the task is parked, the RefCell stays borrowed: a conflicting \
                     borrow anywhere on this thread panics"
                        .into()
                } else {
                    "while the task is parked, any thread that takes this lock blocks \
                     (a worker thread of the runtime, too)"
                        .into()
                });
                out.push(HazardReport {
                    kind: "held-across-await",
                    tasks: vec![id],
                    resource: g.lock.map(|l| format!("{l:#x}")),
                    message: format!(
                        "{} holds a {} across the .await{at}",
                        t.label(),
                        g.display_name()
                    ),
                    evidence,
                    location: f.location.clone(),
                });
            }
        }
    }
    // Cycles in the wait-for graph (each node has at most one out-edge).
    let mut reported: std::collections::HashSet<u64> = Default::default();
    let mut starts: Vec<u64> = edges.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        let mut path = vec![start];
        let mut cur = start;
        while let Some((next, _)) = edges.get(&cur) {
            if let Some(pos) = path.iter().position(|n| n == next) {
                let cycle: Vec<u64> = path[pos..].to_vec();
                if cycle.iter().all(|n| !reported.contains(n)) {
                    reported.extend(&cycle);
                    let evidence = cycle
                        .iter()
                        .map(|n| {
                            let (to, via) = &edges[n];
                            let who = |id: &u64| {
                                tasks
                                    .iter()
                                    .find(|t| t.id == Some(*id))
                                    .map_or_else(|| format!("task {id}"), TaskReport::label)
                            };
                            let at = tasks
                                .iter()
                                .find(|t| t.id == Some(*n))
                                .and_then(TaskReport::await_point)
                                .map(|l| format!(" at {l}"))
                                .unwrap_or_default();
                            format!("{} waits{at} for {} (via {via})", who(n), who(to))
                        })
                        .collect();
                    let names: Vec<String> = cycle
                        .iter()
                        .chain(cycle.first())
                        .map(|n| format!("task {n}"))
                        .collect();
                    out.push(HazardReport {
                        kind: "deadlock-cycle",
                        tasks: cycle.clone(),
                        resource: None,
                        message: format!(
                            "wait-for cycle: {}; none of them can make progress",
                            names.join(" -> ")
                        ),
                        evidence,
                        location: None,
                    });
                }
                break;
            }
            if path.len() > tasks.len() {
                break;
            }
            path.push(*next);
            cur = *next;
        }
    }
    out
}
