//! ELF inputs: the core file (its saved memory, threads and notes) and the
//! executable (its segments, symbols, build-id, TLS template and sections).
//!
//! Only x86-64 little-endian ELF is read. Files are mapped, not copied, so a
//! 200 MB core costs address space, not resident memory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::read::elf::{FileHeader, ProgramHeader};
use object::{elf, Object, ObjectSection, ObjectSegment, ObjectSymbol};

use crate::error::{DumpError, Result};
use crate::memory::{Region, RegionMap};

const EM_X86_64: u16 = 62;
const ET_CORE: u16 = 4;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NT_PRSTATUS: u32 = 1;
const NT_PRPSINFO: u32 = 3;
const NT_AUXV: u32 = 6;
const NT_FILE: u32 = 0x4649_4c45;
const NT_GNU_BUILD_ID: u32 = 3;
const AT_ENTRY: u64 = 9;

/// Maps a file read-only.
#[allow(unsafe_code)]
pub(crate) fn map_file(path: &Path) -> Result<Arc<memmap2::Mmap>> {
    let file = File::open(path).map_err(|source| DumpError::Io {
        path: path.to_owned(),
        source,
    })?;
    // SAFETY: the mapping is read-only and private to this process. A file
    // truncated or rewritten underneath would be undefined behaviour; cores
    // and binaries under analysis are not modified while being read, the
    // same assumption every debugger makes.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| DumpError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(Arc::new(map))
}

fn malformed(path: &Path, detail: impl std::fmt::Display) -> DumpError {
    DumpError::Malformed {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// x86-64 general-purpose registers in `user_regs_struct` order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Registers {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub fs_base: u64,
}

impl Registers {
    /// Decodes the 27 words of `user_regs_struct`.
    pub fn from_user_regs(words: &[u64]) -> Option<Registers> {
        if words.len() < 27 {
            return None;
        }
        Some(Registers {
            r15: words[0],
            r14: words[1],
            r13: words[2],
            r12: words[3],
            rbp: words[4],
            rbx: words[5],
            rip: words[16],
            rsp: words[19],
            fs_base: words[21],
        })
    }

    /// DWARF register number -> value, for the registers the unwinder tracks.
    pub fn dwarf(&self, reg: u16) -> Option<u64> {
        Some(match reg {
            3 => self.rbx,
            6 => self.rbp,
            7 => self.rsp,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            15 => self.r15,
            16 => self.rip,
            _ => return None,
        })
    }
}

/// One OS thread as recorded in the dump.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ThreadRecord {
    pub tid: u32,
    pub registers: Registers,
}

/// A file mapped into the process (from the core's `NT_FILE` note).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MappedFile {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub path: String,
}

/// A parsed core file.
#[derive(Debug)]
pub struct CoreFile {
    pub path: PathBuf,
    pub(crate) memory: RegionMap,
    pub threads: Vec<ThreadRecord>,
    pub files: Vec<MappedFile>,
    pub pid: Option<u32>,
    /// Command name and arguments from `NT_PRPSINFO`.
    pub command: Option<String>,
    /// The executable's entry point in memory (`AT_ENTRY`).
    pub entry: Option<u64>,
    /// `true` when some segment's saved bytes run past the end of the file.
    pub truncated: bool,
}

