//! The command line: clap definitions and one function per subcommand.
//!
//! This is the contract of docs/design.md section 8: tests and operators rely on
//! it. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error. Errors
//! print their whole cause chain on one line (`{:#}`), never a backtrace.
//!
//! Only `cli` and `app` read the config file and the environment; what lies
//! below gets small settings structs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::clock::{Clock as _, SystemClock};
use crate::domain::{ChannelId, GroupName, SigningKid, TokenState};
use crate::line::jwt::AssertionSigner;
use crate::line::keys::SigningKey;
use crate::logging::{self, LogFormat};
use crate::store::{Location, Store, StoreError};
use crate::{addresses, app, bench, config, control, demo, keygen, sandbox, status};

/// What `linetokd --version` prints after the name: the crate's version and
/// the git commit it was built from ("unknown" outside a git checkout; see
/// `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LINETOKD_GIT_COMMIT"),
    ")"
);

/// linetokd keeps LINE Messaging API channel access tokens alive.
#[derive(Debug, Parser)]
#[command(name = "linetokd", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an RSA-2048 assertion signing key pair for the LINE Developers Console (or, with --db-key, a database key).
    Keygen {
        /// Directory to write the key pair into (created if missing); with --db-key, the key file to write.
        #[arg(long)]
        out: PathBuf,
        /// File name prefix: writes NAME.private.pem and NAME.public.jwk.
        #[arg(long, default_value = "assertion")]
        name: String,
        /// Write a database key for `[encryption]` key_files (32 random bytes, base64, mode 0600) to --out instead.
        #[arg(long)]
        db_key: bool,
    },
    /// Token values at rest: `linetokd db rekey`, `linetokd db decrypt`.
    Db {
        /// What to do.
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Validate the config file and print it resolved, secrets masked.
    CheckConfig {
        /// The config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Run the daemon: issue, rotate, verify, reconcile and revoke tokens.
    Run {
        /// The config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Dev mode: the LINE sandbox plus the real daemon with 2-minute tokens, offline, no setup.
    Demo {
        /// Stop after this long (e.g. `5m`); default: until Ctrl-C.
        #[arg(long = "for", value_parser = parse_duration)]
        run_for: Option<std::time::Duration>,
    },
    /// Run the LINE sandbox: an offline emulator of LINE's token endpoints.
    Sandbox {
        /// Address to listen on; port 0 picks a free port (the address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The sandbox's config file (channels, secrets, registered public keys).
        #[arg(long)]
        config: PathBuf,
    },
    /// Show every channel and group: current key, expiry, next rotation, capacity, last error.
    Status {
        /// The config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print JSON (a documented, versioned shape) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what will be issued, revoked and expire in the coming days, and when.
    Plan {
        /// The config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// How many days ahead to look, 1 to 400.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=400))]
        days: u32,
        /// Print JSON (a documented, versioned shape) instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list the routine verifies and reconciles.
        #[arg(long)]
        all: bool,
    },
    /// Print a freshly signed client assertion (JWT), e.g. to call LINE or the sandbox with curl.
    Assertion {
        /// The channel ID (the JWT's iss and sub).
        #[arg(long)]
        channel: String,
        /// The kid the console assigned to the registered public key.
        #[arg(long)]
        kid: String,
        /// The private key file (PEM or private JWK).
        #[arg(long)]
        key: PathBuf,
        /// The token lifetime to request (token_exp), e.g. `30d`; omit for calls that issue nothing.
        #[arg(long, value_parser = parse_duration)]
        token_exp: Option<std::time::Duration>,
    },
    /// Exit 0 when the running daemon is ready (its /readyz answers 200): for Docker's HEALTHCHECK.
    Health {
        /// The config file (for the listen address).
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Alert receivers: `linetokd alerts test --receiver NAME`.
    Alerts {
        /// What to do.
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// Apply database migrations and exit (refused while the daemon runs).
    Migrate {
        /// The config file (for the database path).
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Ask the running daemon to rotate now: a fresh token for one group, or every group of the channel.
    Rotate {
        /// The channel: its ID or its configured name.
        #[arg(long)]
        channel: String,
        /// The group; omit to rotate every group of the channel.
        #[arg(long)]
        group: Option<String>,
        /// The config file (for the state directory and its control socket).
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Incident: make the running daemon revoke every token of a group at LINE and issue a fresh one.
    Revoke {
        /// The channel: its ID or its configured name.
        #[arg(long)]
        channel: String,
        /// The group whose tokens are compromised; no other group is touched.
        #[arg(long)]
        group: String,
        /// The config file (for the state directory and its control socket).
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// LINE Login user grants: `linetokd login import`.
    Login {
        /// What to do.
        #[command(subcommand)]
        command: LoginCommand,
    },
    /// Long-lived tokens (issued in LINE's console, watched by linetokd).
    LongLived {
        /// What to do.
        #[command(subcommand)]
        command: LongLivedCommand,
    },
    /// Measure this build here: bootstrap N groups against the sandbox, status/plan time, token API, idle wake-ups.
    Bench {
        /// Group counts to bootstrap, comma-separated (default 1000,10000,100000; 30 with --quick).
        #[arg(long, value_delimiter = ',')]
        groups: Option<Vec<usize>>,
        /// Groups per channel (LINE keeps 30 live tokens per channel, 2 per group).
        #[arg(long, default_value_t = 15)]
        per_channel: usize,
        /// Concurrent token API clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Token API requests in all (default 20000; 2000 with --quick).
        #[arg(long)]
        requests: Option<usize>,
        /// How long to count scheduler wake-ups while idle (default 60s; 5s with --quick).
        #[arg(long, value_parser = parse_duration)]
        idle: Option<std::time::Duration>,
        /// The most one bootstrap (or one status/plan run) may take; a bootstrap that runs out is reported as such.
        #[arg(long, value_parser = parse_duration, default_value = "30m")]
        timeout: std::time::Duration,
        /// A smoke run: N = 30, a short idle wait, fewer requests.
        #[arg(long)]
        quick: bool,
        /// Append every figure as JSON lines to this file.
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Keep each run's directory (config, database, key files) and print its path, to profile `status` and `plan` by hand afterwards.
        #[arg(long)]
        keep: bool,
        /// Put the daemon's store in a throwaway PostgreSQL 15 cluster on loopback instead of a SQLite file (needs the server binaries in /usr/lib/postgresql/15/bin or LINETOKD_PG_BINDIR).
        #[arg(long)]
        postgres: bool,
    },
    /// Print a group's current token (newest live one) for scripts; works with or without a running daemon.
    Token {
        /// The channel: its ID or its configured name.
        #[arg(long)]
        channel: String,
        /// The group.
        #[arg(long)]
        group: String,
        /// The config file (for the database path).
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print a shell completion script, e.g. `linetokd completions bash > /etc/bash_completion.d/linetokd`.
    Completions {
        /// The shell to complete for.
        shell: CompletionShell,
    },
    /// Print the manual page (roff), e.g. `linetokd man | man -l -`.
    Man,
}

/// The shells `linetokd completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

impl CompletionShell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Self::Bash => clap_complete::Shell::Bash,
            Self::Zsh => clap_complete::Shell::Zsh,
            Self::Fish => clap_complete::Shell::Fish,
        }
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    config::duration::parse(text).map_err(|e| e.to_string())
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

    /// Whether the command failed only because its reader went away
    /// (`linetokd plan | head -1`). `main` ends such a command quietly
    /// with exit 0, as ripgrep does: the reader had all it wanted.
    pub fn is_broken_pipe(&self) -> bool {
        self.error().chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        })
    }
}

/// Writes a command's output to stdout. `print!` would panic when the
/// reader has gone; here that is an `io::Error` of kind `BrokenPipe` in
/// the failure's chain, which [`Failure::is_broken_pipe`] recognises.
fn emit(text: impl std::fmt::Display) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e).context("while writing to stdout")))
}

/// [`emit`] with a newline.
fn emit_line(text: impl std::fmt::Display) -> Result<(), Failure> {
    emit(format_args!("{text}\n"))
}

/// `linetokd alerts ...`.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Send a synthetic alert to one receiver of `[alerts]` and report its answer.
    Test {
        /// The receiver's name.
        #[arg(long)]
        receiver: String,
        /// The config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

/// `linetokd long-lived ...`.
#[derive(Debug, Subcommand)]
pub enum LongLivedCommand {
    /// Revoke the channel's long-lived token (the one its token_file holds) once its consumers moved to v2.1 tokens; prints its fingerprint first.
    Retire {
        /// The channel: its ID or its configured name.
        #[arg(long)]
        channel: String,
        /// Really revoke it (without this, only the fingerprint is printed).
        #[arg(long)]
        yes: bool,
        /// The config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

/// `linetokd login ...`.
#[derive(Debug, Subcommand)]
pub enum LoginCommand {
    /// Import grants from JSON lines (`{subject, access_token, refresh_token, expires_in, login_at?}` each) through the running daemon, within its per-channel rate.
    Import {
        /// The login channel: its ID or its configured name.
        #[arg(long)]
        channel: String,
        /// The JSON lines file; `-` or none reads stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The config file (for the daemon's address and `[login] admin_api_key_file`).
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

/// `linetokd db ...`.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Re-encrypt every stored token value under `[encryption]` active now (refused while the daemon runs: it does this in the background).
    Rekey {
        /// Beside a running daemon, wait until it has re-encrypted every value instead of failing.
        #[arg(long)]
        wait: bool,
        /// The config file (for the database path and `[encryption]`).
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Decrypt every stored token value back to plaintext (the daemon must be stopped); then remove `[encryption]`.
    Decrypt {
        /// The config file (for the database path and `[encryption]`).
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

/// Runs the parsed command.
///
/// # Errors
/// A [`Failure`] carrying the exit code and the error chain.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Keygen { out, name, db_key } => {
            if db_key {
                db_keygen_cmd(&out)
            } else {
                keygen_cmd(&out, &name)
            }
        }
        Command::Db {
            command: DbCommand::Rekey { wait, config },
        } => db_rekey_cmd(&config, wait),
        Command::Db {
            command: DbCommand::Decrypt { config },
        } => db_decrypt_cmd(&config),
        Command::CheckConfig { config } => check_config_cmd(&config),
        Command::Run { config } => run_cmd(&config),
        Command::Demo { run_for } => demo_cmd(run_for),
        Command::Sandbox { listen, config } => sandbox_cmd(listen, &config),
        Command::Migrate { config } => migrate_cmd(&config),
        Command::Alerts {
            command: AlertsCommand::Test { receiver, config },
        } => alerts_test_cmd(&config, &receiver),
        Command::Health { config } => health_cmd(&config),
        Command::Status { config, json } => status_cmd(&config, json),
        Command::Plan {
            config,
            days,
            json,
            all,
        } => plan_cmd(&config, days, json, all),
        Command::Assertion {
            channel,
            kid,
            key,
            token_exp,
        } => assertion_cmd(channel, kid, &key, token_exp),
        Command::Rotate {
            channel,
            group,
            config,
        } => control_cmd(
            &config,
            control::Request::Rotate {
                channel: ChannelId::new(channel),
                group: group.map(GroupName::new),
            },
        ),
        Command::Revoke {
            channel,
            group,
            config,
        } => control_cmd(
            &config,
            control::Request::Revoke {
                channel: ChannelId::new(channel),
                group: GroupName::new(group),
            },
        ),
        Command::Token {
            channel,
            group,
            config,
        } => token_cmd(&config, &channel, &GroupName::new(group)),
        Command::LongLived {
            command:
                LongLivedCommand::Retire {
                    channel,
                    yes,
                    config,
                },
        } => long_lived_retire_cmd(&config, &channel, yes),
        Command::Login {
            command:
                LoginCommand::Import {
                    channel,
                    file,
                    config,
                },
        } => login_import_cmd(&config, &channel, file.as_deref()),
        Command::Completions { shell } => completions_cmd(shell),
        Command::Man => man_cmd(),
        Command::Bench {
            groups,
            per_channel,
            clients,
            requests,
            idle,
            timeout,
            quick,
            json_out,
            keep,
            postgres,
        } => bench_cmd(bench::Flags {
            groups,
            per_channel,
            clients,
            requests,
            idle,
            timeout,
            quick,
            json_out,
            keep,
            postgres,
        }),
    }
}

/// `completions`: the shell's completion script, generated from the clap
/// definitions above.
fn completions_cmd(shell: CompletionShell) -> Result<(), Failure> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell.generator(), &mut command, "linetokd", &mut script);
    emit(String::from_utf8_lossy(&script))
}

/// `man`: the manual page in roff, generated from the clap definitions:
/// the synopsis, every subcommand with its options, and the exit codes.
fn man_cmd() -> Result<(), Failure> {
    let command = <Cli as clap::CommandFactory>::command();
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    let rendered = (|| -> std::io::Result<()> {
        man.render_title(&mut page)?;
        man.render_name_section(&mut page)?;
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        man.render_options_section(&mut page)?;
        render_subcommands(&command, &mut page)?;
        page.extend_from_slice(MAN_EXIT_STATUS.as_bytes());
        man.render_version_section(&mut page)?;
        Ok(())
    })();
    rendered.map_err(|e| {
        Failure::Runtime(anyhow::Error::new(e).context("while rendering the manual page"))
    })?;
    emit(String::from_utf8_lossy(&page))
}

/// The EXIT STATUS section: clap knows nothing of it.
const MAN_EXIT_STATUS: &str = ".SH \"EXIT STATUS\"\n\
.TP\n0\nSuccess (also when the reader of the output went away).\n\
.TP\n1\nA failure at run time (LINE, the database, the daemon).\n\
.TP\n2\nBad usage or configuration.\n";

/// One `.SS` subsection per subcommand: its synopsis line, its help and its
/// options, so the one page documents every command.
fn render_subcommands(command: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(out, ".SH COMMANDS")?;
    for sub in command.get_subcommands() {
        writeln!(out, ".SS \"linetokd {}\"", sub.get_name())?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{}", roff_text(&about.to_string()))?;
        }
        for arg in sub.get_arguments() {
            let value = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map_or_else(|| arg.get_id().as_str().to_uppercase(), ToString::to_string);
            let takes_value = arg.get_action().takes_values();
            let term = match arg.get_long() {
                Some(long) if takes_value => format!("\\fB\\-\\-{long}\\fR \\fI{value}\\fR"),
                Some(long) => format!("\\fB\\-\\-{long}\\fR"),
                None => format!("\\fI{value}\\fR"),
            };
            writeln!(out, ".TP\n{term}")?;
            let mut help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            if !takes_value {
                // A flag: its implied true/false says nothing.
                writeln!(out, "{}", roff_text(help.trim()))?;
                continue;
            }
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                help.push_str(&format!(" [default: {}]", defaults.join(", ")));
            }
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_owned())
                .collect();
            if !values.is_empty() {
                help.push_str(&format!(" [possible values: {}]", values.join(", ")));
            }
            writeln!(out, "{}", roff_text(help.trim()))?;
        }
    }
    Ok(())
}

