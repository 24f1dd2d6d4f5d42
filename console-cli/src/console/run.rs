//! The console's event loop: the only place with a terminal, a clock and a
//! network.
//!
//! * The terminal is put in raw mode on the alternate screen, and restored
//!   when [`run`] returns, on error, and on panic (a panic hook restores it
//!   before the default hook prints the message, so the message is readable).
//! * A live target is watched on a background thread with its own tokio
//!   runtime: [`watch_forever`] reconnects with capped exponential backoff
//!   ([`backoff_delay`]: 100 ms doubling to 5 s) and reports each step to the
//!   UI over a channel. Its own tasks are not instrumented (tracing is
//!   silenced on that thread), so watching the embedded demo does not show
//!   the console's own tasks.
//! * The UI thread drains that channel, applies keys, advances replay time,
//!   and redraws when something changed (at most ~30 times a second).
//! * console-api targets send a task's histograms only on a per-task
//!   `WatchTaskDetails` stream: while such a task is open, the UI asks the
//!   watcher to follow that stream ([`DetailsRequest`]).

use std::io::{self, Stdout};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use console_api::instrument::instrument_client::InstrumentClient;
use console_api::instrument::TaskDetailsRequest;
use crossterm::event::{self, Event};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use crossterm::{cursor, execute};
use futures::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use taskscope_wire::model::TaskId;

use super::input::action_for;
use super::replay::Timeline;
use super::state::{backoff_delay, ConsoleState, Effect};
use super::view;
use crate::client::{self, ClientOptions, Target, WatchEvent};

/// What the console shows.
#[derive(Debug, Clone)]
pub enum Source {
    Live(Target),
    Recording(PathBuf),
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    pub source: Source,
    pub client: ClientOptions,
    /// Where `D` writes `.dot` files.
    pub dot_dir: PathBuf,
}

/// What the watcher thread tells the UI.
#[derive(Debug)]
pub enum SourceMessage {
    Connecting {
        attempt: u32,
    },
    Event(WatchEvent),
    Disconnected {
        attempt: u32,
        retry_in: Duration,
        error: String,
    },
}

/// The task whose details the UI shows (console-api targets), or none.
pub type DetailsRequest = Option<TaskId>;

/// The UI's ends of the watcher's channels.
struct Watcher {
    messages: mpsc::Receiver<SourceMessage>,
    details: tokio::sync::watch::Sender<DetailsRequest>,
}

/// Runs the console until the user quits.
pub fn run(options: ConsoleOptions) -> anyhow::Result<()> {
    let (mut state, watcher) = match &options.source {
        Source::Live(target) => {
            let (tx, rx) = mpsc::channel();
            let (details_tx, details_rx) = tokio::sync::watch::channel(None);
            let target = target.clone();
            let client = options.client.clone();
            std::thread::Builder::new()
                .name("taskscope-console-watch".into())
                .spawn(move || watch_thread(target, client, tx, details_rx))
                .context("starting the watcher thread")?;
            let watcher = Watcher {
                messages: rx,
                details: details_tx,
            };
            (
                ConsoleState::live(options_target_name(&options)),
                Some(watcher),
            )
        }
        Source::Recording(path) => {
            let (updates, error) = taskscope_wire::recording::read_recording(path);
            if updates.is_empty() {
                match error {
                    Some(e) => {
                        return Err(e).with_context(|| format!("reading {}", path.display()))
                    }
                    None => anyhow::bail!("{} holds no updates", path.display()),
                }
            }
            let mut state =
                ConsoleState::replay(path.display().to_string(), Timeline::new(updates));
            if let Some(e) = error {
                state.set_error(format!(
                    "the recording ends early ({e}); showing what was readable"
                ));
            }
            (state, None)
        }
    };
    state.set_dot_dir(options.dot_dir.clone());

    let mut terminal = TerminalGuard::enter()?;
    let result = event_loop(&mut terminal.terminal, &mut state, watcher.as_ref());
    drop(terminal);
    result
}

fn options_target_name(options: &ConsoleOptions) -> String {
    match &options.source {
        Source::Live(t) => t.to_string(),
        Source::Recording(p) => p.display().to_string(),
    }
}

