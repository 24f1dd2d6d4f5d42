//! A program held by a debugger, analysed through the debugger.
//!
//! gdb and lldb front ends (`gdb-scripts/`) do no decoding of their own:
//! they start `taskscope debugger-serve`, describe the program they hold
//! (executable, threads with their registers, mapped files) and then answer
//! memory reads until the analyzer sends back its answer. The analysis is the
//! very one `taskscope dump` runs on a core or a pid ([`crate::analyze`]); only
//! the [`MemorySource`] differs: [`RemoteMemory`] asks the debugger, page by
//! page, and caches what it got, so one report costs a few hundred round
//! trips, not hundreds of thousands of word reads.
//!
//! # Protocol
//!
//! One JSON object per line in both directions.
//!
//! 1. debugger -> analyzer: a [`Request`]: what to print (`tasks`, `bt`,
//!    `hazards`, `report`, `describe`) and the [`DebuggerTarget`].
//! 2. analyzer -> debugger, any number of times: `{"read":[[addr,len],...]}`;
//!    the debugger answers `{"data":["<hex>" | null, ...]}` (`null`: that
//!    range cannot be read). The debugger never writes memory or registers.
//! 3. analyzer -> debugger, once: `{"done":{"text":"...","report":{...}}}` or
//!    `{"error":"..."}`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use crate::elf::{Executable, MappedFile, Registers, ThreadRecord};
use crate::error::{DumpError, MemoryError, Result};
use crate::future::Chain;
use crate::memory::{CoreMemory, MemorySource};
use crate::report::{self, Report, TaskReport};

/// Size of one cached block of target memory.
const PAGE: u64 = 4096;
/// Pages fetched together around a missing one (an aligned block).
const BLOCK_PAGES: u64 = 8;
/// Reads larger than this many pages go to the debugger as they are.
const MAX_PAGES_PER_READ: u64 = 64;

/// Whether the debugger holds a core file or a live (stopped) process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Core,
    Process,
}

/// One thread as the debugger sees it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DebuggerThread {
    /// The kernel thread id (LWP).
    pub tid: u32,
    /// Register name (`rip`, `rsp`, `rbp`, `rbx`, `r12`..`r15`, `fs_base`)
    /// to value; missing registers read as 0.
    pub registers: HashMap<String, u64>,
}

/// A file mapped into the program, as the debugger lists it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DebuggerMapping {
    pub start: u64,
    pub end: u64,
    #[serde(default)]
    pub offset: u64,
    pub path: String,
}

/// The program the debugger holds.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DebuggerTarget {
    pub kind: TargetKind,
    /// `gdb 13.1`, `lldb-19`: shown in the report's source line.
    #[serde(default)]
    pub debugger: Option<String>,
    pub executable: PathBuf,
    #[serde(default)]
    pub core: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Runtime address of the executable's entry point (`AT_ENTRY`), which
    /// gives the load bias of a position-independent executable.
    #[serde(default)]
    pub entry: Option<u64>,
    pub threads: Vec<DebuggerThread>,
    #[serde(default)]
    pub mappings: Vec<DebuggerMapping>,
}

/// What the debugger user asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// The task table.
    Tasks,
    /// Logical backtraces of one task (`task`: an id) or all (`all`).
    Bt,
    /// The post-mortem hazards.
    Hazards,
    /// The whole `taskscope dump` text report.
    Report,
    /// One value (`address`, `type_name`): an async state machine or a
    /// tokio task handle.
    Describe,
}

/// The first line the debugger sends.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Request {
    pub command: Command,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub address: Option<u64>,
    #[serde(default)]
    pub type_name: Option<String>,
    pub target: DebuggerTarget,
}