/// Text for a roff body line: backslashes escaped, hyphens kept literal,
/// and a leading `.` or `'` (a roff request) defused.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Loads and validates the config; every problem is a usage error (exit 2).
fn load_config(path: &Path) -> Result<config::ValidConfig, Failure> {
    load_config_text(path).map(|(_, config)| config)
}

/// [`load_config`], with the text it was validated from.
fn load_config_text(path: &Path) -> Result<(String, config::ValidConfig), Failure> {
    let text = config::read_text(path).map_err(|e| Failure::Usage(anyhow::Error::new(e)))?;
    let config = config::Settings::from_toml(&text, path, &process_env()?)
        .map_err(|e| Failure::Usage(anyhow::Error::new(e)))?
        .validate()
        .map_err(|e| Failure::Usage(anyhow::Error::new(e).context(path.display().to_string())))?;
    Ok((text, config))
}

/// [`load_config`] for the commands that talk to the running daemon
/// (`health`, `token`, `rotate`, `revoke`): when the file has a mistake,
/// the copy of the config the daemon runs on ([`app::CONFIG_IN_FORCE`]),
/// with a warning naming the file's problems, so a half-finished edit never
/// locks the operator out of a daemon that runs fine.
fn load_config_or_in_force(path: &Path) -> Result<config::ValidConfig, Failure> {
    load_config(path).or_else(|failure| in_force(path, failure, config::Settings::validate))
}