const FRAME: Duration = Duration::from_millis(33);
/// Redraw at least this often (connection status, replay clock).
const IDLE_REDRAW: Duration = Duration::from_millis(250);

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    state: &mut ConsoleState,
    watcher: Option<&Watcher>,
) -> anyhow::Result<()> {
    let mut last_tick = Instant::now();
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    // After a key, the next frame is drawn before more updates are taken in,
    // so what the user pressed shows as soon as possible.
    let mut key_pending = false;
    loop {
        if let Some(w) = watcher {
            let wanted = state.wants_task_details();
            w.details.send_if_modified(|current| {
                let changed = *current != wanted;
                *current = wanted;
                changed
            });
        }
        if let (Some(rx), false) = (watcher.map(|w| &w.messages), key_pending) {
            // Bounded per frame so keys stay responsive under a flood.
            let budget = Instant::now() + Duration::from_millis(20);
            while Instant::now() < budget {
                match rx.try_recv() {
                    Ok(message) => {
                        apply_message(state, message);
                        dirty = true;
                    }
                    Err(_) => break,
                }
            }
        }
        let now = Instant::now();
        dirty |= state.advance(now - last_tick);
        last_tick = now;

        if dirty || last_draw.is_none_or(|t| t.elapsed() >= IDLE_REDRAW) {
            state.refresh();
            terminal
                .draw(|frame| view::draw(state, frame.area(), frame.buffer_mut()))
                .context("drawing the console")?;
            last_draw = Some(Instant::now());
            dirty = false;
        }
        key_pending = false;

        if event::poll(FRAME).context("reading the terminal")? {
            let replay = state.timeline().is_some();
            match event::read().context("reading the terminal")? {
                Event::Key(key) => {
                    if let Some(action) = action_for(key, state.input_mode(), replay) {
                        match state.apply(action) {
                            Effect::Quit => return Ok(()),
                            Effect::WriteDot { path, contents } => {
                                match std::fs::write(&path, contents) {
                                    Ok(()) => state.set_message(format!(
                                        "wrote {} — render it with: dot -Tsvg {} -o cycle.svg",
                                        path.display(),
                                        path.display()
                                    )),
                                    Err(e) => state.set_error(format!(
                                        "could not write {}: {e}",
                                        path.display()
                                    )),
                                }
                            }
                            Effect::None => {}
                        }
                        dirty = true;
                        key_pending = true;
                    }
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}

/// Applies what the watcher reported.
pub fn apply_message(state: &mut ConsoleState, message: SourceMessage) {
    match message {
        SourceMessage::Connecting { attempt } => state.connecting(attempt),
        SourceMessage::Event(event) => state.apply_event(event),
        SourceMessage::Disconnected {
            attempt,
            retry_in,
            error,
        } => state.disconnected(attempt, retry_in, error),
    }
}

fn watch_thread(
    target: Target,
    options: ClientOptions,
    tx: mpsc::Sender<SourceMessage>,
    details: tokio::sync::watch::Receiver<DetailsRequest>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(SourceMessage::Disconnected {
                attempt: 1,
                retry_in: Duration::ZERO,
                error: format!("cannot start the watcher's runtime: {e}"),
            });
            return;
        }
    };
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        runtime.block_on(async {
            let follow = follow_task_details(target.clone(), options.clone(), tx.clone(), details);
            tokio::select! {
                () = watch_forever(target, options, tx) => {}
                () = follow => {}
            }
        });
    });
}

/// Watches `target` until the UI goes away, reconnecting with capped
/// exponential backoff. A failed connection, a lost one and a malformed
/// message all become a [`SourceMessage::Disconnected`] with the error text.
pub async fn watch_forever(
    target: Target,
    options: ClientOptions,
    tx: mpsc::Sender<SourceMessage>,
) {
    let mut attempt: u32 = 1;
    loop {
        if tx.send(SourceMessage::Connecting { attempt }).is_err() {
            return;
        }
        let stream = client::watch(target.clone(), options.clone());
        futures::pin_mut!(stream);
        let mut error = String::from("the stream ended");
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if matches!(event, WatchEvent::Connected { .. }) {
                        attempt = 1;
                    }
                    if tx.send(SourceMessage::Event(event)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    error = e.to_string();
                    break;
                }
            }
        }
        let retry_in = backoff_delay(attempt);
        attempt = attempt.saturating_add(1);
        let message = SourceMessage::Disconnected {
            attempt,
            retry_in,
            error,
        };
        if tx.send(message).is_err() {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

/// Follows the `WatchTaskDetails` stream of the task the UI has open
/// (console-api targets), forwarding each message as an event. A failed
/// or ended stream is retried when the request changes; it is an extra,
/// never an error on screen.
async fn follow_task_details(
    target: Target,
    options: ClientOptions,
    tx: mpsc::Sender<SourceMessage>,
    mut requests: tokio::sync::watch::Receiver<DetailsRequest>,
) {
    loop {
        let wanted = *requests.borrow_and_update();
        if let Some(id) = wanted {
            let stream_task = stream_task_details(&target, &options, &tx, id);
            tokio::select! {
                () = stream_task => {}
                changed = requests.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        if requests.changed().await.is_err() {
            return;
        }
    }
}

async fn stream_task_details(
    target: &Target,
    options: &ClientOptions,
    tx: &mpsc::Sender<SourceMessage>,
    id: TaskId,
) {
    let Ok(channel) = client::connect(target, options).await else {
        return;
    };
    let mut client = InstrumentClient::new(channel)
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let request = TaskDetailsRequest {
        id: Some(console_api::Id { id }),
    };
    let Ok(response) = client.watch_task_details(request).await else {
        return;
    };
    let mut stream = response.into_inner();
    while let Ok(Some(details)) = stream.message().await {
        let event = WatchEvent::ConsoleTaskDetails(Box::new(details));
        if tx.send(SourceMessage::Event(event)).is_err() {
            return;
        }
    }
}

/// Raw mode + alternate screen, undone on drop and on panic.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<Self> {
        install_panic_hook();
        enable_raw_mode().context("switching the terminal to raw mode (is stdout a terminal?)")?;
        let mut stdout = io::stdout();
        if let Err(e) = execute!(stdout, EnterAlternateScreen, cursor::Hide) {
            restore_terminal();
            return Err(e).context("entering the alternate screen");
        }
        match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore_terminal();
                Err(e).context("setting up the terminal")
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Leaves raw mode and the alternate screen; safe to call more than once.
pub fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}
