//! The registry's self-description for debuggers and core-dump readers.
//!
//! A dump of a crashed or hung process should show its tasks without
//! DWARF and without knowing this crate's Rust layouts (which change with
//! compiler versions). So one `#[repr(C)]` static, [`TASKSCOPE_REGISTRY`],
//! lives in its own linker section named `taskscope_registry` (kept by
//! `#[used]`, and a section survives `strip`, unlike a symbol). A reader
//! finds the section in the ELF file, adds the load bias, and reads:
//!
//! * `magic` (`b"TASKSCOPE-REGv1\0"`), `version`, `pointer_size`,
//!   `header_size`;
//! * a table of byte offsets of the fields of a task record (`TaskCell`),
//!   computed by the compiler with `core::mem::offset_of!`, plus the record
//!   size and the offset of the record inside its `Arc` allocation;
//! * `shard_count` shard mirrors: each holds a pointer to an array of
//!   `len` pointers to `Arc` allocations of task records.
//!
//! The mirrors are updated under the shard's lock after every insert and
//! every publish pass, so at rest they describe the registry exactly; a
//! dump taken mid-update can show a stale array, so readers must bound
//! every walk and check every pointer. Integers are native-endian; a field
//! that is "0 = unknown" says so in [`TaskOffsets`].
//!
//! Strings (`name`, `file`) are Rust fat pointers: a data pointer followed
//! by a length in bytes (data pointer 0 = none). For `file` (an `Arc<str>`)
//! the data pointer addresses the `Arc` allocation; the text starts
//! `arc_data_offset` bytes into it.
#![allow(unsafe_code)]

use std::mem::offset_of;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::Release};
use std::sync::Arc;

use crate::task::{TaskCell, TaskIdentity, SHARDS};

/// `magic` of the header.
pub const MAGIC: [u8; 16] = *b"TASKSCOPE-REGv1\0";
/// Layout version of the header and the task record table.
pub const VERSION: u32 = 1;

/// Byte offsets of task record fields (all `u64` unless noted).
#[repr(C)]
#[derive(Debug)]
pub struct TaskOffsets {
    pub id: u32,
    pub created_at_ns: u32,
    /// `u8`: 1 scheduled, 2 idle, 3 running, 4 running (woken meanwhile),
    /// 5 completed, 6 cancelled, 7 panicked.
    pub state: u32,
    /// `u8`: 1 tracing, 2 wrapper.
    pub source: u32,
    pub polls: u32,
    pub busy_ns: u32,
    pub scheduled_ns: u32,
    pub wakes: u32,
    pub self_wakes: u32,
    pub waker_clones: u32,
    pub waker_drops: u32,
    /// Times are nanoseconds since the Unix epoch, 0 = never.
    pub last_wake_ns: u32,
    pub last_poll_started_ns: u32,
    pub last_poll_ended_ns: u32,
    pub completed_at_ns: u32,
    pub max_poll_ns: u32,
    /// A `u8` h at +0, a `u16` at +2, then 64 × `u16` bucket counts
    /// (histogram scheme 1) from +4: multiply every count by 2^h.
    pub poll_histogram: u32,
    pub scheduled_histogram: u32,
    /// Fat pointer (data, len); data 0 = unnamed.
    pub name: u32,
    /// `&'static str` fat pointer: "task", "blocking", "block_on", "local", "wrapped".
    pub kind: u32,
    /// `Arc<str>` fat pointer; data 0 = unknown.
    pub file: u32,
    /// `u32`.
    pub line: u32,
    /// `u32`.
    pub column: u32,
    /// 0 = unknown.
    pub tokio_id: u32,
    /// 0 = no parent.
    pub parent_id: u32,
}

/// One shard as a reader sees it.
#[repr(C)]
#[derive(Debug)]
pub struct ShardMirror {
    /// Array of `len` pointers to `Arc` allocations of task records.
    pub tasks: AtomicPtr<*const u8>,
    pub len: AtomicUsize,
}

/// The header. See the module docs.
#[repr(C)]
#[derive(Debug)]
pub struct RegistryHeader {
    pub magic: [u8; 16],
    pub version: u32,
    pub pointer_size: u32,
    pub header_size: u32,
    pub task_record_size: u32,
    /// Where the task record starts inside its `Arc` allocation.
    pub arc_data_offset: u32,
    pub shard_count: u32,
    pub task: TaskOffsets,
    pub shards: [ShardMirror; SHARDS],
}

const fn off(o: usize) -> u32 {
    o as u32
}

const fn ident(o: usize) -> u32 {
    (offset_of!(TaskCell, identity) + o) as u32
}

