//! Talking to a live target: a taskscope-instrumented app, or any app using
//! `console-subscriber`.
//!
//! # Why
//!
//! Every live surface of the `taskscope` command (`snapshot`, `demo`, the
//! console) needs the same thing: "give me the target's state as a
//! [`model::State`]", whichever server the target runs. This module hides the
//! two protocols behind one answer:
//!
//! * **`taskscope.v1`** (served by the `taskscope` crate): a `Hello`, then the
//!   `Snapshot` stream of chunked [`proto::Update`]s, applied in order with
//!   [`model::State::apply`]. Carries backtraces, hazards, wait edges.
//! * **console-api** (`rs.tokio.console.instrument.Instrument`, served by
//!   `console-subscriber` and by taskscope): the first `WatchUpdates` message
//!   holds the full state plus all metadata; [`ConsoleState`] turns it into
//!   the same model. Such states are marked with
//!   `process.sources = ["console-api"]`, and [`snapshot`] runs taskscope's
//!   hazard detectors on them client-side (console-subscriber has none).
//!
//! The client first asks for `taskscope.v1`; a target that answers
//! `Unimplemented` gets the console-api path.
//!
//! # Shape
//!
//! * [`Target`] — where to connect: `http://host:port`, `host:port`, a bare
//!   port, or `unix:/path/to.sock`. Parsed with [`str::parse`].
//! * [`ClientOptions`] — timeouts, message size limit, what to include.
//! * [`snapshot`] — connect, fetch one complete state, disconnect.
//! * [`watch`] — a [`Stream`] of [`WatchEvent`]s (the protocol first, then raw
//!   updates as the target publishes them); feed them to a [`LiveState`] to
//!   keep a current [`model::State`]. This is what a live console builds on.
//! * [`ClientError`] — one variant per thing a user can fix, each rendering
//!   as one line that names the target.
//!
//! ```no_run
//! # async fn demo() -> Result<(), taskscope_cli::client::ClientError> {
//! use taskscope_cli::client::{snapshot, ClientOptions, Target};
//! let target: Target = "127.0.0.1:6669".parse()?;
//! let snap = snapshot(&target, &ClientOptions::default()).await?;
//! println!("{} tasks via {}", snap.state.tasks.len(), snap.protocol);
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use console_api::instrument::instrument_client::InstrumentClient;
use console_api::instrument::{InstrumentRequest, TaskDetailsRequest};
use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use taskscope_wire::console::ConsoleState;
use taskscope_wire::hazards::{self, HazardConfig};
use taskscope_wire::model::{self, ProcessInfo};
use taskscope_wire::proto::{self, taskscope_client::TaskscopeClient};
use taskscope_wire::state::StateReplica;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

/// The address `taskscope::init()` and `console-subscriber` listen on by default.
pub const DEFAULT_TARGET: &str = "http://127.0.0.1:6669";
/// The default port of both servers.
pub const DEFAULT_PORT: u16 = 6669;
/// Default limit for one gRPC message. console-api sends the whole state in
/// its first message, so big apps need far more than tonic's 4 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Default time allowed to connect, and to wait for each message.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a live target listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// gRPC over TCP, e.g. `http://127.0.0.1:6669`.
    Tcp(Uri),
    /// gRPC over a Unix domain socket.
    Unix(PathBuf),
}