/// The way to the debugger: one batch of reads at a time.
pub trait Transport {
    /// Reads each `(address, length)`; `None` for ranges the debugger
    /// cannot read. `Err` when the debugger went away or broke protocol.
    fn read_ranges(&mut self, ranges: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, String>;
}

/// [`Transport`] over JSON lines (the debugger's pipe to our stdin/stdout).
#[derive(Debug)]
pub struct LineTransport<R, W> {
    input: R,
    output: W,
}

impl<R: BufRead, W: Write> LineTransport<R, W> {
    pub fn new(input: R, output: W) -> Self {
        LineTransport { input, output }
    }

    /// Reads one protocol line.
    pub fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.input.read_line(&mut line) {
            Ok(0) => Err("the debugger closed the connection".into()),
            Ok(_) => Ok(line),
            Err(e) => Err(format!("reading from the debugger: {e}")),
        }
    }

    /// Writes one protocol line.
    pub fn send(&mut self, value: &serde_json::Value) -> Result<(), String> {
        let mut text = value.to_string();
        text.push('\n');
        self.output
            .write_all(text.as_bytes())
            .and_then(|()| self.output.flush())
            .map_err(|e| format!("writing to the debugger: {e}"))
    }
}

impl<R: BufRead, W: Write> Transport for LineTransport<R, W> {
    fn read_ranges(&mut self, ranges: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, String> {
        let list: Vec<serde_json::Value> = ranges
            .iter()
            .map(|&(a, l)| serde_json::json!([a, l]))
            .collect();
        self.send(&serde_json::json!({ "read": list }))?;
        let line = self.read_line()?;
        #[derive(serde::Deserialize)]
        struct Reply {
            data: Vec<Option<String>>,
        }
        let reply: Reply = serde_json::from_str(&line)
            .map_err(|e| format!("bad memory reply from the debugger: {e}"))?;
        if reply.data.len() != ranges.len() {
            return Err(format!(
                "the debugger answered {} of {} memory reads",
                reply.data.len(),
                ranges.len()
            ));
        }
        reply
            .data
            .into_iter()
            .zip(ranges)
            .map(|(d, &(_, len))| match d {
                None => Ok(None),
                Some(hex) => {
                    let bytes =
                        unhex(&hex).ok_or_else(|| "the debugger sent malformed hex".to_string())?;
                    // A short answer is treated as unreadable, never padded.
                    Ok((bytes.len() == len).then_some(bytes))
                }
            })
            .collect()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

/// Bytes read from the debugger, or `None` when it could not read them.
type Cached = Option<Vec<u8>>;

/// Counters shown with `--verbose`-like diagnostics and checked by tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Batches sent to the debugger.
    pub round_trips: u64,
    /// Ranges asked for in all batches.
    pub ranges: u64,
}

/// Memory of the debugger's program, read through a [`Transport`] and cached
/// in 4 KiB pages. Read-only parts of the executable that the debugger
/// cannot serve (a core without them, say) come from the local file.
pub struct RemoteMemory<T> {
    transport: RefCell<T>,
    /// Page address -> its bytes, or `None` when the whole page is unreadable.
    pages: RefCell<HashMap<u64, Cached>>,
    /// Exact reads made when a page could not be read whole.
    exact: RefCell<HashMap<(u64, usize), Cached>>,
    /// The executable's loadable segments (as a core completes itself).
    exe: Option<CoreMemory>,
    stats: Cell<RemoteStats>,
    /// The first transport failure: all reads fail after it.
    broken: RefCell<Option<String>>,
}

impl<T> std::fmt::Debug for RemoteMemory<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMemory")
            .field("pages", &self.pages.borrow().len())
            .field("stats", &self.stats.get())
            .finish()
    }
}

impl<T: Transport> RemoteMemory<T> {
    pub fn new(transport: T) -> Self {
        RemoteMemory {
            transport: RefCell::new(transport),
            pages: RefCell::new(HashMap::new()),
            exact: RefCell::new(HashMap::new()),
            exe: None,
            stats: Cell::new(RemoteStats::default()),
            broken: RefCell::new(None),
        }
    }