/// [`load_outline`] with the same fallback, for `status`.
fn load_outline_or_in_force(path: &Path) -> Result<config::Outline, Failure> {
    load_outline(path).or_else(|failure| in_force(path, failure, |s| s.outline()))
}

/// The fallback of [`load_config_or_in_force`]: `failure` stands unless the
/// file still names the state directory (outside its `[[channel]]`
/// entries, so a syntax error in one of them does not hide it), the
/// daemon's copy is there and `load` accepts it.
fn in_force<T>(
    path: &Path,
    failure: Failure,
    load: impl Fn(&config::Settings) -> Result<T, config::ConfigError>,
) -> Result<T, Failure> {
    let Failure::Usage(problem) = &failure else {
        return Err(failure);
    };
    let env = process_env()?;
    // The file is read once: parsed whole, or failing that, for its state
    // directory alone.
    let Ok(text) = config::read_text(path) else {
        return Err(failure);
    };
    let state_dir = match config::Settings::from_toml(&text, path, &env) {
        Ok(settings) => Some(settings.daemon.state_dir),
        Err(_) => config::Settings::state_dir_of(&text, path, &env),
    };
    let Some(state_dir) = state_dir else {
        return Err(failure);
    };
    let copy = state_dir.join(app::CONFIG_IN_FORCE);
    if !copy.is_file() {
        return Err(failure);
    }
    match config::Settings::load(&copy, &env).and_then(|s| load(&s)) {
        Ok(loaded) => {
            eprintln!(
                "warning: {problem:#}\nwarning: using the config the running daemon loaded ({}) \
                 until the file is fixed",
                copy.display()
            );
            Ok(loaded)
        }
        Err(_) => Err(failure),
    }
}

/// Loads the config's [`config::Outline`] (no secret file read) for the
/// commands that only report; every problem is a usage error (exit 2).
fn load_outline(path: &Path) -> Result<config::Outline, Failure> {
    let settings = config::Settings::load(path, &process_env()?)
        .map_err(|e| Failure::Usage(anyhow::Error::new(e)))?;
    let outline = settings
        .outline()
        .map_err(|e| Failure::Usage(anyhow::Error::new(e).context(path.display().to_string())));
    // Both commands end soon after: the file as parsed goes with the
    // process, as their reports do.
    exit_without_freeing(settings);
    outline
}

/// Sets up logging from the config's format and `RUST_LOG`.
fn init_logging(format: LogFormat) {
    let filter = std::env::var("RUST_LOG").ok();
    logging::init(format, filter.as_deref());
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::Runtime(anyhow::Error::new(e).context("while starting the async runtime"))
        })
}

fn run_cmd(path: &Path) -> Result<(), Failure> {
    // Read once: the text validated is the text the daemon keeps as its
    // config in force.
    let (text, config) = load_config_text(path)?;
    init_logging(config.daemon.log_format);
    runtime()?.block_on(async {
        let shutdown = app::shutdown_on_signals().map_err(|e| {
            Failure::Runtime(anyhow::Error::new(e).context("while installing signal handlers"))
        })?;
        app::run(
            path,
            text,
            &process_env()?,
            config,
            Arc::new(SystemClock),
            shutdown,
        )
        .await
        .map_err(|e| {
            // A database the config has no keys for is a config error.
            let config_error = e.chain().any(|cause| {
                cause
                    .downcast_ref::<StoreError>()
                    .is_some_and(StoreError::needs_config_change)
            });
            if config_error {
                Failure::Usage(e)
            } else {
                Failure::Runtime(e)
            }
        })
    })
}

