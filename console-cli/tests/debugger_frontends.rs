//! The gdb and lldb front ends as a user drives them: real gdb and lldb-19
//! in batch mode, on the stuck tokio fixture (dump-analyzer/fixtures/stuck)
//! stopped under the debugger and on its core file. Each command's output is
//! cut out between BEGIN/END markers and checked against
//! `taskscope dump --format json` of the same core or process: the same
//! task ids and the same await lines.
//!
//! A missing debugger skips its test with a message, except in CI (env
//! `CI` set), where it fails.

#[path = "../../dump-analyzer/tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn taskscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_taskscope"))
}

/// `true` when `program` runs; otherwise skips (prints why), or panics in CI.
fn have(program: &str, why: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{program} is required in CI ({why})");
        }
        eprintln!("SKIPPED: {program} is not installed; install it to run {why}");
    }
    ok
}

/// The stuck fixture (multi-thread runtime), built once per variant.
fn fixture() -> (PathBuf, HashMap<String, u64>) {
    let bin = support::build_fixture("stuck", "stuck", "unstable", "--cfg tokio_unstable", false);
    let markers = support::await_markers(&support::fixtures_dir().join("stuck/src/main.rs"));
    (bin, markers)
}

/// A core of the stuck fixture, taken with gcore once it is stuck, and
/// what `taskscope dump` says of it.
struct StuckCore {
    bin: PathBuf,
    markers: HashMap<String, u64>,
    /// Holds the core and the debugger scripts.
    dir: tempfile::TempDir,
    core: PathBuf,
    expected: Expected,
}

