//! Driving the real `taskscope` binary inside tmux: start it in a detached
//! 200×50 session on a private tmux server, send keys, and read the screen
//! with `capture-pane -p`.
//!
//! Without tmux the end-to-end tests are skipped with a message, unless the
//! `CI` environment variable is set: then a missing tmux is a failure.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// Whether tmux can run here; panics under CI when it cannot.
pub fn tmux_available() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("tmux is required for the console end-to-end tests (CI is set)");
        }
        eprintln!("skipping: tmux is not installed (set CI=1 to make this a failure)");
    }
    ok
}

/// A tmux server with one session running a command.
pub struct Tmux {
    socket: String,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Tmux {
    /// Runs `program args…` in `cwd` in a new 200×50 session. The pane stays
    /// open after the program exits and shows its exit status.
    pub fn start(program: &str, args: &[&str], cwd: &Path) -> Tmux {
        let socket = format!(
            "taskscope-e2e-{}-{}",
            std::process::id(),
            SESSIONS.fetch_add(1, Ordering::Relaxed)
        );
        let mut line = quote(program);
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        line.push_str("; echo \"[exited with status $?]\"; sleep 600");
        let status = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "200", "-y", "50", "-s", "e2e", "-c"])
            .arg(cwd)
            .args(["-e", "TERM=xterm-256color", &line])
            .status()
            .expect("run tmux new-session");
        assert!(status.success(), "tmux new-session failed: {status}");
        Tmux { socket }
    }

    /// The visible screen as text.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "e2e"])
            .output()
            .expect("run tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen contains every one of `needles`; panics with
    /// the last screen after `timeout`.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if needles.iter().all(|n| screen.contains(n)) {
                return screen;
            }
            if Instant::now() > deadline {
                let missing: Vec<&&str> = needles.iter().filter(|n| !screen.contains(*n)).collect();
                panic!("after {timeout:?} the screen lacks {missing:?}:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends keys (tmux key names: `Enter`, `Escape`, `Down`, or literal text).
    pub fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "e2e"])
            .args(keys)
            .status()
            .expect("run tmux send-keys");
        assert!(status.success());
    }

    /// Sends literal text (no key-name lookup).
    pub fn type_text(&self, text: &str) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-l", "-t", "e2e", text])
            .status()
            .expect("run tmux send-keys");
        assert!(status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}
