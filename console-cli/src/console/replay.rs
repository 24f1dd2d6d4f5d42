//! Replaying a recording (`TASKSCOPE_RECORD=path`) as a timeline.
//!
//! # Why
//! A recording is the stream of `taskscope.v1` updates the app published, in
//! order. The state at any moment is what applying the updates up to that
//! moment produces, so the timeline keeps a cursor (how many updates are
//! applied) and rebuilds the state by re-applying updates. Going forward is
//! cheap (apply the next ones); going back restores the nearest earlier
//! *checkpoint* (a copy of the replica taken every [`CHECKPOINT_EVERY`]
//! updates) and applies forward from there, so seeking back costs at most
//! that many updates.
//!
//! # Time
//! Positions are nanoseconds since the recording's first update, taken from
//! each update's `at`. Playing advances the position by the wall time the
//! caller passes to [`Timeline::advance`] times the speed; the clock is the
//! caller's, so tests drive it by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use taskscope_wire::model::State;
use taskscope_wire::proto;
use taskscope_wire::state::StateReplica;

/// A checkpoint is kept every this many applied updates.
pub const CHECKPOINT_EVERY: usize = 64;
/// Slowest and fastest playback speeds.
pub const MIN_SPEED: f64 = 0.125;
pub const MAX_SPEED: f64 = 64.0;
/// How far one seek key press moves, in recorded time.
pub const SEEK_STEP: Duration = Duration::from_secs(5);

/// A recording opened for replay: its updates, a cursor and the state at
/// the cursor.
#[derive(Debug, Clone)]
pub struct Timeline {
    updates: Vec<proto::Update>,
    /// Nanoseconds since the first update, per update (never decreasing).
    offsets: Vec<u64>,
    applied: usize,
    replica: StateReplica,
    checkpoints: BTreeMap<usize, StateReplica>,
    position_ns: u64,
    playing: bool,
    speed: f64,
}

impl Timeline {
    /// Opens a timeline on `updates` (in recording order), positioned after
    /// the first complete full state and playing at 1×.
    pub fn new(updates: Vec<proto::Update>) -> Self {
        let offsets = offsets(&updates);
        let mut checkpoints = BTreeMap::new();
        checkpoints.insert(0, StateReplica::new());
        let mut timeline = Self {
            updates,
            offsets,
            applied: 0,
            replica: StateReplica::new(),
            checkpoints,
            position_ns: 0,
            playing: true,
            speed: 1.0,
        };
        // Show the first complete state rather than an empty screen.
        let first_full = timeline
            .updates
            .iter()
            .position(|u| !u.full || u.last_chunk)
            .map_or(0, |i| i + 1);
        timeline.goto(first_full);
        timeline.position_ns = timeline.offset_of_applied();
        timeline
    }

    /// The state after the applied updates.
    pub fn state(&self) -> &State {
        self.replica.state()
    }

    /// How many updates are applied.
    pub fn applied(&self) -> usize {
        self.applied
    }