impl Default for Target {
    fn default() -> Self {
        Target::Tcp(Uri::from_static(DEFAULT_TARGET))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(uri) => {
                // `Uri` prints a trailing `/` for an empty path; users never typed it.
                let s = uri.to_string();
                f.write_str(s.strip_suffix('/').unwrap_or(&s))
            }
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for Target {
    type Err = ClientError;

    /// Accepts `http://host:port`, `host:port`, `host` (port 6669), a bare
    /// port (`6669`, on 127.0.0.1), `unix:/path` and `unix:///path`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ClientError::InvalidTarget {
            target: s.to_string(),
            reason: reason.to_string(),
        };
        let s_trim = s.trim();
        if s_trim.is_empty() {
            return Err(invalid("empty target"));
        }
        if let Some(rest) = s_trim.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid("expected a socket path after `unix:`"));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if s_trim.starts_with("https://") {
            return Err(invalid(
                "TLS is not supported; taskscope and console-subscriber serve plain http://",
            ));
        }
        if s_trim.contains("://") && !s_trim.starts_with("http://") {
            return Err(invalid("use http://host:port or unix:/path/to.sock"));
        }
        if let Ok(port) = s_trim.parse::<u16>() {
            return Ok(Target::Tcp(tcp_uri("127.0.0.1", port, s)?));
        }
        let without_scheme = s_trim.strip_prefix("http://").unwrap_or(s_trim);
        let authority = without_scheme.trim_end_matches('/');
        if authority.contains('/') {
            return Err(invalid("a target has no path; use http://host:port"));
        }
        let has_port = match authority.rfind(':') {
            // `[::1]` alone has colons but no port.
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let uri_text = if has_port {
            format!("http://{authority}")
        } else {
            format!("http://{authority}:{DEFAULT_PORT}")
        };
        let uri: Uri = uri_text
            .parse()
            .map_err(|e: http_uri_error::InvalidUri| invalid(&e.to_string()))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("missing host"));
        }
        Ok(Target::Tcp(uri))
    }
}

/// `tonic` re-exports `http`'s URI error under its own path.
mod http_uri_error {
    pub(super) type InvalidUri = tonic::codegen::http::uri::InvalidUri;
}

fn tcp_uri(host: &str, port: u16, original: &str) -> Result<Uri, ClientError> {
    format!("http://{host}:{port}")
        .parse()
        .map_err(|e: http_uri_error::InvalidUri| ClientError::InvalidTarget {
            target: original.to_string(),
            reason: e.to_string(),
        })
}

/// Which server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// taskscope's own `taskscope.v1.Taskscope` service.
    #[serde(rename = "taskscope.v1")]
    Taskscope,
    /// tokio-console's `rs.tokio.console.instrument.Instrument` service.
    #[serde(rename = "console-api")]
    ConsoleApi,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Taskscope => "taskscope.v1",
            Protocol::ConsoleApi => "console-api",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Knobs for [`snapshot`] and [`watch`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time allowed to connect, and to wait for each expected message.
    pub connect_timeout: Duration,
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// Keep completed tasks still inside the target's retention window.
    pub include_completed: bool,
    /// console-api only: also fetch each live task's details (poll-time and
    /// scheduled-time histograms). One extra stream per task.
    pub task_details: bool,
    /// taskscope.v1 [`watch`] only: ask for a delta this often (0 = server default).
    pub watch_interval: Duration,
    /// console-api [`snapshot`]s only: run taskscope's hazard detectors
    /// ([`taskscope_wire::hazards::detect`]) on the client, since a plain
    /// console-subscriber app has none of its own.
    pub detect_hazards: bool,
    /// `None`: taskscope.v1 if the target serves it, else console-api.
    /// `Some(p)`: only `p` (e.g. console-api, to see a taskscope app the way
    /// tokio-console does).
    pub protocol: Option<Protocol>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            include_completed: false,
            task_details: false,
            watch_interval: Duration::ZERO,
            detect_hazards: true,
            protocol: None,
        }
    }
}

/// Why talking to a target failed. Each variant renders as one line naming
/// the target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("invalid target `{target}`: {reason}")]
    InvalidTarget { target: String, reason: String },

    #[error("no taskscope or console-subscriber server at {target} ({reason}) — is the app running with taskscope::init()?")]
    NoServer { target: Target, reason: String },

    #[error("{target} did not answer within {}s while {phase} — is it a taskscope or console-subscriber server, and is the app stopped in a debugger?", .after.as_secs_f64())]
    Timeout {
        target: Target,
        after: Duration,
        phase: &'static str,
    },

    #[error("{target} answered, but not with gRPC over HTTP/2 ({detail}) — is this the app's taskscope/console port?")]
    NotGrpc { target: Target, detail: String },

    #[error("lost the connection to {target} ({detail}) — did the app exit?")]
    ConnectionLost { target: Target, detail: String },

    #[error("{target} closed the {protocol} stream before sending {expected}")]
    StreamEnded {
        target: Target,
        protocol: Protocol,
        expected: &'static str,
    },

    #[error("{target} does not serve {protocol} (it answered Unimplemented)")]
    NotServed { target: Target, protocol: Protocol },

    #[error("{target} serves neither taskscope.v1 nor console-api (both answered Unimplemented)")]
    NoKnownService { target: Target },

    #[error("{target} refused the {protocol} request: {code:?}: {message}")]
    Rejected {
        target: Target,
        protocol: Protocol,
        code: Code,
        message: String,
    },

    #[error("a message from {target} is {detail}; raise the limit with --max-message-mib")]
    MessageTooLarge { target: Target, detail: String },
}

