//! A cheap wall clock for hot paths.
//!
//! Every poll reads the clock twice, so its cost matters: `clock_gettime`
//! through the vDSO is 20–30 ns, the CPU's time-stamp counter is a few.
//! On x86-64 CPUs with an invariant TSC (`constant_tsc` and `nonstop_tsc`
//! in `/proc/cpuinfo`) taskscope reads the TSC and converts it with a ratio
//! calibrated against `Instant` — first over a 1 ms spin when the clock
//! starts, then refined on every publish (the publisher calls
//! [`recalibrate`]). Elsewhere it reads `Instant`. Either way every
//! timestamp is nanoseconds since the Unix epoch, anchored once to
//! `SystemTime` so that wall-clock jumps do not distort durations.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use taskscope_wire::model::Timestamp;

struct Anchor {
    instant: Instant,
    unix_ns: u64,
    /// TSC at `instant`, when the TSC is used.
    tsc: Option<u64>,
}

/// Nanoseconds per TSC tick, in 32.32 fixed point.
static NS_PER_TICK: AtomicU64 = AtomicU64::new(0);
static ANCHOR: OnceLock<Anchor> = OnceLock::new();

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

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| {
        let use_tsc = invariant_tsc();
        let instant = Instant::now();
        let unix_ns = Timestamp::from(SystemTime::now()).0;
        let tsc0 = use_tsc.then(tsc);
        if let Some(t0) = tsc0 {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(1) {
                std::hint::spin_loop();
            }
            let ns = instant.elapsed().as_nanos() as u64;
            NS_PER_TICK.store(ratio(tsc().wrapping_sub(t0), ns), Relaxed);
        }
        Anchor {
            instant,
            unix_ns,
            tsc: tsc0,
        }
    })
}

/// Starts the clock (so the calibration spin happens at `init`, not on a
/// hot path).
pub(crate) fn start() {
    anchor();
}

/// Refines the TSC ratio over the time since the anchor (publisher thread).
pub(crate) fn recalibrate() {
    let a = anchor();
    if let Some(t0) = a.tsc {
        let ns = a.instant.elapsed().as_nanos() as u64;
        let r = ratio(tsc().wrapping_sub(t0), ns);
        if r != 0 {
            NS_PER_TICK.store(r, Relaxed);
        }
    }
}

/// Nanoseconds since the Unix epoch (never 0).
#[inline]
pub(crate) fn now_ns() -> u64 {
    let a = anchor();
    let since = match a.tsc {
        Some(t0) => {
            ((tsc().wrapping_sub(t0) as u128 * NS_PER_TICK.load(Relaxed) as u128) >> 32) as u64
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
