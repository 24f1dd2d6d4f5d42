//! Applying `taskscope.v1.Update`s to a [`State`], and cutting a state into
//! size-bounded full-state chunks.
//!
//! # Why chunks
//! tokio-console sends its whole state in one gRPC message; past roughly 20k
//! tasks that message outgrows the 4 MiB default limit and the console stops
//! working. taskscope servers instead send a full state as a sequence of
//! `Update`s, each at most `max_chunk_bytes` long ([`full_state_updates`]):
//! every chunk has `full` set, the first carries `process`, the last has
//! `last_chunk`. Deltas follow, each a single `Update` with `full` unset.
//!
//! # Applying
//! * **Deltas** merge: tasks, resources and async ops are replaced whole by
//!   id, `evicted_*_ids` remove, edges are replaced when `edges_replaced` is
//!   set (edges of a kind this version does not know are dropped), hazards
//!   are de-duplicated by fingerprint (a re-sent hazard updates the one
//!   already known and keeps its place), drop counters and `paused` take the
//!   latest values, and `process` is replaced when present.
//! * **Full states** replace everything. [`StateReplica`] stages the chunks
//!   and swaps the new state in when the last chunk arrives, so a reader never
//!   sees half a snapshot. [`State::apply`] has nowhere to stage: it clears
//!   the state at the first chunk and fills it chunk by chunk — fine when
//!   nothing reads the state between chunks (a recording replayed to its end),
//!   otherwise use [`StateReplica`].
//!
//! A full state's first chunk is recognised as the first `full` update after
//! a complete one (or one carrying `process`); a delta arriving before the
//! last chunk abandons the staged chunks (the stream lost the rest).

use prost::Message;

use crate::convert::edge_kind_from_wire;
use crate::model::{Hazard, State, Timestamp};
use crate::proto;

/// The smallest useful chunk limit; smaller requests are raised to it.
pub const MIN_CHUNK_BYTES: usize = 4 * 1024;
/// What servers use when the client asks for 0.
pub const DEFAULT_CHUNK_BYTES: usize = 1024 * 1024;

impl State {
    /// Applies one update (see the module docs). A multi-chunk full state is
    /// applied chunk by chunk, not atomically; [`StateReplica`] is the atomic
    /// form.
    pub fn apply(&mut self, update: proto::Update) {
        if update.full {
            if starts_full_state(self, &update) {
                self.start_full();
            }
            self.merge_full_chunk(update);
        } else {
            self.apply_delta(update);
        }
    }

    /// Clears everything a full state replaces (the process is kept unless
    /// the full state brings its own).
    fn start_full(&mut self) {
        let process = self.process.take();
        *self = State {
            process,
            ..State::default()
        };
    }

    fn merge_full_chunk(&mut self, u: proto::Update) {
        self.merge_common(&u);
        let proto::Update {
            process,
            tasks,
            resources,
            async_ops,
            edges,
            hazards,
            ..
        } = u;
        if let Some(p) = process {
            self.process = Some(p.into());
        }
        for t in tasks {
            self.tasks.insert(t.id, t.into());
        }
        for r in resources {
            self.resources.insert(r.id, r.into());
        }
        for o in async_ops {
            self.async_ops.insert(o.id, o.into());
        }
        self.edges.extend(edges_from_wire(edges));
        for h in hazards {
            merge_hazard(&mut self.hazards, h.into());
        }
    }

    fn apply_delta(&mut self, u: proto::Update) {
        self.merge_common(&u);
        let proto::Update {
            process,
            tasks,
            evicted_task_ids,
            resources,
            evicted_resource_ids,
            async_ops,
            evicted_async_op_ids,
            edges,
            edges_replaced,
            hazards,
            ..
        } = u;
        if let Some(p) = process {
            self.process = Some(p.into());
        }
        for t in tasks {
            self.tasks.insert(t.id, t.into());
        }
        for id in evicted_task_ids {
            self.tasks.remove(&id);
        }
        for r in resources {
            self.resources.insert(r.id, r.into());
        }
        for id in evicted_resource_ids {
            self.resources.remove(&id);
        }
        for o in async_ops {
            self.async_ops.insert(o.id, o.into());
        }
        for id in evicted_async_op_ids {
            self.async_ops.remove(&id);
        }
        if edges_replaced {
            self.edges = edges_from_wire(edges).collect();
        }
        for h in hazards {
            merge_hazard(&mut self.hazards, h.into());
        }
    }