    fn set_executable(&mut self, exe: &Executable, bias: u64) {
        self.exe = Some(CoreMemory {
            core: exe.region_map(bias),
            exe: None,
        });
    }

    pub fn stats(&self) -> RemoteStats {
        self.stats.get()
    }

    /// The transport failure that stopped reads, if any.
    pub fn failure(&self) -> Option<String> {
        self.broken.borrow().clone()
    }

    /// Gives the transport back (to send the final answer on it).
    pub fn into_transport(self) -> T {
        self.transport.into_inner()
    }

    fn fetch(&self, ranges: &[(u64, usize)]) -> Option<Vec<Option<Vec<u8>>>> {
        if self.broken.borrow().is_some() {
            return None;
        }
        let mut s = self.stats.get();
        s.round_trips += 1;
        s.ranges += ranges.len() as u64;
        self.stats.set(s);
        match self.transport.borrow_mut().read_ranges(ranges) {
            Ok(v) => Some(v),
            Err(e) => {
                *self.broken.borrow_mut() = Some(e);
                None
            }
        }
    }

    /// Copies `addr..addr+buf.len()` from cached pages, fetching the missing
    /// ones in one batch. `false` when some page is unreadable.
    fn read_paged(&self, addr: u64, buf: &mut [u8]) -> bool {
        let first = addr & !(PAGE - 1);
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        let last = (end - 1) & !(PAGE - 1);
        // Each missing page brings its aligned block along: task cells,
        // lists and stacks are read densely, so neighbours are wanted next.
        let missing: Vec<(u64, usize)> = {
            let pages = self.pages.borrow();
            let block = PAGE * BLOCK_PAGES;
            let mut want: Vec<u64> = (first..=last)
                .step_by(PAGE as usize)
                .filter(|p| !pages.contains_key(p))
                .flat_map(|p| {
                    let start = p & !(block - 1);
                    (0..BLOCK_PAGES).map(move |i| start + i * PAGE)
                })
                .filter(|p| !pages.contains_key(p))
                .collect();
            want.sort_unstable();
            want.dedup();
            want.into_iter().map(|p| (p, PAGE as usize)).collect()
        };
        if !missing.is_empty() {
            let Some(got) = self.fetch(&missing) else {
                return false;
            };
            let mut pages = self.pages.borrow_mut();
            for ((p, _), data) in missing.iter().zip(got) {
                pages.insert(*p, data);
            }
        }
        let pages = self.pages.borrow();
        let mut pos = 0usize;
        let mut cur = addr;
        while pos < buf.len() {
            let page = cur & !(PAGE - 1);
            let Some(Some(bytes)) = pages.get(&page) else {
                return false;
            };
            let off = (cur - page) as usize;
            let n = (PAGE as usize - off).min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&bytes[off..off + n]);
            pos += n;
            cur += n as u64;
        }
        true
    }
}

impl<T: Transport> MemorySource for RemoteMemory<T> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::result::Result<(), MemoryError> {
        let len = buf.len();
        if len == 0 {
            return Ok(());
        }
        let pages = (len as u64).div_ceil(PAGE) + 1;
        if pages <= MAX_PAGES_PER_READ && self.read_paged(addr, buf) {
            return Ok(());
        }
        if let Some(exe) = &self.exe {
            if exe.read(addr, buf).is_ok() {
                return Ok(());
            }
        }
        // Part of a page is unreadable (the end of a mapping, a core that
        // saved only part of a region): ask for exactly these bytes.
        if let Some(hit) = self.exact.borrow().get(&(addr, len)) {
            return match hit {
                Some(bytes) => {
                    buf.copy_from_slice(bytes);
                    Ok(())
                }
                None => Err(MemoryError::Unmapped { addr, len }),
            };
        }
        let got = self
            .fetch(&[(addr, len)])
            .and_then(|mut v| v.pop())
            .flatten();
        self.exact.borrow_mut().insert((addr, len), got.clone());
        match got {
            Some(bytes) => {
                buf.copy_from_slice(&bytes);
                Ok(())
            }
            None => Err(MemoryError::Unmapped { addr, len }),
        }
    }
}