impl CoreFile {
    pub fn open(path: &Path) -> Result<CoreFile> {
        let data = map_file(path)?;
        let bytes: &[u8] = &data;
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            return Err(DumpError::NotElf {
                path: path.to_owned(),
            });
        }
        let header = elf::FileHeader64::<object::Endianness>::parse(bytes)
            .map_err(|e| malformed(path, e))?;
        let endian = header.endian().map_err(|e| malformed(path, e))?;
        let machine = header.e_machine(endian).0;
        if machine != EM_X86_64 || !header.is_little_endian() {
            return Err(DumpError::UnsupportedArch {
                path: path.to_owned(),
                machine,
            });
        }
        let kind = header.e_type(endian).0;
        if kind != ET_CORE {
            return Err(DumpError::NotCore {
                path: path.to_owned(),
                kind,
            });
        }
        let phdrs = header
            .program_headers(endian, bytes)
            .map_err(|e| malformed(path, e))?;
        let mut regions = Vec::new();
        let mut truncated = false;
        let mut core = CoreFile {
            path: path.to_owned(),
            memory: RegionMap::new(data.clone(), Vec::new()),
            threads: Vec::new(),
            files: Vec::new(),
            pid: None,
            command: None,
            entry: None,
            truncated: false,
        };
        for ph in phdrs {
            match ph.p_type(endian).0 {
                PT_LOAD => {
                    let offset = ph.p_offset(endian);
                    let mut filesz = ph.p_filesz(endian);
                    let available = (bytes.len() as u64).saturating_sub(offset);
                    if filesz > available {
                        truncated = true;
                        filesz = available;
                    }
                    regions.push(Region {
                        vaddr: ph.p_vaddr(endian),
                        memsz: ph.p_memsz(endian),
                        offset,
                        filesz,
                    });
                }
                PT_NOTE => {
                    let notes = match ph.notes(endian, bytes) {
                        Ok(Some(n)) => n,
                        Ok(None) => continue,
                        Err(_) => {
                            truncated = true;
                            continue;
                        }
                    };
                    let mut notes = notes;
                    while let Ok(Some(note)) = notes.next() {
                        core.read_note(note.name(), note.n_type(endian).0, note.desc());
                    }
                }
                _ => {}
            }
        }
        core.memory = RegionMap::new(data, regions);
        core.truncated = truncated;
        Ok(core)
    }

    fn read_note(&mut self, name: &[u8], kind: u32, desc: &[u8]) {
        let word = |i: usize| -> Option<u64> {
            desc.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        match (name, kind) {
            (b"CORE", NT_PRSTATUS) => {
                // elf_prstatus on x86-64: pr_pid at 32, pr_reg (27 words) at 112.
                let tid = desc
                    .get(32..36)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes);
                let regs: Vec<u64> = desc
                    .get(112..112 + 27 * 8)
                    .map(|b| {
                        b.chunks_exact(8)
                            .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
                            .collect()
                    })
                    .unwrap_or_default();
                if let (Some(tid), Some(registers)) = (tid, Registers::from_user_regs(&regs)) {
                    self.threads.push(ThreadRecord { tid, registers });
                }
            }
            (b"CORE", NT_PRPSINFO) => {
                // elf_prpsinfo: pr_pid at 24, pr_fname[16] at 40, pr_psargs[80] at 56.
                self.pid = desc
                    .get(24..28)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes);
                if let Some(args) = desc.get(56..136) {
                    let end = args.iter().position(|&b| b == 0).unwrap_or(args.len());
                    let text = String::from_utf8_lossy(&args[..end]).trim().to_string();
                    if !text.is_empty() {
                        self.command = Some(text);
                    }
                }
            }
            (b"CORE", NT_AUXV) => {
                let mut i = 0;
                while let (Some(k), Some(v)) = (word(i), word(i + 1)) {
                    if k == 0 {
                        break;
                    }
                    if k == AT_ENTRY {
                        self.entry = Some(v);
                    }
                    i += 2;
                }
            }
            (b"CORE", NT_FILE) => {
                // File offsets are counted in pages of `page` bytes.
                let (Some(count), Some(page)) = (word(0), word(1)) else {
                    return;
                };
                let count = usize::try_from(count).unwrap_or(0).min(desc.len() / 24);
                let names_at = 16 + count * 24;
                let mut names = desc.get(names_at..).unwrap_or(&[]).split(|&b| b == 0);
                for i in 0..count {
                    let (Some(start), Some(end), Some(off)) =
                        (word(2 + i * 3), word(3 + i * 3), word(4 + i * 3))
                    else {
                        break;
                    };
                    let path = names
                        .next()
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                        .unwrap_or_default();
                    self.files.push(MappedFile {
                        start,
                        end,
                        file_offset: off.saturating_mul(page),
                        path,
                    });
                }
            }
            _ => {}
        }
    }

    /// The executable: the mapped file containing the entry point, else the
    /// first mapped file.
    pub fn executable_path(&self) -> Option<PathBuf> {
        let by_entry = self
            .entry
            .and_then(|e| self.files.iter().find(|f| f.start <= e && e < f.end));
        by_entry
            .or_else(|| self.files.first())
            .map(|f| PathBuf::from(&f.path))
    }

    /// The build-id of the executable as saved in the core (from the ELF
    /// header of its first mapping), when the kernel or gcore saved it.
    pub fn executable_build_id(&self, exe_path: &Path) -> Option<Vec<u8>> {
        let name = exe_path.to_string_lossy();
        let first = self
            .files
            .iter()
            .filter(|f| f.path == name && f.file_offset == 0)
            .min_by_key(|f| f.start)
            .or_else(|| {
                let entry = self.entry?;
                let exe = self
                    .files
                    .iter()
                    .find(|f| f.start <= entry && entry < f.end)?;
                self.files
                    .iter()
                    .filter(|f| f.path == exe.path && f.file_offset == 0)
                    .min_by_key(|f| f.start)
            })?;
        let mem = crate::memory::CoreMemory {
            core: self.memory.clone(),
            exe: None,
        };
        build_id_from_memory(&mem, first.start)
    }
}

