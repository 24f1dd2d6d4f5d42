//! taskscope: see what your async tasks are doing, live and cheaply.
//!
//! ```no_run
//! # // needs a free port, so not run as a doctest
//! #[tokio::main]
//! async fn main() {
//!     let _guard = taskscope::init(); // before or inside the runtime
//!     // ... the app ...
//! } // the guard flushes the recording and stops the server
//! ```
//!
//! Build the app with `RUSTFLAGS="--cfg tokio_unstable"` and tokio's
//! `tracing` feature so that tokio reports its tasks. Then point
//! `tokio-console` (or `taskscope console`) at `127.0.0.1:6669`.
//!
//! # Two ways in
//! * **tracing** — [`TaskscopeLayer`] reads tokio's own instrumentation:
//!   every `tokio::spawn`ed task with its name, spawn location, polls, wakes,
//!   waker clones/drops, plus tokio's resources (`Mutex`, `Semaphore`,
//!   `RwLock`, channels, …; not timers) and the async operations tasks wait
//!   on. User spans (`#[tracing::instrument]` async fns) give each task a
//!   logical backtrace.
//! * **wrapper** — [`instrument`]`(fut)` observes one future on any executor
//!   (smol, async-std, futures' executors, your own) with a waker of its own.
//!   [`Builder::init_without_tracing`] serves wrapped tasks without installing
//!   a tracing subscriber.
//!
//! # Design
//! * **No queue on the hot path** (`task` module docs): the spawning thread
//!   inserts a fixed-size cell into a sharded registry; polls and waker events
//!   are relaxed atomics on that cell. Spawn events are never dropped, and
//!   nothing the app does waits for taskscope.
//! * **Bounded memory**: about [`TASK_CELL_SIZE`] bytes per task (two 64-bucket
//!   histograms instead of HdrHistograms), finished tasks are evicted after
//!   `retention` or beyond `max_retained_completed`, always after at least
//!   one publish has carried their final state.
//! * **Runtime identity**: each task records the tokio runtime it was
//!   spawned on (`Handle::id()`, `tokio_unstable`), and every runtime seen
//!   is listed in the process info with its flavor and worker count.
//! * **A clock that never runs backwards** (`clock` module docs): TSC
//!   timestamps, recalibrated by slewing, never by jumping.
//! * **One server thread** (`server` module docs) with its own
//!   current-thread runtime publishes once per `publish_interval`, writes the
//!   recording, and serves console-api's `Instrument` and `taskscope.v1`.
//!
//! * **Readable from a core dump**: [`debug_header::TASKSCOPE_REGISTRY`], in
//!   the `taskscope_registry` linker section, describes the registry's
//!   layout (field offsets, shard arrays) so a dump reader needs no DWARF.
//!
//! # Configuration
//! [`Builder::from_env`] reads `TASKSCOPE_BIND` (`127.0.0.1:6669` by default,
//! `unix:/path` for a Unix socket, `off` for no server) and
//! `TASKSCOPE_RECORD` (a recording file path; `{pid}` in it becomes the
//! process id) or `TASKSCOPE_RECORD_DIR` (a directory: the recording is
//! `<dir>/<exe-name>-<pid>.tsrec`, the contract `taskscope ci` relies on).
//! A port already taken or a bad
//! address is reported on stderr; the app keeps running and recording still
//! works. Binding to a non-loopback address works but warns: anyone who can
//! reach it can read task names and fields.

#![debugger_visualizer(gdb_script_file = "../../gdb-scripts/taskscope_autoload.py")]

mod backtrace;
mod clock;
pub mod debug_header;
mod layer;
mod publish;
mod resource;
mod runtime;
mod server;
mod span_table;
mod task;
mod wrapper;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use layer::{interesting_callsite, TaskscopeLayer};
pub use task::{SHARDS, TASK_CELL_SIZE};
pub use wrapper::{instrument, Instrumented, WRAPPED_ID_BIT};

