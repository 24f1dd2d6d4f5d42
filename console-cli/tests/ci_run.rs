//! `taskscope ci -- <command…>` end to end: real instrumented processes
//! (the hazard fixtures) record into the temporary directory through
//! `TASKSCOPE_RECORD_DIR`, several at once; the report covers all of them;
//! the exit status follows `--fail-on`, suppressions and the command's own
//! status; the static Cargo.lock check finds a second tokio.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{hazard_fixtures as fixture_binary, workspace_root};

/// `taskscope ci <args…> -- <command…>` in `cwd`.
fn ci(cwd: &Path, args: &[&str], command: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskscope"))
        .arg("ci")
        .args(args)
        .arg("--")
        .args(command)
        .current_dir(cwd)
        .env_remove("TASKSCOPE_RECORD")
        .env_remove("TASKSCOPE_RECORD_DIR")
        .env_remove("TASKSCOPE_BIND")
        .output()
        .expect("run taskscope ci")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn kinds(doc: &serde_json::Value) -> Vec<(String, String)> {
    doc["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            s["findings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |f| {
                    (
                        name.clone(),
                        f["kind"].as_str().unwrap_or_default().to_string(),
                    )
                })
        })
        .collect()
}

#[test]
fn ci_reports_over_every_recording_of_parallel_processes() {
    let exe = fixture_binary().to_string_lossy().into_owned();
    // Two instrumented processes at once (each binds 127.0.0.1:0, so no
    // port clash), one with a deadlock, one clean.
    let script = format!("'{exe}' deadlock-cycle bad & '{exe}' blocking-poll clean & wait");
    let recordings = tempfile::tempdir().expect("temp dir");
    let dir = recordings.path().to_string_lossy().into_owned();
    let out = ci(
        &workspace_root(),
        &["--format", "json", "--record-dir", &dir, "--no-lockfile"],
        &["sh", "-c", &script],
    );
    let doc = json(&out);
    let sources = doc["sources"].as_array().expect("sources");
    assert_eq!(
        sources.len(),
        2,
        "one source per process; stderr: {}\n{doc:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in sources {
        let name = s["name"].as_str().unwrap_or_default();
        assert!(
            name.starts_with("hazard_fixtures-") && name.ends_with(".tsrec"),
            "recordings are named <exe>-<pid>.tsrec: {name}"
        );
    }
    let found = kinds(&doc);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, "deadlock-cycle");
    assert_eq!(out.status.code(), Some(1), "an error finding fails the run");
    assert_eq!(
        std::fs::read_dir(recordings.path()).expect("list").count(),
        2,
        "--record-dir keeps the recordings"
    );
}

#[test]
fn ci_passes_a_clean_command_and_honours_suppressions_with_their_reason() {
    let exe = fixture_binary().to_string_lossy().into_owned();
    let clean = ci(
        &workspace_root(),
        &["--format", "json", "--no-lockfile"],
        &[&exe, "deadlock-cycle", "clean"],
    );
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");
    assert!(kinds(&json(&clean)).is_empty());
    assert_eq!(json(&clean)["sources"].as_array().map(Vec::len), Some(1));

    let cfg_dir = tempfile::tempdir().expect("temp dir");
    let cfg = cfg_dir.path().join("taskscope.toml");
    std::fs::write(
        &cfg,
        "[[suppress]]\nhazard = \"deadlock-cycle\"\nlocation = \"console-cli/examples/hazard_fixtures.rs:*\"\nreason = \"the fixture deadlocks on purpose\"\n",
    )
    .expect("write config");
    let cfg = cfg.to_string_lossy().into_owned();
    let out = ci(
        &workspace_root(),
        &["--format", "markdown", "--no-lockfile", "--config", &cfg],
        &[&exe, "deadlock-cycle", "bad"],
    );
    assert_eq!(out.status.code(), Some(0), "suppressed: passes; {out:?}");
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("— suppressed: the fixture deadlocks on purpose"),
        "{md}"
    );
}

#[test]
fn a_failing_command_fails_ci_with_its_own_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = ci(dir.path(), &["--format", "json"], &["sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no recording in"), "{err}");
    assert!(err.contains("`sh -c exit 3` failed"), "{err}");
}

const TWO_TOKIOS: &str = r#"version = 3

[[package]]
name = "app"
version = "0.1.0"
dependencies = [
 "legacy-client",
 "tokio 1.40.0",
]

[[package]]
name = "legacy-client"
version = "0.9.0"
dependencies = [
 "tokio 0.2.25",
]

[[package]]
name = "tokio"
version = "0.2.25"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "tokio"
version = "1.40.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;

#[test]
fn the_nearest_cargo_lock_with_two_tokio_majors_is_a_finding() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("Cargo.lock"), TWO_TOKIOS).expect("write lock");
    let nested = dir.path().join("crates/app");
    std::fs::create_dir_all(&nested).expect("mkdir");
    let root = dir.path().to_string_lossy().into_owned();
    let out = ci(
        &nested,
        &["--format", "sarif", "--fail-on", "warning", "--root", &root],
        &["true"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = json(&out);
    let result = &log["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "multiple-runtimes");
    assert_eq!(result["level"], "warning");
    let phys = &result["locations"][0]["physicalLocation"];
    assert_eq!(phys["artifactLocation"]["uri"], "Cargo.lock");
    assert_eq!(phys["region"]["startLine"], 19, "the old tokio's entry");
    assert!(result["message"]["text"]
        .as_str()
        .is_some_and(|m| m.contains("0.2.x and 1.x")));
    let evidence = result["properties"]["evidence"].to_string();
    assert!(
        evidence.contains("tokio 0.2.25, pulled in by legacy-client 0.9.0"),
        "{evidence}"
    );

    // Default --fail-on error: a warning does not fail the run.
    let out = ci(&nested, &["--format", "json", "--root", &root], &["true"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
