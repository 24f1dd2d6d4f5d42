//! Span id → task, for the layer's hot paths.
//!
//! # Why not span extensions
//! tracing-subscriber's registry keeps per-span data in "extensions": a
//! type-keyed hash map behind a read-write lock in the span's slab slot,
//! holding a separately boxed value. Finding a task's [`TaskCell`] that
//! way on every poll start and every wake costs a slab lookup, two locked
//! instructions and three dependent pointer loads (slot → map → box →
//! cell), each a likely cache miss when many tasks are alive.
//!
//! # Shape
//! A flat table indexed by the span id's slab address ([`ADDR_BITS`]):
//! finding an entry is one index and one check of the id, with no hash,
//! no lock and no write to shared memory, so the two or more threads of a
//! runtime reading it do not pass cache lines back and forth (a sharded
//! `Mutex<HashMap>` did, on every timer wake). Readers are kept safe from
//! a concurrent remove by hazard pointers (see `direct`). Ids the table
//! cannot place go to a sharded map (64 shards, each a `Mutex<HashMap>`),
//! which costs nothing while it is empty.
//!
//! Entries are inserted when a task's `runtime.spawn` span, a user span
//! inside a task, a resource span or (at its first `Pending` poll) an
//! async-op span is seen, and removed when the span closes (span ids are
//! reused only after the close, so an entry never outlives its span). The
//! layer stores nothing in span extensions: a span that is not in the table
//! costs one look at its (often empty) place when it is entered or closed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
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
    let entry = match direct::insert(id, entry) {
        Ok(()) => return,
        Err(entry) => entry,
    };
    // Counted before the entry is visible, so that a lookup that can see
    // the entry also sees that the map is not empty.
    OVERFLOW.fetch_add(1, SeqCst);
    if shard(id).insert(id, entry).is_some() {
        OVERFLOW.fetch_sub(1, SeqCst);
    }
}

pub(crate) fn remove(id: u64) -> Option<SpanEntry> {
    if let Some(entry) = direct::remove(id) {
        return Some(entry);
    }
    if OVERFLOW.load(SeqCst) == 0 {
        return None;
    }
    let entry = shard(id).remove(&id);
    if entry.is_some() {
        OVERFLOW.fetch_sub(1, SeqCst);
    }
    entry
}

/// Runs `f` on the entry for `id`. `f` must be short and must not touch
/// the table (an entry in the map is read with its shard locked).
#[inline]
pub(crate) fn with<R>(id: u64, f: impl FnOnce(&SpanEntry) -> R) -> Option<R> {
    let f = match direct::with(id, f) {
        direct::Found::Yes(r) => return Some(r),
        direct::Found::Gone => return None,
        direct::Found::NotHere(f) => f,
    };
    if OVERFLOW.load(SeqCst) == 0 {
        return None;
    }
    shard(id).get(&id).map(f)
}

/// The entry for `id`, cloned.
pub(crate) fn get(id: u64) -> Option<SpanEntry> {
    with(id, SpanEntry::clone)
}

/// Entries in the sharded map (spans the direct table could not place).
static OVERFLOW: AtomicUsize = AtomicUsize::new(0);

/// Span ids as tracing-subscriber's registry makes them: a sharded-slab
/// key plus one, packing the slot's address in its shard (the low
/// [`ADDR_BITS`]), the shard (one per thread that created spans, the next
/// [`TID_BITS`]) and the slot's generation (the rest). The registry reuses
/// a slot only after every layer's `on_close` for its previous span, and
/// the addresses in use stay below the peak number of live spans, so the
/// pair (shard, address) indexes a dense table with no two live spans in
/// one place. Nothing promises this layout: an id it does not fit (another
/// subscriber, a huge address) or a place already taken goes to the map,
/// and every hit is checked against the whole id, so a different layout
/// costs speed, never correctness.
const ADDR_BITS: u32 = 38;
const TID_BITS: u32 = 13;

mod direct {
    //! The lock-free table: reads take no lock and write nothing shared.
    //!
    //! A place holds the span id and an owned reference to the entry's
    //! cell (an `Arc` turned into a tagged pointer). A reader publishes
    //! the pointer as a hazard of its thread before following it and checks
    //! that the place still holds it; a removed entry's reference is
    //! retired, and dropped only once no thread's hazards name it
    //! (classic hazard pointers). So a wake from a stale waker racing with
    //! its task's close reads a live cell or nothing, never freed memory.
    #![allow(unsafe_code)]

