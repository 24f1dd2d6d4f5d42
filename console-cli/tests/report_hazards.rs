//! Every hazard of the catalogue, end to end: run the fixture program
//! (`examples/hazard_fixtures.rs`) in its `bad` and `clean` variants with
//! recording on, run `taskscope report` on each recording, and check that
//! the finding is there, on the line marked `// HAZARD: <id>`, and that the
//! clean twin is silent. Prints precision and recall over the fixtures.
//!
//! A std guard held across an await is invisible to tracing: that fixture
//! is also dumped (`gcore`) while it is stuck, and `taskscope report CORE`
//! must find it there. Every finding of another kind in a bad variant, and
//! any finding in a clean twin, is a false positive.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{hazard_fixtures as fixture_binary, workspace_root};

/// Thresholds for bounded-time fixtures: the hazards' own defaults are
/// minutes (leaked tasks, growth windows), and a shared 2-core CI machine
/// can stretch a poll by a few ms, so poll thresholds sit well below the
/// fixtures' 120-150 ms blocks but above scheduling noise.
const CONFIG: &str = "\
[hazards]
blocking_poll_ms = 60
scheduling_delay_ms = 80
leaked_task_idle_ms = 800
futurelock_ms = 500
growth_window_ms = 1000
growth_min_increase = 50
unpolled_ms = 800
";

enum Expect {
    /// The report must name this hazard at its marker line.
    Found,
    /// Found post-mortem: in a core taken with `gcore` this long after the
    /// start, while the bad variant is stuck at its marker.
    FoundInCore { after_ms: u64 },
}

struct Case {
    id: &'static str,
    expect: Expect,
    /// Other kinds the bad variant may legitimately show (e.g. a loop that
    /// never yields is also one long poll).
    also: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        id: "lost-waker",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "waker-dropped-unwoken",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "blocking-poll",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "scheduling-delay",
        expect: Expect::Found,
        also: &["blocking-poll"],
    },
    Case {
        id: "never-yielded",
        expect: Expect::Found,
        also: &["blocking-poll"],
    },
    Case {
        id: "self-wake-loop",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "cancelled-midway",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "runtime-dropped-with-tasks",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "leaked-task",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "futurelock",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "deadlock-cycle",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "nested-runtime",
        expect: Expect::Found,
        also: &["blocking-poll", "scheduling-delay"],
    },
    Case {
        id: "multiple-runtimes",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "large-future",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "unbounded-growth",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "unpolled-future",
        expect: Expect::Found,
        also: &[],
    },
    Case {
        id: "held-across-await",
        expect: Expect::FoundInCore { after_ms: 600 },
        also: &[],
    },
];

const FIXTURE_SOURCE: &str = "console-cli/examples/hazard_fixtures.rs";

