//! `taskscope explain`: the hazard catalogue, offline.
//!
//! Every finding of `console`, `report`, `ci`, `dump` and the debugger
//! commands carries a hazard id; this prints what the id means, what to do
//! about it and where taskscope can find it, without a browser or a
//! checkout (the same text as `wire-protocol/docs/hazards.md`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use taskscope_wire::hazards::{catalogue, HazardInfo, HazardKind};

use crate::output::{write_json, Align, Format, Table};

pub const LONG_ABOUT: &str = "\
Explain a hazard id: what triggers it, what to do, and where taskscope finds it.

Without an id, lists every hazard of the catalogue. Findings everywhere
(console, report, ci, dump, gdb/lldb async-hazards) carry these ids, and
taskscope.toml's [hazards] thresholds and [[suppress]] rules name them.

Where a hazard is found:
  live      from a running app (console) or a recording (report, ci)
  core      from a core dump, `dump --pid`, or gdb/lldb
  lockfile  from Cargo.lock (ci)

Examples:
  taskscope explain
  taskscope explain lost-waker
  taskscope explain --format json";

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// A hazard id (`lost-waker`, `deadlock-cycle`, …); all when omitted.
    pub id: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let entries: Vec<&HazardInfo> = match &args.id {
        Some(id) => {
            let Some(kind) = HazardKind::from_id(id.trim()) else {
                let known: Vec<&str> = catalogue().iter().map(|i| i.id).collect();
                anyhow::bail!("unknown hazard id `{id}`; known ids: {}", known.join(", "));
            };
            vec![kind.info()]
        }
        None => catalogue().iter().collect(),
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => write_json(&mut out, &entries, false),
        Format::Text if args.id.is_some() => entries
            .iter()
            .try_for_each(|info| write_one(&mut out, info)),
        Format::Text => write_list(&mut out, &entries),
    }
    .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Where the hazard is found, e.g. `live, core`.
fn found_in(info: &HazardInfo) -> String {
    let d = info.detection;
    let places: Vec<&str> = [(d.live, "live"), (d.core, "core"), (d.static_, "lockfile")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
    if places.is_empty() {
        "—".into()
    } else {
        places.join(", ")
    }
}

fn write_list(out: &mut impl Write, entries: &[&HazardInfo]) -> std::io::Result<()> {
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("SEVERITY", Align::Left),
        ("FOUND", Align::Left),
        ("TITLE", Align::Left),
    ]);
    for info in entries {
        table.row(vec![
            info.id.to_string(),
            info.default_severity.to_string(),
            found_in(info),
            info.title.to_string(),
        ]);
    }
    table.write(out, "")?;
    writeln!(
        out,
        "\n`taskscope explain ID` tells what triggers one and what to do."
    )
}

fn write_one(out: &mut impl Write, info: &HazardInfo) -> std::io::Result<()> {
    writeln!(out, "{} — {}", info.id, info.title)?;
    writeln!(out, "default severity: {}", info.default_severity)?;
    writeln!(out, "found: {}", found_in(info))?;
    writeln!(out, "\nTrigger. {}", info.description)?;
    writeln!(out, "\nWhat to do. {}", info.advice)
}