/// One complete state fetched from a target.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub target: Target,
    pub protocol: Protocol,
    pub state: model::State,
}

/// Connects to `target` and fetches its complete current state.
pub async fn snapshot(target: &Target, options: &ClientOptions) -> Result<Snapshot, ClientError> {
    let channel = connect(target, options).await?;
    match taskscope_snapshot(target, options, channel.clone()).await {
        Err(Fallback::ConsoleApi) => {}
        Err(Fallback::Failed(e)) => return Err(e),
        Ok(state) => {
            return Ok(Snapshot {
                target: target.clone(),
                protocol: Protocol::Taskscope,
                state,
            })
        }
    }
    let state = console_snapshot(target, options, channel).await?;
    Ok(Snapshot {
        target: target.clone(),
        protocol: Protocol::ConsoleApi,
        state,
    })
}

/// Opens the gRPC channel (TCP or Unix socket), bounded by the connect timeout.
pub async fn connect(target: &Target, options: &ClientOptions) -> Result<Channel, ClientError> {
    let attempt = async {
        match target {
            Target::Tcp(uri) => {
                Endpoint::from(uri.clone())
                    .connect_timeout(options.connect_timeout)
                    .connect()
                    .await
            }
            Target::Unix(path) => {
                let path = path.clone();
                // The URI is required by the API but unused: the connector
                // ignores it and dials the socket.
                Endpoint::from_static("http://localhost")
                    .connect_timeout(options.connect_timeout)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
            }
        }
    };
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Err(_) => Err(ClientError::Timeout {
            target: target.clone(),
            after: options.connect_timeout,
            phase: "connecting",
        }),
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(classify_transport(target, &e, options.connect_timeout)),
    }
}

/// Maps a connection-level failure to what the user can do about it.
fn classify_transport(
    target: &Target,
    error: &(dyn std::error::Error + 'static),
    timeout: Duration,
) -> ClientError {
    let io_kind = io_kind_in(error);
    let chain = error_chain(error);
    use std::io::ErrorKind::*;
    match io_kind {
        Some(ConnectionRefused) => ClientError::NoServer {
            target: target.clone(),
            reason: "connection refused".into(),
        },
        Some(NotFound) => ClientError::NoServer {
            target: target.clone(),
            reason: "no such socket file".into(),
        },
        Some(PermissionDenied) => ClientError::NoServer {
            target: target.clone(),
            reason: "permission denied".into(),
        },
        Some(TimedOut) => ClientError::Timeout {
            target: target.clone(),
            after: timeout,
            phase: "connecting",
        },
        Some(ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe) | None
            if looks_like_protocol_error(&chain) =>
        {
            ClientError::NotGrpc {
                target: target.clone(),
                detail: chain,
            }
        }
        _ => ClientError::NoServer {
            target: target.clone(),
            reason: chain,
        },
    }
}

/// The innermost I/O error kind in an error's source chain.
fn io_kind_in(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut kind = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            kind = Some(io.kind());
        }
        source = e.source();
    }
    kind
}

fn looks_like_protocol_error(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    [
        "h2",
        "http2",
        "frame",
        "protocol",
        "preface",
        "invalid",
        "malformed",
    ]
    .iter()
    .any(|needle| c.contains(needle))
}

