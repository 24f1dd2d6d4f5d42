//! The `taskscope` command. Everything lives in the library; see `lib.rs`.

fn main() -> std::process::ExitCode {
    taskscope_cli::main()
}
