//! `unbounded-growth`: live tasks per spawn site that keep growing.
//!
//! Growth needs history, so this is the one stateful piece: a
//! [`GrowthTracker`] the live side (or a recording replayer) keeps between
//! ticks. Each tick it is fed the state ([`GrowthTracker::observe`], one pass
//! over the tasks, one map entry per spawn site) and asked for findings
//! ([`GrowthTracker::hazards`]). Memory is bounded: at most
//! [`MAX_SAMPLES`] samples per site (older samples are thinned out, so long
//! windows keep their coverage), and sites with no live task for a whole
//! window are forgotten.
//!
//! # How it decides
//!
//! A site is reported when its samples cover the whole window
//! (`growth_window_ms`), the window's samples split into four equal time
//! slices have strictly increasing medians (growth that *keeps going*, not a
//! burst that drains), and the last count exceeds the first by at least
//! `growth_min_increase`. A service that ramps up and plateaus stops being
//! reported once the plateau fills the window.
//!
//! Unbounded channel depth would use the same rule on a per-resource depth
//! attribute; the model has no standard depth attribute yet, so only tasks
//! are tracked.

use std::collections::{HashMap, VecDeque};

use crate::model::{Hazard, Location, Severity, State, TaskId, Timestamp};

use super::{fmt_ns, ms, Cx, HazardConfig, HazardKind};

/// Samples kept per spawn site.
pub const MAX_SAMPLES: usize = 512;

/// Live-task counts per spawn site over time.
#[derive(Debug, Default, Clone)]
pub struct GrowthTracker {
    sites: HashMap<Location, VecDeque<(Timestamp, u64)>>,
}

impl GrowthTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the live tasks per spawn site of `state` at `now`. Call once
    /// per tick, with `now` increasing; samples older than twice
    /// `window_ms` are discarded.
    pub fn observe(&mut self, state: &State, window_ms: u64, now: Timestamp) {
        let sites = state
            .live_tasks()
            .filter_map(|t| t.location.as_ref().filter(|l| l.is_known()).map(|l| (l, 1)));
        self.observe_counts(sites, window_ms, now);
    }

    /// Records live-task counts per spawn site that the caller already
    /// keeps (the live registry does). Repeated sites are summed; sites not
    /// mentioned count as 0 at `now`.
    pub fn observe_counts<'l>(
        &mut self,
        counts: impl IntoIterator<Item = (&'l Location, u64)>,
        window_ms: u64,
        now: Timestamp,
    ) {
        let mut by_site: HashMap<&Location, u64> = HashMap::new();
        for (loc, n) in counts {
            *by_site.entry(loc).or_default() += n;
        }
        for (loc, samples) in self.sites.iter_mut() {
            let n = by_site.remove(loc).unwrap_or(0);
            samples.push_back((now, n));
        }
        for (loc, n) in by_site {
            self.sites.insert(loc.clone(), VecDeque::from([(now, n)]));
        }
        let keep = ms(window_ms).saturating_mul(2);
        let window = ms(window_ms);
        self.sites.retain(|_, samples| {
            while samples.front().is_some_and(|(t, _)| now.since(*t) > keep) {
                samples.pop_front();
            }
            if samples.len() > MAX_SAMPLES {
                decimate(samples);
            }
            samples
                .iter()
                .any(|(t, n)| *n > 0 && now.since(*t) <= window)
        });
    }

    /// Number of spawn sites currently tracked.
    pub fn sites(&self) -> usize {
        self.sites.len()
    }

    /// `unbounded-growth` findings as of `now`, one per growing spawn site,
    /// listing the site's live tasks in `state`.
    pub fn hazards(&self, state: &State, config: &HazardConfig, now: Timestamp) -> Vec<Hazard> {
        let mut out = Vec::new();
        if !config.enabled(HazardKind::UnboundedGrowth) {
            return out;
        }
        let window = ms(config.growth_window_ms);
        let mut growing: Vec<(&Location, u64, u64, u64)> = Vec::new();
        for (loc, samples) in &self.sites {
            if let Some((first, last, span)) =
                growth(samples, window, now, config.growth_min_increase)
            {
                growing.push((loc, first, last, span));
            }
        }
        if growing.is_empty() {
            return out;
        }
        growing.sort();
        let cx = Cx::without_edges(state, config, now);
        for (loc, first, last, span) in growing {
            let mut ids: Vec<TaskId> = state
                .live_tasks()
                .filter(|t| t.location.as_ref() == Some(loc))
                .map(|t| t.id)
                .collect();
            let total = ids.len();
            // The newest tasks are the interesting ones; keep the list bounded.
            if ids.len() > 100 {
                ids.drain(..ids.len() - 100);
            }
            let mut f = cx.finding(HazardKind::UnboundedGrowth, Severity::Warning);
            let h = &mut f.0;
            h.task_ids = ids;
            h.location = Some(loc.clone());
            h.summary = format!(
                "live tasks spawned at {loc} grew from {first} to {last} in {} and keep growing",
                fmt_ns(span)
            );
            h.evidence.push(format!(
                "{first} → {last} live tasks over {} (window {}, minimum increase {})",
                fmt_ns(span),
                fmt_ns(window),
                config.growth_min_increase
            ));
            h.evidence
                .push("each quarter of the window has a higher median than the one before".into());
            h.evidence
                .push(format!("{total} tasks from this site are live now"));
            h.fingerprint = format!("{}:{loc}", h.kind);
            f.push(&mut out);
        }
        out
    }
}