fn registers(t: &DebuggerThread) -> Registers {
    let r = |name: &str| t.registers.get(name).copied().unwrap_or(0);
    Registers {
        rip: r("rip"),
        rsp: r("rsp"),
        rbp: r("rbp"),
        rbx: r("rbx"),
        r12: r("r12"),
        r13: r("r13"),
        r14: r("r14"),
        r15: r("r15"),
        fs_base: r("fs_base"),
    }
}

/// Load bias of the executable: from the entry point when the debugger gave
/// it, else from where its first page is mapped.
fn load_bias(target: &DebuggerTarget, exe: &Executable) -> Result<u64> {
    if let Some(entry) = target.entry {
        return Ok(entry.wrapping_sub(exe.entry));
    }
    let exe_path = target.executable.display().to_string();
    let mapped = target
        .mappings
        .iter()
        .filter(|m| m.path == exe_path && m.offset == 0)
        .map(|m| m.start)
        .min();
    match mapped {
        Some(start) => {
            let first = object_first_load(exe).unwrap_or(0);
            Ok(start.wrapping_sub(first & !0xfff))
        }
        None => Err(DumpError::Process {
            pid: target.pid.unwrap_or(0),
            detail: format!(
                "the debugger gave neither the entry point nor a mapping of {exe_path}: \
                 cannot relocate its symbols"
            ),
        }),
    }
}

fn object_first_load(exe: &Executable) -> Option<u64> {
    use object::{Object, ObjectSegment};
    let file = object::File::parse(exe.bytes()).ok()?;
    file.segments().map(|s| s.address()).min()
}

/// Opens the debugger's executable and finds its load bias.
fn prepare(target: &DebuggerTarget) -> Result<(Executable, u64)> {
    let exe = Executable::open(&target.executable)?;
    let bias = load_bias(target, &exe)?;
    Ok((exe, bias))
}

/// Runs the same analysis as `taskscope dump` on the debugger's program.
/// The memory is given back with the result (its transport carries the
/// answer to the debugger).
pub fn analyze_remote<T: Transport>(
    target: &DebuggerTarget,
    transport: T,
) -> (Result<Report>, RemoteMemory<T>) {
    let mut mem = RemoteMemory::new(transport);
    let result = prepare(target).and_then(|(exe, bias)| {
        mem.set_executable(&exe, bias);
        remote_report(target, &exe, bias, &mem)
    });
    (result, mem)
}

fn remote_report<T: Transport>(
    target: &DebuggerTarget,
    exe: &Executable,
    bias: u64,
    mem: &RemoteMemory<T>,
) -> Result<Report> {
    let threads: Vec<ThreadRecord> = target
        .threads
        .iter()
        .map(|t| ThreadRecord {
            tid: t.tid,
            registers: registers(t),
        })
        .collect();
    let files: Vec<MappedFile> = target
        .mappings
        .iter()
        .filter(|m| m.path.starts_with('/') && m.end > m.start)
        .map(|m| MappedFile {
            start: m.start,
            end: m.end,
            file_offset: m.offset,
            path: m.path.clone(),
        })
        .collect();
    let source = report::Source {
        kind: match target.kind {
            TargetKind::Core => "core".into(),
            TargetKind::Process => "process".into(),
        },
        path: target.core.clone(),
        pid: target.pid,
        command: None,
        executable: target.executable.display().to_string(),
        build_id: exe.build_id.as_deref().map(crate::elf::hex),
        build_id_checked: false,
    };
    let mut warnings = Vec::new();
    if files.is_empty() {
        warnings.push(format!(
            "{} listed no mapped files: thread stacks cannot be unwound",
            target.debugger.as_deref().unwrap_or("the debugger")
        ));
    }
    let progress = crate::Progress {
        start: Instant::now(),
        sink: None,
    };
    let result = crate::report_for(
        mem, exe, bias, &threads, &files, source, warnings, &progress,
    );
    match mem.failure() {
        Some(broken) => Err(DumpError::Process {
            pid: target.pid.unwrap_or(0),
            detail: broken,
        }),
        None => result,
    }
}

