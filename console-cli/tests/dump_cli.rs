//! `taskscope dump` as a user runs it: on a real core taken with gcore from
//! a stuck tokio program (the dump-analyzer fixture), text and JSON output,
//! exit codes, and clear errors on bad input.

#[path = "../../dump-analyzer/tests/support/mod.rs"]
mod support;

use std::process::Command;

fn taskscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_taskscope"))
}

#[test]
fn dump_core_text_and_json() {
    if !support::have_gcore() {
        return;
    }
    let bin = support::build_fixture("stuck", "stuck", "unstable", "--cfg tokio_unstable", false);
    let markers = support::await_markers(&support::fixtures_dir().join("stuck/src/main.rs"));
    let stuck = support::run_until_ready(&bin, &["multi"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let core = support::gcore(stuck.child.id(), dir.path());
    drop(stuck);

    let out = taskscope()
        .arg("dump")
        .arg(&core)
        .arg("--coalesce")
        .output()
        .expect("run taskscope");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("multi-thread, 2 worker threads, 14 tasks"),
        "{text}"
    );
    assert!(
        text.contains("3 task(s):"),
        "the three lockers are coalesced:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "stuck::lock_pair (async fn, Suspend2)  at src/main.rs:{}",
            markers["lock_second"]
        )),
        "{text}"
    );
    assert!(text.contains("deadlock-cycle: wait-for cycle"), "{text}");
    assert!(text.contains("lost-waker"), "{text}");

    let out = taskscope()
        .args(["dump", "--format", "json"])
        .arg(&core)
        .output()
        .expect("run taskscope");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["schema"], "taskscope-dump/1");
    assert_eq!(json["tasks"].as_array().map(Vec::len), Some(14));
    let sleeper = json["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["chain"]["frames"][0]["function"] == "stuck::sleeper")
        .expect("sleeper task in JSON");
    assert_eq!(
        sleeper["chain"]["frames"][0]["location"]["line"],
        markers["sleep"]
    );
    assert_eq!(sleeper["chain"]["leaf"]["kind"], "sleep");

    // A binary other than the one that crashed: refused with the reason.
    let out = taskscope()
        .arg("dump")
        .arg(&core)
        .arg("--exe")
        .arg(env!("CARGO_BIN_EXE_taskscope"))
        .output()
        .expect("run taskscope");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match the core"));
}

#[test]
fn dump_rejects_a_file_that_is_not_a_core() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "not a core").expect("write");
    let out = taskscope()
        .arg("dump")
        .arg(&p)
        .output()
        .expect("run taskscope");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an ELF file"), "{err}");
}
