//! The configurations (five by default, four on request), each installed once at the start of a child
//! process (a global tracing subscriber can be set only once per process).
//!
//! - `none`: no subscriber. tokio's instrumentation callsites are compiled
//!   in (the workspace builds with `--cfg tokio_unstable` and tokio's
//!   `tracing` feature) but disabled, so each costs one cached-interest check.
//! - `floor`: `tracing_subscriber::registry()` plus a layer that does
//!   nothing except enable exactly the callsites taskscope's layer enables.
//!   It is the cost every tracing-based tool pays before doing any work of
//!   its own: tokio builds the span and event values and the registry
//!   allocates and reference-counts a slot for each span.
//! - `console-subscriber`: the reference peer, as its docs set it up.
//! - `taskscope-tracing`: taskscope's layer and gRPC server, installed with
//!   `taskscope::init()` as apps do.
//! - `taskscope-wrapper`: no subscriber; every spawned future is wrapped in
//!   `taskscope::instrument`.
//! - `wrapper-floor` (only on request): no subscriber; every spawned future
//!   is wrapped in the minimal counting wrapper of `floor_wrapper`.
//! - `layer-extensions` and `layer-floor` (only on request): `floor` with
//!   one of `floor_layer`'s minimal counting layers on top.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing_core::{Interest, Metadata};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use anyhow::Context as _;

use crate::workload::Spawner;

/// A configuration, by its command-line name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// No subscriber.
    None,
    /// Registry + a no-op layer enabling taskscope's callsites.
    Floor,
    /// console-subscriber's layer and server.
    ConsoleSubscriber,
    /// taskscope's tracing layer and server.
    TaskscopeTracing,
    /// taskscope's future wrapper, no subscriber.
    TaskscopeWrapper,
    /// taskscope's tracing layer with every hazard detector disabled: next
    /// to `taskscope-tracing`, what the detectors cost (not in the default
    /// set; `--configs floor,taskscope-tracing,taskscope-tracing-no-detectors`).
    TaskscopeTracingNoDetectors,
    /// The least a runtime-agnostic wrapper that counts wakes and times
    /// polls pays (see `floor_wrapper`): next to `taskscope-wrapper`, what
    /// its task records, registry and server cost (not in the default set;
    /// `--configs none,wrapper-floor,taskscope-wrapper`).
    WrapperFloor,
    /// A tracing layer that counts each task's polls and wakes and times
    /// its polls, keeping its records in span extensions as layers usually
    /// do (see `floor_layer`; not in the default set).
    LayerExtensions,
    /// The least such a layer pays: records in a flat table indexed by the
    /// span's slab address (see `floor_layer`): next to
    /// `taskscope-tracing`, what its task records, states, histograms,
    /// resources, backtraces and server cost (not in the default set;
    /// `--configs floor,layer-floor,taskscope-tracing`).
    LayerFloor,
}

impl Config {
    pub const ALL: [Config; 5] = [
        Config::None,
        Config::Floor,
        Config::ConsoleSubscriber,
        Config::TaskscopeTracing,
        Config::TaskscopeWrapper,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Floor => "floor",
            Config::ConsoleSubscriber => "console-subscriber",
            Config::TaskscopeTracing => "taskscope-tracing",
            Config::TaskscopeWrapper => "taskscope-wrapper",
            Config::TaskscopeTracingNoDetectors => "taskscope-tracing-no-detectors",
            Config::WrapperFloor => "wrapper-floor",
            Config::LayerExtensions => "layer-extensions",
            Config::LayerFloor => "layer-floor",
        }
    }
}

/// What stays alive while the workload runs, and how it spawns.
pub struct Installed {
    pub spawner: Spawner,
    /// taskscope's guard (it runs the server) and the server's address.
    taskscope: Option<(taskscope::Guard, SocketAddr)>,
}

impl Installed {
    fn plain() -> Installed {
        Installed {
            spawner: Spawner::Plain,
            taskscope: None,
        }
    }