fn demo_cmd(run_for: Option<std::time::Duration>) -> Result<(), Failure> {
    // The demo prints its own story on stdout; logs only for trouble.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    logging::init(LogFormat::Text, Some(&filter));
    runtime()?.block_on(async {
        let shutdown = app::shutdown_on_signals().map_err(|e| {
            Failure::Runtime(anyhow::Error::new(e).context("while installing signal handlers"))
        })?;
        // The printed commands start the way the user started us: by name
        // when found on PATH, else by path, made absolute so that they work
        // from any directory (`cargo run` starts `target/release/linetokd`,
        // relative to the repository).
        let program = std::env::args_os().next().map_or_else(
            || "linetokd".to_owned(),
            |p| {
                let path = PathBuf::from(&p);
                let absolute = if path.components().count() > 1 && path.is_relative() {
                    std::env::current_dir().map_or(path.clone(), |dir| dir.join(&path))
                } else {
                    path
                };
                // `./target/...` reads better without its `.`.
                let tidy: PathBuf = absolute
                    .components()
                    .filter(|c| *c != std::path::Component::CurDir)
                    .collect();
                tidy.to_string_lossy().into_owned()
            },
        );
        demo::run(shutdown, run_for, &program, &mut std::io::stdout())
            .await
            .map_err(Failure::Runtime)
    })
}

fn bench_cmd(flags: bench::Flags) -> Result<(), Failure> {
    // The table is the output; the in-process sandbox logs only trouble.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    logging::init(LogFormat::Text, Some(&filter));
    // The daemon under test is this very binary.
    let binary = std::env::current_exe().map_err(|e| {
        Failure::Runtime(anyhow::Error::new(e).context("while locating the linetokd binary"))
    })?;
    let mut settings = bench::Settings::resolve(flags, binary)
        .map_err(|message| Failure::Usage(anyhow::anyhow!(message)))?;
    settings.daemon_env = bench::allocator_env(std::env::vars_os());
    runtime()?.block_on(async {
        let shutdown = app::shutdown_on_signals().map_err(|e| {
            Failure::Runtime(anyhow::Error::new(e).context("while installing signal handlers"))
        })?;
        bench::run(&settings, shutdown, &mut std::io::stdout())
            .await
            .map_err(Failure::Runtime)
    })
}

fn sandbox_cmd(listen: SocketAddr, path: &Path) -> Result<(), Failure> {
    init_logging(LogFormat::Text);
    runtime()?.block_on(async {
        let shutdown = app::shutdown_on_signals().map_err(|e| {
            Failure::Runtime(anyhow::Error::new(e).context("while installing signal handlers"))
        })?;
        // A config that cannot be used is a usage error (exit 2), as for
        // the daemon's.
        let sandbox = sandbox::load(path, Arc::new(SystemClock))
            .map_err(|e| Failure::Usage(anyhow::Error::new(e)))?;
        sandbox::serve_at(listen, sandbox, shutdown)
            .await
            .map_err(Failure::Runtime)
    })
}

fn assertion_cmd(
    channel: String,
    kid: String,
    key: &Path,
    token_exp: Option<std::time::Duration>,
) -> Result<(), Failure> {
    let usage = |e: anyhow::Error| Failure::Usage(e);
    // LINE would refuse an assertion for anything but a channel's numeric
    // ID; say so here rather than sign one that cannot work.
    let channel = config::check_channel_id(&channel)
        .map_err(|why| usage(anyhow::anyhow!("--channel {why}")))?;
    let key = SigningKey::from_file(key).map_err(|e| usage(e.into()))?;
    let token_exp = token_exp
        .map(chrono::Duration::from_std)
        .transpose()
        .map_err(|e| usage(anyhow::anyhow!("--token-exp is out of range: {e}")))?;
    let signer = AssertionSigner::new(channel, SigningKid::new(kid), key);
    let jwt = signer
        .sign(chrono::Utc::now(), token_exp)
        .map_err(|e| usage(e.into()))?;
    emit_line(jwt)
}

/// Where the daemon's HTTP listener is, for `health`: the address the
/// running daemon recorded in its state directory ([`addresses`]) when the
/// config leaves the port to the system (port 0) or the record is newer
/// than the config file (a changed `listen` takes effect at the next
/// restart); otherwise `daemon.listen`. A daemon listening on every
/// address is reached on loopback.
fn daemon_http_addr(path: &Path, config: &config::ValidConfig) -> Result<SocketAddr, Failure> {
    let listen = config.daemon.listen;
    let state_dir = &config.daemon.state_dir;
    let any_port = listen.port() == 0;
    let recorded = match addresses::read(state_dir) {
        Ok(recorded) => recorded,
        Err(e) if any_port => return Err(Failure::Runtime(e.into())),
        // A fixed port still works without the record.
        Err(_) => None,
    };
    let config_written = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match recorded {
        Some((record, written))
            if any_port || config_written.is_none_or(|config| written >= config) =>
        {
            Ok(record.reachable_http())
        }
        _ if any_port => Err(Failure::Runtime(anyhow::anyhow!(
            "daemon.listen is {listen}, a port the system picks, and no running daemon has recorded \
             the port it got in {}: is `linetokd run --config {}` running?",
            addresses::path(state_dir).display(),
            path.display()
        ))),
        _ => Ok(addresses::reachable(listen)),
    }
}

/// How long `linetokd health` waits for the daemon's answer.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn health_cmd(path: &Path) -> Result<(), Failure> {
    let config = load_config_or_in_force(path)?;
    let addr = daemon_http_addr(path, &config)?;
    let url = format!("http://{addr}/readyz");
    let runtime_failure = |e: anyhow::Error| Failure::Runtime(e);
    runtime()?.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(HEALTH_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| runtime_failure(anyhow::Error::new(e)))?;
        let response = client.get(&url).send().await.map_err(|e| {
            runtime_failure(anyhow::anyhow!(
                "no linetokd daemon answers at {addr}: {}",
                e.without_url()
            ))
        })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            emit_line("ready")
        } else {
            Err(runtime_failure(anyhow::anyhow!(
                "the daemon at {addr} is not ready ({status}): {body}"
            )))
        }
    })
}