/// The registry header, in the `taskscope_registry` section.
#[used]
#[link_section = "taskscope_registry"]
pub static TASKSCOPE_REGISTRY: RegistryHeader = RegistryHeader {
    magic: MAGIC,
    version: VERSION,
    pointer_size: std::mem::size_of::<usize>() as u32,
    header_size: std::mem::size_of::<RegistryHeader>() as u32,
    task_record_size: std::mem::size_of::<TaskCell>() as u32,
    // std's `ArcInner` is two counters followed by the value (padded to
    // the value's alignment); checked at run time by `arc_data_offset()`.
    arc_data_offset: ARC_DATA_OFFSET as u32,
    shard_count: SHARDS as u32,
    task: TaskOffsets {
        id: off(offset_of!(TaskCell, id)),
        created_at_ns: off(offset_of!(TaskCell, created_at)),
        state: off(offset_of!(TaskCell, state)),
        source: off(offset_of!(TaskCell, source)),
        polls: off(offset_of!(TaskCell, polls)),
        busy_ns: off(offset_of!(TaskCell, busy_ns)),
        scheduled_ns: off(offset_of!(TaskCell, scheduled_ns)),
        wakes: off(offset_of!(TaskCell, wakes)),
        self_wakes: off(offset_of!(TaskCell, self_wakes)),
        waker_clones: off(offset_of!(TaskCell, waker_clones)),
        waker_drops: off(offset_of!(TaskCell, waker_drops)),
        last_wake_ns: off(offset_of!(TaskCell, last_wake)),
        last_poll_started_ns: off(offset_of!(TaskCell, last_poll_started)),
        last_poll_ended_ns: off(offset_of!(TaskCell, last_poll_ended)),
        completed_at_ns: off(offset_of!(TaskCell, completed_at)),
        max_poll_ns: off(offset_of!(TaskCell, max_poll_ns)),
        poll_histogram: off(offset_of!(TaskCell, poll_histogram)),
        scheduled_histogram: off(offset_of!(TaskCell, scheduled_histogram)),
        name: ident(offset_of!(TaskIdentity, name)),
        kind: ident(offset_of!(TaskIdentity, kind)),
        file: ident(offset_of!(TaskIdentity, file)),
        line: ident(offset_of!(TaskIdentity, line)),
        column: ident(offset_of!(TaskIdentity, column)),
        tokio_id: ident(offset_of!(TaskIdentity, tokio_id)),
        parent_id: ident(offset_of!(TaskIdentity, parent_id)),
    },
    shards: [const {
        ShardMirror {
            tasks: AtomicPtr::new(std::ptr::null_mut()),
            len: AtomicUsize::new(0),
        }
    }; SHARDS],
};

const ARC_DATA_OFFSET: usize = {
    let counters = 2 * std::mem::size_of::<usize>();
    let align = std::mem::align_of::<TaskCell>();
    counters.div_ceil(align) * align
};

/// Records where shard `index`'s task array is now. Called with the shard
/// locked, right after it changed.
pub(crate) fn publish_shard(index: usize, tasks: &[Arc<TaskCell>]) {
    let Some(m) = TASKSCOPE_REGISTRY.shards.get(index) else {
        return;
    };
    // A reader of a consistent snapshot sees a length no larger than the
    // array it pairs with: shrink first, then swap, then grow.
    m.len.store(0, Release);
    m.tasks.store(tasks.as_ptr() as *mut *const u8, Release);
    m.len.store(tasks.len(), Release);
}

/// The offset of an `Arc`'s value inside its allocation, measured.
#[cfg(test)]
fn arc_data_offset(a: &Arc<TaskCell>) -> usize {
    // SAFETY: `Arc<T>` for a sized `T` is one non-null pointer to its
    // allocation (`NonNull<ArcInner<T>>`); copying its bits into a `usize`
    // reads exactly that pointer and does not touch the reference count.
    let alloc: usize = unsafe { std::mem::transmute_copy::<Arc<TaskCell>, usize>(a) };
    Arc::as_ptr(a) as usize - alloc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Source, TaskIdentity};

    #[test]
    fn the_arc_data_offset_in_the_header_is_the_real_one() {
        let cell = Arc::new(TaskCell::new(
            7,
            Source::Wrapper,
            TaskIdentity::unnamed("wrapped"),
        ));
        assert_eq!(
            arc_data_offset(&cell),
            TASKSCOPE_REGISTRY.arc_data_offset as usize
        );
    }

    #[test]
    fn a_reader_following_the_header_finds_a_registered_task() {
        let cell = Arc::new(TaskCell::new(
            0x7a5c_0bee,
            Source::Wrapper,
            TaskIdentity {
                name: Some("needle".into()),
                line: 42,
                tokio_id: 9,
                ..TaskIdentity::unnamed("wrapped")
            },
        ));
        crate::task::registry().insert(cell.clone());
        cell.polls.store(3, std::sync::atomic::Ordering::Relaxed);
        let h = &TASKSCOPE_REGISTRY;
        assert_eq!(h.magic, MAGIC);
        let mut found = false;
        // Hold the shard's lock, as a stopped process or a core guarantees
        // that nothing moves while the reader walks.
        let _shard = crate::task::registry().lock_shard(cell.shard as usize);
        {
            let m = &h.shards[cell.shard as usize];
            let base = m.tasks.load(std::sync::atomic::Ordering::Acquire);
            let len = m.len.load(std::sync::atomic::Ordering::Acquire);
            for i in 0..len {
                // SAFETY: the shard is locked, so its array (published by
                // `publish_shard` after the last change) is alive and holds
                // at least `len` pointers.
                let alloc = unsafe { *base.add(i) } as usize;
                let record = alloc + h.arc_data_offset as usize;
                if record != Arc::as_ptr(&cell) as usize {
                    continue;
                }
                let at = |o: u32| (record + o as usize) as *const u64;
                // SAFETY: `record` is the address of our live `TaskCell`
                // (compared above) and the offsets come from `offset_of!`.
                let (id, polls, tokio_id, line) = unsafe {
                    (
                        *at(h.task.id),
                        *at(h.task.polls),
                        *at(h.task.tokio_id),
                        *((record + h.task.line as usize) as *const u32),
                    )
                };
                assert_eq!((id, polls, tokio_id, line), (0x7a5c_0bee, 3, 9, 42));
                found = true;
            }
        }
        assert!(found, "the header leads to the task");
    }
}