/// Reads the GNU build-id note of an ELF image loaded at `base`.
fn build_id_from_memory(mem: &dyn crate::MemorySource, base: u64) -> Option<Vec<u8>> {
    let mut ehdr = [0u8; 64];
    mem.read(base, &mut ehdr).ok()?;
    if &ehdr[..4] != b"\x7fELF" {
        return None;
    }
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().ok()?);
    let phentsize = u64::from(u16::from_le_bytes(ehdr[54..56].try_into().ok()?));
    let phnum = u16::from_le_bytes(ehdr[56..58].try_into().ok()?).min(64);
    // Program header vaddrs are link-time; the first PT_LOAD maps offset 0.
    let mut bias = None;
    let mut notes = Vec::new();
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        mem.read(base + phoff + i * phentsize, &mut ph).ok()?;
        let p_type = u32::from_le_bytes(ph[0..4].try_into().ok()?);
        let vaddr = u64::from_le_bytes(ph[16..24].try_into().ok()?);
        let memsz = u64::from_le_bytes(ph[40..48].try_into().ok()?);
        if p_type == PT_LOAD && bias.is_none() {
            bias = Some(base.wrapping_sub(vaddr & !0xfff));
        }
        if p_type == PT_NOTE {
            notes.push((vaddr, memsz.min(4096)));
        }
    }
    let bias = bias?;
    for (vaddr, size) in notes {
        let mut buf = vec![0u8; size as usize];
        mem.read(vaddr.wrapping_add(bias), &mut buf).ok()?;
        let mut at = 0usize;
        while at + 12 <= buf.len() {
            let namesz = u32::from_le_bytes(buf[at..at + 4].try_into().ok()?) as usize;
            let descsz = u32::from_le_bytes(buf[at + 4..at + 8].try_into().ok()?) as usize;
            let kind = u32::from_le_bytes(buf[at + 8..at + 12].try_into().ok()?);
            let name_start = at + 12;
            let desc_start = name_start + namesz.div_ceil(4) * 4;
            let next = desc_start + descsz.div_ceil(4) * 4;
            if next > buf.len() {
                break;
            }
            if kind == NT_GNU_BUILD_ID && buf.get(name_start..name_start + 3) == Some(b"GNU") {
                return Some(buf[desc_start..desc_start + descsz].to_vec());
            }
            at = next;
        }
    }
    None
}

