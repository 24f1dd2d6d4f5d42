//! A cheap wall clock for hot paths.
//!
//! Every poll reads the clock twice, so its cost matters: `clock_gettime`
//! through the vDSO is 20–30 ns, the CPU's time-stamp counter is a few.
//! On x86-64 CPUs with an invariant TSC (`constant_tsc` and `nonstop_tsc`
//! in `/proc/cpuinfo`) taskscope reads the TSC; elsewhere it reads
//! `Instant`. Either way every timestamp is nanoseconds since the Unix
//! epoch, anchored once to `SystemTime` so that wall-clock jumps do not
//! distort durations.
//!
//! # Converting ticks to nanoseconds without going backwards
//! The TSC is turned into nanoseconds by a piecewise-linear map: the
//! current [`Segment`] says "at tick `base_tsc` it was `base_ns`, and from
//! there one tick is `ratio` ns". The first segment's ratio comes from a
//! 1 ms spin at start-up; the publisher refines it once per publish
//! ([`recalibrate`]) against `Instant`. Two things matter for correctness:
//!
//! * **Calibration samples are bracketed.** A sample pairs an `Instant`
//!   with the TSC read just before and just after it, and keeps the
//!   tightest of a few tries. A thread preempted between the two reads
//!   (common on a busy two-core machine) would otherwise pair an `Instant`
//!   with a tick count milliseconds away and skew the ratio by as much.
//! * **A recalibration never moves time already handed out.** The new
//!   segment starts where the old one is at that tick (the map stays
//!   continuous) and only its slope changes, by just enough to absorb the
//!   remaining error over the next [`SLEW_HORIZON_NS`]. Rescaling the whole
//!   span since start-up with the new ratio — what an earlier version did —
//!   moved every later timestamp back by the accumulated error (1–2 ms was
//!   seen), so a poll could end before it started and a parked task looked
//!   running.
//!
//! Readers get the segment through a sequence lock (four plain loads on
//! x86-64) and read the TSC inside it, so a reading never mixes a tick
//! from after a recalibration with the segment from before it.
#![allow(unsafe_code)]

use std::sync::atomic::{
    fence, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use taskscope_wire::model::Timestamp;

struct Anchor {
    instant: Instant,
    unix_ns: u64,
    /// TSC at `instant`, when the TSC is used.
    tsc: Option<u64>,
}

/// One linear piece of the tick → nanosecond map: at tick `base_tsc` the
/// clock read `base_ns` (since the anchor); each tick after is `ratio`
/// ns in 32.32 fixed point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    base_tsc: u64,
    base_ns: u64,
    ratio: u64,
}

impl Segment {
    /// Nanoseconds since the anchor at tick `t` (ticks before the base
    /// count backwards, saturating at 0).
    #[inline]
    fn eval(&self, t: u64) -> u64 {
        if t >= self.base_tsc {
            let d = ((t - self.base_tsc) as u128 * self.ratio as u128) >> 32;
            self.base_ns.saturating_add(d as u64)
        } else {
            let d = ((self.base_tsc - t) as u128 * self.ratio as u128) >> 32;
            self.base_ns.saturating_sub(d as u64)
        }
    }
}

/// The current segment behind a sequence lock: `SEQ` is odd while the
/// (single, `WRITER`-serialised) writer changes the three words.
static SEQ: AtomicU64 = AtomicU64::new(0);
static SEG_TSC: AtomicU64 = AtomicU64::new(0);
static SEG_NS: AtomicU64 = AtomicU64::new(0);
static SEG_RATIO: AtomicU64 = AtomicU64::new(0);
static WRITER: Mutex<()> = Mutex::new(());
static ANCHOR: OnceLock<Anchor> = OnceLock::new();

/// A recalibration absorbs the clock's error over this much real time.
pub(crate) const SLEW_HORIZON_NS: u64 = 1_000_000_000;
/// An error larger than this (the clock is behind real time by more) is
/// corrected at once with a step forward; steps are never backwards.
const STEP_NS: i128 = 100_000_000;

#[cfg(target_arch = "x86_64")]
#[inline]
fn tsc() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 CPU and has no preconditions;
    // it only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn tsc() -> u64 {
    0
}

fn invariant_tsc() -> bool {
    if !cfg!(target_arch = "x86_64") || std::env::var_os("TASKSCOPE_NO_TSC").is_some() {
        return false;
    }
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else {
        return false;
    };
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    has("constant_tsc") && has("nonstop_tsc")
}