    /// Spawn events the configuration lost, where it can tell.
    ///
    /// taskscope counts tasks evicted before any publish carried them and
    /// reports that count as console-api's `TaskUpdate.dropped_events`, so
    /// this asks its server the way `tokio-console` would: the real
    /// console-api client, the first update. console-subscriber's count
    /// cannot be read back reliably (see the report's notes), so it is
    /// `None`, as it is for configurations without a server.
    pub fn dropped_spawns(&self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Option<u64>> {
        let Some((_, addr)) = &self.taskscope else {
            return Ok(None);
        };
        let addr = *addr;
        runtime
            .block_on(async move {
                tokio::time::timeout(Duration::from_secs(30), first_task_update_drops(addr)).await
            })
            .context("taskscope's server sent no update within 30 s")?
            .map(Some)
    }
}

async fn first_task_update_drops(addr: SocketAddr) -> anyhow::Result<u64> {
    use console_api::instrument::instrument_client::InstrumentClient;
    use console_api::instrument::InstrumentRequest;

    let client = InstrumentClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connecting to taskscope's server at {addr}"))?;
    let mut updates = client
        .max_decoding_message_size(64 << 20)
        .watch_updates(InstrumentRequest {})
        .await
        .context("WatchUpdates")?
        .into_inner();
    let update = updates
        .message()
        .await
        .context("reading the first update")?
        .context("the server ended WatchUpdates before any update")?;
    Ok(update.task_update.map_or(0, |tasks| tasks.dropped_events))
}

/// Installs `config` for the rest of this process.
pub fn install(config: Config) -> anyhow::Result<Installed> {
    match config {
        Config::None => Ok(Installed::plain()),
        Config::Floor => {
            tracing_subscriber::registry()
                .with(FloorLayer)
                .try_init()
                .context("installing the floor subscriber")?;
            Ok(Installed::plain())
        }
        Config::ConsoleSubscriber => {
            let port = free_port()?;
            let layer = console_subscriber::ConsoleLayer::builder()
                .server_addr(SocketAddr::from(([127, 0, 0, 1], port)))
                .spawn();
            tracing_subscriber::registry()
                .with(layer)
                .try_init()
                .context("installing console-subscriber")?;
            Ok(Installed::plain())
        }
        Config::TaskscopeTracing | Config::TaskscopeTracingNoDetectors => {
            let mut builder = taskscope::Builder::default().bind("127.0.0.1:0");
            if config == Config::TaskscopeTracingNoDetectors {
                builder = builder.hazard_config(taskscope_wire::hazards::HazardConfig {
                    disable: taskscope_wire::hazards::HazardKind::ALL.to_vec(),
                    ..Default::default()
                });
            }
            // `init`, as the README tells apps to: the layer is the whole
            // subscriber, so callsites it has no use for stay disabled.
            // (A layer from `build()` leaves those to the other layers of
            // the user's stack; alone under a registry it would enable
            // every callsite, tokio's `Sleep` spans included.)
            let guard = builder.init();
            let addr = guard
                .local_addr()
                .context("taskscope's server did not bind 127.0.0.1:0")?;
            Ok(Installed {
                spawner: Spawner::Plain,
                taskscope: Some((guard, addr)),
            })
        }
        Config::LayerExtensions => on_floor(crate::floor_layer::ExtensionsLayer, config),
        Config::LayerFloor => on_floor(crate::floor_layer::DirectLayer, config),
        Config::WrapperFloor => Ok(Installed {
            spawner: Spawner::FloorWrapped,
            taskscope: None,
        }),
        Config::TaskscopeWrapper => {
            let guard = taskscope::Builder::default()
                .bind("127.0.0.1:0")
                .init_without_tracing();
            let addr = guard
                .local_addr()
                .context("taskscope's server did not bind 127.0.0.1:0")?;
            Ok(Installed {
                spawner: Spawner::Wrapped,
                taskscope: Some((guard, addr)),
            })
        }
    }
}

/// Installs `floor` with `layer` on top of it.
fn on_floor<L>(layer: L, config: Config) -> anyhow::Result<Installed>
where
    L: tracing_subscriber::Layer<
            tracing_subscriber::layer::Layered<FloorLayer, tracing_subscriber::Registry>,
        > + Send
        + Sync
        + 'static,
{
    tracing_subscriber::registry()
        .with(FloorLayer)
        .with(layer)
        .try_init()
        .with_context(|| format!("installing the {} subscriber", config.name()))?;
    Ok(Installed::plain())
}

/// A port on 127.0.0.1 nobody listens on right now (console-subscriber
/// binds its own server, so it needs a number, not a socket).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

/// Enables exactly the callsites taskscope's layer enables, and does
/// nothing with them.
struct FloorLayer;

impl<S: tracing_core::Subscriber> tracing_subscriber::Layer<S> for FloorLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if taskscope::interesting_callsite(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        taskscope::interesting_callsite(meta)
    }
}
