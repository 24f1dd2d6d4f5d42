//! A live process as a dump: memory through `/proc/PID/mem`, threads from
//! `/proc/PID/task`, and registers of each thread read with ptrace
//! (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`). Only the user's own rights are
//! used; nothing is escalated. Threads stay stopped while the process is
//! analysed (so stacks match the registers) and are resumed when the
//! [`LiveProcess`] is dropped, typically well under a second later.

use std::path::PathBuf;

use crate::elf::{Registers, ThreadRecord};
use crate::error::{DumpError, Result};
use crate::memory::ProcessMemory;

const AT_ENTRY: u64 = 9;

/// What was collected from a running process.
#[derive(Debug)]
pub struct LiveProcess {
    pub pid: u32,
    pub exe: PathBuf,
    pub command: Option<String>,
    pub entry: Option<u64>,
    pub threads: Vec<ThreadRecord>,
    /// File mappings from `/proc/PID/maps`.
    pub files: Vec<crate::elf::MappedFile>,
    pub memory: ProcessMemory,
    pub warnings: Vec<String>,
    /// Threads stopped by us, resumed on drop.
    stopped: Vec<libc::pid_t>,
}

impl Drop for LiveProcess {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        for &tid in &self.stopped {
            // SAFETY: detaching a thread this process seized; no memory is
            // passed to the kernel.
            unsafe {
                libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
            }
        }
    }
}

fn perr(pid: u32, detail: impl Into<String>) -> DumpError {
    DumpError::Process {
        pid,
        detail: detail.into(),
    }
}

impl LiveProcess {
    pub fn attach(pid: u32) -> Result<LiveProcess> {
        let base = PathBuf::from(format!("/proc/{pid}"));
        if !base.exists() {
            return Err(perr(pid, "no such process"));
        }
        let exe = std::fs::read_link(base.join("exe"))
            .map_err(|e| perr(pid, format!("cannot read /proc/{pid}/exe: {e}")))?;
        let command = std::fs::read(base.join("cmdline")).ok().map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        });
        let entry = std::fs::read(base.join("auxv")).ok().and_then(|b| {
            b.chunks_exact(16).find_map(|c| {
                let k = u64::from_le_bytes(c[..8].try_into().ok()?);
                let v = u64::from_le_bytes(c[8..].try_into().ok()?);
                (k == AT_ENTRY).then_some(v)
            })
        });
        let memory = ProcessMemory::open(pid)?;
        let files = std::fs::read_to_string(base.join("maps"))
            .map(|text| parse_maps(&text))
            .unwrap_or_default();
        let mut threads = Vec::new();
        let mut warnings = Vec::new();
        let mut stopped = Vec::new();
        let tasks = std::fs::read_dir(base.join("task"))
            .map_err(|e| perr(pid, format!("cannot list threads: {e}")))?;
        let mut tids: Vec<u32> = tasks
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        for tid in tids {
            match read_registers(tid) {
                Ok(registers) => {
                    stopped.push(tid as libc::pid_t);
                    threads.push(ThreadRecord { tid, registers });
                }
                Err(e) => warnings.push(format!("thread {tid}: cannot read registers: {e}")),
            }
        }
        Ok(LiveProcess {
            pid,
            exe,
            command,
            entry,
            threads,
            files,
            memory,
            warnings,
            stopped,
        })
    }
}

/// Parses `/proc/PID/maps` lines (`start-end perms offset dev inode path`).
fn parse_maps(text: &str) -> Vec<crate::elf::MappedFile> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let range = parts.next()?;
            let _perms = parts.next()?;
            let offset = u64::from_str_radix(parts.next()?, 16).ok()?;
            let _dev = parts.next()?;
            let _inode = parts.next()?;
            let path = parts.collect::<Vec<_>>().join(" ");
            if !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(crate::elf::MappedFile {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                file_offset: offset,
                path,
            })
        })
        .collect()
}

/// Stops one thread with `PTRACE_SEIZE`/`PTRACE_INTERRUPT` and reads its
/// general-purpose registers; the thread stays stopped (detached on error).
#[allow(unsafe_code)]
fn read_registers(tid: u32) -> std::result::Result<Registers, String> {
    let tid = tid as libc::pid_t;
    // SAFETY: plain ptrace syscalls on a thread id; no memory is shared with
    // the kernel except `regs`, a properly sized and aligned local.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let detach = || {
            libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
        };
        if libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) != 0 {
            let e = std::io::Error::last_os_error().to_string();
            detach();
            return Err(e);
        }
        let mut status = 0;
        if libc::waitpid(tid, &mut status, libc::__WALL) != tid {
            let e = std::io::Error::last_os_error().to_string();
            detach();
            return Err(e);
        }
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        let rc = libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs as *mut _);
        if rc != 0 {
            let err = std::io::Error::last_os_error().to_string();
            detach();
            return Err(err);
        }
        Ok(Registers {
            rip: regs.rip,
            rsp: regs.rsp,
            rbp: regs.rbp,
            rbx: regs.rbx,
            r12: regs.r12,
            r13: regs.r13,
            r14: regs.r14,
            r15: regs.r15,
            fs_base: regs.fs_base,
        })
    }
}