/// `alerts test`: one synthetic alert to one receiver, its answer printed
/// (never its URL). Exit 0 when delivered, 1 when not, 2 for an unknown
/// receiver.
fn alerts_test_cmd(path: &Path, name: &str) -> Result<(), Failure> {
    let config = load_config(path)?;
    // A line receiver pushes with its group's current token, read from the
    // database as `linetokd token` does.
    let db = config.daemon.store();
    let ring = keyring(config.encryption.as_ref());
    let tokens = crate::alerting::TokenSource::new(move |channel, group| {
        let store = Store::open_read_only_at(&db, ring.clone()).ok()?;
        let now = chrono::Utc::now();
        store
            .tokens_of_group(channel, group)
            .ok()?
            .into_iter()
            .filter(|t| t.record.state == TokenState::Live && t.record.expires_at > now)
            .max_by_key(|t| (t.record.issued_at, t.record.expires_at))
            .map(|t| t.value)
    });
    let settings = crate::app::notifier_settings(&config, tokens);
    let Some(receiver) = settings.receivers.iter().find(|r| r.name == name) else {
        let known: Vec<&str> = settings.receivers.iter().map(|r| r.name.as_str()).collect();
        return Err(Failure::Usage(anyhow::anyhow!(
            "no receiver named {name:?} in [alerts] (known: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    let token = match &receiver.kind {
        crate::alerting::ReceiverKind::Line { channel, group, .. } => {
            Some(settings.tokens.current(channel, group).ok_or_else(|| {
                Failure::Runtime(anyhow::anyhow!(
                    "group {group} of channel {channel} has no live token to push with (see `linetokd status`)"
                ))
            })?)
        }
        _ => None,
    };
    let outcomes = runtime()?.block_on(crate::alerting::send::send_test(
        receiver,
        settings.external_url.as_deref(),
        chrono::Utc::now(),
        token.as_ref(),
    ));
    let outcomes = outcomes.map_err(|e| Failure::Runtime(anyhow::Error::new(e.without_url())))?;
    let mut failed = 0;
    for (n, outcome) in outcomes.iter().enumerate() {
        let what = match outcome {
            crate::alerting::send::Outcome::Delivered => "delivered".to_owned(),
            crate::alerting::send::Outcome::Failed { reason, .. }
            | crate::alerting::send::Outcome::Rejected { reason } => {
                failed += 1;
                format!("not delivered: {reason}")
            }
            crate::alerting::send::Outcome::QuotaExhausted => {
                failed += 1;
                "not delivered: LINE's monthly message limit is reached (429)".to_owned()
            }
        };
        emit_line(format_args!("{name} (request {}): {what}", n + 1))?;
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "{failed} of {} requests to receiver {name:?} were not delivered",
            outcomes.len()
        )))
    }
}

fn migrate_cmd(path: &Path) -> Result<(), Failure> {
    let config = load_config(path)?;
    let options = crate::store::StoreOptions {
        keyring: keyring(config.encryption.as_ref()),
        ..crate::store::StoreOptions::default()
    };
    let db = config.daemon.store();
    let migrated = Store::open_at(&db, options)
        .map(|store| store.migrated())
        .map_err(|e| store_failure(e, "while migrating the database"))?;
    if migrated.was_current() {
        emit_line(format_args!(
            "{db}: schema version {}, already current",
            migrated.to
        ))
    } else {
        emit_line(format_args!(
            "{db}: migrated from schema version {} to {}",
            migrated.from, migrated.to
        ))
    }
}

/// The process environment, for config overrides and `${NAME}` expansion
/// (see [`config::environment`]): a variable that is not UTF-8 is left out,
/// unless it is a `LINETOKD__` override, which is a usage error.
fn process_env() -> Result<HashMap<String, String>, Failure> {
    config::environment(std::env::vars_os()).map_err(|e| Failure::Usage(anyhow::Error::new(e)))
}

