//! `linetokd bench`: measures this build on this machine against the LINE
//! sandbox, the figures the rotation engine's targets are stated in (see
//! README "Benchmarks"): bootstrap of N groups in wall and daemon CPU ms per
//! group beside one RSA-2048 signature's cost, RSS after bootstrap (fixed part and
//! per-group slope), a `/metrics` scrape's time and peak memory, `status`
//! and `plan --days 30` times at each N, token API throughput and latency,
//! and scheduler wake-ups while idle.
//!
//! The daemon is the real binary run as a child process with a generated
//! config ([`lab`]); figures come from outside it: the sandbox's own book
//! for "every group has a live token", `/proc` for CPU and memory
//! ([`procfs`]), its `/metrics` for wake-ups, loopback HTTP clients for the
//! token API ([`token_api`]). The parts:
//!
//! - [`settings`]: flags to checked settings; [`machine`]: nproc, rustc,
//!   commit, CPU model; [`signature`]: the yardstick; [`lab`]: sandbox + config;
//!   [`daemon`]: the child process; [`commands`]: `status`/`plan` timing;
//!   [`token_api`]: the load; [`stats`]: median, percentiles, least
//!   squares; [`report`]: the table and the JSON lines;
//!   [`login_schedule`]: the LINE Login refresh schedule of 100,000 grants,
//!   timed in process.
//!
//! It sits beside `cli` and `demo` at the top of the dependency rule: it
//! reads the clock, spawns processes and calls `sandbox` and `line::keys`;
//! nothing calls it but `cli`. Waits are bounded (`--timeout`); a bootstrap
//! that runs out of time is reported as such, with how far it got.

pub mod commands;
pub mod daemon;
pub mod lab;
pub mod login_schedule;
pub mod machine;
pub mod procfs;
pub mod report;
pub mod settings;
pub mod signature;
pub mod stats;
pub mod token_api;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use self::settings::{Flags, Settings, allocator_env};

use self::daemon::Daemon;
use self::lab::Lab;
use self::machine::Machine;
use self::report::{Bootstrap, Idle, JsonLines, Scrape};
use self::signature::SignatureCost;
use self::token_api::{Target, Throughput};
use crate::line::keys::{self, SigningKey};

/// The counter the scheduler bumps on every wake-up.
pub const WAKEUPS_METRIC: &str = "linetokd_scheduler_wakeups_total";

/// How often the sandbox is asked whether every group is live: short, as
/// it bounds the error of the wall time, and cheap ([`lab::Progress`]).
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Runs every measurement `settings` asks for, printing as it goes, until
/// done or until `shutdown` fires (then the daemon is killed and the
/// temporary directories removed as the measurement is dropped).
///
/// # Errors
/// When something cannot be set up, the daemon fails, or a figure cannot be
/// read; the error says which.
pub async fn run(
    settings: &Settings,
    shutdown: CancellationToken,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    tokio::select! {
        result = measure(settings, out) => result,
        () = shutdown.cancelled() => {
            anyhow::bail!("interrupted: the benchmark's daemon was stopped and its files removed")
        }
    }
}