/// The message of the innermost error in the source chain.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// `outer: inner: innermost`, without repeating identical messages.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// Maps an RPC failure (a `Status`) to a [`ClientError`].
fn classify_status(target: &Target, protocol: Protocol, status: &tonic::Status) -> ClientError {
    // The innermost cause says what happened; the layers above it repeat
    // "transport error" / "http2 error".
    let chain = match std::error::Error::source(status) {
        Some(src) => innermost(src),
        None => status.message().to_string(),
    };
    // tonic's words for an HTTP answer without gRPC in it (a web server, a
    // proxy's 404 page).
    if chain.contains("grpc-status header missing") {
        return ClientError::NotGrpc {
            target: target.clone(),
            detail: chain,
        };
    }
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted
            if chain.contains("message length too large") || chain.contains("larger than") =>
        {
            ClientError::MessageTooLarge {
                target: target.clone(),
                detail: chain,
            }
        }
        // A transport-level failure surfaced as a status: the peer is not a
        // gRPC server (or hung up without answering).
        _ if std::error::Error::source(status).is_some() => {
            let reached = std::error::Error::source(status)
                .and_then(io_kind_in)
                .is_none_or(|kind| {
                    !matches!(
                        kind,
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::NotFound
                            | std::io::ErrorKind::PermissionDenied
                    )
                });
            match std::error::Error::source(status) {
                Some(src) if !reached => classify_transport(target, src, Duration::ZERO),
                _ => ClientError::NotGrpc {
                    target: target.clone(),
                    detail: chain,
                },
            }
        }
        Code::Unknown | Code::Internal if looks_like_protocol_error(&chain) => {
            ClientError::NotGrpc {
                target: target.clone(),
                detail: chain,
            }
        }
        code => ClientError::Rejected {
            target: target.clone(),
            protocol,
            code,
            message: chain,
        },
    }
}

enum Fallback {
    /// The target does not serve taskscope.v1; try console-api.
    ConsoleApi,
    Failed(ClientError),
}

impl From<ClientError> for Fallback {
    fn from(e: ClientError) -> Self {
        Fallback::Failed(e)
    }
}

/// A gRPC server saying it lacks the service (not an HTTP 404 mapped to
/// `Unimplemented` by tonic, which means "not gRPC at all").
fn is_unimplemented(status: &tonic::Status) -> bool {
    status.code() == Code::Unimplemented && !status.message().contains("grpc-status header missing")
}

/// The error for a target that answered Unimplemented to console-api.
fn not_served(target: &Target, options: &ClientOptions) -> ClientError {
    match options.protocol {
        Some(protocol) => ClientError::NotServed {
            target: target.clone(),
            protocol,
        },
        None => ClientError::NoKnownService {
            target: target.clone(),
        },
    }
}

/// Waits for the next message of a stream, bounded by the per-message timeout.
async fn next_message<T>(
    target: &Target,
    protocol: Protocol,
    options: &ClientOptions,
    stream: &mut tonic::Streaming<T>,
    phase: &'static str,
) -> Result<Option<T>, ClientError> {
    match tokio::time::timeout(options.connect_timeout, stream.message()).await {
        Err(_) => Err(ClientError::Timeout {
            target: target.clone(),
            after: options.connect_timeout,
            phase,
        }),
        Ok(Err(status)) => Err(classify_status(target, protocol, &status)),
        Ok(Ok(message)) => Ok(message),
    }
}

/// Runs one RPC call, bounded by the connect timeout.
async fn call<T>(
    target: &Target,
    options: &ClientOptions,
    phase: &'static str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<Result<T, tonic::Status>, ClientError> {
    match tokio::time::timeout(options.connect_timeout, fut).await {
        Err(_) => Err(ClientError::Timeout {
            target: target.clone(),
            after: options.connect_timeout,
            phase,
        }),
        Ok(result) => Ok(result.map(tonic::Response::into_inner)),
    }
}

fn taskscope_client(channel: Channel, options: &ClientOptions) -> TaskscopeClient<Channel> {
    TaskscopeClient::new(channel)
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes)
}

fn console_client(channel: Channel, options: &ClientOptions) -> InstrumentClient<Channel> {
    InstrumentClient::new(channel)
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes)
}

