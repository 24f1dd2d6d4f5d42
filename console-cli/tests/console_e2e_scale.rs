//! End to end at scale: the real `taskscope console` in tmux against a live
//! app with 100k parked tasks (the size tokio-console goes blank at ~20k).
//! It must show all of them and answer a sort key quickly.

mod console_tmux;

use std::time::{Duration, Instant};

use console_tmux::{tmux_available, Tmux};

const BIN: &str = env!("CARGO_BIN_EXE_taskscope");
const TASKS: usize = 100_000;

#[test]
fn console_shows_100k_live_tasks_and_sorts_them_quickly() {
    if !tmux_available() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the app's runtime");
    let guard = {
        let _enter = runtime.enter();
        taskscope::Builder::default().bind("127.0.0.1:0").init()
    };
    let addr = guard.local_addr().expect("taskscope listens");
    let (release, parked) = tokio::sync::watch::channel(false);
    runtime.block_on(async {
        for i in 0..TASKS {
            let mut parked = parked.clone();
            tokio::task::Builder::new()
                .name(&format!("parked-{i}"))
                .spawn(async move {
                    let _ = parked.changed().await;
                })
                .expect("spawn a parked task");
        }
        // Let every task reach its first poll.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });

    let dir = tempfile::tempdir().expect("a temp dir");
    let tmux = Tmux::start(BIN, &["console", &format!("http://{addr}")], dir.path());
    let screen = tmux.wait_for(
        &["parked-", "taskscope.v1 · connected"],
        Duration::from_secs(120),
    );
    let shown = tmux.wait_for(&[&format!("{TASKS} live tasks")], Duration::from_secs(120));
    assert!(shown.contains("parked-"), "{screen}");

    // Key to screen: sort by name, and wait for the header to say so.
    let started = Instant::now();
    tmux.keys(&["4"]);
    let screen = tmux.wait_for(&["NAME↑", "parked-0 "], Duration::from_secs(10));
    let key_to_screen = started.elapsed();
    eprintln!(
        "100k tasks: sort key to screen in {key_to_screen:?} (includes tmux polling, 100 ms steps)"
    );
    assert!(
        key_to_screen < Duration::from_secs(2),
        "sorting 100k tasks took {key_to_screen:?}:\n{screen}"
    );

    // While the app keeps publishing, the console stays under one core.
    let pid = console_pid(&addr.to_string());
    let cpu = cpu_seconds(pid);
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let cores = (cpu_seconds(pid) - cpu) / wall.elapsed().as_secs_f64();
    eprintln!("100k tasks: console uses {cores:.2} cores while watching");
    assert!(cores <= 1.0, "the console used {cores:.2} cores");

    tmux.keys(&["q"]);
    tmux.wait_for(&["[exited with status 0]"], Duration::from_secs(30));
    let _ = release.send(true);
    runtime.shutdown_background();
    drop(guard);
}

/// The pid of the console process watching `addr`.
fn console_pid(addr: &str) -> u32 {
    let needle = format!("console\0http://{addr}");
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with(BIN) && cmdline.contains(&needle) {
            return pid;
        }
    }
    panic!("no console process for {addr}");
}

/// User + system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}