fn ratio(ticks: u64, ns: u64) -> u64 {
    if ticks == 0 {
        return 0;
    }
    (((ns as u128) << 32) / ticks as u128).min(u64::MAX as u128) as u64
}

/// An `Instant` and the TSC at the same moment: the midpoint of the
/// tightest of a few bracketing pairs of TSC reads.
fn sample() -> (Instant, u64) {
    let mut best: Option<(u64, Instant, u64)> = None;
    for _ in 0..8 {
        let a = tsc();
        let i = Instant::now();
        let b = tsc();
        let width = b.wrapping_sub(a);
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, i, a.wrapping_add(width / 2)));
        }
    }
    match best {
        Some((_, i, t)) => (i, t),
        None => (Instant::now(), tsc()),
    }
}

fn writer() -> std::sync::MutexGuard<'static, ()> {
    WRITER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs `seg` (the caller holds [`writer`]).
fn write_segment(_writer: &std::sync::MutexGuard<'static, ()>, seg: Segment) {
    let s = SEQ.load(Relaxed);
    SEQ.store(s.wrapping_add(1), Relaxed);
    fence(Release);
    SEG_TSC.store(seg.base_tsc, Relaxed);
    SEG_NS.store(seg.base_ns, Relaxed);
    SEG_RATIO.store(seg.ratio, Relaxed);
    SEQ.store(s.wrapping_add(2), Release);
}

/// The current segment and a TSC reading taken under it.
#[inline]
fn read_segment() -> (Segment, u64) {
    loop {
        let s1 = SEQ.load(Acquire);
        let seg = Segment {
            base_tsc: SEG_TSC.load(Relaxed),
            base_ns: SEG_NS.load(Relaxed),
            ratio: SEG_RATIO.load(Relaxed),
        };
        let t = tsc();
        fence(Acquire);
        let s2 = SEQ.load(Relaxed);
        if s1 == s2 && s1 & 1 == 0 {
            return (seg, t);
        }
        std::hint::spin_loop();
    }
}

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| {
        let use_tsc = invariant_tsc();
        let unix_ns = Timestamp::from(SystemTime::now()).0;
        if !use_tsc {
            return Anchor {
                instant: Instant::now(),
                unix_ns,
                tsc: None,
            };
        }
        let (instant, t0) = sample();
        while instant.elapsed() < Duration::from_millis(1) {
            std::hint::spin_loop();
        }
        let (i1, t1) = sample();
        let ns = i1.duration_since(instant).as_nanos() as u64;
        write_segment(
            &writer(),
            Segment {
                base_tsc: t0,
                base_ns: 0,
                ratio: ratio(t1.wrapping_sub(t0), ns),
            },
        );
        Anchor {
            instant,
            unix_ns,
            tsc: Some(t0),
        }
    })
}

/// Starts the clock (so the calibration spin happens at `init`, not on a
/// hot path).
pub(crate) fn start() {
    anchor();
}

/// The segment that continues `cur` at tick `t` and absorbs the error
/// against `truth_ns` (real nanoseconds since the anchor at `t`) over
/// [`SLEW_HORIZON_NS`]. `long_ratio` is the best estimate of the true
/// ratio (ticks and nanoseconds since the anchor).
fn next_segment(cur: Segment, t: u64, truth_ns: u64, long_ratio: u64) -> Segment {
    let at = cur.eval(t);
    let err = truth_ns as i128 - at as i128;
    if err > STEP_NS {
        // Far behind (e.g. a host that suspended the guest): step forward.
        return Segment {
            base_tsc: t,
            base_ns: truth_ns,
            ratio: long_ratio,
        };
    }
    // Run faster or slower by err / horizon, at most by half.
    let h = SLEW_HORIZON_NS as i128;
    let err = err.clamp(-h / 2, h / 2);
    let r = long_ratio as i128 + long_ratio as i128 * err / h;
    Segment {
        base_tsc: t,
        base_ns: at,
        ratio: r.clamp(1, u64::MAX as i128) as u64,
    }
}

/// Refines the tick → nanosecond map (publisher thread, once per publish).
pub(crate) fn recalibrate() {
    let a = anchor();
    let Some(t0) = a.tsc else { return };
    let (i, t) = sample();
    let truth = i.saturating_duration_since(a.instant).as_nanos() as u64;
    let long = ratio(t.wrapping_sub(t0), truth);
    if long == 0 {
        return;
    }
    let w = writer();
    let (cur, _) = read_segment();
    write_segment(&w, next_segment(cur, t, truth, long));
}

