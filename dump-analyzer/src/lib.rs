//! `taskscope-dump`: reconstruct every tokio task and its await chain from an
//! ELF core file or a live process, with no code change in the app.
//!
//! # Shape
//!
//! Layered like a minidump processor, bottom to top:
//!
//! - [`elf`]: the core file (saved memory, threads from `NT_PRSTATUS`, mapped
//!   files from `NT_FILE`) and the executable (segments, symbols, build-id).
//! - [`memory`]: the [`MemorySource`] trait, implemented by a core (completed
//!   by the executable's read-only segments) and by a live process.
//! - [`dwarf`]: DWARF read lazily (types decoded per DIE, one index pass on
//!   first lookup).
//! - [`location`]: DWARF location expressions evaluated in unwound frames
//!   (finding the `block_on` future on a stack, debug or optimised).
//! - [`value`]: typed navigation of memory by field names and enum variants.
//! - [`tokio`]: runtimes and owned tasks, found through each thread's TLS.
//! - [`future`]: the async state-machine decoder producing logical backtraces
//!   down to a leaf described in user terms.
//! - [`registry`]: taskscope's own task registry (names, parent task, poll
//!   statistics), read from its self-describing linker section without DWARF.
//! - [`report`]: the serialisable report and its text renderer.
//!
//! Every read of target memory is checked and every walk is bounded, so a
//! truncated core or one taken mid-mutation yields a partial report with
//! warnings, never a panic or a hang.

pub mod dwarf;
pub mod elf;
pub mod error;
pub mod future;
pub mod location;
pub mod memory;
pub mod process;
pub mod registry;
pub mod remote;
pub mod report;
pub mod tokio;
pub mod unwind;
pub mod value;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::{DumpError, MemoryError, Result};
pub use memory::MemorySource;
pub use report::Report;

use elf::{CoreFile, Executable, ThreadRecord};

/// Where the program's memory comes from.
#[derive(Debug, Clone)]
pub enum Target {
    Core { core: PathBuf, exe: Option<PathBuf> },
    Pid { pid: u32, exe: Option<PathBuf> },
}

/// Options of one analysis.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Called with a short status line when work takes longer than a second.
    pub progress: Option<fn(&str)>,
}

struct Progress {
    start: Instant,
    sink: Option<fn(&str)>,
}

impl Progress {
    fn say(&self, msg: &str) {
        if let Some(sink) = self.sink {
            if self.start.elapsed() > Duration::from_secs(1) {
                sink(msg);
            }
        }
    }
}

