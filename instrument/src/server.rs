//! The server thread: publisher loop, recorder, and the gRPC services.
//!
//! Everything here runs on one dedicated OS thread with its own
//! current-thread tokio runtime, so [`crate::init`] works before any
//! runtime exists and from inside one, and nothing here can block the app.
//! The thread is marked ignored: its own tasks, spans and resources never
//! show up in the registry.
//!
//! Both `rs.tokio.console.instrument.Instrument` (what the stock
//! `tokio-console` speaks) and `taskscope.v1.Taskscope` are served on the
//! same listener (TCP or Unix socket). Each client gets its own task fed
//! from a broadcast channel of publish ticks; a client that falls behind
//! is sent the full state again, and a broken peer only ends its own
//! connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console_api as capi;
use futures::Stream;
use taskscope_wire::model::{self, Hazard};
use taskscope_wire::proto;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::publish::{tick_to_update, Publisher, Tick};

/// A listener bound in the caller's thread (so errors are reported by
/// `init`), handed to the server thread.
pub(crate) enum Listener {
    Tcp(std::net::TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

/// State shared by the publisher loop and the gRPC services.
pub(crate) struct Shared {
    pub publisher: Mutex<Publisher>,
    pub ticks: broadcast::Sender<Arc<Vec<Tick>>>,
    pub hazards: broadcast::Sender<Hazard>,
    pub paused: watch::Sender<bool>,
    /// Set while any client is connected (then ticks carry models).
    pub interval: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Default chunk size for `taskscope.v1` full states.
const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
/// Tasks per console-api message: keeps messages far below the 4 MiB limit.
const CONSOLE_TASKS_PER_MESSAGE: usize = 4000;

/// Writes recording frames; errors are reported once and turn into
/// dropped-frame counts, never into app failures.
pub(crate) struct Recorder {
    writer: Option<taskscope_wire::recording::RecordingWriter<std::io::BufWriter<std::fs::File>>>,
    path: PathBuf,
    started: bool,
}

impl Recorder {
    pub(crate) fn create(path: PathBuf) -> Option<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!(
                    "taskscope: cannot create the recording directory {}: {e}",
                    dir.display()
                );
                return None;
            }
        }
        match std::fs::File::create(&path) {
            Ok(f) => {
                match taskscope_wire::recording::RecordingWriter::new(std::io::BufWriter::new(f)) {
                    Ok(w) => Some(Self {
                        writer: Some(w),
                        path,
                        started: false,
                    }),
                    Err(e) => {
                        eprintln!("taskscope: cannot start recording {}: {e}", path.display());
                        None
                    }
                }
            }
            Err(e) => {
                eprintln!("taskscope: cannot create recording {}: {e}", path.display());
                None
            }
        }
    }

    /// Writes frames; returns how many were lost.
    fn write(&mut self, updates: &[proto::Update]) -> u64 {
        let Some(w) = self.writer.as_mut() else {
            return updates.len() as u64;
        };
        for (i, u) in updates.iter().enumerate() {
            if let Err(e) = w.write_update(u) {
                eprintln!("taskscope: recording {} stopped: {e}", self.path.display());
                self.writer = None;
                return (updates.len() - i) as u64;
            }
        }
        0
    }

    fn flush(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            if let Err(e) = w.flush() {
                eprintln!("taskscope: flushing recording {}: {e}", self.path.display());
            }
        }
    }
}

/// The publisher loop: ticks, broadcasts, records. Returns after a final
/// tick once `stop` is notified.
pub(crate) async fn publish_loop(
    shared: Arc<Shared>,
    mut recorder: Option<Recorder>,
    pressure: Arc<tokio::sync::Notify>,
    stop: Arc<tokio::sync::Notify>,
) {
    if let Some(r) = recorder.as_mut() {
        let state = lock(&shared.publisher).state(true, true);
        let frames = taskscope_wire::state::full_state_updates(
            &state,
            crate::clock::now(),
            DEFAULT_CHUNK_BYTES,
        );
        let lost = r.write(&frames);
        lock(&shared.publisher).dropped_recording_frames += lost;
        r.started = true;
        r.flush();
    }
    let mut interval = tokio::time::interval(shared.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut last = false;
    let mut min_gap = Duration::from_millis(50).min(shared.interval);
    let mut last_tick = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = pressure.notified() => {
                // Early publishes are spaced by what walking the registry
                // costs (`Publisher::early_gap`).
                tokio::select! {
                    _ = tokio::time::sleep_until(last_tick + min_gap) => {}
                    _ = stop.notified() => { last = true; }
                }
            }
            _ = stop.notified() => { last = true; }
        }
        last_tick = tokio::time::Instant::now();
        let paused = *shared.paused.borrow();
        let consumers = shared.ticks.receiver_count() > 0
            || recorder.is_some()
            || shared.hazards.receiver_count() > 0;
        // Pausing holds back what clients are sent, not eviction: console-api
        // carries no evictions, and a resumed client gets the full state.
        let (ticks, gap) = {
            let mut p = lock(&shared.publisher);
            (p.tick(consumers, true), p.early_gap())
        };
        min_gap = gap.min(shared.interval);
        if !ticks.is_empty() {
            if let Some(r) = recorder.as_mut() {
                let updates: Vec<proto::Update> =
                    ticks.iter().map(|t| tick_to_update(t, paused)).collect();
                let lost = r.write(&updates);
                lock(&shared.publisher).dropped_recording_frames += lost;
                r.flush();
            }
            for t in &ticks {
                for h in &t.new_hazards {
                    let _ = shared.hazards.send(h.clone());
                }
            }
            let _ = shared.ticks.send(Arc::new(ticks));
        }
        if last {
            if let Some(r) = recorder.as_mut() {
                r.flush();
            }
            return;
        }
    }
}

