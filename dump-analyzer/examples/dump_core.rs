//! Prints the report of a core file: `cargo run -p taskscope-dump --example
//! dump_core -- CORE [EXE] [--json] [--coalesce]` (the `taskscope dump`
//! command without the rest of the CLI).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let coalesce = args.iter().any(|a| a == "--coalesce");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(core) = paths.first() else {
        eprintln!("usage: dump_core CORE [EXE] [--json] [--coalesce]");
        return std::process::ExitCode::from(2);
    };
    let target = taskscope_dump::Target::Core {
        core: core.into(),
        exe: paths.get(1).map(|p| p.into()),
    };
    let options = taskscope_dump::Options {
        progress: Some(|m| eprintln!("dump: {m}")),
    };
    let start = std::time::Instant::now();
    match taskscope_dump::analyze(&target, &options) {
        Ok(report) => {
            let out = std::io::stdout();
            let res = if json {
                report.write_json(out.lock())
            } else {
                report.write_text(out.lock(), coalesce)
            };
            eprintln!(
                "dump: {} tasks in {:.2?}",
                report.tasks.len(),
                start.elapsed()
            );
            match res {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