/// Asks `Hello`; `Err(Fallback::ConsoleApi)` when the service is missing.
async fn hello(
    target: &Target,
    options: &ClientOptions,
    client: &mut TaskscopeClient<Channel>,
) -> Result<proto::ProcessInfo, Fallback> {
    let p = Protocol::Taskscope;
    if options.protocol == Some(Protocol::ConsoleApi) {
        return Err(Fallback::ConsoleApi);
    }
    match call(
        target,
        options,
        "saying hello",
        client.hello(proto::HelloRequest {}),
    )
    .await?
    {
        Ok(info) => Ok(info),
        Err(status) if is_unimplemented(&status) => match options.protocol {
            Some(protocol) => Err(ClientError::NotServed {
                target: target.clone(),
                protocol,
            }
            .into()),
            None => Err(Fallback::ConsoleApi),
        },
        Err(status) => Err(classify_status(target, p, &status).into()),
    }
}

async fn taskscope_snapshot(
    target: &Target,
    options: &ClientOptions,
    channel: Channel,
) -> Result<model::State, Fallback> {
    let p = Protocol::Taskscope;
    let mut client = taskscope_client(channel, options);
    hello(target, options, &mut client).await?;
    let request = proto::SnapshotRequest {
        max_chunk_bytes: 0,
        include_completed: options.include_completed,
    };
    let mut stream = match call(
        target,
        options,
        "asking for a snapshot",
        client.snapshot(request),
    )
    .await?
    {
        Ok(stream) => stream,
        Err(status) => return Err(classify_status(target, p, &status).into()),
    };
    let mut live = LiveState::new(p);
    loop {
        let Some(update) =
            next_message(target, p, options, &mut stream, "receiving the snapshot").await?
        else {
            return Err(ClientError::StreamEnded {
                target: target.clone(),
                protocol: p,
                expected: "the last chunk of the snapshot",
            }
            .into());
        };
        let last = update.last_chunk;
        live.apply(WatchEvent::Taskscope(Box::new(update)));
        if last {
            break;
        }
    }
    let mut state = live.into_state();
    if !options.include_completed {
        state.tasks.retain(|_, t| t.state.is_live());
    }
    Ok(state)
}

async fn console_snapshot(
    target: &Target,
    options: &ClientOptions,
    channel: Channel,
) -> Result<model::State, ClientError> {
    let p = Protocol::ConsoleApi;
    let mut client = console_client(channel, options);
    let mut stream = match call(
        target,
        options,
        "asking for updates",
        client.watch_updates(InstrumentRequest {}),
    )
    .await?
    {
        Ok(stream) => stream,
        Err(status) if is_unimplemented(&status) => return Err(not_served(target, options)),
        Err(status) => return Err(classify_status(target, p, &status)),
    };
    let first = next_message(
        target,
        p,
        options,
        &mut stream,
        "waiting for the first update",
    )
    .await?;
    let Some(first) = first else {
        return Err(ClientError::StreamEnded {
            target: target.clone(),
            protocol: p,
            expected: "the first update",
        });
    };
    let mut live = LiveState::new(p);
    live.apply(WatchEvent::Console(Box::new(first)));
    drop(stream);

    if options.task_details {
        fetch_task_details(target, options, &mut client, &mut live).await;
    }

    let mut state = live.into_state();
    if options.detect_hazards {
        // Judged on the whole state (completed tasks included), as of the
        // target's clock.
        let now = state.updated_at.unwrap_or_else(model::Timestamp::now);
        state.hazards = hazards::detect(&state, &HazardConfig::default(), now);
    }
    if !options.include_completed {
        state.tasks.retain(|_, t| t.state.is_live());
    }
    Ok(state)
}

