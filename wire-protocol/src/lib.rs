//! taskscope's wire protocol and shared domain model.
//!
//! * [`model`] — the event model every surface shares (tasks, resources, wait
//!   edges, hazards), as plain serde-serializable data.
//! * [`histogram`] — the compact duration histogram scheme.
//! * [`proto`] — generated prost/tonic code for `proto/taskscope/v1`
//!   (committed; `tests/codegen_fresh.rs` keeps it in sync).
//! * [`convert`] — lossless conversions between [`model`] and [`proto`].
//! * [`state`] — applying `taskscope.v1.Update`s to a [`model::State`], and
//!   splitting a state into size-bounded full-state chunks for servers.
//! * [`console`] — interop with tokio-console's `console-api`: serving the
//!   stock `tokio-console` CLI, and reading plain `console-subscriber` apps.
//! * [`recording`] — the recording file format (`.tsrec`): a versioned header
//!   followed by length-prefixed, CRC-checked `Update` frames.
#![forbid(unsafe_code)]

pub mod console;
pub mod convert;
pub mod hazards;
pub mod histogram;
pub mod model;
pub mod recording;
pub mod state;

/// Generated code for the `taskscope.v1` package.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod proto {
    include!("generated/taskscope.v1.rs");
}

/// Re-export of the console-api crate, whose types our server speaks.
pub use console_api;