/// Serves one request from a debugger front end on `input`/`output`
/// (the `taskscope debugger-serve` subcommand). Errors are sent to the
/// debugger as `{"error":...}`; `Err` only when even that is impossible.
pub fn serve<R: BufRead, W: Write>(input: R, output: W) -> std::result::Result<(), String> {
    let mut transport = LineTransport::new(input, output);
    let line = transport.read_line()?;
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            return transport.send(&serde_json::json!({
                "error": format!("bad request from the debugger front end: {e}")
            }))
        }
    };
    let mut mem = RemoteMemory::new(transport);
    let answer = prepare(&request.target)
        .map_err(|e| e.to_string())
        .and_then(|(exe, bias)| {
            mem.set_executable(&exe, bias);
            answer(&request, &exe, bias, &mem)
        });
    let answer = match (answer, mem.failure()) {
        (_, Some(broken)) => Err(broken),
        (a, None) => a,
    };
    let mut transport = mem.into_transport();
    match answer {
        Ok((text, report)) => transport.send(&serde_json::json!({
            "done": { "text": text, "report": report }
        })),
        Err(e) => transport.send(&serde_json::json!({ "error": e })),
    }
}

/// The text for the request, with the report when one was made (a
/// pretty-printed future needs none).
fn answer<T: Transport>(
    request: &Request,
    exe: &Executable,
    bias: u64,
    mem: &RemoteMemory<T>,
) -> std::result::Result<(String, Option<Report>), String> {
    if request.command == Command::Describe {
        let addr = request
            .address
            .ok_or("describe needs the value's address")?;
        let ty = request
            .type_name
            .as_deref()
            .ok_or("describe needs the value's type name")?
            .trim();
        if !is_task_handle(ty) && !is_task_header(ty) {
            return describe_future(exe, bias, mem, addr, ty).map(|text| (text, None));
        }
    }
    let report = remote_report(&request.target, exe, bias, mem).map_err(|e| e.to_string())?;
    let text = match request.command {
        Command::Tasks => task_table(&report),
        Command::Bt => {
            let which = request.task.as_deref().unwrap_or("all").trim();
            backtraces(&report, which)?
        }
        Command::Hazards => hazard_list(&report),
        Command::Report => {
            let mut out = Vec::new();
            report
                .write_text(&mut out, false)
                .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&out).into_owned()
        }
        Command::Describe => {
            let addr = request.address.unwrap_or(0);
            let ty = request.type_name.as_deref().unwrap_or("").trim();
            describe_task(&report, mem, addr, ty)?
        }
    };
    Ok((text, Some(report)))
}

/// The warnings, one per line, before any answer.
fn warnings(report: &Report, out: &mut String) {
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
}

/// Name a user knows a task by: its outermost async fn or block (past
/// wrappers like `Instrumented`), else its future type.
fn task_name(t: &TaskReport) -> String {
    let frames = &t.chain.frames;
    frames
        .iter()
        .find(|f| f.kind.starts_with("async"))
        .or(frames.first())
        .map(|f| f.function.clone())
        .or_else(|| t.future_type.clone())
        .unwrap_or_else(|| "<unknown future>".into())
}

/// The name given at spawn (taskscope's registry), if any.
fn instrumented_name(t: &TaskReport) -> Option<&str> {
    t.instrumented.as_ref().and_then(|i| i.name.as_deref())
}