/// Fetches the first `TaskDetails` message of each live task, a few at a
/// time. Details are an extra (histograms); a task that finished meanwhile or
/// a slow answer is skipped, not an error.
async fn fetch_task_details(
    target: &Target,
    options: &ClientOptions,
    client: &mut InstrumentClient<Channel>,
    live: &mut LiveState,
) {
    let ids: Vec<u64> = live.state().live_tasks().map(|t| t.id).collect();
    let p = Protocol::ConsoleApi;
    let details: Vec<_> = futures::stream::iter(ids)
        .map(|id| {
            let mut client = client.clone();
            async move {
                let request = TaskDetailsRequest {
                    id: Some(console_api::Id { id }),
                };
                let mut stream = call(
                    target,
                    options,
                    "asking for task details",
                    client.watch_task_details(request),
                )
                .await
                .ok()?
                .ok()?;
                next_message(target, p, options, &mut stream, "waiting for task details")
                    .await
                    .ok()?
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for d in details.into_iter().flatten() {
        live.apply(WatchEvent::ConsoleTaskDetails(Box::new(d)));
    }
}

/// What [`watch`] yields.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum WatchEvent {
    /// Connected; all following updates use this protocol.
    Connected { protocol: Protocol },
    /// A taskscope.v1 update (chunk of a full state, or a delta).
    Taskscope(Box<proto::Update>),
    /// A console-api update (the first one carries the full state).
    Console(Box<console_api::instrument::Update>),
    /// A console-api task's details (histograms).
    ConsoleTaskDetails(Box<console_api::tasks::TaskDetails>),
}

/// The current state of a target, kept up to date by applying
/// [`WatchEvent`]s in order.
#[derive(Debug)]
pub struct LiveState {
    protocol: Protocol,
    taskscope: StateReplica,
    console: ConsoleState,
}

impl LiveState {
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            taskscope: StateReplica::new(),
            console: ConsoleState::new(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Applies one event. A `Connected` event resets the state (a reconnect
    /// starts from a full state again). A taskscope.v1 full state split in
    /// chunks becomes visible at once, when its last chunk arrives.
    pub fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Connected { protocol } => *self = LiveState::new(protocol),
            WatchEvent::Taskscope(update) => {
                self.taskscope.apply(*update);
            }
            WatchEvent::Console(update) => {
                self.console.apply_update(*update);
            }
            WatchEvent::ConsoleTaskDetails(details) => {
                self.console.apply_task_details(*details);
            }
        }
    }

    /// The state as of the last applied event.
    pub fn state(&self) -> &model::State {
        match self.protocol {
            Protocol::Taskscope => self.taskscope.state(),
            Protocol::ConsoleApi => self.console.state(),
        }
    }

    /// Takes the state out. console-api states are marked with
    /// `process.sources = ["console-api"]`.
    pub fn into_state(self) -> model::State {
        match self.protocol {
            Protocol::Taskscope => self.taskscope.into_state(),
            Protocol::ConsoleApi => {
                let mut state = self.console.into_state();
                mark_console_api(&mut state);
                state
            }
        }
    }
}

fn mark_console_api(state: &mut model::State) {
    let process = state.process.get_or_insert_with(ProcessInfo::default);
    process.sources = vec!["console-api".to_string()];
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, ClientError>> + Send>>;

/// Watches a target: yields [`WatchEvent::Connected`] with the protocol in
/// use, then every update the target publishes, until the target goes away
/// (the stream then yields one error and ends) or the stream is dropped.
///
/// Connecting, the protocol choice and the first update are bounded by
/// `options.connect_timeout`; after that the stream waits as long as the
/// target is connected.
pub fn watch(
    target: Target,
    options: ClientOptions,
) -> impl Stream<Item = Result<WatchEvent, ClientError>> + Send {
    enum Phase {
        Start(Target, ClientOptions),
        Streaming(EventStream),
        Done,
    }
    futures::stream::unfold(Phase::Start(target, options), |phase| async move {
        match phase {
            Phase::Done => None,
            Phase::Start(target, options) => match open_watch(&target, &options).await {
                Ok((protocol, events)) => Some((
                    Ok(WatchEvent::Connected { protocol }),
                    Phase::Streaming(events),
                )),
                Err(e) => Some((Err(e), Phase::Done)),
            },
            Phase::Streaming(mut events) => match events.next().await {
                Some(Ok(event)) => Some((Ok(event), Phase::Streaming(events))),
                Some(Err(e)) => Some((Err(e), Phase::Done)),
                None => None,
            },
        }
    })
}

async fn open_watch(
    target: &Target,
    options: &ClientOptions,
) -> Result<(Protocol, EventStream), ClientError> {
    let channel = connect(target, options).await?;
    let mut client = taskscope_client(channel.clone(), options);
    match hello(target, options, &mut client).await {
        Ok(_) => {
            let p = Protocol::Taskscope;
            let request = proto::WatchRequest {
                max_chunk_bytes: 0,
                interval_ms: u32::try_from(options.watch_interval.as_millis()).unwrap_or(u32::MAX),
            };
            let stream = call(target, options, "asking to watch", client.watch(request))
                .await?
                .map_err(|status| classify_status(target, p, &status))?;
            let events = updates_then_end(target.clone(), p, stream, |u| {
                WatchEvent::Taskscope(Box::new(u))
            });
            Ok((p, events))
        }
        Err(Fallback::Failed(e)) => Err(e),
        Err(Fallback::ConsoleApi) => {
            let p = Protocol::ConsoleApi;
            let mut client = console_client(channel, options);
            let stream = match call(
                target,
                options,
                "asking for updates",
                client.watch_updates(InstrumentRequest {}),
            )
            .await?
            {
                Ok(stream) => stream,
                Err(status) if is_unimplemented(&status) => {
                    return Err(not_served(target, options))
                }
                Err(status) => return Err(classify_status(target, p, &status)),
            };
            let events = updates_then_end(target.clone(), p, stream, |u| {
                WatchEvent::Console(Box::new(u))
            });
            Ok((p, events))
        }
    }
}

/// Turns a gRPC stream into events; a clean end of stream becomes a
/// [`ClientError::StreamEnded`] so the watcher learns the target went away.
fn updates_then_end<T: Send + 'static>(
    target: Target,
    protocol: Protocol,
    stream: tonic::Streaming<T>,
    wrap: fn(T) -> WatchEvent,
) -> EventStream {
    let events = futures::stream::unfold(Some(stream), move |stream| {
        let target = target.clone();
        async move {
            let mut stream = stream?;
            match stream.message().await {
                Ok(Some(message)) => Some((Ok(wrap(message)), Some(stream))),
                Ok(None) => Some((
                    Err(ClientError::StreamEnded {
                        target,
                        protocol,
                        expected: "more updates (the app exited?)",
                    }),
                    None,
                )),
                Err(status) => {
                    let error = match classify_status(&target, protocol, &status) {
                        ClientError::NotGrpc { detail, .. } => ClientError::ConnectionLost {
                            target: target.clone(),
                            detail,
                        },
                        other => other,
                    };
                    Some((Err(error), None))
                }
            }
        }
    });
    Box::pin(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Target {
        match s.parse::<Target>() {
            Ok(t) => t,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn targets_in_every_spelling() {
        assert_eq!(
            parse("http://127.0.0.1:6669").to_string(),
            "http://127.0.0.1:6669"
        );
        assert_eq!(parse("127.0.0.1:7000").to_string(), "http://127.0.0.1:7000");
        assert_eq!(parse("localhost").to_string(), "http://localhost:6669");
        assert_eq!(parse("9000").to_string(), "http://127.0.0.1:9000");
        assert_eq!(parse("[::1]:6669").to_string(), "http://[::1]:6669");
        assert_eq!(parse("[::1]").to_string(), "http://[::1]:6669");
        assert_eq!(
            parse("unix:/tmp/app.sock"),
            Target::Unix("/tmp/app.sock".into())
        );
        assert_eq!(
            parse("unix:///tmp/app.sock"),
            Target::Unix("/tmp/app.sock".into())
        );
        assert_eq!(Target::default().to_string(), DEFAULT_TARGET);
    }

    #[test]
    fn bad_targets_say_why() {
        for (s, why) in [
            ("", "empty"),
            ("https://x:1", "TLS"),
            ("grpc://x:1", "http://host:port"),
            ("unix:", "socket path"),
            ("http://x:1/a/b", "no path"),
        ] {
            match s.parse::<Target>() {
                Ok(t) => panic!("{s} parsed as {t}"),
                Err(e) => assert!(e.to_string().contains(why), "{s}: {e}"),
            }
        }
    }

    #[test]
    fn errors_are_one_line() {
        let e = ClientError::NoServer {
            target: parse("127.0.0.1:1"),
            reason: "connection refused".into(),
        };
        let text = e.to_string();
        assert!(!text.contains('\n'));
        assert!(text.contains("http://127.0.0.1:1"), "{text}");
        assert!(text.contains("taskscope::init()"), "{text}");
    }
}