/// `// HAZARD: <id>` marker lines of the fixture source.
fn markers() -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(workspace_root().join(FIXTURE_SOURCE))
        .expect("read fixture source");
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some((_, id)) = line.split_once("// HAZARD: ") {
            let prev = out.insert(id.trim().to_string(), i as u32 + 1);
            assert!(prev.is_none(), "two markers for {id}");
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Seen {
    kind: String,
    file: String,
    line: u32,
}

/// Runs one fixture variant and reports its recording (and, with
/// `core_after`, a core taken that long after the start); the findings.
fn run_fixture(id: &str, variant: &str, core_after: Option<u64>) -> Vec<Seen> {
    let dir = tempfile::tempdir().expect("temp dir");
    let recording = dir.path().join("run.tsrec");
    let config = dir.path().join("taskscope.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let child = Command::new(fixture_binary())
        .args([id, variant])
        .env("TASKSCOPE_RECORD", &recording)
        .env_remove("TASKSCOPE_RECORD_DIR")
        .env("TASKSCOPE_BIND", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fixture");
    let core = core_after.map(|ms| {
        std::thread::sleep(Duration::from_millis(ms));
        let prefix = dir.path().join("core");
        let gcore = Command::new("gcore")
            .arg("-o")
            .arg(&prefix)
            .arg(child.id().to_string())
            .output()
            .expect("gcore (gdb) is needed for the post-mortem fixtures: apt-get install gdb");
        assert!(gcore.status.success(), "gcore on {id} {variant}: {gcore:?}");
        dir.path().join(format!("core.{}", child.id()))
    });
    let out = child.wait_with_output().expect("wait for fixture");
    assert!(
        out.status.success(),
        "fixture {id} {variant} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = report(&recording, &config, id, variant);
    if let Some(core) = core {
        seen.extend(report(&core, &config, id, variant));
    }
    seen
}

/// `taskscope report SOURCE --format json`'s findings.
fn report(source: &Path, config: &Path, id: &str, variant: &str) -> Vec<Seen> {
    let report = Command::new(env!("CARGO_BIN_EXE_taskscope"))
        .arg("report")
        .arg(source)
        .args(["--format", "json", "--fail-on", "never", "--exe"])
        .arg(fixture_binary())
        .arg("--config")
        .arg(config)
        .arg("--root")
        .arg(workspace_root())
        .output()
        .expect("run taskscope report");
    assert!(
        report.status.success(),
        "taskscope report {} on {id} {variant}: {}\n{}",
        source.display(),
        report.status,
        String::from_utf8_lossy(&report.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&report.stdout).expect("report is JSON");
    assert_eq!(doc["schema"], "taskscope.report/1");
    doc["sources"][0]["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .map(|f| Seen {
            kind: f["kind"].as_str().unwrap_or_default().to_string(),
            file: f["location"]["file"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            line: f["location"]["line"].as_u64().unwrap_or(0) as u32,
        })
        .collect()
}

#[test]
fn every_hazard_fixture_is_found_at_its_line_and_its_twin_is_silent() {
    let markers = markers();
    for case in CASES {
        assert!(
            markers.contains_key(case.id),
            "no `// HAZARD: {}` marker in {FIXTURE_SOURCE}",
            case.id
        );
    }
    assert_eq!(
        CASES.len(),
        taskscope_wire::hazards::catalogue().len(),
        "one fixture per catalogue hazard"
    );
    fixture_binary();

    // Run every variant, a few at a time (2 shared cores; most fixtures sleep).
    let jobs: Vec<(&'static Case, &'static str)> = CASES
        .iter()
        .flat_map(|c| [(c, "bad"), (c, "clean")])
        .collect();
    let mut results: BTreeMap<(&str, &str), Vec<Seen>> = BTreeMap::new();
    for chunk in jobs.chunks(8) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|&(case, v)| {
                let core_after = match case.expect {
                    Expect::FoundInCore { after_ms } => Some(after_ms),
                    _ => None,
                };
                let job = move || run_fixture(case.id, v, core_after);
                (case.id, v, std::thread::spawn(job))
            })
            .collect();
        for (id, v, h) in handles {
            let seen = h
                .join()
                .unwrap_or_else(|_| panic!("fixture {id} {v} panicked"));
            results.insert((id, v), seen);
        }
    }

    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    let mut problems = Vec::new();
    let mut table = String::from("hazard                       bad → found at line        clean\n");
    for case in CASES {
        let line = markers[case.id];
        let bad = &results[&(case.id, "bad")];
        let clean = &results[&(case.id, "clean")];
        let hit = bad
            .iter()
            .find(|s| s.kind == case.id && s.file.ends_with(FIXTURE_SOURCE));
        let at_line = hit.is_some_and(|s| s.line == line);
        match hit {
            Some(_) if at_line => tp += 1,
            Some(s) => {
                fp += 1;
                fn_ += 1;
                problems.push(format!(
                    "{}: found at {}:{}, marker is line {line}",
                    case.id, s.file, s.line
                ));
            }
            None => {
                fn_ += 1;
                problems.push(format!(
                    "{}: not found in the bad variant: {bad:?}",
                    case.id
                ));
            }
        }
        for s in bad {
            if s.kind != case.id && !case.also.contains(&s.kind.as_str()) {
                fp += 1;
                problems.push(format!(
                    "{}: unexpected {} at {}:{} in the bad variant",
                    case.id, s.kind, s.file, s.line
                ));
            }
        }
        for s in clean {
            fp += 1;
            problems.push(format!(
                "{}: clean twin flagged {} at {}:{}",
                case.id, s.kind, s.file, s.line
            ));
        }
        // The hazard reference says where each hazard is found: it must
        // agree with what the fixtures show.
        let d = taskscope_wire::hazards::HazardKind::from_id(case.id)
            .expect("a catalogue id")
            .info()
            .detection;
        let claims = match case.expect {
            Expect::Found => d.live,
            Expect::FoundInCore { .. } => d.core && !d.live,
        };
        if !claims {
            problems.push(format!(
                "{}: the catalogue's detection {d:?} does not match this fixture",
                case.id
            ));
        }
        let found = match hit {
            Some(s) => format!("line {} (marker {line})", s.line),
            None => "MISSING".into(),
        };
        table.push_str(&format!(
            "{:<28} {:<26} {}\n",
            case.id,
            found,
            if clean.is_empty() {
                "silent"
            } else {
                "FLAGGED"
            }
        ));
    }
    let precision = if tp + fp == 0 {
        1.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let recall = tp as f64 / (tp + fn_) as f64;
    println!("{table}");
    println!(
        "fixtures: {} hazards; true positives {tp}, false positives {fp}, misses {fn_}; precision {:.0}%, recall {:.0}%",
        CASES.len(),
        precision * 100.0,
        recall * 100.0
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
