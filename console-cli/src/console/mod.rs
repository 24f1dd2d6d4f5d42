//! `taskscope console`: the TUI that makes a stuck async program obvious.
//!
//! # Why
//! tokio-console goes blank above ~20k tasks, cuts names, has no backtraces,
//! no task ↔ resource navigation, no filter and no replay. This console reads
//! the same targets (taskscope.v1, or plain console-subscriber apps over
//! console-api) plus recordings, and shows tasks, one task in depth (await
//! lines, what it waits on and who can free it), resources, hazards with
//! advice, and deadlock cycles with a Graphviz export.
//!
//! # Shape (state, input and view kept apart)
//! * [`state`] — [`ConsoleState`]: the model, the screen stack, sort/filter/
//!   selection, connection status; performs [`Action`]s, no I/O.
//! * [`input`] — keys → [`Action`]s, pure.
//! * [`view`] — `draw(&ConsoleState, Rect, &mut Buffer)`, pure.
//! * [`replay`] — [`Timeline`]: a recording as a seekable state.
//! * [`run`] — the terminal, the clock, the network: the event loop.

pub mod input;
pub mod replay;
pub mod run;
pub mod state;
pub mod view;

pub use replay::Timeline;
pub use run::{run, ConsoleOptions, Source};
pub use state::{Action, ConsoleState, Effect, Screen};