async fn measure(settings: &Settings, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let started_at = chrono::Utc::now();
    let machine = Machine::probe().await;
    let mut json = settings
        .json_out
        .as_deref()
        .map(|path| JsonLines::open(path, &machine, started_at, &settings.daemon_env))
        .transpose()?;

    // One key for every channel: RSA key generation takes a good part of a
    // second, and the benchmark measures the daemon, not key generation.
    let key = tokio::task::spawn_blocking(keys::generate)
        .await
        .context("key generation panicked")?
        .context("while generating the assertion key")?;
    let key = Arc::new(key);
    let signature = time_signature(&key, settings.signature_ops, "at the start").await?;
    write!(
        out,
        "{}",
        report::preamble(&machine, &signature, &settings.daemon_env)
    )?;
    let schedule = tokio::task::spawn_blocking(move || {
        login_schedule::measure(login_schedule::GRANTS, chrono::Utc::now())
    })
    .await
    .context("the LINE Login schedule benchmark panicked")??;
    write!(out, "{}", login_schedule::line(&schedule))?;
    let cluster = if settings.postgres {
        let cluster = tokio::task::spawn_blocking(crate::store::pg::cluster::cluster)
            .await
            .context("starting the PostgreSQL cluster panicked")?
            .map_err(|why| anyhow::anyhow!("--postgres needs a PostgreSQL 15 cluster: {why}"))?;
        writeln!(
            out,
            "store: PostgreSQL 15, a throwaway cluster on loopback (its server's CPU is not in \
             the daemon's figures)"
        )?;
        Some(cluster)
    } else {
        writeln!(out, "store: SQLite, a file in a temporary directory")?;
        None
    };
    write!(out, "{}", report::table_header(settings.per_channel))?;
    out.flush()?;
    if let Some(json) = &mut json {
        json.signature(&signature)?;
        json.login_schedule(&schedule)?;
    }

    let mut runs = Vec::new();
    let mut token_api = None;
    let mut idle = None;
    for (i, &groups) in settings.groups.iter().enumerate() {
        let database = match cluster {
            Some(cluster) => Some(fresh_database(cluster, &format!("bench_{i}_{groups}")).await?),
            None => None,
        };
        let measured = bootstrap(settings, groups, &key, database.as_deref(), i == 0).await?;
        write!(out, "{}", report::table_row(&measured.run))?;
        out.flush()?;
        if let Some(json) = &mut json {
            json.bootstrap(&measured.run, settings.per_channel)?;
        }
        token_api = token_api.or(measured.token_api.map(|t| (groups, t)));
        idle = idle.or(measured.idle.map(|w| (groups, w)));
        runs.push(measured.run);
    }
    write!(
        out,
        "{}",
        report::summary(&runs, token_api.as_ref(), idle.as_ref())
    )?;
    out.flush()?;
    if let Some(json) = &mut json {
        json.summary(&runs, token_api.as_ref(), idle.as_ref())?;
    }
    Ok(())
}

/// What one N yielded.
struct Measured {
    run: Bootstrap,
    token_api: Option<Throughput>,
    idle: Option<Idle>,
}

/// Times `ops` signatures with `key` off the runtime's threads; `when`
/// names the timing in errors.
async fn time_signature(
    key: &Arc<SigningKey>,
    ops: usize,
    when: &str,
) -> anyhow::Result<SignatureCost> {
    let key = Arc::clone(key);
    tokio::task::spawn_blocking(move || signature::measure(&key, ops))
        .await
        .with_context(|| format!("the signature benchmark panicked ({when})"))?
        .with_context(|| format!("while timing the signature {when}"))
}

