//! taskscope's own task registry, read from a dump without DWARF.
//!
//! An app that links taskscope's instrumentation carries one static,
//! `TASKSCOPE_REGISTRY`, in a dedicated linker section named
//! [`SECTION`]. A section survives `strip` (a symbol does not), and the
//! static describes itself: a magic string, a layout version, the pointer
//! size, the header and task-record sizes, a table of byte offsets of each
//! task-record field, and one mirror per registry shard (a pointer to an
//! array of `len` pointers to the `Arc` allocations of task records). So
//! this reader needs neither symbols nor debug info, nor any knowledge of
//! the Rust layouts of the taskscope version that wrote it.
//!
//! # Shape
//!
//! [`Layout::parse`] checks and decodes the header bytes; [`read`] walks
//! the shard mirrors through a [`MemorySource`] and returns one
//! [`InstrumentedTask`] per readable record (names, kind, spawn location,
//! tokio task id, parent task, poll and wake statistics).
//!
//! # Trust
//!
//! The mirrors are rewritten while the app runs, so a dump can hold a stale
//! or half-written array. Every count is bounded, every pointer checked,
//! every string length capped, and a record that does not look like one
//! (zero id, unknown state) is skipped and counted in a warning.

use std::collections::HashMap;

use crate::memory::MemorySource;
use crate::tokio::SourceLocation;

/// Name of the linker section holding the registry header.
pub const SECTION: &str = "taskscope_registry";
/// The header's `magic`.
pub const MAGIC: [u8; 16] = *b"TASKSCOPE-REGv1\0";
/// The only layout version this reader understands.
pub const VERSION: u32 = 1;

/// Fixed part of the header: magic, then six `u32`s.
const FIXED: usize = 16 + 6 * 4;
/// Fields of the version-1 task offset table, in header order.
const FIELDS: [&str; 25] = [
    "id",
    "created_at_ns",
    "state",
    "source",
    "polls",
    "busy_ns",
    "scheduled_ns",
    "wakes",
    "self_wakes",
    "waker_clones",
    "waker_drops",
    "last_wake_ns",
    "last_poll_started_ns",
    "last_poll_ended_ns",
    "completed_at_ns",
    "max_poll_ns",
    "poll_histogram",
    "scheduled_histogram",
    "name",
    "kind",
    "file",
    "line",
    "column",
    "tokio_id",
    "parent_id",
];
/// Caps that keep a corrupt header from making the walk run away.
const MAX_SHARDS: u32 = 4096;
const MAX_RECORD: u32 = 64 * 1024;
const MAX_TASKS: u64 = 4_000_000;

/// Why a `taskscope_registry` section could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("the header is {len} bytes, shorter than its fixed part")]
    Short { len: usize },
    #[error("bad magic {found:?} (expected \"TASKSCOPE-REGv1\")")]
    Magic { found: String },
    #[error("layout version {found}; this taskscope reads version {VERSION}")]
    Version { found: u32 },
    #[error("pointer size {found}; only 64-bit targets are read")]
    PointerSize { found: u32 },
    #[error("implausible header: {detail}")]
    Implausible { detail: String },
}

/// The decoded header of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub version: u32,
    pub header_size: u32,
    pub record_size: u32,
    pub arc_data_offset: u32,
    /// Byte offset of each task-record field, by name (see [`FIELDS`]).
    offsets: HashMap<&'static str, u32>,
    /// `(array, len)` of each shard mirror, as saved in the dump.
    pub shards: Vec<(u64, u64)>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

