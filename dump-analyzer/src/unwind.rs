//! Thread stacks: unwinding with the call-frame information of `.eh_frame`
//! (every module mapped in the process: the executable, libc, ...), and
//! symbolization with the symbol tables and, for the executable, DWARF line
//! tables. Runtime plumbing (tokio's worker/park/poll machinery, std's
//! thread start, libc) is marked as noise so the user's frames stand out;
//! the full stack stays in the report.

use std::path::Path;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection,
};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use crate::elf::{MappedFile, Registers, Symbol};
use crate::memory::MemorySource;

/// Deepest stack unwound.
const MAX_FRAMES: usize = 256;

/// One loaded module with its unwind tables and symbols.
#[derive(Debug)]
pub struct Module {
    pub path: String,
    pub bias: u64,
    pub start: u64,
    pub end: u64,
    eh_frame: Option<(u64, Vec<u8>)>,
    eh_frame_hdr: Option<(u64, Vec<u8>)>,
    text: u64,
    symbols: Vec<Symbol>,
}

impl Module {
    /// Loads a mapped file; `None` if it cannot be read as ELF.
    pub fn load(path: &str, maps: &[&MappedFile]) -> Option<Module> {
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let first_load = file.segments().map(|s| s.address()).min()?;
        let base = maps
            .iter()
            .filter(|m| m.file_offset == 0)
            .map(|m| m.start)
            .min()?;
        let bias = base.wrapping_sub(first_load & !0xfff);
        let section = |name: &str| {
            file.section_by_name(name)
                .and_then(|s| Some((s.address(), s.uncompressed_data().ok()?.into_owned())))
        };
        let mut symbols: Vec<Symbol> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
            .filter_map(|s| {
                Some(Symbol {
                    address: s.address(),
                    size: s.size(),
                    name: format!("{:#}", rustc_demangle::demangle(s.name().ok()?)),
                })
            })
            .collect();
        symbols.sort_by_key(|s| s.address);
        symbols.dedup_by_key(|s| s.address);
        Some(Module {
            path: path.to_string(),
            bias,
            start: maps.iter().map(|m| m.start).min()?,
            end: maps.iter().map(|m| m.end).max()?,
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            text: file
                .section_by_name(".text")
                .map(|s| s.address())
                .unwrap_or(0),
            symbols,
        })
    }

    pub fn symbol(&self, svma: u64) -> Option<&Symbol> {
        let i = self.symbols.partition_point(|s| s.address <= svma);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        let size = if s.size == 0 { 0x4000 } else { s.size };
        (svma < s.address + size).then_some(s)
    }