/// A symbol of the executable's symbol table.
#[derive(Debug, Clone)]
pub struct Symbol {
    pub address: u64,
    pub size: u64,
    pub name: String,
}

/// The executable (or shared object) being analysed.
#[derive(Debug)]
pub struct Executable {
    pub path: PathBuf,
    pub(crate) data: Arc<memmap2::Mmap>,
    pub build_id: Option<Vec<u8>>,
    pub entry: u64,
    /// `PT_TLS`: (memsz, align) of the thread-local template.
    pub tls: Option<(u64, u64)>,
    pub(crate) loads: Vec<Region>,
    /// Function symbols sorted by address (link-time addresses).
    pub symbols: Vec<Symbol>,
    pub has_debug_info: bool,
    /// `(link-time address, size)` of taskscope's `taskscope_registry`
    /// section, when the app links taskscope (kept by `strip`).
    pub registry_section: Option<(u64, u64)>,
}

impl Executable {
    pub fn open(path: &Path) -> Result<Executable> {
        let data = map_file(path)?;
        let bytes: &[u8] = &data;
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            return Err(DumpError::NotElf {
                path: path.to_owned(),
            });
        }
        let file = object::File::parse(bytes).map_err(|e| malformed(path, e))?;
        if file.architecture() != object::Architecture::X86_64 {
            let machine = match &file {
                object::File::Elf32(f) => f.elf_header().e_machine.get(f.endian()).0,
                object::File::Elf64(f) => f.elf_header().e_machine.get(f.endian()).0,
                _ => 0,
            };
            return Err(DumpError::UnsupportedArch {
                path: path.to_owned(),
                machine,
            });
        }
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let mut loads = Vec::new();
        for seg in file.segments() {
            let (offset, filesz) = seg.file_range();
            loads.push(Region {
                vaddr: seg.address(),
                memsz: seg.size(),
                offset,
                filesz,
            });
        }
        let mut tls = None;
        if let object::File::Elf64(f) = &file {
            let endian = f.endian();
            for ph in f.elf_program_headers() {
                if ph.p_type(endian) == elf::PT_TLS {
                    tls = Some((ph.p_memsz(endian), ph.p_align(endian).max(1)));
                }
            }
        }
        let mut symbols: Vec<Symbol> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                Some(Symbol {
                    address: s.address(),
                    size: s.size(),
                    name: format!("{:#}", rustc_demangle::demangle(name)),
                })
            })
            .collect();
        symbols.sort_by_key(|s| s.address);
        symbols.dedup_by_key(|s| s.address);
        let has_debug_info = file
            .section_by_name(".debug_info")
            .is_some_and(|s| s.size() > 0);
        let registry_section = file
            .section_by_name(crate::registry::SECTION)
            .filter(|s| s.address() != 0 && s.size() > 0)
            .map(|s| (s.address(), s.size()));
        Ok(Executable {
            registry_section,
            path: path.to_owned(),
            build_id,
            entry: file.entry(),
            tls,
            loads,
            symbols,
            has_debug_info,
            data,
        })
    }

    /// The executable's segments as memory, relocated by `bias`.
    pub(crate) fn region_map(&self, bias: u64) -> RegionMap {
        let regions = self
            .loads
            .iter()
            .map(|r| Region {
                vaddr: r.vaddr.wrapping_add(bias),
                ..r.clone()
            })
            .collect();
        RegionMap::new(self.data.clone(), regions)
    }

    /// The function symbol containing a link-time address.
    pub fn symbol_for(&self, addr: u64) -> Option<&Symbol> {
        let idx = self.symbols.partition_point(|s| s.address <= addr);
        let s = self.symbols.get(idx.checked_sub(1)?)?;
        let size = if s.size == 0 { 0x1000 } else { s.size };
        (addr < s.address + size).then_some(s)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
