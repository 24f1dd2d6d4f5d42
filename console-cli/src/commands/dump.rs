//! `taskscope dump` (not built yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DumpArgs {}

pub fn run(_args: DumpArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`taskscope dump` is not built yet")
}
