//! The embedded demo app behind `taskscope demo`: a small tokio service with
//! real hazards in it, instrumented with taskscope, so a first-time user sees
//! every view light up without writing code.
//!
//! # What runs
//!
//! All tasks are named (`tokio::task::Builder::name`), on a multi-thread
//! runtime, instrumented by `taskscope::Builder::default().bind(addr).init()`.
//!
//! | task | what it shows |
//! |---|---|
//! | `producer`, `consumer` | healthy traffic over a bounded mpsc channel (the consumer is slower, so the producer mostly waits for room); the consumer's `#[tracing::instrument]`ed `handle_order` → `check_stock` → `reserve_stock` nest three deep and it spends most of its time in the innermost, so its backtrace has three frames |
//! | `heartbeat`, `metrics-flush` | periodic tickers |
//! | `transfer-a-to-b`, `transfer-b-to-a` | **deadlock-cycle**: each holds one `tokio::sync::Mutex` and awaits the other's, forever |
//! | `report-renderer` | **blocking-poll**: every second one poll calls `std::thread::sleep(200 ms)` |
//! | `lost-waker` | **lost-waker**: a hand-written future (wrapped with `taskscope::instrument`) returns `Pending` without storing the waker, so nothing can ever wake it |
//! | `slow-lookup` (inside `request-handler`) | **cancelled-midway**: an instrumented lookup dropped by `tokio::time::timeout` after it started |
//! | `doomed-download` | **cancelled-midway**: tasks aborted by the `download-supervisor` while they sleep |
//!
//! The app owns its runtime; [`DemoApp::stop`] (or dropping it) shuts it
//! down without waiting for the deadlocked tasks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    #[error("starting the demo's tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("spawning demo task `{name}`: {source}")]
    Spawn {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("taskscope did not report the address it listens on (is {bind} already in use?)")]
    NoListenAddress { bind: String },
}

/// The running demo: its runtime, its taskscope guard and where it listens.
pub struct DemoApp {
    runtime: Option<tokio::runtime::Runtime>,
    guard: Option<taskscope::Guard>,
    addr: SocketAddr,
}

impl std::fmt::Debug for DemoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoApp")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl DemoApp {
    /// Installs taskscope (serving on `bind`, e.g. `127.0.0.1:6669`; port 0
    /// picks a free one), starts a multi-thread runtime and spawns the demo
    /// tasks.
    pub fn start(bind: &str) -> Result<Self, DemoError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("demo-worker")
            .enable_all()
            .build()
            .map_err(DemoError::Runtime)?;
        // Inside the runtime, so taskscope's server can spawn on it if it wants.
        let guard = {
            let _enter = runtime.enter();
            taskscope::Builder::default().bind(bind).init()
        };
        let addr = guard
            .local_addr()
            .ok_or_else(|| DemoError::NoListenAddress {
                bind: bind.to_string(),
            })?;
        {
            let _enter = runtime.enter();
            spawn_all()?;
        }
        Ok(Self {
            runtime: Some(runtime),
            guard: Some(guard),
            addr,
        })
    }

    /// Where taskscope serves `taskscope.v1` and console-api.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the app: the runtime is shut down in the background (the
    /// deadlocked tasks would never finish), then taskscope is flushed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        drop(self.guard.take());
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Spawns a named task; `track_caller` makes the caller's line the task's
/// spawn location.
#[track_caller]
fn spawn_named<F>(
    name: &'static str,
    fut: F,
) -> Result<tokio::task::JoinHandle<F::Output>, DemoError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::task::Builder::new()
        .name(name)
        .spawn(fut)
        .map_err(|source| DemoError::Spawn { name, source })
}

