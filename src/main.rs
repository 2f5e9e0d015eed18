//! The `linetokd` binary: parse the command line, set up logging, dispatch
//! to the library, and turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser as _;
use linetokd::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("linetokd: error: {:#}", failure.error());
            failure.exit_code()
        }
    }
}
