//! How long the operator's read-only commands take beside the running
//! daemon: `linetokd status` and `linetokd plan --days 30`, each run as a
//! child process of the real binary and timed from spawn to exit.
//!
//! Their output goes to `/dev/null`: the figure is the work of reading the
//! store and rendering, not of a terminal scrolling.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::Command;

/// Runs `binary ARGS --config config` and returns its wall time, or `None`
/// if it ran longer than `limit` (it is then killed).
///
/// # Errors
/// When it cannot be started or exits with a failure (its stderr is quoted).
pub async fn time(
    binary: &Path,
    args: &[&str],
    config: &Path,
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    let shown = format!("linetokd {}", args.join(" "));
    let started = Instant::now();
    let child = Command::new(binary)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("while starting {shown}"))?;
    let Ok(output) = tokio::time::timeout(limit, child.wait_with_output()).await else {
        return Ok(None);
    };
    let elapsed = started.elapsed();
    let output = output.with_context(|| format!("while waiting for {shown}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{shown} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(Some(elapsed))
}