fn spawn_all() -> Result<(), DemoError> {
    // Healthy traffic.
    let (orders, order_rx) = mpsc::channel::<Order>(8);
    spawn_named("producer", produce_orders(orders))?;
    spawn_named("consumer", consume_orders(order_rx))?;
    spawn_named("heartbeat", tick(Duration::from_millis(500)))?;
    spawn_named("metrics-flush", tick(Duration::from_secs(1)))?;

    // deadlock-cycle
    let account_a = Arc::new(Mutex::new(100_u64));
    let account_b = Arc::new(Mutex::new(100_u64));
    spawn_named(
        "transfer-a-to-b",
        transfer(account_a.clone(), account_b.clone()),
    )?;
    spawn_named("transfer-b-to-a", transfer(account_b, account_a))?;

    // blocking-poll
    spawn_named("report-renderer", render_reports())?;

    // lost-waker
    spawn_named(
        "lost-waker",
        taskscope::instrument(ForgetfulPoll { polls: 0 }).named("lost-waker"),
    )?;

    // cancelled-midway, twice: a timeout dropping a future, an abort dropping a task.
    spawn_named("request-handler", handle_requests())?;
    spawn_named("download-supervisor", supervise_downloads())?;
    Ok(())
}

#[derive(Debug)]
struct Order {
    id: u64,
    quantity: u32,
}

async fn produce_orders(orders: mpsc::Sender<Order>) {
    let mut id = 0;
    loop {
        id += 1;
        let order = Order {
            id,
            quantity: (id % 5) as u32 + 1,
        };
        // The consumer is slower than this: the channel fills up and the
        // producer waits for room (backpressure, not a hazard).
        if orders.send(order).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn consume_orders(mut orders: mpsc::Receiver<Order>) {
    let mut stock = 10_000_u64;
    while let Some(order) = orders.recv().await {
        stock = handle_order(order, stock).await;
    }
}

#[tracing::instrument(skip(order, stock), fields(order.id = order.id))]
async fn handle_order(order: Order, stock: u64) -> u64 {
    let available = check_stock(order.quantity, stock).await;
    if available {
        stock.saturating_sub(u64::from(order.quantity))
    } else {
        stock + 1_000
    }
}

#[tracing::instrument(skip(stock))]
async fn check_stock(quantity: u32, stock: u64) -> bool {
    reserve_stock(quantity).await;
    stock >= u64::from(quantity)
}

#[tracing::instrument]
async fn reserve_stock(quantity: u32) {
    tokio::time::sleep(Duration::from_millis(100 + u64::from(quantity) * 10)).await;
}

async fn tick(period: Duration) {
    let mut interval = tokio::time::interval(period);
    loop {
        interval.tick().await;
    }
}

/// Locks `from`, then (after a moment, so the other transfer has locked its
/// first account) `to`: with two transfers in opposite directions, each waits
/// for the lock the other holds.
async fn transfer(from: Arc<Mutex<u64>>, to: Arc<Mutex<u64>>) {
    let mut from = from.lock().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut to = to.lock().await;
    *from -= 10;
    *to += 10;
}

/// Every second, one poll blocks its worker thread for 200 ms.
async fn render_reports() {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        // The hazard: a synchronous sleep (think: sync I/O, heavy CPU) in a poll.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A hand-written future that forgets to store `cx.waker()` before
/// returning `Pending`: nothing can ever wake it.
struct ForgetfulPoll {
    polls: u32,
}

impl Future for ForgetfulPoll {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        self.polls += 1;
        // The bug: no `cx.waker().clone()` kept anywhere.
        Poll::Pending
    }
}

/// Every 1.5 s, a lookup that takes 1 s is given 300 ms: the timeout drops
/// it half-way.
async fn handle_requests() {
    let mut interval = tokio::time::interval(Duration::from_millis(1_500));
    loop {
        interval.tick().await;
        let lookup = taskscope::instrument(slow_lookup()).named("slow-lookup");
        let _ = tokio::time::timeout(Duration::from_millis(300), lookup).await;
    }
}

async fn slow_lookup() -> u64 {
    tokio::time::sleep(Duration::from_secs(1)).await;
    42
}

/// Every 2 s, starts a download and aborts it 300 ms later.
async fn supervise_downloads() {
    let mut interval = tokio::time::interval(Duration::from_secs(2));
    loop {
        interval.tick().await;
        let Ok(download) = spawn_named("doomed-download", download()) else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        download.abort();
        let _ = download.await;
    }
}

async fn download() {
    tokio::time::sleep(Duration::from_secs(10)).await;
}