/// Analyses a core file or live process and returns the full report.
pub fn analyze(target: &Target, options: &Options) -> Result<Report> {
    let progress = Progress {
        start: Instant::now(),
        sink: options.progress,
    };
    match target {
        Target::Core { core, exe } => {
            let core_file = CoreFile::open(core)?;
            let exe_path = match exe {
                Some(p) => p.clone(),
                None => core_file.executable_path().ok_or(DumpError::NoExecutable)?,
            };
            let exe = Executable::open(&exe_path).map_err(|e| match e {
                DumpError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                    DumpError::Io {
                        path,
                        source: std::io::Error::new(
                            source.kind(),
                            "executable named by the core not found; pass --exe",
                        ),
                    }
                }
                other => other,
            })?;
            let core_id = core_file.executable_build_id(&exe_path);
            if let (Some(core_id), Some(exe_id)) = (&core_id, &exe.build_id) {
                if core_id != exe_id {
                    return Err(DumpError::BuildIdMismatch {
                        path: exe_path,
                        exe: elf::hex(exe_id),
                        core: elf::hex(core_id),
                    });
                }
            }
            let bias = core_file
                .entry
                .map(|e| e.wrapping_sub(exe.entry))
                .unwrap_or(0);
            let memory = memory::CoreMemory {
                core: core_file.memory.clone(),
                exe: Some(exe.region_map(bias)),
            };
            let mut source = report::Source {
                kind: "core".into(),
                path: Some(core.display().to_string()),
                pid: core_file.pid,
                command: core_file.command.clone(),
                executable: exe_path.display().to_string(),
                build_id: exe.build_id.as_deref().map(elf::hex),
                build_id_checked: core_id.is_some() && exe.build_id.is_some(),
            };
            let mut warnings = Vec::new();
            if core_file.truncated {
                warnings.push(
                    "the core file is truncated: some memory is missing, the report may be partial"
                        .to_string(),
                );
            }
            if core_id.is_none() {
                source.build_id_checked = false;
            }
            report_for(
                &memory,
                &exe,
                bias,
                &core_file.threads,
                &core_file.files,
                source,
                warnings,
                &progress,
            )
        }
        Target::Pid { pid, exe } => {
            let live = process::LiveProcess::attach(*pid)?;
            let exe_path = exe.clone().unwrap_or_else(|| live.exe.clone());
            let exe = Executable::open(&exe_path)?;
            let bias = live.entry.map(|e| e.wrapping_sub(exe.entry)).unwrap_or(0);
            let source = report::Source {
                kind: "process".into(),
                path: None,
                pid: Some(*pid),
                command: live.command.clone(),
                executable: exe_path.display().to_string(),
                build_id: exe.build_id.as_deref().map(elf::hex),
                build_id_checked: false,
            };
            let warnings = live.warnings.clone();
            report_for(
                &live.memory,
                &exe,
                bias,
                &live.threads,
                &live.files,
                source,
                warnings,
                &progress,
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn report_for(
    mem: &dyn MemorySource,
    exe: &Executable,
    bias: u64,
    threads: &[ThreadRecord],
    files: &[elf::MappedFile],
    source: report::Source,
    mut warnings: Vec<String>,
    progress: &Progress,
) -> Result<Report> {
    let mut report = Report::new(source);
    progress.say("unwinding threads...");
    let modules = unwind::Modules::load(files);
    report.threads = threads
        .iter()
        .map(|t| report::ThreadReport::basic(t, exe, bias))
        .collect();
    // taskscope's registry needs no DWARF: read it first, so a stripped
    // binary still names its tasks.
    if let Some((addr, size)) = exe.registry_section {
        progress.say("reading the taskscope registry...");
        let found = registry::read(mem, addr.wrapping_add(bias), size);
        warnings.extend(found.warnings);
        report.instrumented = found.tasks;
    }
    // Line tables need DWARF; loaded only if the binary has it.
    let dwarf = if exe.has_debug_info {
        Some(dwarf::DebugInfo::load(&exe.path, exe.bytes())?)
    } else {
        None
    };
    let exe_name = exe.path.display().to_string();
    let mut stacks: Vec<(u32, Vec<elf::Registers>)> = Vec::new();
    for (t, tr) in threads.iter().zip(report.threads.iter_mut()) {
        let regs = modules.unwind(mem, &t.registers);
        let pcs: Vec<u64> = regs.iter().map(|r| r.rip).collect();
        stacks.push((t.tid, regs));
        for (i, pc) in pcs.into_iter().enumerate() {
            let module = modules.module_for(pc);
            let lookup = pc.wrapping_sub(u64::from(i > 0));
            let (function, module_path, svma) = match module {
                Some(m) => (
                    m.symbol(lookup.wrapping_sub(m.bias))
                        .map(|s| s.name.clone()),
                    m.path.clone(),
                    lookup.wrapping_sub(m.bias),
                ),
                None => (None, String::new(), lookup),
            };
            let name = function.clone().unwrap_or_default();
            let noise = report::is_noise_frame(&name, &module_path);
            let location = match (&dwarf, module_path == exe_name || module.is_none()) {
                (Some(d), true) if !noise => {
                    d.line_for(svma).map(|(file, line)| tokio::SourceLocation {
                        file,
                        line,
                        column: None,
                    })
                }
                _ => None,
            };
            tr.frames.push(report::StackFrame {
                pc: format!("{pc:#x}"),
                function,
                location,
                module: (!module_path.is_empty()).then_some(module_path),
                noise,
            });
        }
        if let Some(f) = tr.frames.iter().find(|f| f.function.is_some()) {
            tr.function = f.function.clone();
        }
        tr.classify();
    }
    let Some(dwarf) = dwarf else {
        let registry = if report.instrumented.is_empty() {
            ""
        } else {
            " (taskscope's registry still names them, without await points)"
        };
        warnings.push(format!(
            "{} has no DWARF debug info: tokio tasks and their await chains cannot be decoded{registry}; build with `debug = true` (or `debug = 2`)",
            exe.path.display()
        ));
        report.warnings = warnings;
        report.finish();
        return Ok(report);
    };
    progress.say("indexing debug info...");
    let reader = value::Reader { mem, dwarf: &dwarf };
    let walker = tokio::Walker::new(reader, bias);
    let tls: Vec<(u32, u64)> = threads
        .iter()
        .map(|t| (t.tid, t.registers.fs_base))
        .collect();
    let runtimes = walker.runtimes(&tls, exe.tls);
    if runtimes.is_empty() && !dwarf.index().tokio_types.is_empty() {
        warnings.push(
            "the program links tokio but no runtime was found through any thread's context \
             (no runtime running, or a tokio older than 1.32, which is not supported)"
                .to_string(),
        );
    }
    let decoder = future::Decoder::new(&walker);
    for rt in &runtimes {
        progress.say(&format!("reading tasks of runtime {:#x}...", rt.handle));
        let mut tick = |n: usize| progress.say(&format!("{n} tasks read..."));
        let tasks = walker.tasks(rt, &mut tick);
        for t in tasks {
            report.tasks.push(decoder.task_report(&t));
        }
        report.runtimes.push(report::RuntimeReport::from(rt));
    }
    // Futures driven by `block_on` live on a thread's stack, not in a
    // runtime; a LocalSet they drive has its own task list.
    for (tid, regs) in &stacks {
        // `block_on` moves its future inward (tokio wraps it in a tracing
        // span, then pins it in an inner frame): outer frames keep stale,
        // moved-from copies that still read as `Unresumed`. The copy that
        // was polled is the one that tells where the thread waits.
        let mut chosen = None;
        let (values, unlocated) = block_on_values(&decoder, &dwarf, mem, bias, regs);
        for (value, located_by) in values {
            let Some(fut) = decoder.find_async(&value) else {
                continue;
            };
            let chain = decoder.chain(&fut);
            let polled = chain
                .frames
                .iter()
                .find(|f| f.kind != "combinator")
                .is_some_and(|f| f.state.as_deref() != Some("Unresumed"));
            let better = chosen.is_none() || polled;
            if better {
                chosen = Some((value, fut, chain, located_by));
            }
            if polled {
                break;
            }
        }
        let Some((value, fut, mut chain, located_by)) = chosen else {
            continue;
        };
        if unlocated && chain.leaf.as_ref().is_some_and(|l| l.kind == "not-started") {
            // Only a moved-from copy was found: do not claim it never ran.
            if let Some(leaf) = chain.leaf.as_mut() {
                leaf.kind = "unknown";
                leaf.description = "state unknown: in this optimised build DWARF does not locate \
                    the copy block_on polls, and no single suspended copy was found in its frame \
                    (shown: the value block_on received)"
                    .into();
            }
        }
        report.block_on.push(report::BlockOnReport {
            thread: *tid,
            future_type: dwarf.qualified_name(&fut.ty),
            chain,
            located_by,
            instrumented: None,
        });
        // The LocalSet may sit beside the async value (`RunUntil`) or inside
        // it, and behind a `dyn Future` the value alone does not lead there.
        let mut sets = walker.local_sets(&value);
        for set in walker.local_sets(&fut) {
            if !sets.iter().any(|s| s.handle == set.handle) {
                sets.push(set);
            }
        }
        for mut set in sets {
            set.threads.push(*tid);
            let mut tick = |n: usize| progress.say(&format!("{n} local tasks read..."));
            for t in walker.tasks(&set, &mut tick) {
                report.tasks.push(decoder.task_report(&t));
            }
            report.runtimes.push(report::RuntimeReport::from(&set));
        }
    }
    report
        .tasks
        .sort_by_key(|t| (t.runtime.clone(), t.id.unwrap_or(u64::MAX)));
    warnings.extend(walker.warnings.borrow().iter().cloned());
    report.warnings = warnings;
    report.finish();
    Ok(report)
}

/// Finds the futures passed to the `block_on` frames on this stack:
/// parameters or locals named `f`/`future` of a `block_on` function or
/// inlined call covering the frame's pc, located by evaluating their DWARF
/// location at that pc (a location-list entry in optimised builds) in the
/// CFI-unwound registers. Outermost frame first, each with how it was
/// found (`dwarf-location`, or `frame-scan` when DWARF has no location for
/// the copy `block_on` polls, or, listed after every located copy, when it
/// locates only the moved-from argument).
/// The flag says a `block_on` frame holds a copy that could be located
/// neither way.
fn block_on_values(
    decoder: &future::Decoder<'_, '_>,
    dwarf: &dwarf::DebugInfo,
    mem: &dyn MemorySource,
    bias: u64,
    frames: &[elf::Registers],
) -> (Vec<(value::Value, &'static str)>, bool) {
    let mut out = Vec::new();
    let mut unlocated = false;
    // (type, rsp, cfa) of frames where DWARF locates only an `Unresumed` copy.
    let mut moved_from = Vec::new();
    for i in (0..frames.len()).rev() {
        let regs = &frames[i];
        // A return address points after the call: look up the call itself.
        let pc = regs.rip.wrapping_sub(bias).wrapping_sub(u64::from(i > 0));
        let Some(func) = dwarf.function_containing(pc) else {
            continue;
        };
        let dwarf::FrameVariables { frame_base, vars } = dwarf.variables_at(func.die, pc);
        let frame = location::Frame {
            regs,
            cfa: frames.get(i + 1).map(|r| r.rsp),
            frame_base: frame_base.as_deref(),
            memory: mem,
        };
        let mut names: std::collections::HashMap<dwarf::DieId, bool> = Default::default();
        let mut optimised_out = Vec::new();
        for var in vars {
            if var.name != "f" && var.name != "future" {
                continue;
            }
            let in_block_on = *names.entry(var.scope).or_insert_with(|| {
                dwarf
                    .die_name(var.scope)
                    .is_some_and(|n| n.starts_with("block_on"))
            });
            let (true, Some(ty)) = (in_block_on, var.ty) else {
                continue;
            };
            let Some(location::Location::Memory(addr)) = frame.eval(&var.location) else {
                if var.location.is_empty() {
                    optimised_out.push(ty);
                }
                continue;
            };
            let Some(value) = decoder.reader().value(addr, ty) else {
                continue;
            };
            if decoder.find_async(&value).is_none() {
                continue;
            }
            // In optimised builds the location list may still describe the
            // argument after `block_on` moved it into its own frame
            // (`pin!`): that copy never runs and stays `Unresumed`. The
            // copy being polled may then be the one suspended copy of the
            // type in the frame, tried after every located copy.
            let unresumed = decoder
                .chain(&value)
                .frames
                .first()
                .is_some_and(|f| f.state.as_deref() == Some("Unresumed"));
            if let (true, Some(cfa)) = (unresumed, frame.cfa) {
                moved_from.push((ty, regs.rsp, cfa));
            }
            out.push((value, "dwarf-location"));
        }
        // Optimised builds move the future into block_on's own frame
        // (`pin!`) and may keep no location for that copy.
        if let (Some(ty), Some(cfa)) = (optimised_out.first(), frame.cfa) {
            match scan_frame_for_polled(decoder, mem, *ty, regs.rsp, cfa) {
                Some(v) => out.push((v, "frame-scan")),
                None => unlocated = true,
            }
        }
    }
    for (ty, rsp, cfa) in moved_from {
        if let Some(v) = scan_frame_for_polled(decoder, mem, ty, rsp, cfa) {
            out.push((v, "frame-scan"));
        }
    }
    (out, unlocated)
}

/// The one copy of a future of type `ty` inside the stack frame
/// `[rsp, cfa)` that is suspended at an `.await` (state `Suspend*`, a
/// decoded await line) and whose bytes are a valid value of its type:
/// used when DWARF says the pinned copy `block_on` polls is optimised out.
/// Large frames keep stale bytes from earlier calls, where a state byte
/// and a leaf can decode by chance (seen in a release core: a second
/// "suspended at the sleep" copy over libc pointers and zeroes). Nothing
/// is returned unless exactly one candidate qualifies.
fn scan_frame_for_polled(
    decoder: &future::Decoder<'_, '_>,
    mem: &dyn MemorySource,
    ty: dwarf::DieId,
    rsp: u64,
    cfa: u64,
) -> Option<value::Value> {
    let reader = decoder.reader();
    let t = reader.dwarf.ty(ty).ok()?;
    let part = t.variant_part()?;
    let discr = part.discr.as_ref()?;
    let suspend: Vec<u64> = part
        .variants
        .iter()
        .filter_map(|v| v.discr_value)
        .filter(|d| *d >= 3)
        .collect();
    let len = cfa.checked_sub(rsp)?;
    if len == 0 || len > 1 << 20 || t.size == 0 || t.size > len {
        return None;
    }
    let mut frame = vec![0u8; len as usize];
    mem.read(rsp, &mut frame).ok()?;
    let mut found: Option<value::Value> = None;
    for off in (0..=len - t.size).step_by(8) {
        let at = (off + discr.offset) as usize;
        let Some(&state) = frame.get(at) else { break };
        if !suspend.contains(&u64::from(state)) {
            continue;
        }
        let Some(v) = reader.value(rsp + off, ty) else {
            continue;
        };
        let chain = decoder.chain(&v);
        let suspended = chain.frames.first().is_some_and(|f| {
            f.state.as_deref().is_some_and(|s| s.starts_with("Suspend")) && f.location.is_some()
        });
        if !suspended || chain.leaf.is_none() || !reader.is_valid(&v) {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(v);
    }
    found
}

/// Convenience: analyse a core file.
pub fn analyze_core(core: &Path, exe: Option<&Path>) -> Result<Report> {
    analyze(
        &Target::Core {
            core: core.to_owned(),
            exe: exe.map(Path::to_owned),
        },
        &Options::default(),
    )
}