fn stuck_core() -> StuckCore {
    let (bin, markers) = fixture();
    let stuck = support::run_until_ready(&bin, &["multi"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let core = support::gcore(stuck.child.id(), dir.path());
    drop(stuck);
    let expected = dump_json(&[core.as_os_str()]);
    StuckCore {
        bin,
        markers,
        dir,
        core,
        expected,
    }
}

/// Runs `taskscope gdb-init`/`lldb-init` with its cache in `dir` and
/// returns the script file that loads the front end.
fn init_script(which: &str, dir: &Path) -> PathBuf {
    let out = taskscope()
        .arg(which)
        .env("XDG_CACHE_HOME", dir)
        .output()
        .expect("run taskscope *-init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = dir.join(format!("{which}.cmds"));
    std::fs::write(&path, &text).expect("write init script");
    path
}

/// What `taskscope dump --format json` says: task id -> the `file:line` of
/// every frame of its chain (nested branches included).
#[derive(Debug)]
struct Expected {
    tasks: BTreeMap<u64, Vec<String>>,
    hazards: usize,
    json: serde_json::Value,
}

fn locations(chain: &serde_json::Value, out: &mut Vec<String>) {
    for f in chain["frames"].as_array().into_iter().flatten() {
        if let (Some(file), Some(line)) = (
            f["location"]["file"].as_str(),
            f["location"]["line"].as_u64(),
        ) {
            out.push(format!("{file}:{line}"));
        }
        for b in f["branches"].as_array().into_iter().flatten() {
            locations(b, out);
        }
    }
}

fn dump_json(args: &[&std::ffi::OsStr]) -> Expected {
    let out = taskscope()
        .arg("dump")
        .args(["--format", "json"])
        .args(args)
        .output()
        .expect("run taskscope dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dump JSON");
    let mut tasks = BTreeMap::new();
    for t in json["tasks"].as_array().into_iter().flatten() {
        let id = t["id"]
            .as_u64()
            .expect("task ids in a tokio_unstable build");
        let mut locs = Vec::new();
        locations(&t["chain"], &mut locs);
        tasks.insert(id, locs);
    }
    let hazards = json["hazards"].as_array().map_or(0, Vec::len);
    Expected {
        tasks,
        hazards,
        json,
    }
}

/// The text between `BEGIN name` and `END name` lines.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let begin = format!("BEGIN {name}\n");
    let end = format!("END {name}\n");
    let Some(start) = out.find(&begin) else {
        panic!("no BEGIN {name} in debugger output:\n{out}");
    };
    let rest = &out[start + begin.len()..];
    let Some(stop) = rest.find(&end) else {
        panic!("no END {name} in debugger output:\n{out}");
    };
    &rest[..stop]
}

/// Task ids in the first column of the task table.
fn table_ids(table: &str) -> BTreeSet<u64> {
    table
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The id of the task whose root future is `function`.
fn task_running(expected: &Expected, function: &str) -> u64 {
    expected.json["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["chain"]["frames"][0]["function"] == function)
        .and_then(|t| t["id"].as_u64())
        .unwrap_or_else(|| panic!("no task running {function}"))
}

/// Checks the three commands' sections against the dump of the same target.
fn check_sections(out: &str, expected: &Expected, markers: &HashMap<String, u64>) {
    assert!(out.contains("loading taskscope support"), "banner:\n{out}");

    let table = section(out, "tasks");
    let ids: BTreeSet<u64> = expected.tasks.keys().copied().collect();
    assert_eq!(
        table_ids(table),
        ids,
        "same tasks as taskscope dump:\n{table}"
    );
    assert!(table.contains("PARKED AT"), "{table}");
    let sleeper = task_running(expected, "stuck::sleeper");
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&sleeper.to_string()))
        .unwrap_or_else(|| panic!("no row for task {sleeper}:\n{table}"));
    assert!(
        row.contains(&format!("src/main.rs:{}", markers["sleep"])) && row.contains("sleep"),
        "the sleeper row names its await line and its sleep:\n{row}"
    );

    let all = section(out, "bt-all");
    for (id, locs) in &expected.tasks {
        let start = all
            .find(&format!("task {id} ("))
            .unwrap_or_else(|| panic!("task {id} missing from async-bt all:\n{all}"));
        let body = &all[start..];
        let body = body[1..]
            .find("\ntask ")
            .map_or(body, |end| &body[..end + 1]);
        for loc in locs {
            assert!(
                body.contains(loc.as_str()),
                "task {id}: await {loc} from taskscope dump missing in:\n{body}"
            );
        }
    }

    let one = section(out, "bt-one");
    assert!(
        one.starts_with(&format!("task {sleeper} (idle) stuck::sleeper")),
        "{one}"
    );
    let leaf = expected.json["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["id"] == sleeper)
        .and_then(|t| t["chain"]["leaf"]["description"].as_str())
        .expect("the sleeper's leaf in the dump");
    assert!(
        one.contains(&format!("#0  {leaf}\n")),
        "the leaf, as taskscope dump describes it, comes first: {one}"
    );
    assert!(
        one.contains(&format!(
            "#1  stuck::sleeper (async fn, Suspend0) at src/main.rs:{}",
            markers["sleep"]
        )),
        "{one}"
    );
    assert!(
        !one.contains("stuck::lock_pair"),
        "only the asked task: {one}"
    );

    let hazards = section(out, "hazards");
    assert!(
        hazards.starts_with(&format!("{} hazard(s)", expected.hazards)),
        "{hazards}"
    );
    assert!(
        hazards.contains("deadlock-cycle: wait-for cycle"),
        "{hazards}"
    );
    assert!(hazards.contains("lost-waker"), "{hazards}");

    assert!(
        out.contains("taskscope: no task 999999; tasks are: "),
        "a wrong id is a clear error:\n{out}"
    );
}

/// gdb commands producing the checked sections (`async-bt` of the sleeper
/// needs its id, known from the dump).
fn gdb_commands(sleeper: u64) -> Vec<String> {
    let mut cmds = Vec::new();
    let mut wrap = |name: &str, cmd: &str| {
        cmds.push(format!("echo BEGIN {name}\\n"));
        cmds.push(cmd.to_string());
        cmds.push(format!("echo END {name}\\n"));
    };
    wrap("tasks", "info async-tasks");
    wrap("bt-all", "async-bt all");
    wrap("bt-one", &format!("async-bt {sleeper}"));
    wrap("hazards", "async-hazards");
    cmds.push("async-bt 999999".to_string());
    cmds
}

fn run_gdb(init: &Path, target: &[&std::ffi::OsStr], cmds: &[String]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch"]).arg("-x").arg(init);
    cmd.args(target);
    for c in cmds {
        cmd.arg("-ex").arg(c);
    }
    let out = cmd
        .env_remove("TASKSCOPE_BIN")
        .stdin(Stdio::null())
        .output()
        .expect("run gdb");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("Python Exception") && !stderr.contains("Traceback"),
        "the front end raised:\n{stderr}"
    );
    format!("{stdout}\n--- stderr ---\n{stderr}")
}

#[test]
fn gdb_on_a_core_agrees_with_taskscope_dump() {
    if !have("gdb", "the gdb front-end tests") {
        return;
    }
    let StuckCore {
        bin,
        markers,
        dir,
        core,
        expected,
    } = stuck_core();
    assert_eq!(expected.tasks.len(), 14, "{:?}", expected.tasks.keys());
    let init = init_script("gdb-init", dir.path());
    let sleeper = task_running(&expected, "stuck::sleeper");
    let out = run_gdb(
        &init,
        &[bin.as_os_str(), core.as_os_str()],
        &gdb_commands(sleeper),
    );
    check_sections(&out, &expected, &markers);
}

#[test]
fn gdb_attached_to_a_live_process_agrees_with_taskscope_dump() {
    if !have("gdb", "the gdb front-end tests") {
        return;
    }
    let (bin, markers) = fixture();
    let stuck = support::run_until_ready(&bin, &["multi"]);
    let pid = stuck.child.id().to_string();
    let expected = dump_json(&["--pid".as_ref(), pid.as_ref()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let init = init_script("gdb-init", dir.path());
    let sleeper = task_running(&expected, "stuck::sleeper");
    let out = run_gdb(
        &init,
        &["-p".as_ref(), pid.as_ref()],
        &gdb_commands(sleeper),
    );
    check_sections(&out, &expected, &markers);
    // gdb detached: the program still runs and can be analysed again.
    let again = dump_json(&["--pid".as_ref(), pid.as_ref()]);
    assert_eq!(
        again.tasks.keys().collect::<Vec<_>>(),
        expected.tasks.keys().collect::<Vec<_>>()
    );
    drop(stuck);
}

#[test]
fn gdb_at_a_breakpoint_agrees_with_a_core_taken_there() {
    if !have("gdb", "the gdb front-end tests") {
        return;
    }
    let (bin, markers) = fixture();
    let source = support::fixtures_dir().join("stuck/src/main.rs");
    // The line right after `println!("READY")`: every task is parked by then.
    let text = std::fs::read_to_string(&source).expect("read fixture source");
    let line = text
        .lines()
        .position(|l| l.contains("println!(\"READY\")"))
        .expect("READY line in the fixture")
        + 2;
    let dir = tempfile::tempdir().expect("tempdir");
    let init = init_script("gdb-init", dir.path());
    let core = dir.path().join("at-breakpoint.core");
    let mut cmds = vec![
        format!("break {}:{line}", source.display()),
        "run multi".to_string(),
    ];
    // The sleeper's id is not known before the run: use async-bt all, and
    // check async-bt of one id through the other tests.
    for (name, c) in [
        ("tasks", "info async-tasks"),
        ("bt-all", "async-bt all"),
        ("hazards", "async-hazards"),
    ] {
        cmds.push(format!("echo BEGIN {name}\\n"));
        cmds.push(c.to_string());
        cmds.push(format!("echo END {name}\\n"));
    }
    cmds.push(format!("gcore {}", core.display()));
    cmds.push("kill".to_string());
    let out = run_gdb(&init, &[bin.as_os_str()], &cmds);
    assert!(
        out.contains(&format!("main.rs:{line}")),
        "stopped at the breakpoint:\n{out}"
    );
    let expected = dump_json(&[core.as_os_str(), "--exe".as_ref(), bin.as_os_str()]);
    assert_eq!(expected.tasks.len(), 14, "{:?}", expected.tasks.keys());
    let table = section(&out, "tasks");
    let ids: BTreeSet<u64> = expected.tasks.keys().copied().collect();
    assert_eq!(
        table_ids(table),
        ids,
        "same tasks as taskscope dump:\n{table}"
    );
    let all = section(&out, "bt-all");
    for locs in expected.tasks.values() {
        for loc in locs {
            assert!(all.contains(loc.as_str()), "{loc} missing in:\n{all}");
        }
    }
    assert!(
        all.contains(&format!("src/main.rs:{}", markers["lost_waker"])),
        "{all}"
    );
    let hazards = section(&out, "hazards");
    assert!(
        hazards.starts_with(&format!("{} hazard(s)", expected.hazards)),
        "{hazards}"
    );
}

#[test]
fn gdb_pretty_prints_futures_and_join_handles() {
    if !have("gdb", "the gdb front-end tests") {
        return;
    }
    let StuckCore {
        bin,
        markers,
        dir,
        core,
        expected,
    } = stuck_core();
    let init = init_script("gdb-init", dir.path());
    let lockers: Vec<(u64, String)> = expected.json["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["chain"]["frames"][0]["function"] == "stuck::lock_pair")
        .filter_map(|t| Some((t["id"].as_u64()?, t["header"].as_str()?.to_string())))
        .collect();
    assert_eq!(lockers.len(), 3);
    let headers: Vec<String> = lockers.iter().map(|(_, h)| format!("{h:?}")).collect();
    let script = dir.path().join("print.py");
    std::fs::write(
        &script,
        format!("HEADERS = [{}]\n{PRINT_SCRIPT}", headers.join(", ")),
    )
    .expect("write print.py");
    let out = run_gdb(
        &init,
        &[bin.as_os_str(), core.as_os_str()],
        &[format!("source {}", script.display())],
    );
    let fut = section(&out, "future");
    assert!(
        fut.contains(&format!(
            "stuck::run::{{async_fn_env#0}}: suspended at src/main.rs:{}",
            markers["main_pending"]
        )),
        "`print *f.pointer` of run's state machine:\n{fut}"
    );
    assert!(
        fut.contains(&format!(
            "#1  stuck::run (async fn, Suspend1) at src/main.rs:{}",
            markers["main_pending"]
        )),
        "{fut}"
    );
    let handle = section(&out, "handle");
    assert!(
        handle.starts_with("tokio::runtime::task::join::JoinHandle<()>: task "),
        "{handle}"
    );
    assert!(
        lockers
            .iter()
            .any(|(id, _)| handle.contains(&format!("task {id} (idle) stuck::lock_pair"))),
        "a JoinHandle shows the lock_pair task it refers to ({lockers:?}):\n{handle}"
    );
    assert!(
        handle.contains(&format!("src/main.rs:{}", markers["lock_second"])),
        "{handle}"
    );
    let header = section(&out, "header");
    assert!(
        header.contains(&format!(
            "task {} (idle) stuck::lock_pair, parked at src/main.rs:{}",
            lockers[0].0, markers["lock_second"]
        )),
        "{header}"
    );
}

/// Selects the main thread's `CachedParkThread::block_on` frame and prints
/// `*f.pointer` (`run`'s state machine); then prints, as a
/// `JoinHandle<()>`, the word of that state machine holding a lock_pair
/// task's header (the `_tb` / `_tc` handles, which gdb cannot name inside a
/// Rust enum variant), and a task header. `HEADERS` is prepended.
const PRINT_SCRIPT: &str = r#"
import gdb
gdb.execute("thread 1")
frame = gdb.newest_frame()
while frame is not None:
    if (frame.name() or "").startswith("tokio::runtime::park::CachedParkThread::block_on"):
        frame.select()
        break
    frame = frame.older()
if frame is None:
    raise gdb.GdbError("no CachedParkThread::block_on frame")
gdb.write("BEGIN future\n")
gdb.execute("print *f.pointer")
gdb.write("END future\n")
fut = gdb.parse_and_eval("f.pointer")
size = fut.dereference().type.sizeof
addr = int(fut)
mem = bytes(gdb.selected_inferior().read_memory(addr, size))
wanted = set(int(h, 16) for h in HEADERS)
handle = gdb.lookup_type("tokio::runtime::task::join::JoinHandle<()>")
gdb.write("BEGIN handle\n")
for off in range(0, size - 7, 8):
    if int.from_bytes(mem[off:off + 8], "little") in wanted:
        gdb.write("%s\n" % gdb.Value(addr + off).cast(handle.pointer()).dereference())
        break
gdb.write("END handle\n")
header = gdb.lookup_type("tokio::runtime::task::core::Header")
gdb.write("BEGIN header\n")
gdb.write("%s\n" % gdb.Value(int(HEADERS[0], 16)).cast(header.pointer()).dereference())
gdb.write("END header\n")
"#;

#[test]
fn lldb_on_a_core_agrees_with_taskscope_dump() {
    if !have("lldb-19", "the lldb front-end tests") {
        return;
    }
    let StuckCore {
        bin,
        markers,
        dir,
        core,
        expected,
    } = stuck_core();
    let init = init_script("lldb-init", dir.path());
    let sleeper = task_running(&expected, "stuck::sleeper");
    let out = run_lldb(
        &init,
        &["-c".as_ref(), core.as_os_str(), bin.as_os_str()],
        sleeper,
    );
    check_sections(&out, &expected, &markers);

    // The summary provider: `frame variable *f.pointer` in block_on.
    let script = dir.path().join("lldb_print.py");
    std::fs::write(&script, LLDB_PRINT_SCRIPT).expect("write lldb_print.py");
    let import = std::fs::read_to_string(&init)
        .expect("read lldb-init output")
        .lines()
        .find(|l| l.starts_with("command script import "))
        .map(str::to_string)
        .expect("import line");
    let out = Command::new("lldb-19")
        .args(["--no-lldbinit", "--batch", "-c"])
        .arg(&core)
        .arg(&bin)
        .arg("-o")
        .arg(import)
        .arg("-o")
        .arg(format!("command script import {}", script.display()))
        .env_remove("TASKSCOPE_BIN")
        .stdin(Stdio::null())
        .output()
        .expect("run lldb-19");
    let text = String::from_utf8_lossy(&out.stdout);
    let fut = section(&text, "future");
    assert!(
        fut.contains(&format!(
            "stuck::run::{{async_fn_env#0}} = suspended at src/main.rs:{}",
            markers["main_pending"]
        )),
        "{fut}"
    );
}

/// Selects the main thread's `CachedParkThread::block_on` frame and prints
/// `run`'s state machine with `frame variable` (summary provider).
const LLDB_PRINT_SCRIPT: &str = r#"
import lldb

def __lldb_init_module(debugger, internal_dict):
    thread = debugger.GetSelectedTarget().GetProcess().GetThreadAtIndex(0)
    value = None
    for i in range(thread.GetNumFrames()):
        frame = thread.GetFrameAtIndex(i)
        if (frame.GetFunctionName() or "").startswith("tokio::runtime::park::CachedParkThread::block_on"):
            value = frame.FindVariable("f").GetChildMemberWithName("pointer").Dereference()
            break
    print("BEGIN future")
    print(value.GetTypeName() + " = " + str(value.GetSummary()) if value else "no block_on frame")
    print("END future")
"#;

#[test]
fn lldb_attached_to_a_live_process_agrees_with_taskscope_dump() {
    if !have("lldb-19", "the lldb front-end tests") {
        return;
    }
    let (bin, markers) = fixture();
    let stuck = support::run_until_ready(&bin, &["multi"]);
    let pid = stuck.child.id().to_string();
    let expected = dump_json(&["--pid".as_ref(), pid.as_ref()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let init = init_script("lldb-init", dir.path());
    let sleeper = task_running(&expected, "stuck::sleeper");
    let out = run_lldb(&init, &["-p".as_ref(), pid.as_ref()], sleeper);
    check_sections(&out, &expected, &markers);
    drop(stuck);
    let _ = bin;
}

fn run_lldb(init: &Path, target: &[&std::ffi::OsStr], sleeper: u64) -> String {
    let load = std::fs::read_to_string(init).expect("read lldb-init output");
    let import = load
        .lines()
        .find(|l| l.starts_with("command script import "))
        .expect("lldb-init prints a command script import line")
        .to_string();
    let mut cmd = Command::new("lldb-19");
    cmd.arg("--no-lldbinit").arg("--batch").args(target);
    cmd.arg("-o").arg(import);
    let mut wrap = |name: &str, c: &str| {
        cmd.arg("-o").arg(format!("script print('BEGIN {name}')"));
        cmd.arg("-o").arg(c);
        cmd.arg("-o").arg(format!("script print('END {name}')"));
    };
    wrap("tasks", "async tasks");
    wrap("bt-all", "async bt all");
    wrap("bt-one", &format!("async-bt {sleeper}"));
    wrap("hazards", "async-hazards");
    // Last: lldb's batch mode stops at the first failing command.
    cmd.arg("-o").arg("async bt 999999");
    let out = cmd
        .env_remove("TASKSCOPE_BIN")
        .stdin(Stdio::null())
        .output()
        .expect("run lldb-19");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stdout.contains("Traceback") && !stderr.contains("Traceback"),
        "the front end raised:\n{stdout}\n{stderr}"
    );
    // lldb echoes each command line; drop the echoes so sections hold output only.
    let cleaned: String = stdout
        .lines()
        .filter(|l| !l.starts_with("(lldb) "))
        .map(|l| format!("{l}\n"))
        .collect();
    format!("{cleaned}\n--- stderr ---\n{stderr}")
}

#[test]
fn gdb_auto_loads_the_front_end_for_binaries_that_link_taskscope() {
    if !have("gdb", "the gdb front-end tests") {
        return;
    }
    // The taskscope binary links the taskscope crate, whose
    // `.debug_gdb_scripts` entry gdb runs once the path is trusted.
    let bin = env!("CARGO_BIN_EXE_taskscope");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-iex"])
        .arg(format!("add-auto-load-safe-path {bin}"))
        .args(["-ex", "info auto-load python-scripts"])
        .args(["-ex", "help async-bt"])
        .arg(bin)
        .env("TASKSCOPE_BIN", bin)
        .env("XDG_CACHE_HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run gdb");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("loading taskscope support"), "{text}");
    assert!(
        text.contains("Logical backtrace of an async task"),
        "async-bt is defined:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("Yes") && l.contains("taskscope")),
        "gdb lists the embedded script as loaded:\n{text}"
    );
}
