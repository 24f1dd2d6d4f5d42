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
//! - [`value`]: typed navigation of memory by field names and enum variants.
//! - [`tokio`]: runtimes and owned tasks, found through each thread's TLS.
//! - [`future`]: the async state-machine decoder producing logical backtraces
//!   down to a leaf described in user terms.
//! - [`report`]: the serialisable report and its text renderer.
//!
//! Every read of target memory is checked and every walk is bounded, so a
//! truncated core or one taken mid-mutation yields a partial report with
//! warnings, never a panic or a hang.

pub mod dwarf;
pub mod elf;
pub mod error;
pub mod future;
pub mod memory;
pub mod process;
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
        warnings.push(format!(
            "{} has no DWARF debug info: tasks cannot be decoded; build with `debug = true` (or `debug = 2`)",
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
        let Some(value) = block_on_value(&decoder, &dwarf, bias, regs) else {
            continue;
        };
        if let Some(fut) = decoder.find_async(&value) {
            report.block_on.push(report::BlockOnReport {
                thread: *tid,
                future_type: dwarf.qualified_name(&fut.ty),
                chain: decoder.chain(&fut),
            });
        }
        for mut set in walker.local_sets(&value) {
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

/// Finds the future passed to a `block_on` on this stack: a parameter or
/// local named `f`/`future` of a `block_on` frame, located with its DWARF
/// location (`DW_OP_fbreg` off the frame base) in the unwound registers.
fn block_on_value(
    decoder: &future::Decoder<'_, '_>,
    dwarf: &dwarf::DebugInfo,
    bias: u64,
    frames: &[elf::Registers],
) -> Option<value::Value> {
    // Outermost block_on first: it is the one the user called.
    for i in (0..frames.len()).rev() {
        let regs = &frames[i];
        let pc = regs.rip.wrapping_sub(bias).wrapping_sub(u64::from(i > 0));
        let Some(func) = dwarf.function_containing(pc) else {
            continue;
        };
        let Some(name) = dwarf.die_name(func.die) else {
            continue;
        };
        if !name.starts_with("block_on") {
            continue;
        }
        let dwarf::FrameVariables { frame_base, vars } = dwarf.frame_variables(func.die);
        let cfa = frames.get(i + 1).map(|r| r.rsp);
        let fb = match frame_base.as_deref() {
            Some([0x56]) => Some(regs.rbp),
            Some([0x57]) => Some(regs.rsp),
            Some([0x9c]) => cfa,
            Some([0x77, rest @ ..]) => sleb(rest).map(|o| regs.rsp.wrapping_add_signed(o)),
            _ => None,
        };
        for dwarf::FrameVariable {
            name: vname,
            ty,
            location: expr,
        } in vars
        {
            if vname != "f" && vname != "future" {
                continue;
            }
            let (Some(ty), Some(fb)) = (ty, fb) else {
                continue;
            };
            let addr = match expr.as_slice() {
                [0x91, rest @ ..] => sleb(rest).map(|o| fb.wrapping_add_signed(o)),
                _ => None,
            };
            let Some(value) = addr.and_then(|a| decoder.reader().value(a, ty)) else {
                continue;
            };
            if decoder.find_async(&value).is_some() {
                return Some(value);
            }
        }
    }
    None
}

fn sleb(bytes: &[u8]) -> Option<i64> {
    let mut result: i64 = 0;
    let mut shift = 0;
    for &b in bytes.iter().take(10) {
        result |= i64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            if shift < 64 && b & 0x40 != 0 {
                result |= -1i64 << shift;
            }
            return Some(result);
        }
    }
    None
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

#[cfg(test)]
mod tests {
    #[test]
    fn sleb128_decodes_frame_offsets() {
        assert_eq!(super::sleb(&[0x02]), Some(2));
        assert_eq!(super::sleb(&[0x7e]), Some(-2));
        assert_eq!(super::sleb(&[0x98, 0x02]), Some(280));
        assert_eq!(super::sleb(&[0x80, 0x7f]), Some(-128));
        assert_eq!(super::sleb(&[0x80]), None, "truncated");
    }
}
