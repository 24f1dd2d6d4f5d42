//! One module per subcommand.

pub mod ci;
pub mod debugger;
pub mod console;
pub mod demo;
pub mod dump;
pub mod report;
pub mod snapshot;