    /// Header fields every update carries.
    fn merge_common(&mut self, u: &proto::Update) {
        if let Some(at) = u.at {
            self.updated_at = Some(at.into());
        }
        if let Some(d) = u.dropped {
            self.dropped = d.into();
        }
        self.paused = u.paused;
    }
}

/// Whether a full-state chunk begins a new full state rather than continuing
/// the one `current` holds: it carries `process` (only first chunks do), or
/// its time differs (all chunks of one full state share `at`).
fn starts_full_state(current: &State, chunk: &proto::Update) -> bool {
    chunk.process.is_some() || current.updated_at != chunk.at.map(Timestamp::from)
}

fn edges_from_wire(edges: Vec<proto::WaitEdge>) -> impl Iterator<Item = crate::model::WaitEdge> {
    edges
        .into_iter()
        .filter(|e| edge_kind_from_wire(e.kind).is_some())
        .map(Into::into)
}

/// Adds `h`, or updates the hazard with the same fingerprint in place.
/// Hazards without a fingerprint are de-duplicated by equality.
fn merge_hazard(hazards: &mut Vec<Hazard>, h: Hazard) {
    let existing = if h.fingerprint.is_empty() {
        hazards.iter().position(|x| *x == h)
    } else {
        hazards.iter().position(|x| x.fingerprint == h.fingerprint)
    };
    match existing {
        Some(i) => hazards[i] = h,
        None => hazards.push(h),
    }
}

/// What [`StateReplica::apply`] did with an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A delta was merged into the visible state.
    Delta,
    /// A chunk of a full state was staged; the visible state is unchanged.
    Staged,
    /// The last chunk arrived: the visible state was replaced.
    FullState,
}

/// A copy of an instrumented process's state, kept up to date from its
/// update stream, that swaps full states in atomically.
#[derive(Debug, Clone, Default)]
pub struct StateReplica {
    state: State,
    staged: Option<State>,
}

impl StateReplica {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state as of the last complete full state and the deltas after it.
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn into_state(self) -> State {
        self.state
    }

    /// Whether chunks of a full state have arrived but not its last one.
    pub fn is_staging(&self) -> bool {
        self.staged.is_some()
    }

    pub fn apply(&mut self, update: proto::Update) -> Applied {
        if !update.full {
            // A delta in the middle of a full state: the rest was lost.
            self.staged = None;
            self.state.apply_delta(update);
            return Applied::Delta;
        }
        let last = update.last_chunk;
        let staged = match self.staged.take() {
            Some(s) if !starts_full_state(&s, &update) => s,
            _ => State {
                process: self.state.process.clone(),
                ..State::default()
            },
        };
        let mut staged = staged;
        staged.merge_full_chunk(update);
        if last {
            self.state = staged;
            Applied::FullState
        } else {
            self.staged = Some(staged);
            Applied::Staged
        }
    }
}