fn task_label(t: &TaskReport) -> String {
    match t.id {
        Some(id) => id.to_string(),
        None => format!("@{}", t.header),
    }
}

/// `/home/u/.cargo/registry/src/index.crates.io-<hash>/tokio-1.54.1/src/x.rs`
/// -> `tokio-1.54.1/src/x.rs`: short enough for a table column.
fn short_path(file: &str) -> &str {
    if let Some((_, rest)) = file.split_once("/.cargo/registry/src/") {
        return rest
            .split_once('/')
            .map_or(rest, |(_, crate_path)| crate_path);
    }
    file
}

/// Where a task is parked, for the table: the innermost user `.await`.
fn parked_at(t: &TaskReport) -> String {
    match (t.await_point(), t.stage.as_deref()) {
        (Some(l), _) => format!("{}:{}", short_path(&l.file), l.line),
        (None, Some(stage)) if stage != "running" => format!("(future {stage})"),
        _ => "-".into(),
    }
}

/// `info async-tasks`: one line per task.
pub fn task_table(report: &Report) -> String {
    let mut out = String::new();
    warnings(report, &mut out);
    // The NAME column only when some task has a name (taskscope's registry).
    let named = report.tasks.iter().any(|t| instrumented_name(t).is_some());
    let mut head = vec!["ID"];
    if named {
        head.push("NAME");
    }
    head.extend(["STATE", "TASK", "PARKED AT", "AWAITING"]);
    let rows: Vec<Vec<String>> = report
        .tasks
        .iter()
        .map(|t| {
            let mut row = vec![task_label(t)];
            if named {
                row.push(instrumented_name(t).unwrap_or("-").to_string());
            }
            row.extend([
                t.lifecycle.to_string(),
                task_name(t),
                parked_at(t),
                awaiting(&t.chain),
            ]);
            row
        })
        .collect();
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let _ = writeln!(
        out,
        "{} task(s) in {} runtime(s)",
        report.tasks.len(),
        report.runtimes.len()
    );
    let line = |out: &mut String, cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            let _ = match i {
                0 => write!(out, "{c:>w$}  "),
                i if i == last => writeln!(out, "{c}"),
                _ => write!(out, "{c:<w$}  "),
            };
        }
    };
    line(&mut out, &head);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    for b in &report.block_on {
        let at = b
            .chain
            .frames
            .iter()
            .rev()
            .find_map(|f| f.location.as_ref())
            .map(ToString::to_string)
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "block_on on thread {}: {} parked at {at}",
            b.thread, b.future_type
        );
    }
    out
}

/// What a chain waits on, in one phrase: its leaf, or its branches.
fn awaiting(chain: &Chain) -> String {
    if let Some(l) = &chain.leaf {
        return l.description.clone();
    }
    match chain.frames.iter().rev().find(|f| !f.branches.is_empty()) {
        Some(f) => format!(
            "{} branches of {} (see async-bt)",
            f.branches.len(),
            f.function
        ),
        None => String::new(),
    }
}

/// `async-bt ID|all`.
pub fn backtraces(report: &Report, which: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    warnings(report, &mut out);
    let chosen: Vec<&TaskReport> = if which.is_empty() || which == "all" {
        report.tasks.iter().collect()
    } else {
        let id: u64 = which
            .parse()
            .map_err(|_| format!("`{which}` is not a task id (a number, or `all`)"))?;
        let found: Vec<&TaskReport> = report.tasks.iter().filter(|t| t.id == Some(id)).collect();
        if found.is_empty() {
            let ids: Vec<String> = report.tasks.iter().map(task_label).collect();
            return Err(format!(
                "no task {id}; tasks are: {}",
                if ids.is_empty() {
                    "(none)".to_string()
                } else {
                    ids.join(", ")
                }
            ));
        }
        found
    };
    for (i, t) in chosen.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let name = instrumented_name(t)
            .map(|n| format!("  name {n:?}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "task {} ({}) {}{name}  [runtime {}, header {}]",
            task_label(t),
            t.lifecycle,
            task_name(t),
            t.runtime,
            t.header
        );
        if let Some(loc) = &t.spawned_at {
            let _ = writeln!(out, "  spawned at {loc}");
        }
        write_bt(&mut out, &t.chain, "  ");
        if let Some(j) = t.joined_task_id {
            let _ = writeln!(out, "  (joins task {j})");
        }
    }
    if which.is_empty() || which == "all" {
        for b in &report.block_on {
            let _ = writeln!(out, "\nblock_on on thread {}: {}", b.thread, b.future_type);
            write_bt(&mut out, &b.chain, "  ");
        }
    }
    Ok(out)
}