/// Halves the samples (keeping the first and the newest), so a long window
/// keeps its coverage at a coarser resolution.
fn decimate(samples: &mut VecDeque<(Timestamp, u64)>) {
    let last = samples.back().copied();
    let mut i = 0usize;
    samples.retain(|_| {
        i += 1;
        i % 2 == 1
    });
    if let (Some(last), Some(kept)) = (last, samples.back().copied()) {
        if kept != last {
            samples.push_back(last);
        }
    }
}

/// `(first, last, span_ns)` when the samples show sustained growth.
fn growth(
    samples: &VecDeque<(Timestamp, u64)>,
    window: u64,
    now: Timestamp,
    min_increase: u64,
) -> Option<(u64, u64, u64)> {
    let start = Timestamp(now.0.saturating_sub(window));
    // Coverage: a sample at or before the window start.
    let before = samples.iter().rposition(|(t, _)| *t <= start)?;
    let in_window: Vec<(Timestamp, u64)> = samples.iter().skip(before).copied().collect();
    if in_window.len() < 8 {
        return None;
    }
    let (first, last) = (in_window[0].1, in_window[in_window.len() - 1].1);
    if last < first.saturating_add(min_increase) {
        return None;
    }
    let quarter = window / 4;
    let mut prev: Option<u64> = None;
    for q in 0..4u64 {
        let lo = start.0 + q * quarter;
        let hi = if q == 3 { now.0 + 1 } else { lo + quarter };
        let mut vals: Vec<u64> = in_window
            .iter()
            .filter(|(t, _)| t.0 >= lo && t.0 < hi)
            .map(|(_, n)| *n)
            .collect();
        if vals.is_empty() {
            return None;
        }
        vals.sort_unstable();
        let median = vals[vals.len() / 2];
        if prev.is_some_and(|p| median <= p) {
            return None;
        }
        prev = Some(median);
    }
    Some((first, last, now.since(in_window[0].0)))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::model::{Task, TaskState};

    fn state_with(n: usize, next_id: &mut u64) -> State {
        let mut s = state();
        for _ in 0..n {
            *next_id += 1;
            s.tasks.insert(
                *next_id,
                Task {
                    id: *next_id,
                    state: TaskState::Idle,
                    location: Some(Location::new("src/accept.rs", 30, 9)),
                    ..Default::default()
                },
            );
        }
        s
    }

    fn config() -> HazardConfig {
        HazardConfig {
            growth_window_ms: 60_000,
            growth_min_increase: 100,
            ..Default::default()
        }
    }

    #[test]
    fn steady_growth_over_the_window_is_reported_once_per_site() {
        let mut tracker = GrowthTracker::new();
        let mut last = state();
        for tick in 0..=70u64 {
            let mut id = 0;
            last = state_with(10 + 5 * tick as usize, &mut id);
            tracker.observe(&last, 60_000, Timestamp(NOW.0 + tick * SEC));
        }
        let now = Timestamp(NOW.0 + 70 * SEC);
        let found = tracker.hazards(&last, &config(), now);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].fingerprint, "unbounded-growth:src/accept.rs:30:9");
        assert_eq!(
            found[0].task_ids.len(),
            100,
            "bounded list of the newest tasks"
        );
        assert!(
            found[0].summary.contains("grew from 60 to 360"),
            "{}",
            found[0].summary
        );
    }

    #[test]
    fn plateau_burst_or_short_history_is_not_growth() {
        let c = config();
        // plateau: grows for 20 s then flat for 50 s
        let mut t = GrowthTracker::new();
        let mut s = state();
        for tick in 0..=70u64 {
            let mut id = 0;
            s = state_with(10 + 20 * tick.min(20) as usize, &mut id);
            t.observe(&s, 60_000, Timestamp(NOW.0 + tick * SEC));
        }
        assert!(t.hazards(&s, &c, Timestamp(NOW.0 + 70 * SEC)).is_empty());
        // history shorter than the window
        let mut t = GrowthTracker::new();
        for tick in 0..=30u64 {
            let mut id = 0;
            s = state_with(10 + 50 * tick as usize, &mut id);
            t.observe(&s, 60_000, Timestamp(NOW.0 + tick * SEC));
        }
        assert!(t.hazards(&s, &c, Timestamp(NOW.0 + 30 * SEC)).is_empty());
        // growth below the minimum increase
        let mut t = GrowthTracker::new();
        for tick in 0..=70u64 {
            let mut id = 0;
            s = state_with(10 + tick as usize, &mut id);
            t.observe(&s, 60_000, Timestamp(NOW.0 + tick * SEC));
        }
        assert!(t.hazards(&s, &c, Timestamp(NOW.0 + 70 * SEC)).is_empty());
    }

    #[test]
    fn long_windows_keep_coverage_within_the_sample_cap() {
        // 10-minute window at 1 Hz: 600+ ticks, more than MAX_SAMPLES.
        let c = HazardConfig {
            growth_window_ms: 600_000,
            ..config()
        };
        let mut t = GrowthTracker::new();
        let mut s = state();
        for tick in 0..=700u64 {
            let mut id = 0;
            s = state_with(10 + tick as usize, &mut id);
            t.observe(&s, 600_000, Timestamp(NOW.0 + tick * SEC));
        }
        assert!(t.sites.values().all(|v| v.len() <= MAX_SAMPLES + 1));
        let found = t.hazards(&s, &c, Timestamp(NOW.0 + 700 * SEC));
        assert_eq!(found.len(), 1, "600 more tasks over 10 minutes");
    }

    #[test]
    fn counts_from_the_registry_work_like_a_state() {
        let site = Location::new("src/jobs.rs", 3, 1);
        let mut t = GrowthTracker::new();
        for tick in 0..=70u64 {
            t.observe_counts(
                [(&site, 5 * tick), (&site, 10)],
                60_000,
                Timestamp(NOW.0 + tick * SEC),
            );
        }
        let found = t.hazards(&state(), &config(), Timestamp(NOW.0 + 70 * SEC));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].summary.contains("grew from 60 to 360"),
            "{}",
            found[0].summary
        );
        assert!(found[0].task_ids.is_empty(), "no tasks in this state");
    }

    #[test]
    fn memory_is_bounded_and_idle_sites_are_forgotten() {
        let mut t = GrowthTracker::new();
        let mut id = 0;
        let busy = state_with(5, &mut id);
        for tick in 0..1_000u64 {
            t.observe(&busy, 60_000, Timestamp(NOW.0 + tick * SEC));
        }
        assert!(t.sites.values().all(|s| s.len() <= MAX_SAMPLES + 1));
        let empty = state();
        for tick in 1_000..1_100u64 {
            t.observe(&empty, 60_000, Timestamp(NOW.0 + tick * SEC));
        }
        assert_eq!(t.sites(), 0);
    }
}