/// Splits `state` into full-state chunks, each encoding to at most
/// `max_chunk_bytes` (raised to [`MIN_CHUNK_BYTES`]; 0 means
/// [`DEFAULT_CHUNK_BYTES`]). The first chunk carries `process` and the drop
/// counters, the last has `last_chunk`; applying them in order reproduces
/// `state` with `updated_at = at`.
///
/// A single task, resource, async op, edge or hazard too large for a chunk
/// on its own (megabytes of backtrace) travels alone in an oversized chunk
/// rather than being lost.
pub fn full_state_updates(
    state: &State,
    at: Timestamp,
    max_chunk_bytes: usize,
) -> Vec<proto::Update> {
    let limit = match max_chunk_bytes {
        0 => DEFAULT_CHUNK_BYTES,
        n => n.max(MIN_CHUNK_BYTES),
    };
    let live_tasks = state.live_tasks().count() as u64;
    let header = |first: bool| proto::Update {
        at: Some(at.into()),
        process: if first {
            state.process.as_ref().map(Into::into)
        } else {
            None
        },
        full: true,
        last_chunk: false,
        dropped: Some((&state.dropped).into()),
        edges_replaced: true,
        live_tasks,
        paused: state.paused,
        ..Default::default()
    };

    let mut chunks = Vec::new();
    let mut current = header(true);
    let mut header_size = current.encoded_len();
    let mut size = header_size;
    // Every item goes into a repeated message field with a one-byte key.
    let item_cost = |len: usize| 1 + prost::length_delimiter_len(len) + len;

    macro_rules! pack {
        ($items:expr, $field:ident) => {
            for item in $items {
                let cost = item_cost(item.encoded_len());
                // A chunk holding only its header is never flushed, so an
                // oversized item gets a chunk of its own.
                if size + cost > limit && size > header_size {
                    chunks.push(std::mem::replace(&mut current, header(false)));
                    header_size = current.encoded_len();
                    size = header_size;
                }
                size += cost;
                current.$field.push(item);
            }
        };
    }
    pack!(state.tasks.values().map(proto::Task::from), tasks);
    pack!(
        state.resources.values().map(proto::Resource::from),
        resources
    );
    pack!(
        state.async_ops.values().map(proto::AsyncOp::from),
        async_ops
    );
    pack!(state.edges.iter().map(proto::WaitEdge::from), edges);
    pack!(state.hazards.iter().map(proto::Hazard::from), hazards);

    current.last_chunk = true;
    chunks.push(current);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests::{
        full_async_op, full_hazard, full_process, full_resource, full_task,
    };
    use crate::model::{EdgeKind, Frame, TaskState, WaitEdge};

    fn big_state(tasks: u64) -> State {
        let mut state = State {
            process: Some(full_process()),
            paused: true,
            updated_at: Some(Timestamp(1_700_000_010_000_000_000)),
            ..State::default()
        };
        for id in 1..=tasks {
            let mut t = full_task(id);
            if id % 3 == 0 {
                t.state = TaskState::Completed;
                t.completed_at = Some(Timestamp(1_700_000_009_000_000_000 + id));
            }
            if id % 7 == 0 {
                t.poll_histogram = None;
                t.backtrace.push(Frame {
                    name: format!("app::handler_{id}"),
                    location: None,
                    detail: String::new(),
                });
            }
            state.tasks.insert(id, t);
        }
        for id in 1..=500 {
            state
                .resources
                .insert(100_000 + id, full_resource(100_000 + id));
            state
                .async_ops
                .insert(200_000 + id, full_async_op(200_000 + id));
            state.edges.push(WaitEdge {
                task_id: id,
                resource_id: 100_000 + id,
                kind: if id % 2 == 0 {
                    EdgeKind::Holds
                } else {
                    EdgeKind::Waits
                },
                op: "acquire".into(),
                since: Some(Timestamp(id)),
            });
        }
        state.hazards = vec![full_hazard("a"), full_hazard("b")];
        state.dropped.task_events = 12;
        state
    }

    #[test]
    fn fifty_thousand_tasks_fit_in_one_mebibyte_chunks_and_come_back_exactly() {
        let state = big_state(50_000);
        let at = state.updated_at.expect("set");
        let chunks = full_state_updates(&state, at, 1024 * 1024);
        let total: usize = chunks.iter().map(|c| c.encoded_len()).sum();
        assert!(
            total > 4 * 1024 * 1024,
            "bigger than tokio-console's cliff: {total}"
        );
        assert!(chunks.len() >= 5, "{} chunks", chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            assert!(
                c.encoded_len() <= 1024 * 1024,
                "chunk {i}: {}",
                c.encoded_len()
            );
            assert!(c.full);
            assert_eq!(c.process.is_some(), i == 0);
            assert_eq!(c.last_chunk, i == chunks.len() - 1);
        }

        let mut plain = State::default();
        let mut replica = StateReplica::new();
        // The replica keeps showing the previous state until the last chunk.
        replica.apply(proto::Update {
            tasks: vec![(&full_task(999_999)).into()],
            ..Default::default()
        });
        for (i, c) in chunks.iter().enumerate() {
            // Through real bytes.
            let c = proto::Update::decode(c.encode_to_vec().as_slice()).expect("decodes");
            plain.apply(c.clone());
            let applied = replica.apply(c);
            if i + 1 < chunks.len() {
                assert_eq!(applied, Applied::Staged);
                assert_eq!(replica.state().tasks.len(), 1, "old state still visible");
            } else {
                assert_eq!(applied, Applied::FullState);
            }
        }
        assert!(replica.state() == &state, "replica differs");
        assert!(plain == state, "State::apply differs");
    }

    #[test]
    fn oversized_items_travel_alone_and_tiny_limits_are_raised() {
        let mut state = big_state(3);
        let mut huge = full_task(2);
        huge.backtrace = (0..2000)
            .map(|i| Frame {
                name: format!("frame number {i} of a very deep chain"),
                location: None,
                detail: String::new(),
            })
            .collect();
        state.tasks.insert(2, huge);
        let chunks = full_state_updates(&state, Timestamp(5), 1);
        let with_huge = chunks
            .iter()
            .find(|c| c.tasks.iter().any(|t| t.id == 2))
            .expect("huge task sent");
        assert_eq!(with_huge.tasks.len(), 1, "alone in its chunk");
        for c in &chunks {
            if !c.tasks.iter().any(|t| t.id == 2) {
                assert!(c.encoded_len() <= MIN_CHUNK_BYTES);
            }
        }
        let mut got = StateReplica::new();
        for c in chunks {
            got.apply(c);
        }
        state.updated_at = Some(Timestamp(5));
        assert!(got.state() == &state);
    }

    #[test]
    fn empty_state_is_one_chunk() {
        let chunks = full_state_updates(&State::default(), Timestamp(9), 0);
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].full && chunks[0].last_chunk);
        let mut s = big_state(10);
        s.apply(chunks[0].clone());
        assert!(s.tasks.is_empty(), "a full state replaces everything");
        assert!(s.process.is_some(), "the process is kept when not re-sent");
    }

    #[test]
    fn deltas_merge() {
        let mut s = big_state(10);
        let mut t3 = full_task(3);
        t3.polls = 1_000;
        t3.state = TaskState::Panicked;
        let mut changed_hazard = full_hazard("a");
        changed_hazard.summary = "worse now".into();
        s.apply(proto::Update {
            at: Some(Timestamp(77).into()),
            tasks: vec![(&t3).into(), (&full_task(11)).into()],
            evicted_task_ids: vec![4, 12345],
            evicted_resource_ids: vec![100_001],
            evicted_async_op_ids: vec![200_001],
            edges: vec![
                (&WaitEdge {
                    task_id: 3,
                    resource_id: 9,
                    kind: EdgeKind::Frees,
                    op: "recv".into(),
                    since: None,
                })
                    .into(),
                proto::WaitEdge {
                    task_id: 3,
                    resource_id: 9,
                    kind: 42,
                    ..Default::default()
                },
            ],
            edges_replaced: true,
            hazards: vec![
                (&changed_hazard).into(),
                (&full_hazard("c")).into(),
                (&full_hazard("a")).into(),
            ],
            dropped: Some(proto::DropCounters {
                task_events: 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(s.updated_at, Some(Timestamp(77)));
        assert_eq!(s.tasks[&3].polls, 1_000);
        assert_eq!(s.tasks[&3].state, TaskState::Panicked);
        assert!(s.tasks.contains_key(&11));
        assert!(!s.tasks.contains_key(&4));
        assert_eq!(s.tasks.len(), 10);
        assert!(!s.resources.contains_key(&100_001));
        assert!(!s.async_ops.contains_key(&200_001));
        assert_eq!(s.edges.len(), 1, "replaced; the unknown kind is dropped");
        assert_eq!(s.edges[0].kind, EdgeKind::Frees);
        let fps: Vec<_> = s.hazards.iter().map(|h| h.fingerprint.as_str()).collect();
        assert_eq!(
            fps,
            ["a", "b", "c"],
            "de-duplicated, in order of first detection"
        );
        assert_eq!(
            s.hazards[0].summary,
            full_hazard("a").summary,
            "latest version kept"
        );
        assert_eq!(s.dropped.task_events, 20);
        assert!(!s.paused);
        assert!(s.process.is_some(), "kept when absent");

        // Edges are left alone when not replaced.
        s.apply(proto::Update::default());
        assert_eq!(s.edges.len(), 1);
        let mut p = full_process();
        p.pid = 1;
        s.apply(proto::Update {
            process: Some((&p).into()),
            ..Default::default()
        });
        assert_eq!(s.process.as_ref().map(|p| p.pid), Some(1));
    }

    #[test]
    fn a_delta_during_a_full_state_abandons_the_partial_one() {
        let state = big_state(2_000);
        let chunks = full_state_updates(&state, Timestamp(1), 64 * 1024);
        assert!(chunks.len() > 2);
        let mut r = StateReplica::new();
        r.apply(chunks[0].clone());
        assert!(r.is_staging());
        assert_eq!(
            r.apply(proto::Update {
                tasks: vec![(&full_task(1)).into()],
                ..Default::default()
            }),
            Applied::Delta
        );
        assert!(!r.is_staging());
        assert_eq!(r.state().tasks.len(), 1);
        // A fresh full state (first chunk carries `process`) starts over.
        r.apply(chunks[0].clone());
        r.apply(chunks[0].clone());
        for c in &chunks[1..] {
            r.apply(c.clone());
        }
        assert_eq!(r.state().tasks.len(), 2_000);
    }
}
