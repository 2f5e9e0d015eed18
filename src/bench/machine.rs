//! Where a run happened, so figures from different machines and commits
//! are never compared blindly: CPUs available and their model, the `rustc`
//! on `PATH`, and the git commit the binary was built from.
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
    /// The CPU's model name (`/proc/cpuinfo`): aws-lc picks its RSA code
    /// by CPU feature, so a signature's cost, and with it CPU ÷ signature,
    /// is comparable only between runs on the same model.
    pub cpu: Option<String>,
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
        let cpu = tokio::fs::read_to_string("/proc/cpuinfo")
            .await
            .ok()
            .and_then(|info| model_name(&info));
        Self {
            nproc,
            cpu,
            rustc,
            commit,
        }
    }
}

/// The first `model name` in `/proc/cpuinfo`'s text.
fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name" && !value.trim().is_empty()).then(|| value.trim().to_owned())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_model_is_the_first_model_name_line() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\n\
                    model name\t: AMD EPYC\n\nprocessor\t: 1\nmodel\t\t: 1\n\
                    model name\t: Another CPU\n";
        assert_eq!(model_name(info).as_deref(), Some("AMD EPYC"));
        assert_eq!(model_name("processor\t: 0\nmodel name\t:\n"), None);
        assert_eq!(model_name(""), None);
    }
}
