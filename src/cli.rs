//! The command line: clap definitions and one function per subcommand.
//!
//! This is the contract of DESIGN.md section 8: tests and operators rely on
//! it. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error. Errors
//! print their whole cause chain on one line (`{:#}`), never a backtrace.
//!
//! Only `cli` and `app` read the config file and the environment; what lies
//! below gets small settings structs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::keygen;

/// linetokd keeps LINE Messaging API channel access tokens alive.
#[derive(Debug, Parser)]
#[command(name = "linetokd", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an RSA-2048 assertion signing key pair for the LINE Developers Console.
    Keygen {
        /// Directory to write the key pair into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// File name prefix: writes NAME.private.pem and NAME.public.jwk.
        #[arg(long, default_value = "assertion")]
        name: String,
    },
}

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or configuration: exit 2.
    Usage(anyhow::Error),
    /// Anything at run time: exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            Self::Runtime(_) => ExitCode::from(1),
        }
    }

    /// The error with its cause chain.
    pub fn error(&self) -> &anyhow::Error {
        match self {
            Self::Usage(e) | Self::Runtime(e) => e,
        }
    }
}

/// Runs the parsed command.
///
/// # Errors
/// A [`Failure`] carrying the exit code and the error chain.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Keygen { out, name } => keygen_cmd(&out, &name),
    }
}

fn keygen_cmd(out: &std::path::Path, name: &str) -> Result<(), Failure> {
    let generated = keygen::write_key_pair(out, name).map_err(|e| match e {
        keygen::KeygenError::Exists(_) => Failure::Usage(e.into()),
        other => Failure::Runtime(other.into()),
    })?;
    print!("{}", keygen::next_steps(&generated));
    Ok(())
}