fn check_config_cmd(path: &Path) -> Result<(), Failure> {
    let shown = config::check(path, &process_env()?).map_err(|e| {
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
    // Warnings go to stderr: stdout stays the resolved config, usable as a
    // file.
    for warning in &shown.warnings {
        eprintln!("warning: {warning}");
    }
    emit(shown.resolved)
}

fn keygen_cmd(out: &std::path::Path, name: &str) -> Result<(), Failure> {
    let generated = keygen::write_key_pair(out, name).map_err(|e| match e {
        keygen::KeygenError::Exists(_) => Failure::Usage(e.into()),
        other => Failure::Runtime(other.into()),
    })?;
    emit(keygen::next_steps(&generated))
}

/// `rotate` and `revoke`: send the request over the control socket and
/// print the daemon's answer. Exit 0 when carried out, 2 when refused
/// (unknown channel or group), 1 when it failed, is still pending, or no
/// daemon runs.
fn control_cmd(path: &Path, request: control::Request) -> Result<(), Failure> {
    let config = load_config_or_in_force(path)?;
    let response = control::send(&config.daemon.state_dir, &request, control::CLIENT_TIMEOUT)
        .map_err(|e| Failure::Runtime(e.into()))?;
    let text = response.describe();
    let text = text.trim_end();
    match response {
        // Carried out, but with a failure that stays: an incident whose
        // leaked token LINE refused to revoke (its fresh token was issued).
        control::Response::Done { groups } if groups.iter().any(|g| g.failure.is_some()) => {
            Err(Failure::Runtime(anyhow::anyhow!("{text}")))
        }
        control::Response::Done { .. } | control::Response::Retired { .. } => emit_line(text),
        control::Response::Refused { .. } => Err(Failure::Usage(anyhow::anyhow!("{text}"))),
        control::Response::Failed { .. } | control::Response::Pending { .. } => {
            Err(Failure::Runtime(anyhow::anyhow!("{text}")))
        }
    }
}

/// `long-lived retire`: print the fingerprint of the channel's long-lived
/// token, then (with `--yes`) revoke it: through the running daemon, which
/// stops verifying it, or, when none runs, here from the config alone and
/// recorded in the database so the next start does not alert about it.
fn long_lived_retire_cmd(path: &Path, channel: &str, yes: bool) -> Result<(), Failure> {
    let config = load_config(path)?;
    let configured = config.channel(channel).ok_or_else(|| {
        Failure::Usage(anyhow::anyhow!(
            "channel {channel} is not configured in {} (by ID or by name)",
            path.display()
        ))
    })?;
    let Some(ll) = &configured.long_lived else {
        return Err(Failure::Usage(anyhow::anyhow!(
            "channel {} has no [channel.long_lived] in {}",
            configured.id,
            path.display()
        )));
    };
    let token = config::read_token_file(&ll.token_file).map_err(|reason| {
        Failure::Usage(anyhow::anyhow!(
            "channel {}: long_lived.token_file {reason}",
            configured.id
        ))
    })?;
    let fp = crate::longlived::fingerprint(&token);
    emit_line(format_args!(
        "channel {}: the long-lived token in {} is {fp}",
        configured.id,
        ll.token_file.display()
    ))?;
    if !yes {
        return Err(Failure::Usage(anyhow::anyhow!(
            "nothing revoked: add --yes to revoke {fp} at LINE (consumers still using it will fail)"
        )));
    }
    let request = control::Request::RetireLongLived {
        channel: configured.id.clone(),
        fingerprint: Some(fp.clone()),
    };
    match control::send(&config.daemon.state_dir, &request, control::CLIENT_TIMEOUT) {
        Ok(response) => {
            let text = response.describe();
            let text = text.trim_end();
            match response {
                control::Response::Retired { .. } => emit_line(text),
                _ => Err(Failure::Runtime(anyhow::anyhow!("{text}"))),
            }
        }
        Err(control::ClientError::NoSocket { .. } | control::ClientError::NotListening { .. }) => {
            let channel = configured.id.clone();
            let line = crate::line::LineClient::new(
                crate::line::LineClientConfig {
                    base_url: config.daemon.line_api.to_string(),
                    timeout: config.daemon.request_timeout,
                    observer: None,
                },
                Arc::new(SystemClock),
            )
            .map_err(|e| Failure::Runtime(anyhow::Error::new(e)))?;
            let options = crate::store::StoreOptions {
                keyring: keyring(config.encryption.as_ref()),
                ..crate::store::StoreOptions::default()
            };
            let store = Store::open_at(&config.daemon.store(), options)
                .map_err(|e| store_failure(e, "while opening the database"))?;
            runtime()?
                .block_on(crate::longlived::retire_offline(
                    &line,
                    &store,
                    SystemClock.now(),
                    &channel,
                    &token,
                ))
                .map_err(|e| Failure::Runtime(anyhow::anyhow!("{e}")))?;
            emit_line(format_args!(
                "channel {channel}: long-lived token {fp} revoked; LINE no longer accepts it"
            ))
        }
        Err(e) => Err(Failure::Runtime(e.into())),
    }
}

/// `token`: print the group's newest live, unexpired token from the store,
/// opened read-only so it works beside a running daemon. A refused token
/// (verify refused it, or an incident condemned it) is never printed, as
/// delivery never hands one out.
fn token_cmd(path: &Path, channel: &str, group: &GroupName) -> Result<(), Failure> {
    let config = load_config_or_in_force(path)?;
    let configured = config.channel(channel).ok_or_else(|| {
        Failure::Usage(anyhow::anyhow!(
            "channel {channel} is not configured in {} (by ID or by name)",
            path.display()
        ))
    })?;
    let channel = &configured.id;
    if !configured.groups.iter().any(|g| &g.name == group) {
        return Err(Failure::Usage(anyhow::anyhow!(
            "group {group} is not configured in channel {channel} ({})",
            path.display()
        )));
    }
    let db = &config.daemon.store();
    let store =
        open_read_only(db, keyring(config.encryption.as_ref()))?.ok_or_else(|| no_database(db))?;
    let tokens = store
        .tokens_of_group(channel, group)
        .map_err(|e| store_failure(e, "while reading the group's tokens"))?;
    let now = chrono::Utc::now();
    let current = tokens
        .iter()
        .filter(|t| t.record.is_usable_at(now))
        .max_by_key(|t| (t.record.issued_at, t.record.expires_at));
    match current {
        Some(token) => emit_line(token.value.expose()),
        None => Err(Failure::Runtime(anyhow::anyhow!(
            "group {group} of channel {channel} has no live token (has the daemon issued one yet? see `linetokd status`)"
        ))),
    }
}

/// `login import`: every line through the running daemon's import API
/// ([`crate::login_import`]). Exit 0 when every line was imported, 1 when
/// any was refused or the daemon could not be reached, 2 for a config or
/// usage problem (no such login channel, the daemon refusing the key).
fn login_import_cmd(path: &Path, channel: &str, file: Option<&Path>) -> Result<(), Failure> {
    let config = load_config(path)?;
    let Some(login) = &config.login else {
        return Err(Failure::Usage(anyhow::anyhow!(
            "{} configures no [[login_channel]]: there is nothing to import into",
            path.display()
        )));
    };
    let Some(configured) = login.channel(channel) else {
        return Err(Failure::Usage(anyhow::anyhow!(
            "login channel {channel} is not configured in {} (by ID or by name)",
            path.display()
        )));
    };
    let shown = format!("{} ({})", configured.name, configured.id);
    let target = crate::login_import::Target {
        http: daemon_http_addr(path, &config)?,
        channel: configured.id.as_str().to_owned(),
        admin_key: login.admin_api_key.clone(),
    };
    let file = file.filter(|f| f.as_os_str() != "-");
    runtime()?.block_on(async {
        let input: Box<dyn tokio::io::AsyncBufRead + Unpin + Send> = match file {
            Some(f) => Box::new(tokio::io::BufReader::new(
                tokio::fs::File::open(f).await.map_err(|e| {
                    Failure::Usage(
                        anyhow::Error::new(e).context(format!("while opening {}", f.display())),
                    )
                })?,
            )),
            None => Box::new(tokio::io::BufReader::new(tokio::io::stdin())),
        };
        let mut summary = crate::login_import::Summary::default();
        // Refused lines go to stdout as they happen, with the summary: the
        // report of the run; errors that stop it go to stderr.
        let mut report = |refused: &crate::login_import::Refused| {
            let _ = emit_line(format_args!("refused {refused}"));
        };
        let result = crate::login_import::import(&target, input, &mut summary, &mut report).await;
        emit_line(summary.describe(&shown))?;
        match result {
            Err(e) if e.is_config() => Err(Failure::Usage(e.into())),
            Err(e) => Err(Failure::Runtime(e.into())),
            Ok(()) if summary.all_imported() => Ok(()),
            Ok(()) => Err(Failure::Runtime(anyhow::anyhow!(
                "{} of {} lines were not imported (listed above)",
                summary.refused.len(),
                summary.lines
            ))),
        }
    })
}

fn status_cmd(path: &Path, json: bool) -> Result<(), Failure> {
    let config =
        load_outline_or_in_force(path).map_err(|failure| with_last_reload(path, failure))?;
    let db = &config.daemon.store();
    let store =
        open_read_only(db, keyring(config.encryption.as_ref()))?.ok_or_else(|| no_database(db))?;
    let now = SystemClock.now();
    let state = status::read_store(&store, now)
        .map_err(|e| store_failure(e, "while reading the database"))?;
    let mut report = status::status_report(
        now,
        db,
        &configured_channels(&config),
        &app::rules(&config.rotation, config.capacity_low_threshold),
        &state,
        probe_daemon(&config, &store),
    );
    report.login = status::login_status(
        &store,
        now,
        &config.login.channels,
        config.login.reauth_notify_before,
    )
    .map_err(|e| store_failure(e, "while counting LINE Login grants"))?;
    let shown = if json {
        emit_line(to_json(&report)?)
    } else {
        emit(status::render_status(&report))
    };
    exit_without_freeing((config, state, report));
    shown
}

/// Leaves `big` to the process's exit instead of freeing it: the command
/// ends right after, and freeing a store's worth of rows one by one (a
/// twentieth of `status`'s time at 100,000 groups) would only delay the
/// exit. Only plain data goes here: no files, locks or buffers (the
/// store, which holds a connection, is dropped as usual).
fn exit_without_freeing<T>(big: T) {
    std::mem::forget(big);
}

/// Whether a daemon holds the database, and where it listens for HTTP when
/// it recorded that in its state directory ([`addresses`]).
fn probe_daemon(config: &config::Outline, store: &Store) -> status::DaemonStatus {
    let mut daemon = status::probe_daemon_at(&config.daemon.store());
    // On PostgreSQL the writer's lock is in the database: ask it.
    if let Ok(Some(running)) = store.writer_present() {
        // Under [ha] no instance holds the writer lock: the instances
        // alive (their heartbeats) are what runs.
        let ha_alive = !running && store.ha_state().is_ok_and(|h| !h.instances.is_empty());
        daemon.running = Some(running || ha_alive);
    }
    if daemon.running != Some(false) {
        daemon.http = addresses::read(&config.daemon.state_dir)
            .ok()
            .flatten()
            .map(|(record, _)| record.reachable_http());
    }
    daemon
}

/// An operator who saved a bad config and asks for status learns both what
/// is wrong with the file and that the running daemon refused it and kept
/// its previous config (the note its reload left in the database).
fn with_last_reload(path: &Path, failure: Failure) -> Failure {
    let Failure::Usage(error) = failure else {
        return failure;
    };
    let note = process_env()
        .ok()
        .and_then(|env| config::Settings::load(path, &env).ok())
        // The rest of the file may be broken: only the store's keys are read.
        .and_then(|settings| settings.store_location().ok())
        .and_then(|location| Store::open_read_only_at(&location, None).ok())
        .and_then(|store| store.note(crate::store::LAST_RELOAD).ok().flatten());
    match note {
        Some(note) => Failure::Usage(error.context(format!(
            "the running daemon's last config reload at {}: {} (a refused reload leaves the previous config in force)",
            note.at.to_rfc3339(),
            note.value
        ))),
        None => Failure::Usage(error),
    }
}

fn plan_cmd(path: &Path, days: u32, json: bool, all: bool) -> Result<(), Failure> {
    let config = load_outline(path)?;
    let db = &config.daemon.store();
    let now = SystemClock.now();
    // Without a database the forecast starts from nothing: what a first
    // start with this config would do.
    let state = match open_read_only(db, keyring(config.encryption.as_ref()))? {
        Some(store) => Some(
            status::read_store(&store, now)
                .map_err(|e| store_failure(e, "while reading the database"))?,
        ),
        None => None,
    };
    let until = now + chrono::Duration::days(i64::from(days));
    let format = if json {
        status::PlanFormat::Json
    } else {
        status::PlanFormat::Text
    };
    // Written as the forecast runs: a year of a large config is millions
    // of actions, which are never all held.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = status::write_plan(
        &mut out,
        now,
        db,
        &configured_channels(&config),
        &app::rules(&config.rotation, config.capacity_low_threshold),
        state.as_ref(),
        status::PlanRequest {
            format,
            until,
            include_routine: all,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        },
    )
    .and_then(|()| std::io::Write::flush(&mut out))
    .map_err(|e| Failure::Runtime(anyhow::Error::new(e).context("while writing to stdout")));
    exit_without_freeing((config, state));
    written
}

/// Opens the database read-only beside a running daemon; `None` when there
/// is no database file.
fn open_read_only(
    db: &Location,
    keyring: Option<Arc<crate::store::crypt::Keyring>>,
) -> Result<Option<Store>, Failure> {
    match Store::open_read_only_at(db, keyring) {
        Ok(store) => Ok(Some(store)),
        // No file yet, or a PostgreSQL database no linetokd has migrated:
        // nothing has run there.
        Err(
            StoreError::NoDatabase { .. }
            | StoreError::Pg(crate::store::pg::PgError::NeedsMigration { found: 0, .. }),
        ) => Ok(None),
        Err(e) => Err(Failure::Runtime(
            anyhow::Error::new(e).context("while opening the database read-only"),
        )),
    }
}

/// The config's database keys, shared with the store.
fn keyring(
    encryption: Option<&config::EncryptionConfig>,
) -> Option<Arc<crate::store::crypt::Keyring>> {
    encryption.map(|e| Arc::clone(&e.keyring))
}

/// A store error as a command failure: exit 2 when the config must change
/// (database keys missing or wrong), else 1.
fn store_failure(e: StoreError, context: &'static str) -> Failure {
    let config_error = e.needs_config_change();
    let e = anyhow::Error::new(e).context(context);
    if config_error {
        Failure::Usage(e)
    } else {
        Failure::Runtime(e)
    }
}

/// `keygen --db-key`: a database key file for `[encryption]`.
fn db_keygen_cmd(out: &Path) -> Result<(), Failure> {
    keygen::write_db_key(out).map_err(|e| match e {
        keygen::KeygenError::Exists(_) => Failure::Usage(e.into()),
        other => Failure::Runtime(other.into()),
    })?;
    emit_line(format_args!(
        "wrote a database key to {} (mode 0600); list it in [encryption] key_files with an unused id",
        out.display()
    ))
}

/// The config's `[encryption]`, which `db rekey` and `db decrypt` need.
fn require_encryption(
    path: &Path,
    config: &config::ValidConfig,
) -> Result<Arc<crate::store::crypt::Keyring>, Failure> {
    keyring(config.encryption.as_ref()).ok_or_else(|| {
        Failure::Usage(anyhow::anyhow!(
            "{} has no [encryption] section: it names the database keys this command needs",
            path.display()
        ))
    })
}

/// Opens the database for writing with the config's keys; a running
/// daemon (the writer lock) is `running`'s error.
fn open_writer(
    db: &Path,
    options: crate::store::StoreOptions,
    running: impl FnOnce(Option<u32>) -> Failure,
) -> Result<Store, Failure> {
    match Store::open_with(db, options) {
        Ok(store) => Ok(store),
        Err(StoreError::Locked { pid, .. }) => Err(running(pid)),
        Err(e) => Err(store_failure(e, "while opening the database")),
    }
}

/// `db rekey`: every value under the active key now. The daemon holds the
/// single-writer lock while it runs and re-encrypts in the background
/// itself, so beside it this command fails (exit 1) or, with `--wait`,
/// watches the database read-only until the daemon is done.
fn db_rekey_cmd(path: &Path, wait: bool) -> Result<(), Failure> {
    let config = load_config(path)?;
    let ring = require_encryption(path, &config)?;
    let active = ring.active();
    let db = sqlite_only(&config, "db rekey")?;
    let options = crate::store::StoreOptions {
        keyring: Some(Arc::clone(&ring)),
        ..crate::store::StoreOptions::default()
    };
    let store = match open_writer(db, options, |pid| {
        Failure::Runtime(anyhow::anyhow!(
            "a running linetokd ({}) holds {}; it re-encrypts every value under key {active} in \
             the background ({} rows a second): watch `linetokd status`, or pass --wait",
            pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}")),
            db.display(),
            crate::store::REKEY_BATCH
        ))
    }) {
        Ok(store) => store,
        Err(failure) if wait && is_running(db) => {
            drop(failure);
            return wait_for_daemon_rekey(db, ring);
        }
        Err(failure) => return Err(failure),
    };
    let mut total = 0;
    loop {
        let step = store
            .rekey_step()
            .map_err(|e| store_failure(e, "while re-encrypting token values"))?;
        total += step.rekeyed;
        if step.remaining == 0 {
            break;
        }
    }
    emit_line(format_args!(
        "{}: re-encrypted {total} token values under key {active}; {}",
        db.display(),
        describe_values(&store)?
    ))
}