    /// Unwinds one frame: registers of the caller, or `None` at the end.
    fn step(&self, mem: &dyn MemorySource, regs: &Registers, first: bool) -> Option<Registers> {
        let (eh_addr, eh_data) = self.eh_frame.as_ref()?;
        let eh = EhFrame::new(eh_data, LittleEndian);
        let mut bases = BaseAddresses::default()
            .set_eh_frame(*eh_addr)
            .set_text(self.text);
        // Return addresses point after the call: look up the call itself.
        let pc = regs
            .rip
            .wrapping_sub(self.bias)
            .wrapping_sub(u64::from(!first));
        let mut ctx = UnwindContext::new();
        let from_hdr = self.eh_frame_hdr.as_ref().and_then(|(hdr_addr, hdr_data)| {
            bases = bases.clone().set_eh_frame_hdr(*hdr_addr);
            let hdr = EhFrameHdr::new(hdr_data, LittleEndian)
                .parse(&bases, 8)
                .ok()?;
            let table = hdr.table()?;
            table
                .fde_for_address(&eh, &bases, pc, EhFrame::cie_from_offset)
                .ok()
        });
        let fde = match from_hdr {
            Some(f) => f,
            None => eh
                .fde_for_address(&bases, pc, EhFrame::cie_from_offset)
                .ok()?,
        };
        let row = fde
            .unwind_info_for_address(&eh, &bases, &mut ctx, pc)
            .ok()?;
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                regs.dwarf(register.0)?.wrapping_add_signed(*offset)
            }
            CfaRule::Expression(_) => return None,
        };
        let get = |reg: u16, old: u64| -> Option<u64> {
            match row.register(gimli::Register(reg)) {
                None | Some(RegisterRule::SameValue) => Some(old),
                Some(RegisterRule::Undefined) => None,
                Some(RegisterRule::Offset(n)) => mem.read_u64(cfa.wrapping_add_signed(n)).ok(),
                Some(RegisterRule::ValOffset(n)) => Some(cfa.wrapping_add_signed(n)),
                Some(RegisterRule::Register(r)) => regs.dwarf(r.0),
                Some(_) => None,
            }
        };
        let ra = match row.register(gimli::Register(16)) {
            Some(RegisterRule::Offset(n)) => mem.read_u64(cfa.wrapping_add_signed(n)).ok()?,
            _ => return None,
        };
        Some(Registers {
            rip: ra,
            rsp: cfa,
            rbp: get(6, regs.rbp).unwrap_or(0),
            rbx: get(3, regs.rbx).unwrap_or(0),
            r12: get(12, regs.r12).unwrap_or(0),
            r13: get(13, regs.r13).unwrap_or(0),
            r14: get(14, regs.r14).unwrap_or(0),
            r15: get(15, regs.r15).unwrap_or(0),
            fs_base: regs.fs_base,
        })
    }
}

/// All modules of a process, found from its file mappings.
#[derive(Debug, Default)]
pub struct Modules {
    pub modules: Vec<Module>,
}

impl Modules {
    pub fn load(files: &[MappedFile]) -> Modules {
        let mut paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        paths.sort_unstable();
        paths.dedup();
        let mut modules = Vec::new();
        for p in paths.into_iter().take(512) {
            if !Path::new(p).is_absolute() {
                continue;
            }
            let maps: Vec<&MappedFile> = files.iter().filter(|f| f.path == p).collect();
            if let Some(m) = Module::load(p, &maps) {
                modules.push(m);
            }
        }
        Modules { modules }
    }

    pub fn module_for(&self, addr: u64) -> Option<&Module> {
        self.modules
            .iter()
            .find(|m| m.start <= addr && addr < m.end)
    }

    /// Unwinds a thread: the registers of each frame, innermost first.
    pub fn unwind(&self, mem: &dyn MemorySource, regs: &Registers) -> Vec<Registers> {
        let mut frames = vec![*regs];
        let mut cur = *regs;
        let mut first = true;
        while frames.len() < MAX_FRAMES {
            let Some(module) = self.module_for(cur.rip) else {
                break;
            };
            let Some(next) = module.step(mem, &cur, first) else {
                break;
            };
            // The stack grows down: callers live at higher addresses.
            if next.rip == 0 || next.rsp <= cur.rsp {
                break;
            }
            frames.push(next);
            cur = next;
            first = false;
        }
        frames
    }
}

/// `true` for frames that are executor, runtime or libc plumbing.
pub fn is_noise(function: &str, module: &str) -> bool {
    if !module.is_empty()
        && (module.contains("/libc.so")
            || module.contains("/ld-linux")
            || module.contains("/libpthread"))
    {
        return true;
    }
    const PREFIXES: &[&str] = &[
        "tokio::runtime::",
        "tokio::park::",
        "tokio::loom::",
        "tokio::task::",
        "tokio::util::",
        "std::",
        "core::",
        "alloc::",
        "<core::",
        "<alloc::",
        "<std::",
        "<tokio::runtime::",
        "__",
        "_start",
        "clone",
        "start_thread",
        "parking_lot",
        "mio::",
        "<mio::",
        "<parking_lot",
    ];
    function == "main" || PREFIXES.iter().any(|p| function.starts_with(p))
}