impl Layout {
    /// Decodes and checks the header bytes (as many as the section holds).
    pub fn parse(bytes: &[u8]) -> Result<Layout, LayoutError> {
        if bytes.len() < FIXED {
            return Err(LayoutError::Short { len: bytes.len() });
        }
        if bytes[..16] != MAGIC {
            return Err(LayoutError::Magic {
                found: String::from_utf8_lossy(&bytes[..16])
                    .trim_end_matches('\0')
                    .to_string(),
            });
        }
        let word = |i: usize| u32_at(bytes, 16 + i * 4).unwrap_or_default();
        let (version, pointer_size, header_size) = (word(0), word(1), word(2));
        let (record_size, arc_data_offset, shard_count) = (word(3), word(4), word(5));
        if version != VERSION {
            return Err(LayoutError::Version { found: version });
        }
        if pointer_size != 8 {
            return Err(LayoutError::PointerSize {
                found: pointer_size,
            });
        }
        let implausible = |detail: String| LayoutError::Implausible { detail };
        if shard_count == 0 || shard_count > MAX_SHARDS {
            return Err(implausible(format!("{shard_count} shards")));
        }
        if record_size == 0 || record_size > MAX_RECORD {
            return Err(implausible(format!("task record of {record_size} bytes")));
        }
        if arc_data_offset > 64 {
            return Err(implausible(format!("Arc data offset {arc_data_offset}")));
        }
        // The shard mirrors close the header: `header_size` locates them.
        let table_end = FIXED + FIELDS.len() * 4;
        let mirrors = shard_count as usize * 16;
        let header = header_size as usize;
        if header > bytes.len() || header < table_end + mirrors {
            return Err(implausible(format!(
                "header of {header_size} bytes for {shard_count} shards ({} bytes saved)",
                bytes.len()
            )));
        }
        let mut offsets = HashMap::new();
        for (i, name) in FIELDS.iter().enumerate() {
            let off = word(6 + i);
            if off >= record_size {
                return Err(implausible(format!(
                    "field {name} at offset {off} of a {record_size}-byte record"
                )));
            }
            offsets.insert(*name, off);
        }
        let first = header - mirrors;
        let shards = (0..shard_count as usize)
            .map(|i| {
                let at = first + i * 16;
                (
                    u64_at(bytes, at).unwrap_or_default(),
                    u64_at(bytes, at + 8).unwrap_or_default(),
                )
            })
            .collect();
        Ok(Layout {
            version,
            header_size,
            record_size,
            arc_data_offset,
            offsets,
            shards,
        })
    }

    fn offset(&self, field: &str) -> usize {
        self.offsets.get(field).copied().unwrap_or_default() as usize
    }
}

/// One task as taskscope's registry saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstrumentedTask {
    /// taskscope's id (the tracing span id for tokio tasks).
    pub id: u64,
    /// tokio's task id, when tokio reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokio_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// "task", "blocking", "block_on", "local" or "wrapped".
    pub kind: String,
    /// Instrumented with tokio's tracing spans, or by taskscope's wrapper.
    pub source: &'static str,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spawned_at: Option<SourceLocation>,
    /// taskscope id of the task that spawned this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<u64>,
    /// tokio id of the parent task, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_tokio_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_name: Option<String>,
    pub polls: u64,
    pub busy_ns: u64,
    pub scheduled_ns: u64,
    pub max_poll_ns: u64,
    pub wakes: u64,
    pub self_wakes: u64,
    pub waker_clones: u64,
    pub waker_drops: u64,
    /// Nanoseconds since the Unix epoch; absent = never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_poll_ended_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_wake_ns: Option<u64>,
    /// Address of the task record in the target.
    pub record: String,
}

impl InstrumentedTask {
    /// "task 7 \"worker\"" or "taskscope task 12" when tokio's id is unknown.
    pub fn label(&self) -> String {
        let base = match self.tokio_id {
            Some(t) => format!("task {t}"),
            None => format!("taskscope task {}", self.id),
        };
        match &self.name {
            Some(n) => format!("{base} \"{n}\""),
            None => base,
        }
    }

    /// One line of statistics: polls, busy time, wakes, waker balance.
    pub fn stats_line(&self) -> String {
        let mut s = format!(
            "{} poll(s), busy {}, longest poll {}, {} wake(s)",
            self.polls,
            human_ns(self.busy_ns),
            human_ns(self.max_poll_ns),
            self.wakes
        );
        if self.self_wakes > 0 {
            s.push_str(&format!(" ({} self-wakes)", self.self_wakes));
        }
        s.push_str(&format!(
            ", wakers cloned {} / dropped {}",
            self.waker_clones, self.waker_drops
        ));
        s
    }