/// Whether a daemon holds the database's writer lock.
fn is_running(db: &Path) -> bool {
    status::probe_daemon(db).running == Some(true)
}

/// How long `db rekey --wait` waits between looks at the database.
const REKEY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// `db rekey --wait` beside a running daemon: reads the rows per key each
/// [`REKEY_POLL`] until none is off the active key (or the daemon stops).
fn wait_for_daemon_rekey(
    db: &Path,
    ring: Arc<crate::store::crypt::Keyring>,
) -> Result<(), Failure> {
    let active = ring.active();
    let location = &Location::Sqlite(db.to_path_buf());
    let store = open_read_only(location, Some(ring))?.ok_or_else(|| no_database(location))?;
    // The daemon re-encrypts 100 rows a second under the key it started
    // with: no progress for this many looks means it was not restarted
    // after `active` changed.
    const STALLED_LOOKS: u32 = 10;
    let (mut last_off, mut still) = (u64::MAX, 0_u32);
    loop {
        let counts = store
            .value_counts()
            .map_err(|e| store_failure(e, "while counting token values"))?;
        let off: u64 = counts
            .iter()
            .filter(|c| c.key != Some(active))
            .map(|c| c.rows)
            .sum();
        if off == 0 {
            return emit_line(format_args!(
                "{}: the daemon has re-encrypted every token value under key {active}; {}",
                db.display(),
                describe_values(&store)?
            ));
        }
        if !is_running(db) {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "the daemon stopped with {off} token values not yet under key {active}; \
                 run `linetokd db rekey` now"
            )));
        }
        still = if off < last_off { 0 } else { still + 1 };
        last_off = off;
        if still >= STALLED_LOOKS {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "{off} token values are not under key {active} and the running daemon has not \
                 re-encrypted any for {STALLED_LOOKS} s: it uses the active key it started with; \
                 restart it to take [encryption] active = {active}"
            )));
        }
        std::thread::sleep(REKEY_POLL);
    }
}