/// Installs taskscope as the global tracing subscriber and starts the
/// server and recorder configured from the environment
/// (`Builder::default().from_env().init()`).
pub fn init() -> Guard {
    Builder::default().from_env().init()
}

/// Configures taskscope. See the crate docs for the environment variables.
#[derive(Debug, Clone)]
pub struct Builder {
    bind: Option<String>,
    record: Option<PathBuf>,
    publish_interval: Duration,
    retention: Duration,
    max_retained_completed: usize,
    event_buffer_capacity: usize,
    hazards: taskscope_wire::hazards::HazardConfig,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            bind: Some(DEFAULT_BIND.to_string()),
            record: None,
            publish_interval: Duration::from_secs(1),
            retention: Duration::from_secs(10),
            max_retained_completed: 10_000,
            event_buffer_capacity: 64,
            hazards: Default::default(),
        }
    }
}

/// Where the server listens unless told otherwise.
pub const DEFAULT_BIND: &str = "127.0.0.1:6669";

/// Why the server could not start (reported on stderr by `init`; the app
/// continues).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("cannot parse bind address {addr:?} (expected host:port, unix:/path or off)")]
    BadAddress { addr: String },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the taskscope server thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl Builder {
    /// Applies `TASKSCOPE_BIND`, `TASKSCOPE_RECORD` and
    /// `TASKSCOPE_RECORD_DIR` when set.
    ///
    /// * `TASKSCOPE_BIND`: where the server listens (see [`bind`](Self::bind)).
    /// * `TASKSCOPE_RECORD=path`: record to `path`; every `{pid}` in it is
    ///   replaced by this process's id, so that several processes started
    ///   with the same environment write separate files.
    /// * `TASKSCOPE_RECORD_DIR=dir` (used when `TASKSCOPE_RECORD` is unset or
    ///   empty): record to `dir/<exe-name>-<pid>.tsrec`, where `<exe-name>`
    ///   is the file name of the running executable without its extension.
    ///   `dir` is created if it does not exist. `taskscope ci` relies on
    ///   exactly this name.
    pub fn from_env(mut self) -> Self {
        if let Ok(b) = std::env::var("TASKSCOPE_BIND") {
            self = self.bind(b.trim());
        }
        let record = std::env::var_os("TASKSCOPE_RECORD");
        let dir = std::env::var_os("TASKSCOPE_RECORD_DIR");
        if let Some(path) = record_path(record.as_deref(), dir.as_deref(), std::process::id()) {
            self = self.record(path);
        }
        self
    }

    /// `"127.0.0.1:0"`, `"[::1]:6669"`, `"unix:/tmp/x.sock"`, or `"off"`.
    pub fn bind(mut self, addr: &str) -> Self {
        self.bind = if addr.eq_ignore_ascii_case("off") || addr.is_empty() {
            None
        } else {
            Some(addr.to_string())
        };
        self
    }

    /// Records every publish to `path` (first frame: full state with
    /// process info; then one delta per publish interval).
    pub fn record(mut self, path: impl Into<PathBuf>) -> Self {
        self.record = Some(path.into());
        self
    }

    /// How often state is published (default 1 s).
    pub fn publish_interval(mut self, d: Duration) -> Self {
        self.publish_interval = d.max(Duration::from_millis(10));
        self
    }

    /// How long finished tasks stay visible (default 10 s).
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// At most this many finished tasks are kept (default 10 000); reaching
    /// it also triggers an early publish.
    pub fn max_retained_completed(mut self, n: usize) -> Self {
        self.max_retained_completed = n.max(1);
        self
    }

    /// Publish ticks buffered per client (default 64). A client further
    /// behind is sent the full state again instead.
    pub fn event_buffer_capacity(mut self, n: usize) -> Self {
        self.event_buffer_capacity = n.max(1);
        self
    }

    /// Thresholds of the hazard detectors run at every publish.
    pub fn hazard_config(mut self, config: taskscope_wire::hazards::HazardConfig) -> Self {
        self.hazards = config;
        self
    }

    /// The layer to compose yourself, and the guard that runs the server:
    /// `tracing_subscriber::registry().with(layer).with(fmt::layer()).init()`.
    /// Put the taskscope layer first (innermost) so the other layers keep
    /// seeing every callsite.
    ///
    /// Such a layer filters nothing, so that it takes nothing away from the
    /// other layers: whatever they enable is built and dispatched. Alone
    /// under a registry that is every callsite, at a cost every task pays
    /// (tokio's `Sleep` alone opens three spans per sleep); use
    /// [`init`](Self::init) then, which enables only what taskscope reads.
    pub fn build(self) -> (TaskscopeLayer, Guard) {
        let guard = self.start();
        (TaskscopeLayer { composed: true }, guard)
    }

    /// Installs `registry().with(layer)` as the global default subscriber
    /// (warns if one is already set) and starts the server and recorder.
    pub fn init(self) -> Guard {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(TaskscopeLayer { composed: false });
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            eprintln!(
                "taskscope: a global tracing subscriber is already set; tokio tasks will not be seen \
                 (compose taskscope::Builder::build()'s layer into it instead)"
            );
        }
        self.start()
    }

    /// Starts the server and recorder without any tracing subscriber: for
    /// apps that only use the future wrapper ([`instrument`]).
    pub fn init_without_tracing(self) -> Guard {
        self.start()
    }

    fn start(self) -> Guard {
        clock::start();
        let listener = match self.bind.as_deref().map(bind) {
            None => None,
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => {
                eprintln!("taskscope: {e}; serving nothing, the app continues");
                None
            }
        };
        let local_addr = match &listener {
            Some(server::Listener::Tcp(l)) => l.local_addr().ok(),
            _ => None,
        };
        let recorder = self.record.clone().and_then(server::Recorder::create);
        // Even with nothing to serve, the publisher runs: it is what evicts
        // finished tasks.
        let publisher = publish::Publisher::new(publish::PublishConfig {
            retention: self.retention,
            max_retained_completed: self.max_retained_completed,
            hazards: self.hazards.clone(),
        });
        let shared = Arc::new(server::Shared {
            publisher: std::sync::Mutex::new(publisher),
            ticks: tokio::sync::broadcast::channel(self.event_buffer_capacity).0,
            hazards: tokio::sync::broadcast::channel(256).0,
            paused: tokio::sync::watch::channel(false).0,
            interval: self.publish_interval,
        });
        let pressure = task::registry()
            .pressure
            .install(self.max_retained_completed);
        let stop_publisher = Arc::new(tokio::sync::Notify::new());
        let stop_server = Arc::new(tokio::sync::Notify::new());
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (sp, ss) = (stop_publisher.clone(), stop_server.clone());
        let spawned = std::thread::Builder::new()
            .name("taskscope".into())
            .spawn(move || {
                layer::ignore_this_thread();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("taskscope: cannot start the server runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let server = listener
                        .map(|l| tokio::spawn(server::serve(shared.clone(), l, ss.clone())));
                    server::publish_loop(shared, recorder, pressure, sp).await;
                    ss.notify_one();
                    if let Some(s) = server {
                        let _ = tokio::time::timeout(Duration::from_secs(1), s).await;
                    }
                });
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => {
                publish::set_running(true);
                Guard {
                    local_addr,
                    stop: Some(GuardStop {
                        stop_publisher,
                        done: done_rx,
                    }),
                }
            }
            Err(e) => {
                eprintln!("taskscope: {}", ServeError::Thread(e));
                Guard {
                    local_addr: None,
                    stop: None,
                }
            }
        }
    }
}