    /// "spawned by task 3 \"supervisor\"", when the parent is known.
    pub fn parent_line(&self) -> Option<String> {
        let parent = self.parent_id?;
        let base = match self.parent_tokio_id {
            Some(t) => format!("task {t}"),
            None => format!("taskscope task {parent}"),
        };
        Some(match &self.parent_name {
            Some(n) => format!("spawned by {base} \"{n}\""),
            None => format!("spawned by {base}"),
        })
    }
}

/// Formats nanoseconds for people (`850ns`, `12.3µs`, `4.05ms`, `1.20s`).
pub fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", f / 1e6)
    } else {
        format!("{:.2}s", f / 1e9)
    }
}

fn state_name(v: u8) -> Option<&'static str> {
    Some(match v {
        1 => "scheduled",
        2 => "idle",
        3 => "running",
        4 => "running (woken meanwhile)",
        5 => "completed",
        6 => "cancelled",
        7 => "panicked",
        _ => return None,
    })
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct Registry {
    pub tasks: Vec<InstrumentedTask>,
    pub warnings: Vec<String>,
}

/// Reads the registry whose header is at `addr` (already relocated) and
/// spans `size` bytes of the section.
pub fn read(mem: &dyn MemorySource, addr: u64, size: u64) -> Registry {
    let mut out = Registry::default();
    let mut header = vec![0u8; size.min(64 * 1024) as usize];
    if let Err(e) = mem.read(addr, &mut header) {
        out.warnings.push(format!(
            "taskscope registry at {addr:#x} is not readable: {e}"
        ));
        return out;
    }
    let layout = match Layout::parse(&header) {
        Ok(l) => l,
        Err(e) => {
            out.warnings
                .push(format!("taskscope registry at {addr:#x} ignored: {e}"));
            return out;
        }
    };
    let mut skipped = 0u64;
    let mut total = 0u64;
    for (i, &(array, len)) in layout.shards.iter().enumerate() {
        if len == 0 {
            continue;
        }
        if array == 0 || total + len > MAX_TASKS {
            out.warnings.push(format!(
                "taskscope registry shard {i}: implausible task array {array:#x} × {len}"
            ));
            continue;
        }
        total += len;
        let mut pointers = vec![0u8; len as usize * 8];
        if let Err(e) = mem.read(array, &mut pointers) {
            out.warnings.push(format!(
                "taskscope registry shard {i}: task array not readable: {e}"
            ));
            continue;
        }
        for chunk in pointers.chunks_exact(8) {
            let alloc = u64_at(chunk, 0).unwrap_or_default();
            match read_task(mem, &layout, alloc) {
                Some(t) => out.tasks.push(t),
                None => skipped += 1,
            }
        }
    }
    if skipped > 0 {
        out.warnings.push(format!(
            "{skipped} taskscope registry record(s) were unreadable or not plausible (a dump taken mid-update?)"
        ));
    }
    resolve_parents(&mut out.tasks);
    out.tasks
        .sort_by_key(|t| (t.tokio_id.unwrap_or(u64::MAX), t.id));
    out
}

