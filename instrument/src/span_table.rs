//! Span id → task, for the layer's hot paths.
//!
//! # Why not span extensions
//! tracing-subscriber's registry keeps per-span data in "extensions": a
//! type-keyed hash map behind a read-write lock in the span's slab slot,
//! holding a separately boxed value. Finding a task's [`TaskCell`] that
//! way on every poll start and every wake costs a slab lookup, two locked
//! instructions and three dependent pointer loads (slot → map → box →
//! cell), each a likely cache miss when many tasks are alive. This table
//! answers the same question with one hash probe in a small map and one
//! uncontended lock: 64 shards, each a `Mutex<HashMap>` keyed by the span
//! id, so the two or more threads of a runtime rarely meet on a shard.
//!
//! # Shape
//! Entries are inserted when a task's `runtime.spawn` span, a user span
//! inside a task, a resource span or (at its first `Pending` poll) an
//! async-op span is seen, and removed when the span closes (span ids are
//! reused only after the close, so an entry never outlives its span). The
//! layer stores nothing in span extensions: a span that is not in the table
//! costs one probe of an (often empty) bucket when it is entered or closed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::resource::{AsyncOpCell, ResourceCell};
use crate::task::TaskCell;

/// What a span is to taskscope.
#[derive(Clone)]
pub(crate) enum SpanEntry {
    /// A task's own span (tokio's `runtime.spawn`).
    Task(Arc<TaskCell>),
    /// A user span inside the task (part of its logical backtrace).
    User(Arc<TaskCell>),
    /// A resource (`runtime.resource`: a mutex, semaphore, channel...).
    Resource(Arc<ResourceCell>),
    /// An async op on a resource (`runtime.resource.async_op`), tracked
    /// from its first `Pending` poll.
    AsyncOp(Arc<AsyncOpCell>),
}

/// Hashes a span id so that a short run of consecutive ids lands in
/// consecutive buckets of one shard, and runs are scattered.
///
/// tracing-subscriber's span ids are slab addresses (slot index in the low
/// bits, then the creating thread, then a generation), and tokio polls
/// tasks roughly in the order it spawned them, so consecutive polls often
/// ask for neighbouring ids: keeping a run of [`RUN`] ids together lets
/// them share the control-byte and slot cache lines. Whole runs are mixed
/// (one multiply and a fold), because a fully order-preserving hash packs
/// live ids into long stretches of full buckets, and every probe for an id
/// that is not in the table (timer and async-op spans are entered all the
/// time) would then walk those stretches to find an empty bucket.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

/// log2 of the number of consecutive span ids kept together.
const RUN_BITS: u32 = 3;
/// Consecutive span ids kept in one shard, in neighbouring buckets.
const RUN: u64 = 1 << RUN_BITS;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    #[inline]
    fn write_u64(&mut self, id: u64) {
        let x = (id >> RUN_BITS).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let x = x ^ (x >> 29);
        self.0 = (x << RUN_BITS) | (id & (RUN - 1));
    }
}

type Map = HashMap<u64, SpanEntry, BuildHasherDefault<IdHasher>>;

const SHARDS: usize = 64;

/// One shard on its own cache lines.
#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<Map>);

fn shards() -> &'static [Shard; SHARDS] {
    static TABLE: OnceLock<[Shard; SHARDS]> = OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|_| Shard::default()))
}

#[inline]
fn shard(id: u64) -> MutexGuard<'static, Map> {
    // A run of consecutive ids shares a shard (see [`IdHasher`]); another
    // multiplier than the map's, top bits.
    let i = ((id >> RUN_BITS).wrapping_mul(0xd6e8_feb8_6659_fd93) >> 58) as usize % SHARDS;
    // Nothing panics while a shard is locked except allocation failure,
    // which aborts; a poisoned shard is still consistent.
    shards()[i].0.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn insert(id: u64, entry: SpanEntry) {
    shard(id).insert(id, entry);
}

pub(crate) fn remove(id: u64) -> Option<SpanEntry> {
    shard(id).remove(&id)
}

/// Runs `f` on the entry for `id` (with its shard locked: `f` must be
/// short and must not touch the table).
#[inline]
pub(crate) fn with<R>(id: u64, f: impl FnOnce(&SpanEntry) -> R) -> Option<R> {
    shard(id).get(&id).map(f)
}

/// The entry for `id`, cloned.
pub(crate) fn get(id: u64) -> Option<SpanEntry> {
    with(id, SpanEntry::clone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Source, TaskIdentity};

    #[test]
    fn entries_live_from_insert_to_remove() {
        let cell = Arc::new(TaskCell::new(
            u64::MAX - 5,
            Source::Tracing,
            TaskIdentity::unnamed("task"),
        ));
        insert(cell.id, SpanEntry::Task(cell.clone()));
        insert(u64::MAX - 6, SpanEntry::User(cell.clone()));
        assert!(matches!(get(u64::MAX - 5), Some(SpanEntry::Task(c)) if c.id == cell.id));
        assert!(matches!(get(u64::MAX - 6), Some(SpanEntry::User(_))));
        assert!(matches!(remove(u64::MAX - 5), Some(SpanEntry::Task(_))));
        assert!(get(u64::MAX - 5).is_none());
        assert!(remove(u64::MAX - 6).is_some());
        assert_eq!(Arc::strong_count(&cell), 1, "the table let go of the task");
    }

    #[test]
    fn ids_that_share_a_slot_but_not_a_thread_or_generation_stay_apart() {
        let cell = Arc::new(TaskCell::new(
            u64::MAX - 7,
            Source::Tracing,
            TaskIdentity::unnamed("task"),
        ));
        // Same slot bits (the hash's bucket index), other high bits: the
        // ids a slab hands out for other threads and reused slots.
        let ids: Vec<u64> = (0..4u64)
            .flat_map(|hi| (1..200u64).map(move |slot| (0x7700 + hi) << 44 | slot))
            .collect();
        for &id in &ids {
            insert(id, SpanEntry::User(cell.clone()));
        }
        for &id in &ids {
            assert!(matches!(get(id), Some(SpanEntry::User(_))), "{id:#x}");
        }
        for &id in ids.iter().step_by(2) {
            assert!(remove(id).is_some());
        }
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(get(id).is_some(), i % 2 == 1, "{id:#x}");
        }
        for &id in ids.iter().skip(1).step_by(2) {
            assert!(remove(id).is_some());
        }
        assert_eq!(Arc::strong_count(&cell), 1, "the table let go of the task");
    }
}
