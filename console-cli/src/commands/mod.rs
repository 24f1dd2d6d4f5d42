//! One module per subcommand.

pub mod ci;
pub mod console;
pub mod debugger;
pub mod demo;
pub mod dump;
pub mod explain;
pub mod report;
pub mod snapshot;