/// Bootstraps `groups` groups with a fresh daemon, database and sandbox,
/// with the signature timed just before and just after, times `status` and
/// `plan`, and at the smallest N (`extras`) loads the token API and counts
/// idle wake-ups; then stops the daemon (SIGTERM) and removes the
/// directory.
async fn bootstrap(
    settings: &Settings,
    groups: usize,
    key: &Arc<SigningKey>,
    database: Option<&str>,
    extras: bool,
) -> anyhow::Result<Measured> {
    let lab = Lab::new(groups, settings.per_channel, key, database).await?;
    let before = time_signature(
        key,
        settings.signature_ops,
        &format!("before the bootstrap of {groups} groups"),
    )
    .await?;
    let started = Instant::now();
    let mut daemon =
        Daemon::spawn(&settings.binary, lab.config_path(), &settings.daemon_env).await?;
    let mut progress = lab.progress();
    let live_groups = loop {
        let live = progress.poll(&lab);
        if progress.done() {
            break live;
        }
        if started.elapsed() >= settings.timeout {
            break progress.count_all(&lab);
        }
        daemon.ensure_running().await?;
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let wall = started.elapsed();
    let cpu = procfs::cpu(daemon.pid())?;
    let memory = procfs::memory(daemon.pid())?;
    // Outside the measured window, before the scrape, `status` and `plan`.
    // The daemon may still be verifying and storing its last few tokens
    // (the sandbox counts a group live once it issued): that touches a few
    // of the timings at most, which the median passes over.
    let after = time_signature(
        key,
        settings.signature_ops,
        &format!("after the bootstrap of {groups} groups"),
    )
    .await?;
    let scrape = scrape(&daemon).await?;

    let config = lab.config_path();
    let status = commands::time(&settings.binary, &["status"], config, settings.timeout).await?;
    let plan = commands::time(
        &settings.binary,
        &["plan", "--days", "30"],
        config,
        settings.timeout,
    )
    .await?;
    let run = Bootstrap {
        groups,
        channels: lab.channels(),
        live_groups,
        wall,
        cpu,
        signature: SignatureCost::around(before, after),
        memory,
        status,
        plan,
        scrape,
    };

    let (mut token_api, mut idle) = (None, None);
    if extras && run.complete() {
        let (channel, group, api_key) = lab
            .api_group()
            .context("the lab has no group for the token API")?;
        let target = Target {
            http: daemon.http(),
            channel,
            group,
            api_key: api_key.to_owned(),
        };
        token_api = Some(token_api::measure(target, settings.clients, settings.requests).await?);
        idle = Some(count_idle_wakeups(&daemon, settings.idle).await?);
    }
    daemon.stop().await?;
    if let Some(dir) = lab.close(settings.keep).await {
        eprintln!("bench: kept {} (N = {groups})", dir.display());
    }
    Ok(Measured {
        run,
        token_api,
        idle,
    })
}

/// Creates database `name` in `cluster` and returns its URL.
async fn fresh_database(
    cluster: &crate::store::pg::cluster::Cluster,
    name: &str,
) -> anyhow::Result<String> {
    let (client, connection) =
        tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
            .await
            .context("while connecting to the benchmark's PostgreSQL cluster")?;
    let driving = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .with_context(|| format!("while creating database {name}"))?;
    drop(client);
    let _ = driving.await;
    Ok(cluster.url(name))
}

/// Asks the daemon for its `/metrics` page twice in a row, each time
/// resetting its peak memory first, and reads how far each raised it.
async fn scrape(daemon: &Daemon) -> anyhow::Result<Scrape> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .context("while building the metrics client")?;
    let mut peak_rise_kib = 0;
    let mut last = None;
    for _ in 0..2 {
        let before = procfs::memory(daemon.pid())?;
        procfs::reset_peak(daemon.pid())?;
        let started = Instant::now();
        let page = daemon.metrics_page(&client).await?;
        let elapsed = started.elapsed();
        let after = procfs::memory(daemon.pid())?;
        peak_rise_kib = peak_rise_kib.max(after.hwm_kib.saturating_sub(before.rss_kib));
        last = Some((elapsed, page.len(), after));
    }
    let (elapsed, bytes, memory) = last.context("no scrape ran")?;
    Ok(Scrape {
        elapsed,
        bytes,
        peak_rise_kib,
        memory,
    })
}

/// Reads the wake-up counter, waits `idle` (a benchmark may wait: the
/// figure is what happens in that time), and reads it again.
async fn count_idle_wakeups(daemon: &Daemon, idle: Duration) -> anyhow::Result<Idle> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .context("while building the metrics client")?;
    let before = daemon.metric(&client, WAKEUPS_METRIC).await?;
    let started = Instant::now();
    tokio::time::sleep(idle).await;
    let after = daemon.metric(&client, WAKEUPS_METRIC).await?;
    Ok(Idle {
        waited: started.elapsed(),
        wakeups: after - before,
    })
}