fn bind(addr: &str) -> Result<server::Listener, ServeError> {
    if let Some(path) = addr.strip_prefix("unix:") {
        #[cfg(unix)]
        {
            let path = PathBuf::from(path);
            // A stale socket file from an earlier run would make bind fail.
            if std::fs::symlink_metadata(&path)
                .map(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                })
                .unwrap_or(false)
                && std::os::unix::net::UnixStream::connect(&path).is_err()
            {
                let _ = std::fs::remove_file(&path);
            }
            return std::os::unix::net::UnixListener::bind(&path)
                .map(|l| server::Listener::Unix(l, path))
                .map_err(|source| ServeError::Bind {
                    addr: addr.to_string(),
                    source,
                });
        }
        #[cfg(not(unix))]
        return Err(ServeError::BadAddress {
            addr: addr.to_string(),
        });
    }
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|_| ServeError::BadAddress {
            addr: addr.to_string(),
        })?
        .collect();
    let Some(first) = addrs.first() else {
        return Err(ServeError::BadAddress {
            addr: addr.to_string(),
        });
    };
    if !first.ip().is_loopback() {
        eprintln!(
            "taskscope: warning: serving on non-loopback address {first}: anyone who can reach it can read task names and fields"
        );
    }
    std::net::TcpListener::bind(&addrs[..])
        .map(server::Listener::Tcp)
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

