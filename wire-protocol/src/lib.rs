//! taskscope's wire protocol and shared domain model.
//!
//! * [`model`] — the event model every surface shares (tasks, resources, wait
//!   edges, hazards), as plain serde-serializable data.
//! * [`histogram`] — the compact duration histogram scheme.
//! * [`proto`] — generated prost/tonic code for `proto/taskscope/v1`
//!   (committed; `tests/codegen_fresh.rs` keeps it in sync).

pub mod histogram;
pub mod model;

/// Generated code for the `taskscope.v1` package.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod proto {
    include!("generated/taskscope.v1.rs");
}

/// Re-export of the console-api crate, whose types our server speaks.
pub use console_api;
