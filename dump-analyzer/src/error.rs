//! The one error type of the analyzer: every variant names what was being
//! read (file, address, section) so a user can tell a bad input from a bug.

use std::path::PathBuf;

/// Everything that can stop an analysis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file")]
    NotElf { path: PathBuf },
    #[error("{path} is an ELF file but not a core dump (type {kind})")]
    NotCore { path: PathBuf, kind: u16 },
    #[error("{path}: unsupported architecture (ELF machine {machine}); taskscope dump reads x86-64 only")]
    UnsupportedArch { path: PathBuf, machine: u16 },
    #[error("{path}: malformed ELF: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("the core does not name its executable (no NT_FILE note); pass --exe")]
    NoExecutable,
    #[error("executable {path} does not match the core: build-id {exe} in the binary, {core} in the core")]
    BuildIdMismatch {
        path: PathBuf,
        exe: String,
        core: String,
    },
    #[error(
        "{path} has no DWARF debug info; build with `debug = true` (or `debug = 2`) to see tasks"
    )]
    NoDebugInfo { path: PathBuf },
    #[error("DWARF error in {section} at offset {offset:#x}: {source}")]
    Dwarf {
        section: &'static str,
        offset: u64,
        #[source]
        source: gimli::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("process {pid}: {detail}")]
    Process { pid: u32, detail: String },
}

/// A failed read of the target's memory.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryError {
    #[error("address {addr:#x} (+{len} bytes) is not in the dump")]
    Unmapped { addr: u64, len: usize },
    #[error(
        "address {addr:#x} (+{len} bytes) is mapped but its contents were not saved in the dump"
    )]
    NotSaved { addr: u64, len: usize },
    #[error("reading {len} bytes at {addr:#x} of process {pid}: {reason}")]
    Process {
        pid: u32,
        addr: u64,
        len: usize,
        reason: String,
    },
    #[error("null pointer where {what} was expected")]
    Null { what: &'static str },
    #[error("{what} at {addr:#x} is not plausible: {detail}")]
    Implausible {
        what: &'static str,
        addr: u64,
        detail: String,
    },
}

pub type Result<T, E = DumpError> = std::result::Result<T, E>;
