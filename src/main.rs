//! The `linetokd` binary: parse the command line, set up logging, dispatch
//! to the library, and turn the outcome into an exit code.
//!
//! A reader that goes away (`linetokd plan | head -1`) ends the command
//! with exit 0 and no message, as ripgrep does: every command writes its
//! output through `cli`'s writer, which turns a closed stdout into an
//! error rather than a panic. Rust's own panic hook stays: it prints a
//! backtrace only when `RUST_BACKTRACE` asks for one.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use linetokd::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.is_broken_pipe() => ExitCode::SUCCESS,
        Err(failure) => {
            // `eprintln!` would panic if stderr is closed too; the exit
            // code still tells.
            let _ = writeln!(
                std::io::stderr().lock(),
                "linetokd: error: {:#}",
                failure.error()
            );
            failure.exit_code()
        }
    }
}