/// Runs the gRPC server on `listener` until `stop`.
pub(crate) async fn serve(shared: Arc<Shared>, listener: Listener, stop: Arc<tokio::sync::Notify>) {
    use tokio_stream::StreamExt;
    let console = capi::instrument::instrument_server::InstrumentServer::new(ConsoleService {
        shared: shared.clone(),
    });
    let taskscope = proto::taskscope_server::TaskscopeServer::new(TaskscopeService { shared });
    let router = tonic::transport::Server::builder()
        .add_service(console)
        .add_service(taskscope);
    let signal = async move { stop.notified().await };
    let result = match listener {
        Listener::Tcp(l) => {
            let l = match l
                .set_nonblocking(true)
                .and_then(|_| tokio::net::TcpListener::from_std(l))
            {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("taskscope: cannot serve: {e}");
                    return;
                }
            };
            // Accept errors (EMFILE, a peer resetting mid-handshake) skip
            // that connection instead of stopping the server.
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l).filter_map(|c| {
                let c = c.ok()?;
                let _ = c.set_nodelay(true);
                Some(Ok::<_, std::io::Error>(c))
            });
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
        #[cfg(unix)]
        Listener::Unix(l, path) => {
            let l = match l
                .set_nonblocking(true)
                .and_then(|_| tokio::net::UnixListener::from_std(l))
            {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("taskscope: cannot serve on {}: {e}", path.display());
                    return;
                }
            };
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l)
                .filter_map(|c| c.ok().map(Ok::<_, std::io::Error>));
            let r = router.serve_with_incoming_shutdown(incoming, signal).await;
            let _ = std::fs::remove_file(&path);
            r
        }
    };
    if let Err(e) = result {
        eprintln!("taskscope: server stopped: {e}");
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

// ---------------------------------------------------------------------
// console-api
// ---------------------------------------------------------------------

struct ConsoleService {
    shared: Arc<Shared>,
}

use taskscope_wire::console::{
    ASYNC_OP_METADATA_ID as META_ASYNC_OP, RESOURCE_METADATA_ID as META_RESOURCE, TASK_METADATA_ID,
};

fn task_meta(_t: &model::Task) -> u64 {
    TASK_METADATA_ID
}

/// Console updates for a whole state, split so no message nears 4 MiB.
fn console_full_updates(state: &model::State) -> Vec<capi::instrument::Update> {
    use taskscope_wire::console as cv;
    let now = state.updated_at.map(Into::into);
    let mut out = Vec::new();
    let tasks: Vec<&model::Task> = state.tasks.values().collect();
    let dropped = state.dropped.task_events;
    let mut chunks = tasks.chunks(CONSOLE_TASKS_PER_MESSAGE).peekable();
    let mut first = true;
    loop {
        let chunk = chunks.next().unwrap_or(&[]);
        let mut u = capi::instrument::Update {
            now,
            task_update: Some(capi::tasks::TaskUpdate {
                new_tasks: chunk
                    .iter()
                    .map(|t| cv::task_to_console(t, task_meta(t)))
                    .collect(),
                stats_update: chunk
                    .iter()
                    .map(|t| (t.id, cv::task_stats_to_console(t)))
                    .collect(),
                dropped_events: dropped,
            }),
            resource_update: None,
            async_op_update: None,
            new_metadata: None,
        };
        if first {
            u.new_metadata = Some(cv::standard_metadata());
            u.resource_update = Some(capi::resources::ResourceUpdate {
                new_resources: state
                    .resources
                    .values()
                    .map(|r| cv::resource_to_console(r, META_RESOURCE))
                    .collect(),
                stats_update: state
                    .resources
                    .values()
                    .map(|r| (r.id, cv::resource_stats_to_console(r, META_RESOURCE)))
                    .collect(),
                new_poll_ops: Vec::new(),
                dropped_events: state.dropped.resource_events,
            });
            u.async_op_update = Some(capi::async_ops::AsyncOpUpdate {
                new_async_ops: state
                    .async_ops
                    .values()
                    .map(|o| cv::async_op_to_console(o, META_ASYNC_OP))
                    .collect(),
                stats_update: state
                    .async_ops
                    .values()
                    .map(|o| (o.id, cv::async_op_stats_to_console(o, META_ASYNC_OP)))
                    .collect(),
                dropped_events: state.dropped.async_op_events,
            });
            first = false;
        }
        out.push(u);
        if chunks.peek().is_none() {
            break;
        }
    }
    out
}

/// Ids a console client has been sent.
#[derive(Default)]
struct Known {
    tasks: std::collections::HashSet<u64>,
    resources: std::collections::HashSet<u64>,
    async_ops: std::collections::HashSet<u64>,
}

/// Console updates for one publish tick. Tasks the client has not seen
/// are sent as new tasks, the rest as stats only.
fn console_tick_updates(t: &Tick, known: &mut Known) -> capi::instrument::Update {
    use taskscope_wire::console as cv;
    let mut new_tasks = Vec::new();
    let mut stats = HashMap::new();
    for task in &t.tasks {
        if known.tasks.insert(task.id) {
            new_tasks.push(cv::task_to_console(task, task_meta(task)));
        }
        stats.insert(task.id, cv::task_stats_to_console(task));
    }
    for id in &t.evicted_tasks {
        known.tasks.remove(id);
    }
    for id in &t.evicted_resources {
        known.resources.remove(id);
    }
    for id in &t.evicted_async_ops {
        known.async_ops.remove(id);
    }
    capi::instrument::Update {
        now: Some(t.at.into()),
        task_update: Some(capi::tasks::TaskUpdate {
            new_tasks,
            stats_update: stats,
            dropped_events: t.dropped.task_events,
        }),
        resource_update: Some(capi::resources::ResourceUpdate {
            new_resources: t
                .resources
                .iter()
                .filter(|r| known.resources.insert(r.id))
                .map(|r| cv::resource_to_console(r, META_RESOURCE))
                .collect(),
            stats_update: t
                .resources
                .iter()
                .map(|r| (r.id, cv::resource_stats_to_console(r, META_RESOURCE)))
                .collect(),
            new_poll_ops: Vec::new(),
            dropped_events: t.dropped.resource_events,
        }),
        async_op_update: Some(capi::async_ops::AsyncOpUpdate {
            new_async_ops: t
                .async_ops
                .iter()
                .filter(|o| known.async_ops.insert(o.id))
                .map(|o| cv::async_op_to_console(o, META_ASYNC_OP))
                .collect(),
            stats_update: t
                .async_ops
                .iter()
                .map(|o| (o.id, cv::async_op_stats_to_console(o, META_ASYNC_OP)))
                .collect(),
            dropped_events: t.dropped.async_op_events,
        }),
        new_metadata: None,
    }
}

#[tonic::async_trait]
impl capi::instrument::instrument_server::Instrument for ConsoleService {
    type WatchUpdatesStream = BoxStream<capi::instrument::Update>;
    type WatchTaskDetailsStream = BoxStream<capi::tasks::TaskDetails>;
    type WatchStateStream = BoxStream<capi::instrument::State>;

    async fn watch_updates(
        &self,
        _req: Request<capi::instrument::InstrumentRequest>,
    ) -> Result<Response<Self::WatchUpdatesStream>, Status> {
        let shared = self.shared.clone();
        let mut ticks = shared.ticks.subscribe();
        let mut paused = shared.paused.subscribe();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut known = Known::default();
            let mut send_full = true;
            loop {
                if send_full && !*paused.borrow() {
                    let state = lock(&shared.publisher).state(true, false);
                    known = Known {
                        tasks: state.tasks.keys().copied().collect(),
                        resources: state.resources.keys().copied().collect(),
                        async_ops: state.async_ops.keys().copied().collect(),
                    };
                    for u in console_full_updates(&state) {
                        if tx.send(Ok(u)).await.is_err() {
                            return;
                        }
                    }
                    send_full = false;
                }
                tokio::select! {
                    r = ticks.recv() => match r {
                        Ok(batch) => {
                            if *paused.borrow() {
                                // Missed while paused: everything again on resume.
                                send_full = true;
                                continue;
                            }
                            for t in batch.iter() {
                                if tx.send(Ok(console_tick_updates(t, &mut known))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => send_full = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    r = paused.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch_task_details(
        &self,
        req: Request<capi::instrument::TaskDetailsRequest>,
    ) -> Result<Response<Self::WatchTaskDetailsStream>, Status> {
        let id = req
            .into_inner()
            .id
            .map(|i| i.id)
            .ok_or_else(|| Status::invalid_argument("missing task id"))?;
        let find = move || {
            crate::task::registry()
                .all()
                .into_iter()
                .find(|c| c.id == id)
        };
        let Some(cell) = find() else {
            return Err(Status::not_found(format!("no task with id {id}")));
        };
        let details = move |cell: &crate::task::TaskCell| {
            let mut t = cell.to_model(true);
            t.poll_histogram.get_or_insert_with(Default::default);
            t.scheduled_histogram.get_or_insert_with(Default::default);
            taskscope_wire::console::task_details_to_console(&t, crate::clock::now())
        };
        let mut ticks = self.shared.ticks.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            if tx.send(Ok(details(&cell))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    r = ticks.recv() => match r {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            if tx.send(Ok(details(&cell))).await.is_err() {
                                return;
                            }
                            if cell.is_done() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch_state(
        &self,
        _req: Request<capi::instrument::StateRequest>,
    ) -> Result<Response<Self::WatchStateStream>, Status> {
        let mut paused = self.shared.paused.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let p = *paused.borrow_and_update();
                let temporality = if p {
                    capi::instrument::Temporality::Paused
                } else {
                    capi::instrument::Temporality::Live
                };
                let msg = capi::instrument::State {
                    temporality: temporality as i32,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                tokio::select! {
                    r = paused.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pause(
        &self,
        _req: Request<capi::instrument::PauseRequest>,
    ) -> Result<Response<capi::instrument::PauseResponse>, Status> {
        self.shared.paused.send_replace(true);
        Ok(Response::new(capi::instrument::PauseResponse {}))
    }

    async fn resume(
        &self,
        _req: Request<capi::instrument::ResumeRequest>,
    ) -> Result<Response<capi::instrument::ResumeResponse>, Status> {
        self.shared.paused.send_replace(false);
        Ok(Response::new(capi::instrument::ResumeResponse {}))
    }
}

// ---------------------------------------------------------------------
// taskscope.v1
// ---------------------------------------------------------------------

struct TaskscopeService {
    shared: Arc<Shared>,
}

fn chunk_size(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_CHUNK_BYTES,
        n => (n as usize).clamp(16 * 1024, 3 << 20),
    }
}

#[tonic::async_trait]
impl proto::taskscope_server::Taskscope for TaskscopeService {
    type SnapshotStream = BoxStream<proto::Update>;
    type WatchStream = BoxStream<proto::Update>;
    type WatchHazardsStream = BoxStream<proto::Hazard>;

    async fn hello(
        &self,
        _req: Request<proto::HelloRequest>,
    ) -> Result<Response<proto::ProcessInfo>, Status> {
        let p = lock(&self.shared.publisher).process();
        Ok(Response::new((&p).into()))
    }

    async fn snapshot(
        &self,
        req: Request<proto::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let req = req.into_inner();
        let mut state =
            lock(&self.shared.publisher).state_with_hazards(req.include_completed, true);
        state.paused = *self.shared.paused.borrow();
        let updates = taskscope_wire::state::full_state_updates(
            &state,
            crate::clock::now(),
            chunk_size(req.max_chunk_bytes),
        );
        Ok(Response::new(Box::pin(tokio_stream::iter(
            updates.into_iter().map(Ok),
        ))))
    }

    async fn watch(
        &self,
        req: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let chunk = chunk_size(req.max_chunk_bytes);
        let shared = self.shared.clone();
        let mut ticks = shared.ticks.subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut send_full = true;
            loop {
                if send_full {
                    let mut state = lock(&shared.publisher).state_with_hazards(true, true);
                    state.paused = *shared.paused.borrow();
                    for u in taskscope_wire::state::full_state_updates(
                        &state,
                        crate::clock::now(),
                        chunk,
                    ) {
                        if tx.send(Ok(u)).await.is_err() {
                            return;
                        }
                    }
                    send_full = false;
                }
                tokio::select! {
                    r = ticks.recv() => match r {
                        Ok(batch) => {
                            let paused = *shared.paused.borrow();
                            for t in batch.iter() {
                                if tx.send(Ok(tick_to_update(t, paused))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => send_full = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch_hazards(
        &self,
        _req: Request<proto::WatchHazardsRequest>,
    ) -> Result<Response<Self::WatchHazardsStream>, Status> {
        let mut rx_h = self.shared.hazards.subscribe();
        let known: Vec<Hazard> = lock(&self.shared.publisher).hazards().to_vec();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for h in &known {
                if tx.send(Ok(h.into())).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    r = rx_h.recv() => match r {
                        Ok(h) => if tx.send(Ok((&h).into())).await.is_err() { return },
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
