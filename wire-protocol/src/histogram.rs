//! Compact duration histograms.
//!
//! tokio-console keeps two 24 KiB HdrHistograms per task; with 100k live tasks
//! that alone is 4.8 GB. taskscope records poll and scheduled times into 64
//! fixed log-linear buckets (scheme 1) that the instrumentation stores as
//! `[AtomicU32; 64]` per histogram — 256 bytes — and that travel sparse on the
//! wire.
//!
//! # Scheme 1
//! Bucket 0 holds every value below 1 024 ns. From there each power of two is
//! split in two halves: bucket `1 + 2*(e-10) + h` covers
//! `[2^e + h*2^(e-1), 2^e + (h+1)*2^(e-1))` for `e` in `10..=40`. Bucket 63
//! holds everything from 2^41 ns (about 36 minutes) up. The relative error of
//! a bucket's midpoint is at most 20 %.

use serde::{Deserialize, Serialize};

/// Identifier of the bucket scheme described in the module docs.
pub const SCHEME: u32 = 1;
/// Number of buckets in scheme 1.
pub const BUCKETS: usize = 64;

/// The bucket a duration of `ns` nanoseconds falls into.
#[inline]
pub fn bucket_index(ns: u64) -> usize {
    if ns < 1024 {
        return 0;
    }
    let e = 63 - ns.leading_zeros() as usize; // >= 10
    if e > 40 {
        return BUCKETS - 1;
    }
    let half = ((ns >> (e - 1)) & 1) as usize;
    1 + 2 * (e - 10) + half
}

/// Smallest value (ns) that lands in bucket `i`.
pub fn bucket_lower(i: usize) -> u64 {
    match i {
        0 => 0,
        i if i >= BUCKETS - 1 => 1u64 << 41,
        i => {
            let e = (i - 1) / 2 + 10;
            let half = ((i - 1) % 2) as u64;
            (1u64 << e) + half * (1u64 << (e - 1))
        }
    }
}

/// One past the largest value (ns) that lands in bucket `i` (saturating for the
/// last bucket).
pub fn bucket_upper(i: usize) -> u64 {
    if i >= BUCKETS - 1 {
        u64::MAX
    } else {
        bucket_lower(i + 1)
    }
}

/// A value representative of bucket `i` (its midpoint; 512 ns for bucket 0).
pub fn bucket_midpoint(i: usize) -> u64 {
    if i >= BUCKETS - 1 {
        return bucket_lower(i);
    }
    let lo = bucket_lower(i);
    lo + (bucket_upper(i) - lo) / 2
}

/// A decoded histogram of durations (nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Dense counts, `BUCKETS` long.
    pub counts: Vec<u64>,
    pub min_ns: u64,
    pub max_ns: u64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            min_ns: 0,
            max_ns: 0,
            count: 0,
        }
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, ns: u64) {
        self.record_n(ns, 1);
    }

    /// Records `n` occurrences of `ns`.
    pub fn record_n(&mut self, ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        if self.counts.len() != BUCKETS {
            self.counts.resize(BUCKETS, 0);
        }
        self.counts[bucket_index(ns)] += n;
        if self.count == 0 || ns < self.min_ns {
            self.min_ns = ns;
        }
        self.max_ns = self.max_ns.max(ns);
        self.count += n;
    }

    /// Builds a histogram from dense bucket counts plus the exact extremes.
    pub fn from_counts(counts: &[u64], min_ns: u64, max_ns: u64) -> Self {
        let mut dense = vec![0; BUCKETS];
        for (d, c) in dense.iter_mut().zip(counts) {
            *d = *c;
        }
        let count = dense.iter().sum();
        Self {
            counts: dense,
            min_ns,
            max_ns,
            count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The value at quantile `q` (0.0..=1.0), estimated from bucket midpoints
    /// and clamped to the exact observed min/max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = q.clamp(0.0, 1.0);
        if q == 0.0 {
            return self.min_ns;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_midpoint(i).clamp(self.min_ns, self.max_ns);
            }
        }
        self.max_ns
    }

    /// Adds every count of `other` into `self`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.counts.len() != BUCKETS {
            self.counts.resize(BUCKETS, 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.min_ns = if self.count == 0 {
            other.min_ns
        } else {
            self.min_ns.min(other.min_ns)
        };
        self.max_ns = self.max_ns.max(other.max_ns);
        self.count += other.count;
    }

    /// Non-empty buckets as `(lower_ns, upper_ns, count)`.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (bucket_lower(i), bucket_upper(i), *c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_partition_the_range() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1023), 0);
        assert_eq!(bucket_index(1024), 1);
        for i in 1..BUCKETS - 1 {
            assert_eq!(bucket_index(bucket_lower(i)), i, "lower of {i}");
            assert_eq!(bucket_index(bucket_upper(i) - 1), i, "upper of {i}");
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn midpoint_error_is_bounded() {
        for ns in [
            1_500u64,
            10_000,
            123_456,
            9_999_999,
            1_000_000_000,
            60_000_000_000,
        ] {
            let mid = bucket_midpoint(bucket_index(ns)) as f64;
            let err = (mid - ns as f64).abs() / ns as f64;
            assert!(err <= 0.2, "{ns}: midpoint {mid} err {err}");
        }
    }

    #[test]
    fn quantiles_follow_the_data() {
        let mut h = Histogram::default();
        for _ in 0..90 {
            h.record(10_000);
        }
        for _ in 0..10 {
            h.record(5_000_000);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((8_000..=12_000).contains(&p50), "p50 {p50}");
        assert!((4_000_000..=6_000_000).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1.0), 5_000_000);
        assert_eq!(h.quantile(0.0), 10_000);
    }
}