struct GuardStop {
    stop_publisher: Arc<tokio::sync::Notify>,
    done: std::sync::mpsc::Receiver<()>,
}

/// The recording path the environment asks for (see
/// [`Builder::from_env`]): `record` with `{pid}` replaced, else
/// `dir/<exe-name>-<pid>.tsrec`.
fn record_path(
    record: Option<&std::ffi::OsStr>,
    dir: Option<&std::ffi::OsStr>,
    pid: u32,
) -> Option<PathBuf> {
    if let Some(r) = record.filter(|r| !r.is_empty()) {
        return Some(match r.to_str() {
            Some(s) => PathBuf::from(s.replace("{pid}", &pid.to_string())),
            // Not UTF-8: used as given (no `{pid}` can be found reliably).
            None => PathBuf::from(r),
        });
    }
    let dir = PathBuf::from(dir.filter(|d| !d.is_empty())?);
    Some(dir.join(format!("{}-{pid}.tsrec", exe_name())))
}

/// The running executable's file name without extension (`process` when
/// it cannot be told).
fn exe_name() -> String {
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
    let from_arg0 = || {
        std::env::args_os().next().and_then(|a| {
            std::path::Path::new(&a)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
    };
    from_exe
        .or_else(from_arg0)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "process".to_string())
}

/// Keeps the server and recorder running. Dropping it publishes a final
/// update, flushes the recording completely and stops the server (waiting
/// at most a few seconds).
#[must_use = "dropping the guard stops the server and ends the recording"]
pub struct Guard {
    local_addr: Option<SocketAddr>,
    stop: Option<GuardStop>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Guard {
    /// The TCP address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // New tasks are not tracked once nothing evicts them.
            publish::set_running(false);
            stop.stop_publisher.notify_one();
            let _ = stop.done.recv_timeout(Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn record_path_replaces_pid_and_names_files_in_the_record_dir() {
        let p = record_path(Some(OsStr::new("/tmp/app-{pid}.tsrec")), None, 42);
        assert_eq!(p, Some(PathBuf::from("/tmp/app-42.tsrec")));
        let p = record_path(None, Some(OsStr::new("/rec")), 7).expect("a path");
        assert_eq!(p.parent(), Some(std::path::Path::new("/rec")));
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert_eq!(name, format!("{}-7.tsrec", exe_name()));
        // TASKSCOPE_RECORD wins over TASKSCOPE_RECORD_DIR; empty means unset.
        let p = record_path(Some(OsStr::new("x.tsrec")), Some(OsStr::new("/rec")), 7);
        assert_eq!(p, Some(PathBuf::from("x.tsrec")));
        let p = record_path(Some(OsStr::new("")), Some(OsStr::new("")), 7);
        assert_eq!(p, None);
    }
}
