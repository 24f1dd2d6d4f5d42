//! Speed: a real runtime with 100 000 parked tasks, dumped with gcore, must
//! be analysed completely; the figures (wall time, peak RSS) are printed.
//! The < 2 s / < 500 MB budget is asserted for optimised builds
//! (`cargo test --release`); debug builds only print the figures.

mod support;

use std::time::Instant;

fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

#[test]
fn hundred_thousand_tasks() {
    if !support::have_gcore() {
        return;
    }
    const N: usize = 100_000;
    let bin = support::build_fixture("many", "many", "stable", "", false);
    let markers = support::await_markers(&support::fixtures_dir().join("many/src/main.rs"));
    let stuck = support::run_until_ready(&bin, &[&N.to_string()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let core = support::gcore(stuck.child.id(), dir.path());
    drop(stuck);

    let start = Instant::now();
    let report = taskscope_dump::analyze_core(&core, None).expect("analyze");
    let elapsed = start.elapsed();
    let rss = peak_rss_mb();
    eprintln!(
        "taskscope dump speed: {} tasks in {:.2?}, peak RSS {} MB ({} build)",
        report.tasks.len(),
        elapsed,
        rss.map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert_eq!(report.tasks.len(), N);
    assert_eq!(report.runtimes[0].task_count, Some(N as u64));
    let line = markers["notified"];
    let parked = report
        .tasks
        .iter()
        .filter(|t| {
            t.chain
                .frames
                .first()
                .and_then(|f| f.location.as_ref())
                .map(|l| l.line)
                == Some(line)
                && t.chain.leaf.as_ref().map(|l| l.kind) == Some("notify")
        })
        .count();
    assert_eq!(parked, N, "every task parked on the Notify at line {line}");
    if !cfg!(debug_assertions) {
        assert!(elapsed.as_secs_f64() < 2.0, "too slow: {elapsed:?}");
        assert!(rss.is_some_and(|r| r < 500), "too much memory: {rss:?} MB");
    }
}