    use std::cell::{Cell, RefCell};
    use std::mem::ManuallyDrop;
    use std::ptr::null_mut;
    use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};
    use std::sync::{Arc, Mutex};

    use super::{SpanEntry, ADDR_BITS, TID_BITS};
    use crate::resource::{AsyncOpCell, ResourceCell};
    use crate::task::TaskCell;

    /// Places per chunk, chunks per shard, shards: spans of the first
    /// [`TIDS`] threads, at addresses below `CHUNK * CHUNKS` (a million
    /// live spans per thread). Chunks are allocated when first needed and
    /// kept (16 KiB each, a thousand live spans' worth).
    const CHUNK: usize = 1 << 10;
    const CHUNKS: usize = 1 << 10;
    const TIDS: usize = 64;

    struct Place {
        /// The span id, 0 when empty; written after `ptr` on insert and
        /// before it on remove.
        id: AtomicU64,
        /// The entry as a tagged pointer (see [`into_raw`]), 0 when empty.
        ptr: AtomicUsize,
    }

    struct Chunk([Place; CHUNK]);

    static DIRECTORY: [AtomicPtr<Chunk>; TIDS * CHUNKS] =
        [const { AtomicPtr::new(null_mut()) }; TIDS * CHUNKS];

    /// (directory index, place index) of `id`, if the table covers it.
    #[inline]
    fn index(id: u64) -> Option<(usize, usize)> {
        let key = id.wrapping_sub(1);
        let addr = (key & ((1 << ADDR_BITS) - 1)) as usize;
        let tid = ((key >> ADDR_BITS) & ((1 << TID_BITS) - 1)) as usize;
        (tid < TIDS && addr < CHUNK * CHUNKS).then_some((tid * CHUNKS + addr / CHUNK, addr % CHUNK))
    }

    #[inline]
    fn place(id: u64) -> Option<&'static Place> {
        let (c, p) = index(id)?;
        let chunk = DIRECTORY[c].load(Acquire);
        // SAFETY: a published chunk is never freed or moved.
        (!chunk.is_null()).then(|| unsafe { &(*chunk).0[p] })
    }

    fn place_or_new(id: u64) -> Option<&'static Place> {
        let (c, p) = index(id)?;
        let mut chunk = DIRECTORY[c].load(Acquire);
        if chunk.is_null() {
            let layout = std::alloc::Layout::new::<Chunk>();
            // SAFETY: `Chunk` is not zero-sized, and all zeros is a valid
            // `Chunk` of empty places (atomics); the allocation is freed
            // only through the `Box` below, with the same layout.
            let fresh = unsafe {
                let p = std::alloc::alloc_zeroed(layout).cast::<Chunk>();
                if p.is_null() {
                    std::alloc::handle_alloc_error(layout);
                }
                p
            };
            chunk = match DIRECTORY[c].compare_exchange(null_mut(), fresh, AcqRel, Acquire) {
                Ok(_) => fresh,
                Err(theirs) => {
                    // SAFETY: `fresh` was never published.
                    drop(unsafe { Box::from_raw(fresh) });
                    theirs
                }
            };
        }
        // SAFETY: a published chunk is never freed or moved.
        Some(unsafe { &(*chunk).0[p] })
    }

    // Two tag bits in the low bits of a cell pointer need 4-byte alignment
    // (every cell is 8-aligned).
    const _: () = assert!(
        std::mem::align_of::<TaskCell>() >= 4
            && std::mem::align_of::<ResourceCell>() >= 4
            && std::mem::align_of::<AsyncOpCell>() >= 4
    );

    fn into_raw(entry: SpanEntry) -> usize {
        match entry {
            SpanEntry::Task(c) => Arc::into_raw(c) as usize,
            SpanEntry::User(c) => Arc::into_raw(c) as usize | 1,
            SpanEntry::Resource(r) => Arc::into_raw(r) as usize | 2,
            SpanEntry::AsyncOp(o) => Arc::into_raw(o) as usize | 3,
        }
    }

    /// # Safety
    /// `raw` came from [`into_raw`] and the caller owns the reference it
    /// holds (or, through [`ManuallyDrop`], keeps the cell alive and never
    /// drops the result).
    unsafe fn from_raw(raw: usize) -> SpanEntry {
        let ptr = raw & !3;
        // SAFETY: the tag says which `Arc::into_raw` made the pointer.
        unsafe {
            match raw & 3 {
                0 => SpanEntry::Task(Arc::from_raw(ptr as *const TaskCell)),
                1 => SpanEntry::User(Arc::from_raw(ptr as *const TaskCell)),
                2 => SpanEntry::Resource(Arc::from_raw(ptr as *const ResourceCell)),
                _ => SpanEntry::AsyncOp(Arc::from_raw(ptr as *const AsyncOpCell)),
            }
        }
    }

    /// Places `entry` for `id`, or hands it back if the table cannot.
    pub(super) fn insert(id: u64, entry: SpanEntry) -> Result<(), SpanEntry> {
        let Some(place) = place_or_new(id) else {
            return Err(entry);
        };
        let raw = into_raw(entry);
        match place.ptr.compare_exchange(0, raw, AcqRel, Relaxed) {
            Ok(_) => {
                place.id.store(id, Release);
                Ok(())
            }
            // The span's own place: a new entry for it replaces the old.
            Err(_) if place.id.load(Acquire) == id => {
                let old = place.ptr.swap(raw, SeqCst);
                if old != 0 {
                    retire(old);
                }
                Ok(())
            }
            // Taken by another live span: the layout is not the one above.
            // SAFETY: `raw` was made just now and never published.
            Err(_) => Err(unsafe { from_raw(raw) }),
        }
    }

    /// Takes the entry of `id` out of the table.
    pub(super) fn remove(id: u64) -> Option<SpanEntry> {
        let place = place(id)?;
        // A span is closed once, and its place is reused only after that,
        // so nothing else writes this place meanwhile.
        if place.id.load(Acquire) != id {
            return None;
        }
        place.id.store(0, Release);
        let raw = place.ptr.swap(0, SeqCst);
        if raw == 0 {
            return None;
        }
        // SAFETY: the place owned this reference; it is now ours.
        let owned = unsafe { from_raw(raw) };
        let entry = owned.clone();
        // Readers may still be following the pointer: drop it later.
        retire(into_raw(owned));
        Some(entry)
    }

    pub(super) enum Found<R, F> {
        Yes(R),
        /// The place held `id` but lost it meanwhile (the span closed).
        Gone,
        /// The table does not hold `id` (maybe the map does).
        NotHere(F),
    }

    #[inline]
    pub(super) fn with<R, F: FnOnce(&SpanEntry) -> R>(id: u64, f: F) -> Found<R, F> {
        let Some(place) = place(id) else {
            return Found::NotHere(f);
        };
        if place.id.load(Acquire) != id {
            return Found::NotHere(f);
        }
        let hazard = Hazard::take();
        // Twice at most: the entry is replaced only when its span is
        // inserted again, which tokio's spans never are.
        for _ in 0..2 {
            let raw = place.ptr.load(Acquire);
            if raw == 0 {
                break;
            }
            hazard.slot().store(raw, SeqCst);
            // Still there once the hazard is visible: whoever takes it out
            // from now on sees the hazard and keeps the cell alive.
            if place.ptr.load(SeqCst) != raw {
                continue;
            }
            if place.id.load(Acquire) != id {
                break;
            }
            // SAFETY: the hazard keeps the cell alive until `hazard` drops,
            // and the borrowed `Arc` is never dropped.
            let entry = ManuallyDrop::new(unsafe { from_raw(raw) });
            return Found::Yes(f(&entry));
        }
        Found::Gone
    }

    // ---- hazards ----

    /// Hazard pointers a thread can hold at once (nested lookups); deeper
    /// nesting borrows a spare record.
    const PER_THREAD: usize = 4;

    /// One thread's hazards, in a list that only grows (records are reused
    /// when their thread ends).
    struct Record {
        slots: [AtomicUsize; PER_THREAD],
        owned: AtomicBool,
        next: AtomicPtr<Record>,
    }

    static RECORDS: AtomicPtr<Record> = AtomicPtr::new(null_mut());

    fn records() -> impl Iterator<Item = &'static Record> {
        let mut next = RECORDS.load(Acquire);
        std::iter::from_fn(move || {
            // SAFETY: records are leaked, never freed.
            let r = unsafe { next.as_ref()? };
            next = r.next.load(Acquire);
            Some(r)
        })
    }

    /// A record for the caller alone until [`release`].
    fn claim() -> &'static Record {
        if let Some(r) = records().find(|r| {
            r.owned
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
        }) {
            return r;
        }
        let r: &'static Record = Box::leak(Box::new(Record {
            slots: [const { AtomicUsize::new(0) }; PER_THREAD],
            owned: AtomicBool::new(true),
            next: AtomicPtr::new(null_mut()),
        }));
        let mut head = RECORDS.load(Acquire);
        loop {
            r.next.store(head, Relaxed);
            match RECORDS.compare_exchange(head, r as *const _ as *mut _, AcqRel, Acquire) {
                Ok(_) => return r,
                Err(h) => head = h,
            }
        }
    }

    fn release(r: &'static Record) {
        for s in &r.slots {
            s.store(0, Release);
        }
        r.owned.store(false, Release);
    }

    /// This thread's record and how many of its slots are in use.
    struct Local {
        record: &'static Record,
        depth: Cell<usize>,
    }

    impl Drop for Local {
        fn drop(&mut self) {
            release(self.record);
        }
    }

    thread_local! {
        static LOCAL: Local = Local { record: claim(), depth: Cell::new(0) };
        /// References removed on this thread, waiting for no hazard.
        static RETIRED: Retired = const { Retired(RefCell::new(Vec::new())) };
    }

    /// A hazard slot held until dropped.
    struct Hazard {
        record: &'static Record,
        index: usize,
        /// A borrowed spare record (nested too deep, or no thread-locals
        /// left while the thread ends), released on drop.
        spare: bool,
    }

    impl Hazard {
        fn take() -> Hazard {
            let local = LOCAL.try_with(|l| {
                let d = l.depth.get();
                (d < PER_THREAD).then(|| {
                    l.depth.set(d + 1);
                    (l.record, d)
                })
            });
            match local {
                Ok(Some((record, index))) => Hazard {
                    record,
                    index,
                    spare: false,
                },
                _ => Hazard {
                    record: claim(),
                    index: 0,
                    spare: true,
                },
            }
        }

        fn slot(&self) -> &AtomicUsize {
            &self.record.slots[self.index]
        }
    }

    impl Drop for Hazard {
        fn drop(&mut self) {
            self.slot().store(0, Release);
            if self.spare {
                release(self.record);
            } else {
                let _ = LOCAL.try_with(|l| l.depth.set(self.index));
            }
        }
    }

    // ---- retiring ----

    /// Retired references a thread keeps before it scans the hazards.
    const SCAN_AT: usize = 64;

    struct Retired(RefCell<Vec<usize>>);

    impl Drop for Retired {
        fn drop(&mut self) {
            let mut left = std::mem::take(self.0.get_mut());
            scan(&mut left);
            if !left.is_empty() {
                orphans().extend(left);
            }
        }
    }

    /// References whose thread ended while a hazard still named them;
    /// the next scan on any thread takes them over.
    static ORPHANS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    fn orphans() -> std::sync::MutexGuard<'static, Vec<usize>> {
        ORPHANS.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn retire(raw: usize) {
        let queued = RETIRED.try_with(|r| {
            let mut list = r.0.borrow_mut();
            list.push(raw);
            if list.len() >= SCAN_AT {
                let mut batch = std::mem::take(&mut *list);
                drop(list);
                if let Ok(mut o) = ORPHANS.try_lock() {
                    batch.append(&mut o);
                }
                scan(&mut batch);
                // The scanned list goes back with its allocation, so the
                // next pushes do not grow a fresh one.
                let mut list = r.0.borrow_mut();
                std::mem::swap(&mut *list, &mut batch);
                list.append(&mut batch);
            }
        });
        if queued.is_err() {
            // The thread is ending: leave it to another thread's scan.
            orphans().push(raw);
        }
    }

    /// Drops the references in `list` that no hazard names; keeps the rest.
    fn scan(list: &mut Vec<usize>) {
        if list.is_empty() {
            return;
        }
        std::sync::atomic::fence(SeqCst);
        let mut hazards: Vec<usize> = records()
            .flat_map(|r| r.slots.iter().map(|s| s.load(SeqCst)))
            .filter(|&p| p != 0)
            .collect();
        hazards.sort_unstable();
        list.retain(|&raw| {
            if hazards.binary_search(&raw).is_ok() {
                return true;
            }
            // SAFETY: retired references are owned by the list, and no
            // reader can reach this one any more (removed from its place
            // before the fence, and no hazard names it).
            drop(unsafe { from_raw(raw) });
            false
        });
    }

    /// Drops every retired reference no hazard names, this thread's and
    /// the orphans' (tests: so that reference counts settle).
    #[cfg(test)]
    pub(super) fn flush() {
        let mut batch: Vec<usize> = std::mem::take(&mut *orphans());
        let _ = RETIRED.try_with(|r| batch.append(&mut r.0.borrow_mut()));
        scan(&mut batch);
        orphans().extend(batch);
    }
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
        direct::flush();
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
        direct::flush();
        assert_eq!(Arc::strong_count(&cell), 1, "the table let go of the task");
    }

    fn task(id: u64) -> Arc<TaskCell> {
        Arc::new(TaskCell::new(
            id,
            Source::Tracing,
            TaskIdentity::unnamed("task"),
        ))
    }

    /// A registry span id: slab address, creating thread, generation.
    fn span_id(addr: u64, tid: u64, generation: u64) -> u64 {
        (generation << (ADDR_BITS + TID_BITS) | tid << ADDR_BITS | addr) + 1
    }

    #[test]
    fn two_live_spans_in_one_place_both_stay_found() {
        // Another subscriber's ids, or a layout that changed: the second
        // span whose id maps to a taken place goes to the map.
        let (a, b) = (span_id(900_001, 3, 1), span_id(900_001, 3, 2));
        let (ca, cb) = (task(a), task(b));
        insert(a, SpanEntry::Task(ca.clone()));
        insert(b, SpanEntry::Task(cb.clone()));
        assert!(matches!(get(a), Some(SpanEntry::Task(c)) if c.id == a));
        assert!(matches!(get(b), Some(SpanEntry::Task(c)) if c.id == b));
        assert!(matches!(remove(a), Some(SpanEntry::Task(c)) if c.id == a));
        assert!(get(a).is_none());
        assert!(matches!(get(b), Some(SpanEntry::Task(c)) if c.id == b));
        assert!(matches!(remove(b), Some(SpanEntry::Task(c)) if c.id == b));
        assert!(get(b).is_none() && remove(b).is_none());
        direct::flush();
        assert_eq!(Arc::strong_count(&ca), 1);
        assert_eq!(Arc::strong_count(&cb), 1);
    }

    #[test]
    fn a_span_inserted_again_keeps_the_newest_entry() {
        let id = span_id(900_002, 3, 1);
        let (old, new) = (task(1), task(2));
        insert(id, SpanEntry::Task(old.clone()));
        insert(id, SpanEntry::Task(new.clone()));
        assert!(matches!(get(id), Some(SpanEntry::Task(c)) if c.id == 2));
        assert!(matches!(remove(id), Some(SpanEntry::Task(c)) if c.id == 2));
        assert!(get(id).is_none());
        direct::flush();
        assert_eq!(Arc::strong_count(&old), 1);
        assert_eq!(Arc::strong_count(&new), 1);
    }

    /// Wakes from stale wakers look a task up while its span closes and
    /// its place is reused: every lookup sees a live cell of the id it
    /// asked for or nothing, and every reference is let go in the end.
    #[test]
    fn lookups_racing_with_removes_and_reuse_see_live_cells_only() {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        const PLACES: u64 = 64;
        const ROUNDS: u64 = 3_000;
        let mut cells = Vec::new();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    let mut i = r;
                    while !stop.load(Relaxed) {
                        let place = 900_100 + i % PLACES;
                        for generation in 1..=4 {
                            let id = span_id(place, 5, generation);
                            // The cell of this very span, alive (a freed
                            // one has the allocator's list pointers where
                            // its reference counts were).
                            let live = |c: &Arc<TaskCell>| {
                                assert_eq!(c.id, id);
                                let n = Arc::strong_count(c);
                                assert!((1..64).contains(&n), "strong count {n:#x}");
                            };
                            if let Some(SpanEntry::Task(c)) = get(id) {
                                live(&c);
                                seen += 1;
                            }
                            with(id, |e| {
                                if let SpanEntry::Task(c) = e {
                                    live(c);
                                }
                            });
                        }
                        i += 1;
                    }
                    direct::flush();
                    seen
                })
            })
            .collect();
        for round in 0..ROUNDS {
            let generation = round % 4 + 1;
            for p in 0..PLACES {
                let id = span_id(900_100 + p, 5, generation);
                let c = task(id);
                cells.push(Arc::downgrade(&c));
                insert(id, SpanEntry::Task(c));
            }
            for p in 0..PLACES {
                let id = span_id(900_100 + p, 5, generation);
                assert!(matches!(remove(id), Some(SpanEntry::Task(c)) if c.id == id));
            }
        }
        stop.store(true, Relaxed);
        let seen: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(seen > 0, "the readers found live entries");
        direct::flush();
        assert!(
            cells.iter().all(|c| c.upgrade().is_none()),
            "every removed cell was freed once no reader held it"
        );
    }
}