/// Nanoseconds since the Unix epoch (never 0).
#[inline]
pub(crate) fn now_ns() -> u64 {
    let a = anchor();
    let since = match a.tsc {
        Some(_) => {
            let (seg, t) = read_segment();
            seg.eval(t)
        }
        None => a.instant.elapsed().as_nanos() as u64,
    };
    a.unix_ns.saturating_add(since).max(1)
}

#[inline]
pub(crate) fn now() -> Timestamp {
    Timestamp(now_ns())
}

/// `Some(Timestamp)` for a recorded time, `None` for 0 ("never").
#[inline]
pub(crate) fn ts(ns: u64) -> Option<Timestamp> {
    (ns != 0).then_some(Timestamp(ns))
}

/// When the process started: from `/proc` on Linux (boot time plus the
/// process's start tick, assuming the usual 100 Hz `CLK_TCK`), else the
/// first time taskscope read the clock.
pub(crate) fn process_start() -> Timestamp {
    fn from_proc() -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may contain spaces; fields resume after ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let start_ticks: u64 = rest.split(' ').nth(19)?.parse().ok()?;
        let btime: u64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(btime * 1_000_000_000 + start_ticks * 10_000_000)
    }
    Timestamp(from_proc().unwrap_or_else(|| anchor().unix_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes the current segment run `ppm` parts per million fast (as a
    /// start-up calibration disturbed by preemption would), continuously.
    fn skew(ppm: i64) {
        if anchor().tsc.is_none() {
            return;
        }
        let w = writer();
        let (cur, t) = read_segment();
        let r = cur.ratio as i128 + cur.ratio as i128 * ppm as i128 / 1_000_000;
        write_segment(
            &w,
            Segment {
                base_tsc: t,
                base_ns: cur.eval(t),
                ratio: r as u64,
            },
        );
    }

    #[test]
    fn a_recalibration_continues_the_clock_and_absorbs_the_error() {
        let r = 1u64 << 31; // 0.5 ns per tick
        let cur = Segment {
            base_tsc: 1_000,
            base_ns: 0,
            ratio: r + r / 50, // 2 % fast
        };
        let t = 1_000 + 200_000_000; // 100 ms of real time later
        let truth = 100_000_000;
        let next = next_segment(cur, t, truth, r);
        assert_eq!(next.eval(t), cur.eval(t), "no jump at the switch");
        assert!(next.ratio < r, "runs slow to let real time catch up");
        let later = t + 2 * SLEW_HORIZON_NS;
        let err = next.eval(later) as i128 - (truth + SLEW_HORIZON_NS) as i128;
        assert!(
            err.abs() < 100_000,
            "error absorbed over the horizon: {err} ns"
        );
        // Far behind: a step forward, never backwards.
        let behind = next_segment(cur, t, truth + 10 * STEP_NS as u64, r);
        assert_eq!(behind.eval(t), truth + 10 * STEP_NS as u64);
    }

    #[test]
    fn time_never_goes_backwards_across_recalibrations() {
        // A clock 2 % fast, recalibrated every few milliseconds while
        // another thread reads it: every reading is at least the previous
        // one (the old rescaling made later readings jump back by the
        // accumulated error, so poll ends came before poll starts).
        skew(20_000);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last = now_ns();
                let mut backwards = 0u64;
                while !stop.load(Relaxed) {
                    let t = now_ns();
                    if t < last {
                        backwards = backwards.max(last - t);
                    }
                    last = t;
                }
                backwards
            })
        };
        let mut last = now_ns();
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(5));
            recalibrate();
            let t = now_ns();
            assert!(t >= last, "went back {} ns", last - t);
            last = t;
        }
        stop.store(true, Relaxed);
        let backwards = reader.join().expect("reader thread");
        assert_eq!(backwards, 0, "a reading went back {backwards} ns");
    }

    #[test]
    fn the_clock_tracks_real_time() {
        let a = now_ns();
        let i = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        recalibrate();
        let d = now_ns() - a;
        let real = i.elapsed().as_nanos() as u64;
        let err = (d as f64 - real as f64).abs() / real as f64;
        assert!(err < 0.05, "clock {d} ns vs real {real} ns");
        let wall = Timestamp::from(SystemTime::now()).0;
        assert!(
            now_ns().abs_diff(wall) < 50_000_000,
            "anchored to wall time"
        );
    }
}
