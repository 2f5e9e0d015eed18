//! Where a run happened, so figures from different machines and commits
//! are never compared blindly: CPUs available, the `rustc` on `PATH`, and
//! the git commit the binary was built from.
//!
//! Each is best effort: a missing tool or a directory outside a checkout
//! leaves the field empty rather than failing the benchmark.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The machine and the source a run measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    /// `rustc --version`, if a `rustc` is on `PATH` (not necessarily the
    /// one that built this binary).
    pub rustc: Option<String>,
    /// The short git commit this binary was built from (`linetokd
    /// --version`'s); `None` for a build outside a git checkout. A build
    /// with uncommitted changes carries the commit it started from.
    pub commit: Option<String>,
}

/// How long each probe may take.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

impl Machine {
    /// Probes this machine.
    pub async fn probe() -> Self {
        let nproc = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let rustc = output("rustc", &["--version"]).await;
        // The commit this binary was built from (build.rs): the figures
        // are this binary's, wherever it runs from.
        let commit = Some(env!("LINETOKD_GIT_COMMIT"))
            .filter(|c| *c != "unknown")
            .map(str::to_owned);
        Self {
            nproc,
            rustc,
            commit,
        }
    }
}

/// The trimmed stdout of a program that succeeded in time; `None` otherwise.
async fn output(program: &str, args: &[&str]) -> Option<String> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROBE_LIMIT, child).await.ok()?.ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