fn read_task(mem: &dyn MemorySource, layout: &Layout, alloc: u64) -> Option<InstrumentedTask> {
    if alloc == 0 || !alloc.is_multiple_of(8) {
        return None;
    }
    let record = alloc.checked_add(u64::from(layout.arc_data_offset))?;
    let mut bytes = vec![0u8; layout.record_size as usize];
    mem.read(record, &mut bytes).ok()?;
    let u64f = |f: &str| u64_at(&bytes, layout.offset(f));
    let u32f = |f: &str| u32_at(&bytes, layout.offset(f));
    let u8f = |f: &str| bytes.get(layout.offset(f)).copied();
    let nonzero = |v: Option<u64>| v.filter(|v| *v != 0);
    let id = u64f("id").filter(|v| *v != 0)?;
    let state = state_name(u8f("state")?)?;
    let source = match u8f("source") {
        Some(1) => "tracing",
        Some(2) => "wrapper",
        _ => return None,
    };
    // Strings are fat pointers: data then length.
    let string = |f: &str, skip: u64| -> Option<String> {
        let at = layout.offset(f);
        let (data, len) = (u64_at(&bytes, at)?, u64_at(&bytes, at + 8)?);
        if data == 0 {
            return None;
        }
        mem.read_str(data.checked_add(skip)?, len).ok()
    };
    let name = string("name", 0);
    let kind = string("kind", 0).unwrap_or_else(|| "task".to_string());
    let file = string("file", u64::from(layout.arc_data_offset));
    let line = u32f("line").unwrap_or_default();
    let column = u32f("column").unwrap_or_default();
    let spawned_at = file.map(|file| SourceLocation {
        file,
        line: u64::from(line),
        column: (column != 0).then_some(u64::from(column)),
    });
    Some(InstrumentedTask {
        id,
        tokio_id: nonzero(u64f("tokio_id")),
        name,
        kind,
        source,
        state,
        spawned_at,
        parent_id: nonzero(u64f("parent_id")),
        parent_tokio_id: None,
        parent_name: None,
        polls: u64f("polls").unwrap_or_default(),
        busy_ns: u64f("busy_ns").unwrap_or_default(),
        scheduled_ns: u64f("scheduled_ns").unwrap_or_default(),
        max_poll_ns: u64f("max_poll_ns").unwrap_or_default(),
        wakes: u64f("wakes").unwrap_or_default(),
        self_wakes: u64f("self_wakes").unwrap_or_default(),
        waker_clones: u64f("waker_clones").unwrap_or_default(),
        waker_drops: u64f("waker_drops").unwrap_or_default(),
        created_at_ns: nonzero(u64f("created_at_ns")),
        last_poll_ended_ns: nonzero(u64f("last_poll_ended_ns")),
        last_wake_ns: nonzero(u64f("last_wake_ns")),
        record: format!("{record:#x}"),
    })
}

