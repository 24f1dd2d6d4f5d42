//! `taskscope demo`: the embedded app runs, serves taskscope on loopback, and
//! its snapshots show the hazards it was built to have.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn named<'a>(doc: &'a Value, name: &str) -> Vec<&'a Value> {
    doc["state"]["tasks"]
        .as_object()
        .expect("state.tasks is an object")
        .values()
        .filter(|t| t["name"] == name)
        .collect()
}

fn one<'a>(doc: &'a Value, name: &str, kind: &str) -> &'a Value {
    named(doc, name)
        .into_iter()
        .find(|t| t["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} task named {name} in {doc}"))
}

fn edges<'a>(doc: &'a Value, task: &Value, kind: &str) -> Vec<&'a Value> {
    doc["state"]["edges"]
        .as_array()
        .expect("state.edges is an array")
        .iter()
        .filter(|e| e["task_id"] == task["id"] && e["kind"] == kind)
        .collect()
}

fn resource_type(doc: &Value, id: &Value) -> String {
    let key = id.as_u64().expect("resource ids are numbers").to_string();
    doc["state"]["resources"][&key]["concrete_type"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn json_snapshots_show_the_demo_hazards() {
    let started = Instant::now();
    let out = support::taskscope(&[
        "demo",
        "--bind",
        "127.0.0.1:0",
        "--duration",
        "4",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "stderr: {}", support::stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let err = support::stderr(&out);
    assert!(
        err.starts_with("taskscope demo: listening on http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("tokio-console http://127.0.0.1:"), "{err}");

    let snapshots: Vec<Value> = support::stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        (3..=5).contains(&snapshots.len()),
        "one snapshot a second for 4 s: {}",
        snapshots.len()
    );
    let last = snapshots.last().expect("at least one snapshot");
    assert_eq!(last["schema"], "taskscope.snapshot/1");
    assert_eq!(last["protocol"], "taskscope.v1");

    for name in [
        "producer",
        "consumer",
        "heartbeat",
        "metrics-flush",
        "transfer-a-to-b",
        "transfer-b-to-a",
        "report-renderer",
        "lost-waker",
        "request-handler",
        "download-supervisor",
    ] {
        let t = one(last, name, "task");
        let location = t["location"]["file"].as_str().unwrap_or_default();
        assert!(
            location.ends_with("demo_app.rs"),
            "{name} spawned at {location}"
        );
    }

    // deadlock-cycle: each transfer is idle, holds one Mutex and waits on
    // the Mutex the other holds.
    let a = one(last, "transfer-a-to-b", "task");
    let b = one(last, "transfer-b-to-a", "task");
    for (t, other) in [(a, b), (b, a)] {
        assert_eq!(t["state"], "idle", "{t}");
        let waits: Vec<&Value> = edges(last, t, "waits")
            .into_iter()
            .map(|e| &e["resource_id"])
            .collect();
        let held_by_other: Vec<&Value> = edges(last, other, "holds")
            .into_iter()
            .map(|e| &e["resource_id"])
            .collect();
        let shared = waits
            .iter()
            .find(|r| held_by_other.contains(r))
            .unwrap_or_else(|| {
                panic!(
                    "{} waits on {waits:?}, the other holds {held_by_other:?}",
                    t["name"]
                )
            });
        assert_eq!(resource_type(last, shared), "Mutex");
    }

    // lost-waker: the wrapped future was polled, is pending, and nobody
    // holds its waker.
    let lost = one(last, "lost-waker", "wrapped");
    assert_eq!(lost["state"], "idle");
    assert_eq!(lost["polls"], 1);
    assert_eq!(
        lost["waker_clones"], lost["waker_drops"],
        "0 live wakers: {lost}"
    );

    // blocking-poll: one poll of report-renderer took about 200 ms.
    let renderer = one(last, "report-renderer", "task");
    let max_poll = renderer["max_poll_ns"].as_u64().unwrap_or(0);
    assert!(max_poll >= 150_000_000, "longest poll {max_poll} ns");

    // Healthy tasks keep making progress between snapshots.
    let first_polls = one(&snapshots[0], "heartbeat", "task")["polls"]
        .as_u64()
        .unwrap_or(0);
    let last_polls = one(last, "heartbeat", "task")["polls"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        last_polls > first_polls,
        "heartbeat polls {first_polls} -> {last_polls}"
    );
}

#[test]
fn other_clients_can_attach_and_see_cancelled_work() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_taskscope"))
        .args(["demo", "--bind", "127.0.0.1:0", "--duration", "6"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start taskscope demo");
    let stderr = demo.stderr.take().expect("piped stderr");
    let mut stderr = BufReader::new(stderr);
    let mut first = String::new();
    stderr
        .read_line(&mut first)
        .expect("read the demo's first line");
    // Keep draining stderr so the demo never writes to a closed pipe.
    let drain = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let target = first
        .trim()
        .strip_prefix("taskscope demo: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_string();

    // Let a timeout cut a lookup and the supervisor abort a download.
    std::thread::sleep(Duration::from_millis(2_800));
    let out = support::taskscope(&[
        "snapshot",
        &target,
        "--include-completed",
        "--format",
        "json",
    ]);
    let text = support::taskscope(&["snapshot", &target]);
    // What tokio-console would get, with taskscope's detectors run by the client.
    let via_console = support::taskscope(&[
        "snapshot",
        &target,
        "--protocol",
        "console-api",
        "--format",
        "json",
    ]);
    let status = demo.wait().expect("the demo exits after --duration");
    let rest = drain.join().unwrap_or_default();
    assert!(status.success(), "demo failed: {rest}");

    assert!(out.status.success(), "stderr: {}", support::stderr(&out));
    let doc = support::json(&out);
    let cancelled: Vec<&str> = doc["state"]["tasks"]
        .as_object()
        .expect("tasks")
        .values()
        .filter(|t| t["state"] == "cancelled")
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        cancelled.contains(&"slow-lookup"),
        "cancelled: {cancelled:?}"
    );
    assert!(
        cancelled.contains(&"doomed-download"),
        "cancelled: {cancelled:?}"
    );

    assert!(
        via_console.status.success(),
        "stderr: {}",
        support::stderr(&via_console)
    );
    let doc = support::json(&via_console);
    assert_eq!(doc["protocol"], "console-api");
    let lost: Vec<&Value> = doc["state"]["hazards"]
        .as_array()
        .expect("hazards")
        .iter()
        .filter(|h| h["kind"] == "lost-waker")
        .collect();
    assert_eq!(
        lost.len(),
        1,
        "exactly the lost-waker future: {}",
        doc["state"]["hazards"]
    );
    let culprit = lost[0]["task_ids"][0]
        .as_u64()
        .expect("a task id")
        .to_string();
    assert_eq!(doc["state"]["tasks"][&culprit]["name"], "lost-waker");

    let text = support::stdout(&text);
    let transfer = text
        .lines()
        // The task row (id, tokio id, name, …), not the deadlock-cycle hazard above it.
        .position(|l| l.split_whitespace().nth(2) == Some("transfer-a-to-b"))
        .unwrap_or_else(|| panic!("{text}"));
    let under: Vec<&str> = text
        .lines()
        .skip(transfer + 1)
        .take_while(|l| l.starts_with("    "))
        .collect();
    assert!(
        under.iter().any(|l| l.starts_with("    holds Mutex")),
        "{under:?}"
    );
    assert!(
        under.iter().any(|l| l.starts_with("    waits on Mutex")),
        "{under:?}"
    );
}

/// Server-side findings and span backtraces over taskscope.v1: the demo's
/// snapshot carries the target's own hazards and each task's logical
/// backtrace from its `#[tracing::instrument]` spans.
#[test]
fn taskscope_v1_snapshots_carry_hazards_and_backtraces() {
    let out = support::taskscope(&[
        "demo",
        "--bind",
        "127.0.0.1:0",
        "--duration",
        "4",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "stderr: {}", support::stderr(&out));
    let snapshots: Vec<Value> = support::stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last = snapshots.last().expect("a snapshot");
    let kinds: Vec<&str> = last["state"]["hazards"]
        .as_array()
        .expect("hazards")
        .iter()
        .filter_map(|h| h["kind"].as_str())
        .collect();
    for kind in ["deadlock-cycle", "lost-waker", "blocking-poll"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    // The consumer spends most of its time three spans deep.
    let nested = snapshots.iter().any(|doc| {
        let frames: Vec<&str> = one(doc, "consumer", "task")["backtrace"]
            .as_array()
            .map(|f| f.iter().filter_map(|f| f["name"].as_str()).collect())
            .unwrap_or_default();
        // Outermost first; span names may carry a module path.
        let wanted = ["handle_order", "check_stock", "reserve_stock"];
        frames.len() == wanted.len() && frames.iter().zip(wanted).all(|(f, w)| f.ends_with(w))
    });
    assert!(
        nested,
        "no snapshot shows the consumer's three nested frames"
    );
}
