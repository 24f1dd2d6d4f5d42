//! `taskscope debugger-serve`, the analyzer side of the gdb/lldb front ends,
//! driven directly over its pipe the way the Python front ends drive it:
//! bad or vanishing front ends get clear errors, never a hang. (The happy
//! path, with real gdb and lldb serving memory, is `debugger_frontends.rs`.)

#[path = "../../dump-analyzer/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

fn serve() -> (Child, ChildStdin, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskscope"))
        .arg("debugger-serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start taskscope debugger-serve");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    (child, stdin, stdout)
}

fn line(out: &mut BufReader<ChildStdout>) -> serde_json::Value {
    let mut l = String::new();
    out.read_line(&mut l).expect("read a protocol line");
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))
}

#[test]
fn a_malformed_request_gets_an_error_line() {
    let (mut child, mut stdin, mut out) = serve();
    writeln!(stdin, "{{\"command\": \"tasks\"}}").expect("write");
    let answer = line(&mut out);
    let err = answer["error"].as_str().expect("an error answer");
    assert!(
        err.contains("bad request from the debugger front end"),
        "{err}"
    );
    assert!(err.contains("target"), "names the missing field: {err}");
    drop(stdin);
    assert!(child.wait().expect("wait").success());
}

#[test]
fn a_missing_executable_is_named() {
    let (mut child, mut stdin, mut out) = serve();
    let request = serde_json::json!({
        "command": "tasks",
        "target": {
            "kind": "core",
            "executable": "/nonexistent/app",
            "entry": 4096,
            "threads": [],
        }
    });
    writeln!(stdin, "{request}").expect("write");
    let answer = line(&mut out);
    let err = answer["error"].as_str().expect("an error answer");
    assert!(err.contains("/nonexistent/app"), "{err}");
    drop(stdin);
    assert!(child.wait().expect("wait").success());
}

#[test]
fn a_front_end_that_hangs_up_mid_analysis_ends_the_server() {
    // The stuck fixture (tokio, DWARF) as the program, its main thread's
    // TLS at some address: the analyzer must ask for memory; the
    // "debugger" then goes away instead of answering.
    let exe = support::build_fixture("stuck", "stuck", "unstable", "--cfg tokio_unstable", false);
    let (mut child, mut stdin, mut out) = serve();
    let request = serde_json::json!({
        "command": "tasks",
        "target": {
            "kind": "process",
            "executable": exe,
            "entry": 0x5555_5555_0000u64,
            "threads": [{"tid": 1, "registers": {
                "rip": 0x5555_5555_1000u64,
                "rsp": 0x7fff_0000_0000u64,
                "fs_base": 0x7fff_f7d8_0740u64,
            }}],
            "mappings": [],
        }
    });
    writeln!(stdin, "{request}").expect("write");
    let first = line(&mut out);
    let reads = first["read"].as_array().expect("a memory read");
    assert!(!reads.is_empty());
    for r in reads {
        let len = r[1].as_u64().expect("length");
        assert!(len > 0 && len <= 4096 * 64, "page-sized reads: {r}");
    }
    drop(stdin);
    // The analysis stops at once and says why on the answer channel.
    let answer = line(&mut out);
    let err = answer["error"].as_str().expect("an error answer");
    assert!(err.contains("closed the connection"), "{err}");
    assert!(child.wait().expect("wait").success());
}
