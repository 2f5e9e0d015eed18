//! Load on the token API: k concurrent loopback clients ask for one
//! group's token a fixed number of times in all, each waiting for its
//! answer before asking again (a closed loop, so the figure is what the
//! daemon sustains, not what a queue absorbs).
//!
//! Every answer must be 200: a benchmark of refusals would measure the
//! wrong path. Bodies are read and dropped; no token is printed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Barrier;

use super::stats;
use crate::domain::{ChannelId, GroupName};

/// What the load measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    /// Concurrent clients.
    pub clients: usize,
    /// Requests timed, in all.
    pub requests: usize,
    /// Wall time from the first to the last answer.
    pub elapsed: Duration,
    /// Requests per second over that time.
    pub per_second: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
}

/// The request one client repeats.
#[derive(Clone)]
pub struct Target {
    /// The daemon's HTTP address.
    pub http: SocketAddr,
    /// The channel.
    pub channel: ChannelId,
    /// The group.
    pub group: GroupName,
    /// The group's API key.
    pub api_key: String,
}

/// Sends `requests` requests over `clients` connections. Each client first
/// makes one untimed request (connection set-up), then all start together.
///
/// # Errors
/// When a client cannot be built or a request fails or is refused.
pub async fn measure(
    target: Target,
    clients: usize,
    requests: usize,
) -> anyhow::Result<Throughput> {
    anyhow::ensure!(clients > 0, "--clients must be at least 1");
    anyhow::ensure!(requests >= clients, "--requests must be at least --clients");
    let url = format!(
        "http://{}/v1/channels/{}/groups/{}/token",
        target.http, target.channel, target.group
    );
    let remaining = Arc::new(AtomicUsize::new(requests));
    let start = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build()
            .context("while building a token API client")?;
        let (url, key) = (url.clone(), target.api_key.clone());
        let (remaining, start) = (Arc::clone(&remaining), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            let warm_up = fetch(&client, &url, &key).await;
            start.wait().await;
            warm_up?;
            let mut latencies = Vec::new();
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let sent = Instant::now();
                fetch(&client, &url, &key).await?;
                latencies.push(stats::ms(sent.elapsed()));
            }
            anyhow::Ok(latencies)
        }));
    }
    start.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await.context("a token API client panicked")??);
    }
    let elapsed = started.elapsed();
    #[allow(clippy::cast_precision_loss)]
    let per_second = latencies.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    Ok(Throughput {
        clients,
        requests: latencies.len(),
        elapsed,
        per_second,
        p50_ms: stats::percentile(&latencies, 50.0).context("no request was timed")?,
        p99_ms: stats::percentile(&latencies, 99.0).context("no request was timed")?,
    })
}

async fn fetch(client: &reqwest::Client, url: &str, key: &str) -> anyhow::Result<()> {
    let response = client
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("token API request failed: {}", e.without_url()))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .context("while reading a token API answer")?;
    anyhow::ensure!(
        status == reqwest::StatusCode::OK,
        "the token API answered {status} (expected 200)"
    );
    std::hint::black_box(body);
    Ok(())
}
