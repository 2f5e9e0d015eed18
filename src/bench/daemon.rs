//! The daemon under test: the real binary as a child process (`linetokd
//! run --config P`), as an operator runs it.
//!
//! Its JSON log lines on stderr are read as they come: the "HTTP
//! listening" event gives the address it bound (the config asks for port
//! 0), and the last lines are kept so that a daemon that dies mid-run is
//! reported with what it said. Logs carry no token values. The child is
//! killed if a [`Daemon`] is dropped without [`Daemon::stop`], so a failed
//! benchmark leaves nothing running.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How many of the daemon's last log lines an error shows.
const TAIL_LINES: usize = 20;

/// How long the daemon may take to start listening, and to stop after
/// SIGTERM, before the benchmark gives up on it.
const PATIENCE: Duration = Duration::from_secs(120);

/// A running daemon process.
pub struct Daemon {
    child: Child,
    pid: u32,
    http: SocketAddr,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// The task reading its log; awaited before an error quotes the tail.
    reader: JoinHandle<()>,
}

impl Daemon {
    /// Starts `binary run --config config` with an environment of `env`
    /// only (no `LINETOKD__` override of the caller's leaks in) and waits
    /// until it listens for HTTP.
    ///
    /// # Errors
    /// When it cannot be started, exits, or does not listen in time.
    pub async fn spawn(
        binary: &Path,
        config: &Path,
        env: &[(OsString, OsString)],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("while starting {} run", binary.display()))?;
        let pid = child.id().context("the daemon exited as it started")?;
        let stderr = child
            .stderr
            .take()
            .context("the daemon's stderr was not captured")?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (listening, address) = oneshot::channel();
        let mut reader = tokio::spawn(read_log(stderr, Arc::clone(&tail), listening));

        let http = tokio::select! {
            found = address => found.ok(),
            status = child.wait() => {
                let status = status.context("while waiting for the daemon")?;
                drain(&mut reader).await;
                anyhow::bail!("the daemon exited ({status}) before listening{}", tail_text(&tail));
            }
            () = tokio::time::sleep(PATIENCE) => None,
        };
        let http = http.with_context(|| {
            format!(
                "the daemon did not log its HTTP address within {}s{}",
                PATIENCE.as_secs(),
                tail_text(&tail)
            )
        })?;
        Ok(Self {
            child,
            pid,
            http,
            tail,
            reader,
        })
    }

    /// The process ID, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where its HTTP listener (metrics, token API) is.
    pub fn http(&self) -> SocketAddr {
        self.http
    }

    /// Fails if the daemon has exited.
    ///
    /// # Errors
    /// When it has exited: its exit status and last log lines.
    pub async fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self
            .child
            .try_wait()
            .context("while checking on the daemon")?
        {
            None => Ok(()),
            Some(status) => {
                drain(&mut self.reader).await;
                anyhow::bail!("the daemon exited ({status}){}", self.tail_text())
            }
        }
    }

    /// The value of the un-labelled metric `name` in its `/metrics`.
    ///
    /// # Errors
    /// When `/metrics` does not answer 200 or lacks the metric.
    pub async fn metric(&self, client: &reqwest::Client, name: &str) -> anyhow::Result<f64> {
        let text = self.metrics_page(client).await?;
        sample(&text, name)
            .with_context(|| format!("http://{}/metrics has no sample {name}", self.http))
    }

    /// The daemon's whole `/metrics` page.
    ///
    /// # Errors
    /// When the request fails or is refused.
    pub async fn metrics_page(&self, client: &reqwest::Client) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.http);
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("while asking {url}"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url} answered {}",
            response.status()
        );
        response.text().await.context("while reading /metrics")
    }

    /// Sends SIGTERM and waits for the daemon to exit (SIGKILL after
    /// `PATIENCE`).
    ///
    /// # Errors
    /// When it had to be killed or exited with a failure.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            // ESRCH: it is already gone, and `wait` below says how it ended.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("while waiting for the daemon to stop")?;
                drain(&mut self.reader).await;
                anyhow::ensure!(
                    status.success(),
                    "the daemon exited with {status} after SIGTERM{}",
                    self.tail_text()
                );
                Ok(())
            }
            Err(_) => {
                self.child
                    .kill()
                    .await
                    .context("while killing the daemon")?;
                anyhow::bail!(
                    "the daemon did not stop within {}s of SIGTERM and was killed{}",
                    PATIENCE.as_secs(),
                    self.tail_text()
                )
            }
        }
    }

    fn tail_text(&self) -> String {
        tail_text(&self.tail)
    }
}

/// Lets the log reader take in the last lines of an exited daemon (its
/// stderr closes with it).
async fn drain(reader: &mut JoinHandle<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
}

/// The kept log lines, as the end of an error message.
fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
    if tail.is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
    format!("; its last log lines:\n{}", lines.join("\n"))
}

/// Reads the daemon's log to its end: hands over the HTTP address once and
/// keeps the last [`TAIL_LINES`].
async fn read_log(
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    listening: oneshot::Sender<SocketAddr>,
) {
    let mut listening = Some(listening);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if listening.is_some()
            && let Some(addr) = http_address(&line)
            && let Some(tx) = listening.take()
        {
            let _ = tx.send(addr);
        }
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// The `listen` field of the JSON log event "HTTP listening ...".
fn http_address(line: &str) -> Option<SocketAddr> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let message = event.get("message")?.as_str()?;
    if !message.starts_with("HTTP listening") {
        return None;
    }
    event.get("listen")?.as_str()?.parse().ok()
}

/// The value of the sample `name` (no labels) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_ascii_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_address_comes_from_its_log_event() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"HTTP listening (/healthz, token API)","listen":"127.0.0.1:40123"}"#;
        assert_eq!(
            http_address(line),
            Some(SocketAddr::from(([127, 0, 0, 1], 40123)))
        );
        assert_eq!(
            http_address(r#"{"message":"linetokd running","listen":"127.0.0.1:1"}"#),
            None
        );
        assert_eq!(http_address("HTTP listening on 127.0.0.1:1"), None);
    }

    #[test]
    fn samples_are_found_by_exact_name() {
        let text = "# HELP linetokd_scheduler_wakeups Scheduler wake-ups\n\
                    # TYPE linetokd_scheduler_wakeups counter\n\
                    linetokd_scheduler_wakeups_total_other 9\n\
                    linetokd_scheduler_wakeups_total 42\n";
        assert_eq!(sample(text, "linetokd_scheduler_wakeups_total"), Some(42.0));
        assert_eq!(sample(text, "linetokd_missing_total"), None);
    }
}
