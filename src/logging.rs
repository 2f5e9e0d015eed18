//! Log output: human text or JSON lines on stderr, filtered `RUST_LOG`-style.
//!
//! Called once by `cli` at start-up. Events carry `channel`, `group` and
//! `key_id` fields where they concern one; a token value is never a field
//! (tokens print as fingerprints, see [`crate::secret`]).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// tokio-postgres logs every statement with its parameters at debug level;
/// a parameter may be a token value (the store's own parameters print
/// without their text, but defence in depth costs one directive), so its
/// logs stop at info whatever `RUST_LOG` asks: the caller's directives for
/// it or any of its modules are dropped ([`without_postgres`]) and this one
/// added.
const QUIET_POSTGRES: &str = "tokio_postgres=info";

/// `filter` without the directives that name tokio-postgres or one of its
/// modules (a more specific directive, `tokio_postgres::query=debug`,
/// would win over [`QUIET_POSTGRES`]).
fn without_postgres(filter: &str) -> String {
    filter
        .split(',')
        .filter(|d| !d.trim().starts_with("tokio_postgres"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs the global subscriber. `filter` is a `RUST_LOG`-style directive
/// string (the caller reads the environment); `None` means [`DEFAULT_FILTER`].
/// A second call is ignored, so tests may call it freely.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = EnvFilter::try_new(without_postgres(filter.unwrap_or(DEFAULT_FILTER)))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
        .add_directive(QUIET_POSTGRES.parse().expect("a valid directive"));
    let result = match format {
        // Internal errors off: with stderr gone (a dead pipe, a restarted
        // log collector) tracing-subscriber reports a failed write with
        // `eprintln!`, which panics in whatever thread was logging. On
        // PostgreSQL that left a daemon hung, holding its writer lock and
        // deaf to SIGTERM (an outside tester's run); a log line that cannot
        // be written is dropped instead.
        LogFormat::Text => tracing_subscriber::fmt()
            .log_internal_errors(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .log_internal_errors(false)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    // Already installed (tests, or `demo` calling into `run`): keep the first.
    let _ = result;
}

/// An error and its sources on one line, `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors end their own message with their source's; a short
        // cause that merely occurs inside the text still counts.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_for_tokio_postgres_are_dropped_and_the_rest_kept() {
        assert_eq!(
            without_postgres("debug,tokio_postgres::query=trace,hyper=warn,tokio_postgres=debug"),
            "debug,hyper=warn"
        );
        assert_eq!(without_postgres("info"), "info");
    }
}