/// Fills each task's parent tokio id and name from the parent's record.
fn resolve_parents(tasks: &mut [InstrumentedTask]) {
    let by_id: HashMap<u64, (Option<u64>, Option<String>)> = tasks
        .iter()
        .map(|t| (t.id, (t.tokio_id, t.name.clone())))
        .collect();
    for t in tasks.iter_mut() {
        if let Some((tokio_id, name)) = t.parent_id.and_then(|p| by_id.get(&p)) {
            t.parent_tokio_id = *tokio_id;
            t.parent_name = name.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 header as taskscope lays it out, with one shard.
    fn header(shards: &[(u64, u64)]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        let table_end = FIXED + FIELDS.len() * 4;
        let first = table_end.div_ceil(8) * 8;
        let size = first + shards.len() * 16;
        for v in [VERSION, 8, size as u32, 512, 16, shards.len() as u32] {
            b.extend(v.to_le_bytes());
        }
        for i in 0..FIELDS.len() as u32 {
            b.extend((i * 8).to_le_bytes());
        }
        b.resize(first, 0);
        for (a, l) in shards {
            b.extend(a.to_le_bytes());
            b.extend(l.to_le_bytes());
        }
        b
    }

    #[test]
    fn a_version_one_header_is_decoded() {
        let l = Layout::parse(&header(&[(0x1000, 3), (0, 0)])).expect("layout");
        assert_eq!(l.shards, vec![(0x1000, 3), (0, 0)]);
        assert_eq!(l.offset("parent_id"), 24 * 8);
        assert_eq!(l.record_size, 512);
    }

    #[test]
    fn bad_headers_are_refused_with_a_reason() {
        let mut h = header(&[(0, 0)]);
        h[0] = b'X';
        assert!(matches!(Layout::parse(&h), Err(LayoutError::Magic { .. })));
        let mut h = header(&[(0, 0)]);
        h[16] = 2;
        assert_eq!(Layout::parse(&h), Err(LayoutError::Version { found: 2 }));
        let h = header(&[(0, 0)]);
        assert!(matches!(
            Layout::parse(&h[..h.len() - 4]),
            Err(LayoutError::Implausible { .. })
        ));
        assert_eq!(Layout::parse(&h[..10]), Err(LayoutError::Short { len: 10 }));
    }

    /// Memory of a pretend process: a few regions of bytes.
    struct Regions(Vec<(u64, Vec<u8>)>);

    impl MemorySource for Regions {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), crate::MemoryError> {
            for (start, bytes) in &self.0 {
                let Some(off) = addr.checked_sub(*start) else {
                    continue;
                };
                if let Some(src) = bytes.get(off as usize..off as usize + buf.len()) {
                    buf.copy_from_slice(src);
                    return Ok(());
                }
            }
            Err(crate::MemoryError::Unmapped {
                addr,
                len: buf.len(),
            })
        }
    }

    /// A record laid out by [`header`]'s offsets (field i at i * 8).
    fn record(id: u64, tokio_id: u64, parent: u64, name: Option<u64>) -> Vec<u8> {
        let mut r = vec![0u8; 16 + 512];
        let mut put = |field: &str, v: u64| {
            let i = FIELDS.iter().position(|f| *f == field).unwrap_or_default();
            let at = 16 + i * 8;
            r[at..at + 8].copy_from_slice(&v.to_le_bytes());
        };
        put("id", id);
        put("state", 2);
        put("source", 1);
        put("polls", 5);
        put("tokio_id", tokio_id);
        put("parent_id", parent);
        if let Some(p) = name {
            put("name", p);
            // The length is the word after the data pointer.
            let i = FIELDS.iter().position(|f| *f == "kind").unwrap_or_default();
            let at = 16 + i * 8;
            r[at..at + 8].copy_from_slice(&6u64.to_le_bytes());
        }
        r
    }

    #[test]
    fn records_are_read_and_damage_is_reported_not_fatal() {
        // The "name" fat pointer is (data, len): its len word is the next
        // field of the test layout ("kind" data), which `record` fills.
        let head = header(&[(0x2000, 4), (0x9999_0000, 1 << 30)]);
        let pointers: Vec<u8> = [0x3000u64, 0x4000, 0xdead_0000, 0]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        let mem = Regions(vec![
            (0x1000, head.clone()),
            (0x2000, pointers),
            (0x3000, record(11, 1, 0, Some(0x5000))),
            (0x4000, record(12, 2, 11, None)),
            (0x5000, b"parent".to_vec()),
        ]);
        let found = read(&mem, 0x1000, head.len() as u64);
        assert_eq!(found.tasks.len(), 2, "{:?}", found.warnings);
        let child = &found.tasks[1];
        assert_eq!(child.tokio_id, Some(2));
        assert_eq!(child.polls, 5);
        assert_eq!(child.parent_tokio_id, Some(1));
        assert_eq!(child.parent_name.as_deref(), Some("parent"));
        assert_eq!(
            child.parent_line().as_deref(),
            Some("spawned by task 1 \"parent\"")
        );
        // Two unreadable records and an absurd shard, each said once.
        assert_eq!(found.warnings.len(), 2, "{:?}", found.warnings);
        assert!(found
            .warnings
            .iter()
            .any(|w| w.contains("2 taskscope registry record(s)")));
        assert!(found.warnings.iter().any(|w| w.contains("shard 1")));
        // No section bytes at all: one warning, no tasks.
        let none = read(&mem, 0x8000, 256);
        assert!(none.tasks.is_empty());
        assert_eq!(none.warnings.len(), 1);
    }

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human_ns(850), "850ns");
        assert_eq!(human_ns(12_300), "12.3µs");
        assert_eq!(human_ns(4_050_000), "4.05ms");
        assert_eq!(human_ns(1_200_000_000), "1.20s");
    }
}
