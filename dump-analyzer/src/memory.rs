//! Memory of the analysed program, whatever it comes from.
//!
//! Everything above this module (the tokio walker, the state-machine decoder,
//! the unwinder) reads through [`MemorySource`], so one walker serves both a
//! core file ([`CoreMemory`]) and a live process ([`ProcessMemory`], through
//! `/proc/PID/mem`, with only the user's own rights). Reads never trust the
//! target: every read is bounds-checked and fails with a [`MemoryError`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::error::MemoryError;

/// Read access to the address space of the program being analysed.
pub trait MemorySource {
    /// Fills `buf` with the bytes at `addr`, or fails without partial data.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    fn read_u8(&self, addr: u64) -> Result<u8, MemoryError> {
        let mut b = [0u8; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }
    fn read_u32(&self, addr: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Reads an unsigned little-endian integer of 1, 2, 4 or 8 bytes.
    fn read_uint(&self, addr: u64, size: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        let n = usize::try_from(size.min(8)).unwrap_or(8);
        self.read(addr, &mut b[..n])?;
        Ok(u64::from_le_bytes(b))
    }
    /// Reads a UTF-8 string of `len` bytes (lossy), refusing absurd lengths.
    fn read_str(&self, addr: u64, len: u64) -> Result<String, MemoryError> {
        if len > 4096 {
            return Err(MemoryError::Implausible {
                what: "string",
                addr,
                detail: format!("length {len}"),
            });
        }
        let mut b = vec![0u8; len as usize];
        self.read(addr, &mut b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
}

impl<T: MemorySource + ?Sized> MemorySource for &T {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(addr, buf)
    }
}

/// One contiguous range of the target's address space backed by bytes.
#[derive(Debug, Clone)]
pub(crate) struct Region {
    pub vaddr: u64,
    /// Size in memory.
    pub memsz: u64,
    /// Offset of the saved bytes in `data`.
    pub offset: u64,
    /// Number of saved bytes (a core may save fewer than `memsz`).
    pub filesz: u64,
}

/// Sorted, non-overlapping regions over one byte buffer (a core or an
/// executable mapped in memory).
#[derive(Debug, Clone)]
pub(crate) struct RegionMap {
    data: Arc<memmap2::Mmap>,
    regions: Vec<Region>,
}

impl RegionMap {
    pub fn new(data: Arc<memmap2::Mmap>, mut regions: Vec<Region>) -> Self {
        regions.sort_by_key(|r| r.vaddr);
        RegionMap { data, regions }
    }

    /// Looks `addr..addr+len` up: `Ok(Some(bytes))` when saved,
    /// `Ok(None)` when not in any region.
    fn lookup(&self, addr: u64, len: usize) -> Result<Option<&[u8]>, MemoryError> {
        let idx = self.regions.partition_point(|r| r.vaddr <= addr);
        if idx == 0 {
            return Ok(None);
        }
        let r = &self.regions[idx - 1];
        let rel = addr - r.vaddr;
        let end = rel
            .checked_add(len as u64)
            .ok_or(MemoryError::Unmapped { addr, len })?;
        if end > r.memsz {
            return Ok(None);
        }
        if end > r.filesz {
            return Err(MemoryError::NotSaved { addr, len });
        }
        let start = r.offset + rel;
        let stop = start + len as u64;
        let bytes = usize::try_from(start)
            .ok()
            .zip(usize::try_from(stop).ok())
            .and_then(|(s, e)| self.data.get(s..e))
            .ok_or(MemoryError::NotSaved { addr, len })?;
        Ok(Some(bytes))
    }
}

/// The memory saved in a core file, completed by the read-only parts of the
/// executable the kernel does not save (code, `.rodata`, vtables).
#[derive(Debug, Clone)]
pub struct CoreMemory {
    pub(crate) core: RegionMap,
    /// The executable's loadable segments, relocated by the load bias.
    pub(crate) exe: Option<RegionMap>,
}

impl MemorySource for CoreMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        let first = match self.core.lookup(addr, len) {
            Ok(Some(bytes)) => {
                buf.copy_from_slice(bytes);
                return Ok(());
            }
            Ok(None) => MemoryError::Unmapped { addr, len },
            Err(e) => e,
        };
        if let Some(exe) = &self.exe {
            if let Ok(Some(bytes)) = exe.lookup(addr, len) {
                buf.copy_from_slice(bytes);
                return Ok(());
            }
        }
        Err(first)
    }
}

/// A running process read through `/proc/PID/mem`. Needs the same rights as
/// attaching a debugger to one's own process; never asks for more.
#[derive(Debug)]
pub struct ProcessMemory {
    pid: u32,
    mem: File,
}

impl ProcessMemory {
    pub fn open(pid: u32) -> Result<Self, crate::DumpError> {
        let path = format!("/proc/{pid}/mem");
        let mem = File::open(&path).map_err(|e| crate::DumpError::Process {
            pid,
            detail: format!(
                "cannot open {path}: {e} (is it your process, and does ptrace_scope allow it?)"
            ),
        })?;
        Ok(ProcessMemory { pid, mem })
    }
}

impl MemorySource for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        self.mem
            .read_exact_at(buf, addr)
            .map_err(|e| MemoryError::Process {
                pid: self.pid,
                addr,
                len,
                reason: e.to_string(),
            })
    }
}