    /// How many updates the recording holds.
    pub fn len(&self) -> usize {
        self.updates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// Position in recorded time, nanoseconds since the first update.
    pub fn position_ns(&self) -> u64 {
        self.position_ns
    }

    /// Length of the recording in recorded time.
    pub fn duration_ns(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    pub fn is_playing(&self) -> bool {
        self.playing
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    pub fn at_end(&self) -> bool {
        self.applied >= self.updates.len()
    }

    /// Play, or pause. Playing at the end starts over from the beginning.
    pub fn toggle_play(&mut self) {
        if !self.playing && self.at_end() {
            self.seek_to(0);
        }
        self.playing = !self.playing;
    }

    pub fn faster(&mut self) {
        self.speed = (self.speed * 2.0).min(MAX_SPEED);
    }

    pub fn slower(&mut self) {
        self.speed = (self.speed / 2.0).max(MIN_SPEED);
    }

    /// Advances playback by `elapsed` wall time. Returns whether the state
    /// changed. Reaching the end pauses.
    pub fn advance(&mut self, elapsed: Duration) -> bool {
        if !self.playing {
            return false;
        }
        let step = (elapsed.as_nanos() as f64 * self.speed) as u64;
        let before = self.applied;
        self.seek_to(self.position_ns.saturating_add(step));
        if self.at_end() {
            self.playing = false;
        }
        before != self.applied
    }

    /// Moves to `position_ns` of recorded time: every update recorded at or
    /// before it is applied.
    pub fn seek_to(&mut self, position_ns: u64) {
        let position_ns = position_ns.min(self.duration_ns());
        let target = self.offsets.partition_point(|&o| o <= position_ns);
        self.goto(target);
        self.position_ns = position_ns;
    }

    /// Seeks back by [`SEEK_STEP`].
    pub fn seek_back(&mut self) {
        let step = SEEK_STEP.as_nanos() as u64;
        self.seek_to(self.position_ns.saturating_sub(step));
    }

    /// Seeks forward by [`SEEK_STEP`].
    pub fn seek_forward(&mut self) {
        let step = SEEK_STEP.as_nanos() as u64;
        self.seek_to(self.position_ns.saturating_add(step));
    }

    /// Un-applies the last update (pauses).
    pub fn step_back(&mut self) {
        self.playing = false;
        self.goto(self.applied.saturating_sub(1));
        self.position_ns = self.offset_of_applied();
    }

    /// Applies the next update (pauses).
    pub fn step_forward(&mut self) {
        self.playing = false;
        self.goto((self.applied + 1).min(self.updates.len()));
        self.position_ns = self.offset_of_applied();
    }

    /// Recorded time of the last applied update.
    fn offset_of_applied(&self) -> u64 {
        match self.applied {
            0 => 0,
            n => self.offsets[n - 1],
        }
    }

    /// Makes exactly the first `target` updates applied.
    fn goto(&mut self, target: usize) {
        let target = target.min(self.updates.len());
        if target < self.applied {
            let (&at, replica) = self
                .checkpoints
                .range(..=target)
                .next_back()
                .expect("checkpoint 0 always exists");
            self.replica = replica.clone();
            self.applied = at;
        }
        while self.applied < target {
            self.replica.apply(self.updates[self.applied].clone());
            self.applied += 1;
            if self.applied.is_multiple_of(CHECKPOINT_EVERY) {
                self.checkpoints
                    .entry(self.applied)
                    .or_insert_with(|| self.replica.clone());
            }
        }
    }
}

fn offsets(updates: &[proto::Update]) -> Vec<u64> {
    let times: Vec<Option<u64>> = updates
        .iter()
        .map(|u| {
            u.at.as_ref().map(|t| {
                (t.seconds.max(0) as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(t.nanos.max(0) as u64)
            })
        })
        .collect();
    let start = times.iter().flatten().copied().next().unwrap_or(0);
    let mut last = 0;
    times
        .into_iter()
        .map(|t| {
            // Updates without a time, or recorded out of order, sit at the
            // previous one's time.
            last = t.map_or(last, |t| t.saturating_sub(start).max(last));
            last
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(secs: i64, task: u64, full: bool) -> proto::Update {
        proto::Update {
            at: Some(prost_types_ts(secs)),
            full,
            last_chunk: full,
            tasks: vec![proto::Task {
                id: task,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn prost_types_ts(secs: i64) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: 1_700_000_000 + secs,
            nanos: 0,
        }
    }

    fn recording(n: u64) -> Vec<proto::Update> {
        let mut v = vec![update(0, 1, true)];
        for i in 1..n {
            v.push(update(i as i64, i + 1, false));
        }
        v
    }

    #[test]
    fn opens_on_the_first_full_state_and_plays_in_recorded_time() {
        let mut t = Timeline::new(recording(10));
        assert_eq!(t.applied(), 1);
        assert_eq!(t.state().tasks.len(), 1);
        assert!(t.is_playing());
        assert!(t.advance(Duration::from_millis(2500)));
        assert_eq!(t.state().tasks.len(), 3, "updates at 1 s and 2 s applied");
        t.faster();
        t.advance(Duration::from_secs(2));
        assert_eq!(t.state().tasks.len(), 7, "2 s at 2× is 4 s more");
        t.advance(Duration::from_secs(60));
        assert!(t.at_end());
        assert!(!t.is_playing(), "the end pauses");
    }

    #[test]
    fn seeking_back_rebuilds_the_same_state_from_checkpoints() {
        let mut t = Timeline::new(recording(300));
        t.seek_to(250 * 1_000_000_000);
        let forward = t.state().clone();
        t.seek_to(299 * 1_000_000_000);
        assert_eq!(t.state().tasks.len(), 300);
        t.seek_to(250 * 1_000_000_000);
        assert_eq!(t.state(), &forward);
        t.step_back();
        assert_eq!(t.state().tasks.len(), 250);
        assert!(!t.is_playing());
        t.step_forward();
        assert_eq!(t.state(), &forward);
    }
}