/// A chain innermost first, like a thread backtrace: `#0` is what the task
/// waits on, the last frame is the task's own future.
fn write_bt(out: &mut String, chain: &Chain, indent: &str) {
    let mut n = 0usize;
    if let Some(leaf) = &chain.leaf {
        let _ = writeln!(out, "{indent}#{n:<2} {}", leaf.description);
        n += 1;
    }
    if chain.frames.is_empty() && chain.leaf.is_none() {
        let _ = writeln!(out, "{indent}(no future: the task has finished)");
    }
    for f in chain.frames.iter().rev() {
        let at = f
            .location
            .as_ref()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        let _ = writeln!(out, "{indent}#{n:<2} {}{at}", f.title());
        for line in f.held() {
            let _ = writeln!(out, "{indent}     {line}");
        }
        for (i, b) in f.branches.iter().enumerate() {
            let _ = writeln!(out, "{indent}     branch {i}:");
            write_bt(out, b, &format!("{indent}       "));
        }
        n += 1;
    }
}

/// `async-hazards`.
pub fn hazard_list(report: &Report) -> String {
    let mut out = String::new();
    warnings(report, &mut out);
    let _ = writeln!(out, "{} hazard(s)", report.hazards.len());
    for h in &report.hazards {
        let _ = writeln!(out, "{}: {}", h.kind, h.message);
        for e in &h.evidence {
            let _ = writeln!(out, "  - {e}");
        }
    }
    out
}

/// `true` for tokio types that are one pointer to a task header.
fn is_task_handle(type_name: &str) -> bool {
    let base = type_name.split('<').next().unwrap_or(type_name);
    let last = base.rsplit("::").next().unwrap_or(base);
    base.starts_with("tokio::")
        && matches!(
            last,
            "JoinHandle" | "AbortHandle" | "RawTask" | "Task" | "Notified" | "UnownedTask"
        )
}

fn is_task_header(type_name: &str) -> bool {
    type_name.starts_with("tokio::") && type_name.ends_with("::Header")
}

/// The pretty-printer's text for a tokio task handle or header: the task
/// it refers to.
fn describe_task<T: Transport>(
    report: &Report,
    mem: &RemoteMemory<T>,
    addr: u64,
    type_name: &str,
) -> std::result::Result<String, String> {
    let header = if is_task_header(type_name) {
        addr
    } else {
        mem.read_u64(addr).map_err(|e| e.to_string())?
    };
    let key = format!("{header:#x}");
    let Some(t) = report.tasks.iter().find(|t| t.header == key) else {
        return Ok(format!(
            "task header {key} (not in any runtime's task list: already released?)"
        ));
    };
    let mut out = format!(
        "task {} ({}) {}, parked at {}",
        task_label(t),
        t.lifecycle,
        task_name(t),
        parked_at(t)
    );
    let what = awaiting(&t.chain);
    if !what.is_empty() {
        let _ = write!(out, ": {what}");
    }
    out.push('\n');
    write_bt(&mut out, &t.chain, "  ");
    Ok(out)
}

