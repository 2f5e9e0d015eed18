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

/// jemalloc rather than glibc's malloc. glibc keeps the holes the
/// bootstrap's transient allocations leave between long-lived ones (each
/// worker thread its own arena, and a freed large buffer raises the size
/// below which later ones come from those arenas), and `forbid(unsafe_code)`
/// rules out tuning it with `mallopt`. Measured with `linetokd bench`, the
/// two builds run in turn: RSS after bootstrap 24.6 MiB + 1.39 KiB a group
/// (glibc) against 28.5 MiB + 1.14 KiB, 160 against 140 MiB at 100,000
/// groups, with `status` and `plan` faster too (README, Benchmarks).
/// This is the Rust code's allocator only: SQLite and aws-lc are C and
/// call glibc's `malloc` themselves. Its options (two arenas, a small
/// thread cache) are compiled in from `.cargo/config.toml`, which says
/// why.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.is_broken_pipe() => ExitCode::SUCCESS,
        Err(failure) => {
            // `eprintln!` would panic if stderr is closed too; the exit
            // code still tells.
            // Each cause once: some errors repeat their source in their
            // own message, which `{:#}` would print twice.
            let _ = writeln!(
                std::io::stderr().lock(),
                "linetokd: error: {}",
                linetokd::logging::error_chain(failure.error().as_ref())
            );
            failure.exit_code()
        }
    }
}