/// `db decrypt`: every value back to plaintext, the daemon stopped.
fn db_decrypt_cmd(path: &Path) -> Result<(), Failure> {
    let config = load_config(path)?;
    let ring = require_encryption(path, &config)?;
    let db = sqlite_only(&config, "db decrypt")?;
    let options = crate::store::StoreOptions {
        keyring: Some(ring),
        keep_plaintext: true,
        ..crate::store::StoreOptions::default()
    };
    let store = open_writer(db, options, |pid| {
        Failure::Runtime(anyhow::anyhow!(
            "a running linetokd ({}) holds {}; stop it first: it would encrypt the values again",
            pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}")),
            db.display()
        ))
    })?;
    let opened = store
        .decrypt_all()
        .map_err(|e| store_failure(e, "while decrypting token values"))?;
    emit_line(format_args!(
        "{}: decrypted {opened} token values; {}. Remove [encryption] from {} before the next \
         start, or the daemon encrypts them again.",
        db.display(),
        describe_values(&store)?,
        path.display()
    ))
}

/// "12 plaintext" or "12 encrypted with key 2": the rows per key now.
fn describe_values(store: &Store) -> Result<String, Failure> {
    let counts = store
        .value_counts()
        .map_err(|e| store_failure(e, "while counting token values"))?;
    if counts.is_empty() {
        return Ok("no tokens stored".to_owned());
    }
    Ok(counts
        .iter()
        .map(|c| match c.key {
            None => format!("{} plaintext", c.rows),
            Some(k) => format!("{} encrypted with key {k}", c.rows),
        })
        .collect::<Vec<_>>()
        .join(", "))
}

fn no_database(db: &Location) -> Failure {
    Failure::Runtime(anyhow::anyhow!(
        "no database at {db}: has linetokd run yet?"
    ))
}

/// The SQLite file of a command that only works on one (`db rekey`, `db
/// decrypt`): they rewrite the file itself.
fn sqlite_only<'c>(config: &'c config::ValidConfig, command: &str) -> Result<&'c Path, Failure> {
    match config.daemon.postgres {
        None => Ok(&config.daemon.database),
        Some(_) => Err(Failure::Usage(anyhow::anyhow!(
            "`linetokd {command}` works on a SQLite database; this config's store is PostgreSQL \
             (daemon.database_url_file), where it is not available yet"
        ))),
    }
}

/// What `status` and `plan` need of the config's channels.
fn configured_channels(config: &config::Outline) -> Vec<status::ConfiguredChannel> {
    config
        .channels
        .iter()
        .map(|c| status::ConfiguredChannel {
            id: c.id.clone(),
            name: c.name.clone(),
            groups: c.groups.clone(),
            short_lived: c.short_lived.clone(),
            can_revoke: c.has_secret,
            stateless: c.stateless,
        })
        .collect()
}

fn to_json(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map_err(|e| {
        Failure::Runtime(anyhow::Error::new(e).context("while writing the report as JSON"))
    })
}
