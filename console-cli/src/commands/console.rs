//! `taskscope console [TARGET]`: the interactive console (see
//! [`crate::console`]) on a live target or a recording.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::client::{ClientOptions, Target, DEFAULT_TARGET};
use crate::console::{self, ConsoleOptions, Source};

pub const LONG_ABOUT: &str = "\
Open the interactive console on a live app or a recording.

TARGET is a taskscope or console-subscriber app (http://host:port, host:port, a
port, or unix:/path/to.sock; default http://127.0.0.1:6669), or a recording file
written with TASKSCOPE_RECORD=path (opens with a timeline: space play/pause,
←/→ seek, ,/. step, +/- speed).

Views: tasks (t), a task's details (Enter), resources (r), problems (P).
Filter with / (regex over name, location, fields), sort with 1-0, pause with p,
write a deadlock cycle as Graphviz with D, help with ?, quit with q.";

/// Open the interactive console.
#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// Live target or recording file.
    #[arg(value_name = "TARGET", default_value = DEFAULT_TARGET)]
    pub target: String,

    /// Largest gRPC message accepted (console-api sends the whole state in one).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_message_mib: usize,

    /// Directory where `D` writes deadlock cycles as .dot files.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dot_dir: PathBuf,
}

pub fn run(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let source = source_of(&args.target)?;
    let client = ClientOptions {
        max_message_bytes: args.max_message_mib.saturating_mul(1024 * 1024),
        ..ClientOptions::default()
    };
    console::run(ConsoleOptions {
        source,
        client,
        dot_dir: args.dot_dir,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A regular file is a recording, a socket file a Unix-socket target;
/// everything else is parsed as a target address.
pub fn source_of(text: &str) -> anyhow::Result<Source> {
    let path = Path::new(text);
    if !text.contains("://") && !text.starts_with("unix:") {
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_file() {
                return Ok(Source::Recording(path.to_path_buf()));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    return Ok(Source::Live(Target::Unix(path.to_path_buf())));
                }
            }
        }
        if text.ends_with(".tsrec") {
            anyhow::bail!("recording {text} does not exist");
        }
    }
    let target: Target = text
        .parse()
        .with_context(|| format!("`{text}` is neither a recording file nor a target"))?;
    Ok(Source::Live(target))
}
