//! Process-wide CPU time and resident memory, read by the child process
//! about itself.
//!
//! CPU time is `getrusage(RUSAGE_SELF)` (user + system, every thread of the
//! process, including the threads an instrumentation layer starts for its
//! own aggregation and server), so work moved off the runtime's workers is
//! still counted. Memory comes from `/proc/self/status`: `VmRSS` now and
//! `VmHWM` (peak) since the last reset through `/proc/self/clear_refs`.

use std::time::Duration;

use anyhow::{bail, Context as _};

/// User + system CPU time consumed so far by every thread of this process.
#[allow(unsafe_code)]
pub fn cpu_time() -> anyhow::Result<Duration> {
    // SAFETY: `rusage` is a plain C struct of integers and `timeval`s, for
    // which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a live, properly aligned `rusage` that getrusage
    // fills in; RUSAGE_SELF is a valid `who` on every Linux kernel.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        bail!("getrusage failed: {}", std::io::Error::last_os_error());
    }
    Ok(timeval(usage.ru_utime) + timeval(usage.ru_stime))
}

fn timeval(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

/// Resident set size now, in bytes.
pub fn rss_bytes() -> anyhow::Result<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident set size since the process started or since the last
/// [`reset_peak_rss`], in bytes.
pub fn peak_rss_bytes() -> anyhow::Result<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Resets the peak (`VmHWM`) to the current RSS, so that a later
/// [`peak_rss_bytes`] measures the workload's peak only and not one left
/// behind by start-up. Returns whether the kernel accepted the reset.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .with_context(|| format!("no {field} line in /proc/self/status"))?;
    let value = line[field.len()..].trim().trim_end_matches("kB").trim();
    value
        .parse()
        .with_context(|| format!("unparsable {field} value {value:?} in /proc/self/status"))
}

/// The one-minute load average, to tell readers whether the machine was
/// busy with other work during the run; `None` where /proc has none.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