/// An async state machine at `addr`: decoded with the DWARF of the
/// executable, through the same decoder as tasks.
fn describe_future<T: Transport>(
    exe: &Executable,
    bias: u64,
    mem: &RemoteMemory<T>,
    addr: u64,
    type_name: &str,
) -> std::result::Result<String, String> {
    let dwarf = crate::dwarf::DebugInfo::load(&exe.path, exe.bytes()).map_err(|e| e.to_string())?;
    let wanted = type_name.replace(' ', "");
    let die = dwarf
        .index()
        .qualified
        .iter()
        .filter(|(_, name)| name.replace(' ', "") == wanted)
        .map(|(die, _)| *die)
        .min()
        .ok_or_else(|| format!("{type_name}: not an async state machine taskscope knows"))?;
    let reader = crate::value::Reader { mem, dwarf: &dwarf };
    let value = reader
        .value(addr, die)
        .ok_or_else(|| format!("cannot read a {type_name} at {addr:#x}"))?;
    let walker = crate::tokio::Walker::new(reader, bias);
    let decoder = crate::future::Decoder::new(&walker);
    let fut = decoder
        .find_async(&value)
        .ok_or_else(|| format!("{type_name}: not an async state machine"))?;
    let chain = decoder.chain(&fut);
    let mut out = String::new();
    let state = chain.frames.first().and_then(|f| f.state.clone());
    let at = chain.frames.iter().rev().find_map(|f| f.location.as_ref());
    match (state.as_deref(), at) {
        (Some("Unresumed"), _) => out.push_str("not started yet (Unresumed)"),
        (Some("Returned"), _) => out.push_str("completed (Returned)"),
        (Some("Panicked"), _) => out.push_str("panicked while polled (Panicked)"),
        (_, Some(l)) => {
            let _ = write!(out, "suspended at {l}");
        }
        _ => out.push_str("suspended"),
    }
    let what = awaiting(&chain);
    if !what.is_empty() {
        let _ = write!(out, ": {what}");
    }
    out.push('\n');
    write_bt(&mut out, &chain, "  ");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport over a byte vector standing at address 0x1000.
    struct Bytes {
        base: u64,
        data: Vec<u8>,
        batches: Vec<usize>,
    }

    impl Transport for Bytes {
        fn read_ranges(&mut self, ranges: &[(u64, usize)]) -> Result<Vec<Option<Vec<u8>>>, String> {
            self.batches.push(ranges.len());
            Ok(ranges
                .iter()
                .map(|&(a, l)| {
                    let start = a.checked_sub(self.base)? as usize;
                    self.data.get(start..start + l).map(<[u8]>::to_vec)
                })
                .collect())
        }
    }

    #[test]
    fn pages_are_cached_and_partial_pages_fall_back_to_exact_reads() {
        let data: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
        let mem = RemoteMemory::new(Bytes {
            base: 0x1000,
            data,
            batches: Vec::new(),
        });
        assert_eq!(mem.read_u8(0x1000 + 10), Ok(10));
        assert_eq!(mem.read_u8(0x1000 + 11), Ok(11));
        assert_eq!(mem.stats().round_trips, 1, "second read from the cache");
        // The second page is only partly backed: exact read works.
        let mut b = [0u8; 4];
        mem.read(0x1000 + 5000, &mut b).expect("exact read");
        assert_eq!(b[0], (5000 % 251) as u8);
        // Beyond the data: an error, not zeros.
        assert!(mem.read_u64(0x1000 + 5998).is_err());
        assert!(mem.read_u64(0x10).is_err());
    }

    #[test]
    fn task_handle_types_are_recognised() {
        assert!(is_task_handle("tokio::runtime::task::join::JoinHandle<()>"));
        assert!(is_task_handle("tokio::runtime::task::raw::RawTask"));
        assert!(!is_task_handle("stuck::sleeper::{async_fn_env#0}"));
        assert!(is_task_header("tokio::runtime::task::core::Header"));
    }

    #[test]
    fn hex_is_strict() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
