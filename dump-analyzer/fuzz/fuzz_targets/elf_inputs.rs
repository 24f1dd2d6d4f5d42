//! Feeds arbitrary bytes to every reader of outside data: the core-file
//! parser (notes, segments), the executable parser (segments, symbols,
//! build-id, unwind tables) and the DWARF index and type decoder, through
//! the full analysis with the same file as core and executable. Any panic,
//! hang or unbounded allocation is a bug: inputs must yield a report or a
//! `DumpError`.

#![no_main]

use libfuzzer_sys::fuzz_target;

struct NoMemory;

impl taskscope_dump::MemorySource for NoMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), taskscope_dump::MemoryError> {
        Err(taskscope_dump::MemoryError::Unmapped {
            addr,
            len: buf.len(),
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = std::env::temp_dir().canonicalize() else {
        return;
    };
    let path = dir.join(format!("taskscope-fuzz-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = taskscope_dump::elf::CoreFile::open(&path);
    if let Ok(exe) = taskscope_dump::elf::Executable::open(&path) {
        if let Ok(dwarf) = taskscope_dump::dwarf::DebugInfo::load(&path, exe.bytes()) {
            let index = dwarf.index();
            for f in index.functions.iter().take(64) {
                let _ = dwarf.die_name(f.die);
                let _ = dwarf.template_param(f.die, "T");
            }
            for id in index.tokio_types.values().take(64) {
                let _ = dwarf.ty(*id);
            }
        }
    }
    // taskscope's registry header and DWARF location expressions are read
    // from the dump as well.
    let _ = taskscope_dump::registry::Layout::parse(data);
    let regs = taskscope_dump::elf::Registers::default();
    let frame = taskscope_dump::location::Frame {
        regs: &regs,
        cfa: Some(0x7fff_0000),
        frame_base: data.get(..data.len().min(8)),
        memory: &NoMemory,
    };
    let _ = frame.eval(data);
    let _ = taskscope_dump::analyze_core(&path, Some(&path));
    let _ = std::fs::remove_file(&path);
});
