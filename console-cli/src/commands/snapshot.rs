//! `taskscope snapshot` (not built yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {}

pub fn run(_args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`taskscope snapshot` is not built yet")
}
