//! Builds the fixture programs (cached in `fixtures/target/<variant>`), runs
//! them until they print `READY`, and takes a real core with gdb's `gcore`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Serialises fixture builds inside one test binary (cargo also locks).
static BUILD: Mutex<()> = Mutex::new(());

/// `dump-analyzer/fixtures`, from this crate's tests or the CLI's.
pub fn fixtures_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let own = here.join("fixtures");
    if own.join("stuck").exists() {
        own
    } else {
        here.join("../dump-analyzer/fixtures")
    }
}

/// `true` when gdb's `gcore` is available; prints why a test is skipped
/// otherwise. CI installs gdb, so there the tests always run.
pub fn have_gcore() -> bool {
    let ok = Command::new("gcore")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("gdb (gcore) is required in CI");
        }
        eprintln!(
            "SKIPPED: gdb's `gcore` is not installed; install gdb to run the core-file tests"
        );
    }
    ok
}

/// The `instrumented` fixture (an app running taskscope, built with
/// `tokio_unstable`) and its source file, whose markers tests read.
pub fn instrumented_fixture() -> (PathBuf, PathBuf) {
    let bin = build_fixture(
        "instrumented",
        "instrumented",
        "unstable",
        "--cfg tokio_unstable",
        false,
    );
    (bin, fixtures_dir().join("instrumented/src/main.rs"))
}

/// Builds fixture project `name` (whose binary is `bin`) with the given
/// RUSTFLAGS into its own cached target dir and returns the binary.
pub fn build_fixture(
    name: &str,
    bin: &str,
    variant: &str,
    rustflags: &str,
    release: bool,
) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixtures_dir().join(name);
    let target = fixtures_dir().join("target").join(variant);
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build")
        .arg("--locked")
        .arg("--quiet")
        .current_dir(&dir);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run cargo to build the fixture");
    assert!(
        status.success(),
        "building fixture {name} ({variant}) failed"
    );
    target
        .join(if release { "release" } else { "debug" })
        .join(bin)
}

/// A fixture process that reached its stuck state; killed on drop.
pub struct Stuck {
    pub child: std::process::Child,
}

impl Drop for Stuck {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin args...` and waits (≤ 60 s) for it to print `READY`.
pub fn run_until_ready(bin: &Path, args: &[&str]) -> Stuck {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the fixture");
    let stdout = child.stdout.take().expect("fixture stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim() == "READY" {
                let _ = tx.send(());
            }
        }
    });
    let stuck = Stuck { child };
    rx.recv_timeout(Duration::from_secs(60))
        .expect("fixture did not print READY within 60 s");
    // The thread that printed READY still has to return to its executor
    // and park (block_on's future is polled until its next await): give it
    // a moment, or the core may catch it mid-poll.
    std::thread::sleep(Duration::from_millis(300));
    stuck
}

/// Takes a core of a live process with `gcore` into `dir`.
pub fn gcore(pid: u32, dir: &Path) -> PathBuf {
    let prefix = dir.join("core");
    let out = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string())
        .output()
        .expect("run gcore");
    assert!(
        out.status.success(),
        "gcore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = dir.join(format!("core.{pid}"));
    assert!(core.exists(), "gcore wrote no {}", core.display());
    core
}

/// Lines of `// AWAIT: name` markers in a fixture source file.
pub fn await_markers(source: &Path) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(source).expect("read fixture source");
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some((_, name)) = line.split_once("// AWAIT: ") {
            out.insert(name.trim().to_string(), i as u64 + 1);
        }
    }
    out
}
