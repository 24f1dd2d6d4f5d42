//! `taskscope report` formats and gating on real recordings: SARIF valid
//! against the official SARIF 2.1.0 schema (vendored in
//! `tests/data/sarif-schema-2.1.0.json`) with the finding at the marked
//! source line, JUnit XML, Markdown and JSON; `--fail-on` exit statuses;
//! `[[suppress]]` rules and their required reason.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use support::workspace_root;

const FIXTURE_SOURCE: &str = "console-cli/examples/hazard_fixtures.rs";

fn marker_line(id: &str) -> u32 {
    let text = std::fs::read_to_string(workspace_root().join(FIXTURE_SOURCE))
        .expect("read fixture source");
    let marker = format!("// HAZARD: {id}");
    text.lines()
        .position(|l| l.trim_end().ends_with(&marker))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("no marker for {id}"))
}

struct Recordings {
    _dir: tempfile::TempDir,
    /// deadlock-cycle (error), from the `bad` fixture.
    deadlock: PathBuf,
    /// blocking-poll (warning), from the `bad` fixture.
    blocking: PathBuf,
    /// The clean twin of blocking-poll: no finding.
    clean: PathBuf,
}

/// Records three fixture runs once for every test of this file.
fn recordings() -> &'static Recordings {
    static R: OnceLock<Recordings> = OnceLock::new();
    R.get_or_init(|| {
        let exe = support::hazard_fixtures().to_path_buf();
        let dir = tempfile::tempdir().expect("temp dir");
        let runs = [
            ("deadlock-cycle", "bad", "deadlock.tsrec"),
            ("blocking-poll", "bad", "blocking.tsrec"),
            ("blocking-poll", "clean", "clean.tsrec"),
        ];
        let handles: Vec<_> = runs
            .iter()
            .map(|&(id, variant, file)| {
                let path = dir.path().join(file);
                let exe = exe.clone();
                std::thread::spawn(move || {
                    let out = Command::new(exe)
                        .args([id, variant])
                        .env("TASKSCOPE_RECORD", &path)
                        .env_remove("TASKSCOPE_RECORD_DIR")
                        .env("TASKSCOPE_BIND", "off")
                        .output()
                        .expect("run fixture");
                    assert!(out.status.success(), "fixture {id} {variant}: {out:?}");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("fixture thread");
        }
        Recordings {
            deadlock: dir.path().join("deadlock.tsrec"),
            blocking: dir.path().join("blocking.tsrec"),
            clean: dir.path().join("clean.tsrec"),
            _dir: dir,
        }
    })
}

/// `taskscope report <source> <args…>` from the workspace root, with a
/// config that only raises the blocking-poll threshold above CI noise.
fn report(source: &Path, args: &[&str], config: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("taskscope.toml");
    std::fs::write(
        &cfg,
        config.unwrap_or("[hazards]\nblocking_poll_ms = 60\nscheduling_delay_ms = 80\n"),
    )
    .expect("write config");
    Command::new(env!("CARGO_BIN_EXE_taskscope"))
        .arg("report")
        .arg(source)
        .args(args)
        .arg("--config")
        .arg(&cfg)
        .current_dir(workspace_root())
        .output()
        .expect("run taskscope report")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sarif_validator() -> jsonschema::Validator {
    let schema_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sarif-schema-2.1.0.json"),
    )
    .expect("vendored SARIF schema");
    let schema: serde_json::Value = serde_json::from_str(&schema_text).expect("schema is JSON");
    // Formats are checked too (`uri` for helpUri, artifact locations…).
    jsonschema::draft4::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the SARIF schema compiles")
}

#[test]
fn sarif_is_valid_and_points_at_the_users_line() {
    let r = recordings();
    let out = report(
        &r.deadlock,
        &["--format", "sarif", "--fail-on", "never"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).expect("SARIF is JSON");
    let validator = sarif_validator();
    let errors: Vec<String> = validator
        .iter_errors(&log)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "SARIF schema violations:\n{}",
        errors.join("\n")
    );
    // The validator does reject what GitHub would reject.
    let mut broken = log.clone();
    broken["runs"][0]["results"][0]["level"] = serde_json::json!("info");
    assert!(!validator.is_valid(&broken), "level `info` is not SARIF");

    assert_eq!(log["version"], "2.1.0");
    let run = &log["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), taskscope_wire::hazards::catalogue().len());
    let rule = rules
        .iter()
        .find(|r| r["id"] == "deadlock-cycle")
        .expect("deadlock-cycle rule");
    let info = taskscope_wire::hazards::HazardKind::DeadlockCycle.info();
    assert_eq!(rule["help"]["text"], info.advice);
    assert!(
        rule["helpUri"]
            .as_str()
            .is_some_and(|u| u.starts_with("http") && u.ends_with("#deadlock-cycle")),
        "{}",
        rule["helpUri"]
    );
    let results = run["results"].as_array().expect("results");
    let result = results
        .iter()
        .find(|r| r["ruleId"] == "deadlock-cycle")
        .unwrap_or_else(|| panic!("no deadlock-cycle result: {results:#?}"));
    assert_eq!(result["level"], "error");
    assert_eq!(
        rules[result["ruleIndex"].as_u64().expect("ruleIndex") as usize]["id"],
        "deadlock-cycle"
    );
    let phys = &result["locations"][0]["physicalLocation"];
    assert_eq!(phys["artifactLocation"]["uri"], FIXTURE_SOURCE);
    assert_eq!(phys["artifactLocation"]["uriBaseId"], "%SRCROOT%");
    assert_eq!(phys["region"]["startLine"], marker_line("deadlock-cycle"));
    assert!(
        phys["region"]["snippet"]["text"]
            .as_str()
            .is_some_and(|s| s.contains("// HAZARD: deadlock-cycle")),
        "{phys:#}"
    );
    assert!(result["message"]["text"]
        .as_str()
        .is_some_and(|m| m.contains("transfer-a-to-b") && m.contains("transfer-b-to-a")));
    assert!(result["partialFingerprints"]["taskscopeFingerprint/v1"]
        .as_str()
        .is_some_and(|f| f.starts_with("deadlock-cycle:")));
}

#[test]
fn sarif_of_a_clean_run_and_of_suppressed_findings_is_valid() {
    let r = recordings();
    let validator = sarif_validator();
    let clean = report(&r.clean, &["--format", "sarif"], None);
    assert!(clean.status.success(), "{clean:?}");
    let log: serde_json::Value = serde_json::from_slice(&clean.stdout).expect("JSON");
    assert!(validator.is_valid(&log));
    assert_eq!(log["runs"][0]["results"], serde_json::json!([]));

    let cfg = "[[suppress]]\nhazard = \"deadlock-cycle\"\ntask = \"transfer-*\"\nreason = \"demo of a known deadlock\"\n";
    let out = report(&r.deadlock, &["--format", "sarif"], Some(cfg));
    assert!(
        out.status.success(),
        "suppressed findings do not fail: {out:?}"
    );
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let errors: Vec<String> = validator.iter_errors(&log).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let s = &log["runs"][0]["results"][0]["suppressions"][0];
    assert_eq!(s["kind"], "external");
    assert_eq!(s["justification"], "demo of a known deadlock");
}

#[test]
fn fail_on_sets_the_exit_status() {
    let r = recordings();
    // deadlock-cycle is an error: fails by default.
    let out = report(&r.deadlock, &["--format", "json"], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 at or above --fail-on error"));
    // blocking-poll is a warning: passes by default, fails with --fail-on warning.
    let out = report(&r.blocking, &["--format", "json"], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = report(
        &r.blocking,
        &["--format", "json", "--fail-on", "warning"],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["failed"], true);
    assert_eq!(doc["totals"]["warnings"], 1);
    // The clean twin passes at any level.
    let out = report(&r.clean, &["--format", "json", "--fail-on", "info"], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn junit_has_a_suite_per_source_and_a_failure_per_finding() {
    let r = recordings();
    let out = report(&r.deadlock, &["--format", "junit"], None);
    let xml = stdout(&out);
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites"),
        "{xml}"
    );
    assert_eq!(xml.matches("<testsuite ").count(), 1);
    assert_eq!(
        xml.matches("<testcase ").count(),
        taskscope_wire::hazards::catalogue().len()
    );
    assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
    let case = xml
        .split("<testcase ")
        .find(|c| c.contains("name=\"deadlock-cycle\""))
        .expect("deadlock-cycle testcase");
    assert!(
        case.contains("<failure message=\"deadlock: `transfer-a-to-b`"),
        "{case}"
    );
    assert!(case.contains(&format!(
        "at {FIXTURE_SOURCE}:{}",
        marker_line("deadlock-cycle")
    )));
    // Balanced elements.
    for tag in ["testsuites", "testsuite", "failure"] {
        assert_eq!(
            xml.matches(&format!("<{tag} ")).count() + xml.matches(&format!("<{tag}>")).count(),
            xml.matches(&format!("</{tag}>")).count(),
            "<{tag}> balance"
        );
    }
    // A warning below --fail-on is not a failure but is still shown.
    let out = report(&r.blocking, &["--format", "junit"], None);
    let xml = stdout(&out);
    assert_eq!(xml.matches("<failure ").count(), 0, "{xml}");
    assert!(xml.contains("(below --fail-on error)"), "{xml}");
}

#[test]
fn markdown_has_a_summary_table_and_sections_with_evidence_and_advice() {
    let r = recordings();
    let out = report(&r.deadlock, &["--format", "markdown"], None);
    let md = stdout(&out);
    assert!(md.starts_with("# taskscope hazard report"), "{md}");
    assert!(
        md.contains("**1 finding(s) at or above `error` fail this run.**"),
        "{md}"
    );
    assert!(
        md.contains("| Deadlock cycle | `deadlock-cycle` | 1 | 0 |"),
        "{md}"
    );
    assert!(
        md.contains("### 1. Deadlock cycle `deadlock-cycle` (error)"),
        "{md}"
    );
    assert!(md.contains(&format!(
        "- **Where:** `{FIXTURE_SOURCE}:{}",
        marker_line("deadlock-cycle")
    )));
    assert!(
        md.contains("- **Evidence:**\n  - `transfer-a-to-b` has waited"),
        "{md}"
    );
    assert!(md.contains("- **Advice:** Break the cycle"), "{md}");
}

#[test]
fn suppressions_need_a_reason_and_show_in_the_report() {
    let r = recordings();
    let out = report(
        &r.deadlock,
        &["--format", "markdown"],
        Some("[[suppress]]\nhazard = \"deadlock-cycle\"\n"),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no `reason`"), "{err}");

    let cfg = "[[suppress]]\nhazard = \"deadlock-cycle\"\nlocation = \"examples/hazard_fixtures.rs:*\"\nreason = \"fixture deadlocks on purpose\"\n";
    let out = report(&r.deadlock, &["--format", "markdown"], Some(cfg));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let md = stdout(&out);
    assert!(
        md.contains("— suppressed: fixture deadlocks on purpose"),
        "{md}"
    );
    assert!(
        md.contains("| Deadlock cycle | `deadlock-cycle` | 0 | 1 |"),
        "{md}"
    );

    let out = report(&r.deadlock, &["--format", "json"], Some(cfg));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["totals"]["suppressed"], 1);
    assert_eq!(
        doc["sources"][0]["findings"][0]["suppressed"]["reason"],
        "fixture deadlocks on purpose"
    );
}

#[test]
fn unreadable_sources_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junk = dir.path().join("notes.txt");
    std::fs::write(&junk, "hello").expect("write");
    let out = report(&junk, &[], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither a taskscope recording nor an ELF core"),
        "{err}"
    );

    // A recording cut in the middle of its first frame.
    let cut = dir.path().join("cut.tsrec");
    let whole = std::fs::read(&recordings().deadlock).expect("read recording");
    std::fs::write(&cut, &whole[..30.min(whole.len())]).expect("write");
    let out = report(&cut, &[], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn a_live_target_is_reported_from_one_snapshot() {
    recordings(); // builds the fixtures
    let exe = Path::new(env!("CARGO_BIN_EXE_taskscope"))
        .parent()
        .expect("binary directory")
        .join("examples/hazard_fixtures");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("app.sock");
    let started = std::time::Instant::now();
    let mut app = Command::new(exe)
        .args(["deadlock-cycle", "bad"])
        .env("TASKSCOPE_BIND", format!("unix:{}", socket.display()))
        .env_remove("TASKSCOPE_RECORD")
        .env_remove("TASKSCOPE_RECORD_DIR")
        .spawn()
        .expect("start fixture");
    // The deadlock forms ~50 ms in and is reported once every wait is
    // 500 ms old; the fixture keeps it for 1.2 s.
    while !socket.exists() && started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(800).saturating_sub(started.elapsed()));
    let target = format!("unix:{}", socket.display());
    let out = Command::new(env!("CARGO_BIN_EXE_taskscope"))
        .args(["report", &target, "--format", "json", "--root"])
        .arg(workspace_root())
        .output()
        .expect("run taskscope report");
    let _ = app.wait();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["sources"][0]["kind"], "live");
    let findings = doc["sources"][0]["findings"].as_array().expect("findings");
    let deadlocks: Vec<_> = findings
        .iter()
        .filter(|f| f["kind"] == "deadlock-cycle")
        .collect();
    assert_eq!(
        deadlocks.len(),
        1,
        "the target's own finding and the local one are one: {findings:#?}"
    );
    assert_eq!(deadlocks[0]["location"]["file"], FIXTURE_SOURCE);
    assert_eq!(
        deadlocks[0]["location"]["line"],
        marker_line("deadlock-cycle")
    );
}

#[test]
fn a_core_dump_is_reported_at_the_await_point() {
    if Command::new("gcore").arg("--version").output().is_err() {
        eprintln!("skipped: gcore (gdb) is not installed");
        return;
    }
    recordings(); // builds the fixtures
    let exe = Path::new(env!("CARGO_BIN_EXE_taskscope"))
        .parent()
        .expect("binary directory")
        .join("examples/hazard_fixtures");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut app = Command::new(&exe)
        .args(["deadlock-cycle", "bad"])
        .env("TASKSCOPE_BIND", "off")
        .env_remove("TASKSCOPE_RECORD")
        .env_remove("TASKSCOPE_RECORD_DIR")
        .spawn()
        .expect("start fixture");
    // The two transfers deadlock ~50 ms in; the fixture stays for 1.2 s.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let prefix = dir.path().join("core");
    let gcore = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(app.id().to_string())
        .output()
        .expect("run gcore");
    let _ = app.wait();
    assert!(gcore.status.success(), "gcore: {gcore:?}");
    let core = dir.path().join(format!("core.{}", app.id()));
    let out = Command::new(env!("CARGO_BIN_EXE_taskscope"))
        .arg("report")
        .arg(&core)
        .args(["--format", "json", "--exe"])
        .arg(&exe)
        .arg("--root")
        .arg(workspace_root())
        .output()
        .expect("run taskscope report");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["sources"][0]["kind"], "core");
    let findings = doc["sources"][0]["findings"].as_array().expect("findings");
    let cycle = findings
        .iter()
        .find(|f| f["kind"] == "deadlock-cycle")
        .unwrap_or_else(|| panic!("no deadlock-cycle from the core: {findings:#?}"));
    // Post-mortem, the finding points at the await point in the user's code.
    assert_eq!(cycle["location"]["file"], FIXTURE_SOURCE);
    let line = cycle["location"]["line"].as_u64().expect("line") as usize;
    let source = std::fs::read_to_string(workspace_root().join(FIXTURE_SOURCE)).expect("source");
    let text = source.lines().nth(line - 1).unwrap_or_default();
    assert!(text.contains(".lock().await"), "line {line}: {text}");
}
