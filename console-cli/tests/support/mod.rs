//! Helpers shared by the integration tests: free ports, the built
//! `taskscope` binary, waiting for servers, and a console-subscriber app.
#![allow(dead_code)] // each test file uses its own subset

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A port nobody listens on right now (bound then released).
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).expect("bind an ephemeral port on 127.0.0.1");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the Unix socket file exists and accepts connections.
pub fn wait_for_unix(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {} after 20 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the built `taskscope` binary.
pub fn taskscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskscope"))
        .args(args)
        .output()
        .expect("run the taskscope binary")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the command failed with exit status 2 and exactly one line of
/// error text, containing `expected`, and no panic.
pub fn assert_one_line_failure(o: &Output, expected: &str) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit status; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line of error expected, got: {err}"
    );
    assert!(err.starts_with("taskscope: error: "), "{err}");
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
    assert!(
        stdout(o).is_empty(),
        "nothing on stdout on failure: {}",
        stdout(o)
    );
    err
}

/// Parses the binary's JSON output.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

/// The tasks of a snapshot JSON document, as (name, task object).
pub fn json_tasks(doc: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let tasks = doc["state"]["tasks"]
        .as_object()
        .expect("state.tasks is an object");
    tasks
        .values()
        .map(|t| (t["name"].as_str().unwrap_or("").to_string(), t.clone()))
        .collect()
}

/// The workspace root (where the fixture sources and `Cargo.lock` live).
pub fn workspace_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Builds the `hazard_fixtures` example (a no-op when fresh) once per test
/// process and returns its path.
pub fn hazard_fixtures() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "taskscope-cli",
                "--example",
                "hazard_fixtures",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build --example hazard_fixtures");
        assert!(status.success(), "building the fixtures failed");
        let exe = Path::new(env!("CARGO_BIN_EXE_taskscope"))
            .parent()
            .expect("binary directory")
            .join("examples")
            .join("hazard_fixtures");
        assert!(exe.is_file(), "{} was not built", exe.display());
        exe
    })
}

/// The task named `name` in `state`; the test fails, listing every task,
/// when there is none.
pub fn task<'a>(
    state: &'a taskscope_wire::model::State,
    name: &str,
) -> &'a taskscope_wire::model::Task {
    state
        .tasks
        .values()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| {
            let names: Vec<String> = state.tasks.values().map(|t| t.display_name()).collect();
            panic!("no task named {name}; tasks: {names:?}")
        })
}
