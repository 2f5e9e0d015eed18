//! The command line: clap definitions and one function per subcommand.
//!
//! This is the contract of DESIGN.md section 8: tests and operators rely on
//! it. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error. Errors
//! print their whole cause chain on one line (`{:#}`), never a backtrace.
//!
//! Only `cli` and `app` read the config file and the environment; what lies
//! below gets small settings structs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{config, keygen};

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
    /// Validate the config file and print it resolved, secrets masked.
    CheckConfig {
        /// The config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
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
        Command::CheckConfig { config } => check_config_cmd(&config),
    }
}

/// The process environment, for config overrides and `${NAME}` expansion.
/// Variables that are not UTF-8 cannot name a config key, so they are left
/// out rather than aborting.
fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn check_config_cmd(path: &Path) -> Result<(), Failure> {
    let shown = config::check(path, &process_env()).map_err(|e| {
        let invalid = matches!(e, config::ConfigError::Invalid { .. });
        let e = anyhow::Error::new(e);
        // Read and parse errors name the file already; a list of problems
        // does not.
        Failure::Usage(if invalid {
            e.context(path.display().to_string())
        } else {
            e
        })
    })?;
    print!("{shown}");
    Ok(())
}

fn keygen_cmd(out: &std::path::Path, name: &str) -> Result<(), Failure> {
    let generated = keygen::write_key_pair(out, name).map_err(|e| match e {
        keygen::KeygenError::Exists(_) => Failure::Usage(e.into()),
        other => Failure::Runtime(other.into()),
    })?;
    print!("{}", keygen::next_steps(&generated));
    Ok(())
}
