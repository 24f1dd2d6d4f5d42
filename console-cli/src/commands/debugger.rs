//! `taskscope gdb-init`, `taskscope lldb-init` and the hidden
//! `taskscope debugger-serve`.
//!
//! The gdb and lldb front ends (`gdb-scripts/`) are embedded in this binary,
//! so an installed `taskscope` needs no source checkout: `gdb-init` writes
//! them to `$XDG_CACHE_HOME/taskscope/<version>/` (with the path of this
//! binary, which the scripts then run) and prints the line that loads them.
//! The scripts decode nothing; for every command they run
//! `taskscope debugger-serve` and serve it the program's memory (protocol in
//! `taskscope_dump::remote`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

/// The scripts, as shipped.
const SCRIPTS: [(&str, &str); 4] = [
    (
        "taskscope_core.py",
        include_str!("../../../gdb-scripts/taskscope_core.py"),
    ),
    (
        "taskscope_gdb.py",
        include_str!("../../../gdb-scripts/taskscope_gdb.py"),
    ),
    (
        "taskscope_lldb.py",
        include_str!("../../../gdb-scripts/taskscope_lldb.py"),
    ),
    (
        "taskscope_autoload.py",
        include_str!("../../../gdb-scripts/taskscope_autoload.py"),
    ),
];

/// File next to the scripts naming the binary they run.
const BIN_FILE: &str = "taskscope_bin.txt";

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Write the scripts here instead of `$XDG_CACHE_HOME/taskscope/<version>`.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print only the directory holding the scripts (for the gdb auto-load stub).
    #[arg(long, conflicts_with = "script")]
    pub print_dir: bool,
    /// Print only the path of the script to load: `gdb -x "$(taskscope gdb-init --script)" -p PID`,
    /// `lldb-19 -o "command script import $(taskscope lldb-init --script)" -p PID`.
    #[arg(long)]
    pub script: bool,
}

/// Which debugger `*-init` is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Debugger {
    Gdb,
    Lldb,
}

/// `$XDG_CACHE_HOME/taskscope/<version>`, else `~/.cache/...`, else the
/// system temporary directory.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("taskscope").join(env!("CARGO_PKG_VERSION"))
}

/// Writes `contents` to `path` unless it already holds exactly that
/// (through a temporary file and a rename, so a concurrent gdb never sees
/// half a script).
fn write_if_changed(path: &Path, contents: &str) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Installs the embedded scripts into `dir` and returns it (absolute).
pub fn install_scripts(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    for (name, text) in SCRIPTS {
        write_if_changed(&dir.join(name), text)?;
    }
    let me = std::env::current_exe().context("finding the taskscope binary's own path")?;
    write_if_changed(&dir.join(BIN_FILE), &format!("{}\n", me.display()))?;
    Ok(dir)
}

pub fn run_init(debugger: Debugger, args: InitArgs) -> anyhow::Result<ExitCode> {
    let dir = install_scripts(&args.dir.unwrap_or_else(default_dir))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.print_dir {
        writeln!(out, "{}", dir.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let script = dir.join(match debugger {
        Debugger::Gdb => "taskscope_gdb.py",
        Debugger::Lldb => "taskscope_lldb.py",
    });
    if args.script {
        writeln!(out, "{}", script.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    match debugger {
        Debugger::Gdb => {
            writeln!(
                out,
                "# taskscope {}: async task commands for gdb (info async-tasks, async-bt, async-hazards).",
                env!("CARGO_PKG_VERSION")
            )?;
            writeln!(
                out,
                "# Use: gdb -x \"$(taskscope gdb-init --script)\" -p PID (or PROGRAM [CORE]), or add the next line to ~/.gdbinit."
            )?;
            writeln!(out, "source {}", script.display())?;
        }
        Debugger::Lldb => {
            writeln!(
                out,
                "# taskscope {}: async task commands for lldb-19 (async tasks, async bt, async hazards).",
                env!("CARGO_PKG_VERSION")
            )?;
            writeln!(
                out,
                "# Use: lldb-19 -o \"command script import $(taskscope lldb-init --script)\" -p PID (or PROGRAM -c CORE), or add the next line to ~/.lldbinit."
            )?;
            writeln!(out, "command script import {}", script.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `taskscope debugger-serve`: one request from a debugger front end on
/// stdin/stdout.
pub fn run_serve() -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    taskscope_dump::remote::serve(stdin.lock(), stdout.lock())
        .map_err(|e| anyhow::anyhow!("debugger-serve: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_embedded_script_is_python_with_the_banner_where_loaded() {
        for (name, text) in super::SCRIPTS {
            assert!(!text.trim().is_empty(), "{name} is empty");
        }
        let gdb = super::SCRIPTS[1].1;
        assert!(gdb.contains("core.BANNER"));
        assert!(super::SCRIPTS[0]
            .1
            .contains("BANNER = \"loading taskscope support\""));
    }
}
