//! The figures a run measured, as a table for people and as JSON lines for
//! files that collect runs (`--json-out`).
//!
//! Plain data and formatting only: no IO but the [`JsonLines`] writer. The
//! table prints one row per N as soon as that N is measured, so a long run
//! shows progress; the summary lines follow the table.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::machine::Machine;
use super::procfs::Memory;
use super::signature::SignatureCost;
use super::stats::{self, Line};
use super::token_api::Throughput;

/// One bootstrap of N groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// Groups configured.
    pub groups: usize,
    /// Channels they are spread over.
    pub channels: usize,
    /// Groups with a live token at the sandbox when the wait ended.
    pub live_groups: usize,
    /// From spawning the daemon to every group live (or to the time limit).
    pub wall: Duration,
    /// The daemon's user + system CPU over that time.
    pub cpu: Duration,
    /// One signature's cost timed around this bootstrap (see
    /// [`SignatureCost::around`]): the yardstick its CPU is read against.
    pub signature: SignatureCost,
    /// The daemon's memory at that moment.
    pub memory: Memory,
    /// `linetokd status` afterwards; `None` if it hit the time limit.
    pub status: Option<Duration>,
    /// `linetokd plan --days 30` afterwards; `None` if it hit the time limit.
    pub plan: Option<Duration>,
    /// One `/metrics` scrape right after the bootstrap.
    pub scrape: Scrape,
}

/// Two `/metrics` scrapes in a row: what a Prometheus server costs the
/// daemon. The first is the first of the daemon's life; the second is the
/// steady state (the page written into room for the first's length).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scrape {
    /// The second scrape, from sending the request to the last byte read.
    pub elapsed: Duration,
    /// The page's length.
    pub bytes: usize,
    /// The most either scrape raised the daemon's peak resident memory
    /// above its `VmRSS` just before it (the peak is reset before each).
    pub peak_rise_kib: u64,
    /// The daemon's memory after the second.
    pub memory: Memory,
}

impl Bootstrap {
    /// True when every group got a live token within the time limit.
    pub fn complete(&self) -> bool {
        self.live_groups == self.groups
    }

    /// Wall milliseconds per group; only for a complete bootstrap.
    pub fn ms_per_group(&self) -> Option<f64> {
        self.per_group(stats::ms(self.wall))
    }

    /// Daemon CPU milliseconds per group; only for a complete bootstrap.
    pub fn cpu_ms_per_group(&self) -> Option<f64> {
        self.per_group(stats::ms(self.cpu))
    }

    /// Daemon CPU per group as a multiple of the signature timed around
    /// this bootstrap; only for a complete bootstrap.
    pub fn cpu_per_signature(&self) -> Option<f64> {
        self.cpu_ms_per_group()
            .map(|cpu| cpu / self.signature.median_ms.max(f64::EPSILON))
    }

    fn per_group(&self, total_ms: f64) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        (self.complete() && self.groups > 0).then(|| total_ms / self.groups as f64)
    }
}

/// Scheduler wake-ups counted while the daemon had nothing due.
#[derive(Debug, Clone, PartialEq)]
pub struct Idle {
    /// How long the counter was watched.
    pub waited: Duration,
    /// The counter's increase over that time.
    pub wakeups: f64,
}

impl Idle {
    /// Wake-ups per minute.
    pub fn per_minute(&self) -> f64 {
        self.wakeups * 60.0 / self.waited.as_secs_f64().max(f64::EPSILON)
    }
}

/// RSS after bootstrap against N: the least-squares line over the complete
/// runs, in KiB and KiB per group. `None` with fewer than two distinct N.
pub fn rss_fit(runs: &[Bootstrap]) -> Option<Line> {
    #[allow(clippy::cast_precision_loss)]
    let points: Vec<(f64, f64)> = runs
        .iter()
        .filter(|r| r.complete())
        .map(|r| (r.groups as f64, r.memory.rss_kib as f64))
        .collect();
    stats::least_squares(&points)
}

/// The first lines: where the run happened, the allocator settings the
/// daemon was given (if any) and the signature yardstick.
pub fn preamble(
    machine: &Machine,
    signature: &SignatureCost,
    daemon_env: &[(OsString, OsString)],
) -> String {
    let env = if daemon_env.is_empty() {
        String::new()
    } else {
        let pairs: Vec<String> = daemon_env
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect();
        format!("daemon environment: {}\n", pairs.join(" "))
    };
    format!(
        "linetokd bench: nproc {}, cpu {}, {}, commit {}\n{env}\
         RSA-2048 RS256 signature: {:.3} ms (median of {}, aws-lc-rs, the daemon's signing code; \
         each row's sig_ms is timed again around its bootstrap, and its cpu/sig divides by that)\n",
        machine.nproc,
        machine.cpu.as_deref().unwrap_or("unknown"),
        machine.rustc.as_deref().unwrap_or("rustc unknown"),
        machine.commit.as_deref().unwrap_or("unknown"),
        signature.median_ms,
        signature.ops,
    )
}

/// The table's title and column names (each one word, so the table is easy
/// to read by program too).
pub fn table_header(per_channel: usize) -> String {
    format!(
        "\nbootstrap against the sandbox ({per_channel} groups per channel, loopback):\n\
         {:>8} {:>8} {:>9} {:>9} {:>13} {:>7} {:>8} {:>8} {:>9} {:>9} {:>8} {:>10} {:>11} {:>10} {:>16}\n",
        "groups",
        "channels",
        "wall_s",
        "ms/group",
        "cpu_ms/group",
        "sig_ms",
        "cpu/sig",
        "rss_MiB",
        "anon_MiB",
        "file_MiB",
        "hwm_MiB",
        "status_ms",
        "plan30d_ms",
        "scrape_ms",
        "scrape_peak_MiB",
    )
}

/// One row of the table, and for an incomplete bootstrap a line saying how
/// far it got.
pub fn table_row(run: &Bootstrap) -> String {
    let mut row = format!(
        "{:>8} {:>8} {:>9.2} {:>9} {:>13} {:>7.3} {:>8} {:>8.1} {:>9.1} {:>9.1} {:>8.1} {:>10} {:>11} {:>10} {:>16.1}\n",
        run.groups,
        run.channels,
        run.wall.as_secs_f64(),
        cell(run.ms_per_group(), 3),
        cell(run.cpu_ms_per_group(), 3),
        run.signature.median_ms,
        cell(run.cpu_per_signature(), 2),
        mib(run.memory.rss_kib),
        mib(run.memory.anon_kib),
        mib(run.memory.file_kib),
        mib(run.memory.hwm_kib),
        cell(run.status.map(stats::ms), 0),
        cell(run.plan.map(stats::ms), 0),
        cell(Some(stats::ms(run.scrape.elapsed)), 0),
        mib(run.scrape.peak_rise_kib),
    );
    if !run.complete() {
        let _ = writeln!(
            row,
            "         ({} of {} groups live when the time limit ran out after {:.0} s)",
            run.live_groups,
            run.groups,
            run.wall.as_secs_f64()
        );
    }
    row
}

/// The lines after the table: RSS fit, token API, idle wake-ups.
pub fn summary(
    runs: &[Bootstrap],
    token_api: Option<&(usize, Throughput)>,
    idle: Option<&(usize, Idle)>,
) -> String {
    let mut text = String::from("\n");
    let complete = runs.iter().filter(|r| r.complete()).count();
    let _ = match rss_fit(runs) {
        Some(line) => writeln!(
            text,
            "rss after bootstrap: {:.1} MiB + {:.2} KiB per group (least squares over {complete} runs)",
            line.intercept / 1024.0,
            line.slope
        ),
        None => writeln!(
            text,
            "rss after bootstrap: no fit (needs complete runs at two or more N)"
        ),
    };
    let _ = match token_api {
        Some((groups, t)) => writeln!(
            text,
            "token API at {groups} groups: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms ({} clients, {} requests)",
            t.per_second, t.p50_ms, t.p99_ms, t.clients, t.requests
        ),
        None => writeln!(
            text,
            "token API: not measured (the smallest N did not finish bootstrap)"
        ),
    };
    let _ = match idle {
        Some((groups, idle)) => writeln!(
            text,
            "idle scheduler wake-ups at {groups} groups: {:.1} per minute ({} in {:.1} s)",
            idle.per_minute(),
            idle.wakeups,
            idle.waited.as_secs_f64()
        ),
        None => writeln!(
            text,
            "idle scheduler wake-ups: not measured (the smallest N did not finish bootstrap)"
        ),
    };
    text
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

#[allow(clippy::cast_precision_loss)]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Appends one JSON object per figure to a file; each carries the run's
/// start time, nproc, CPU model, rustc and commit, so lines from many runs can share
/// one file.
pub struct JsonLines {
    file: File,
    common: Map<String, Value>,
}

impl JsonLines {
    /// Opens (creating, appending to) `path`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(
        path: &Path,
        machine: &Machine,
        started: DateTime<Utc>,
        daemon_env: &[(OsString, OsString)],
    ) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("while opening {} for the JSON lines", path.display()))?;
        let mut common = Map::new();
        common.insert(
            "run".into(),
            json!(started.to_rfc3339_opts(SecondsFormat::Secs, true)),
        );
        common.insert("nproc".into(), json!(machine.nproc));
        common.insert("cpu".into(), json!(machine.cpu));
        common.insert("rustc".into(), json!(machine.rustc));
        common.insert("commit".into(), json!(machine.commit));
        if !daemon_env.is_empty() {
            let env: Map<String, Value> = daemon_env
                .iter()
                .map(|(k, v)| (k.to_string_lossy().into_owned(), json!(v.to_string_lossy())))
                .collect();
            common.insert("daemon_env".into(), Value::Object(env));
        }
        Ok(Self { file, common })
    }

    /// The signature yardstick.
    ///
    /// # Errors
    /// When the line cannot be written.
    pub fn signature(&mut self, signature: &SignatureCost) -> anyhow::Result<()> {
        self.write(
            "signature",
            json!({"ms_per_op": signature.median_ms, "ops": signature.ops}),
        )
    }

    /// The LINE Login refresh schedule figure.
    ///
    /// # Errors
    /// When the line cannot be written.
    pub fn login_schedule(
        &mut self,
        cost: &super::login_schedule::ScheduleCost,
    ) -> anyhow::Result<()> {
        self.write(
            "login_schedule",
            json!({"grants": cost.grants, "ms": cost.median_ms, "runs": cost.runs}),
        )
    }

    /// One bootstrap, with the signature's cost timed around it.
    ///
    /// # Errors
    /// When the line cannot be written.
    pub fn bootstrap(&mut self, run: &Bootstrap, per_channel: usize) -> anyhow::Result<()> {
        self.write(
            "bootstrap",
            json!({
                "groups": run.groups,
                "channels": run.channels,
                "per_channel": per_channel,
                "complete": run.complete(),
                "live_groups": run.live_groups,
                "wall_ms": stats::ms(run.wall),
                "ms_per_group": run.ms_per_group(),
                "cpu_ms": stats::ms(run.cpu),
                "cpu_ms_per_group": run.cpu_ms_per_group(),
                "signature_ms": run.signature.median_ms,
                "signature_ops": run.signature.ops,
                "cpu_per_signature": run.cpu_per_signature(),
                "vm_rss_kib": run.memory.rss_kib,
                "vm_hwm_kib": run.memory.hwm_kib,
                "rss_anon_kib": run.memory.anon_kib,
                "rss_file_kib": run.memory.file_kib,
                "status_ms": run.status.map(stats::ms),
                "plan_30d_ms": run.plan.map(stats::ms),
                "scrape_ms": stats::ms(run.scrape.elapsed),
                "scrape_bytes": run.scrape.bytes,
                "scrape_peak_rise_kib": run.scrape.peak_rise_kib,
                "scrape_vm_rss_kib": run.scrape.memory.rss_kib,
            }),
        )
    }

    /// The RSS fit, the token API and the idle wake-ups.
    ///
    /// # Errors
    /// When a line cannot be written.
    pub fn summary(
        &mut self,
        runs: &[Bootstrap],
        token_api: Option<&(usize, Throughput)>,
        idle: Option<&(usize, Idle)>,
    ) -> anyhow::Result<()> {
        if let Some(line) = rss_fit(runs) {
            self.write(
                "rss_fit",
                json!({
                    "runs": runs.iter().filter(|r| r.complete()).count(),
                    "fixed_kib": line.intercept,
                    "kib_per_group": line.slope,
                }),
            )?;
        }
        if let Some((groups, t)) = token_api {
            self.write(
                "token_api",
                json!({
                    "groups": groups,
                    "clients": t.clients,
                    "requests": t.requests,
                    "elapsed_ms": stats::ms(t.elapsed),
                    "requests_per_second": t.per_second,
                    "p50_ms": t.p50_ms,
                    "p99_ms": t.p99_ms,
                }),
            )?;
        }
        if let Some((groups, idle)) = idle {
            self.write(
                "idle_wakeups",
                json!({
                    "groups": groups,
                    "waited_ms": stats::ms(idle.waited),
                    "wakeups": idle.wakeups,
                    "per_minute": idle.per_minute(),
                }),
            )?;
        }
        Ok(())
    }

    fn write(&mut self, figure: &str, fields: Value) -> anyhow::Result<()> {
        let mut object = self.common.clone();
        object.insert("figure".into(), json!(figure));
        if let Value::Object(fields) = fields {
            object.extend(fields);
        }
        let line = Value::Object(object).to_string();
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .context("while writing the JSON lines")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            nproc: 2,
            cpu: Some("AMD EPYC".into()),
            rustc: Some("rustc 1.95.0".into()),
            commit: Some("abc1234".into()),
        }
    }

    fn env() -> Vec<(OsString, OsString)> {
        vec![
            ("MALLOC_ARENA_MAX".into(), "2".into()),
            ("_RJEM_MALLOC_CONF".into(), "narenas:1".into()),
        ]
    }

    #[test]
    fn the_report_names_the_allocator_settings_the_daemon_was_given() {
        let signature = SignatureCost {
            median_ms: 0.2,
            ops: 10,
        };
        let text = preamble(&machine(), &signature, &env());
        assert!(
            text.starts_with(
                "linetokd bench: nproc 2, cpu AMD EPYC, rustc 1.95.0, commit abc1234\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("daemon environment: MALLOC_ARENA_MAX=2 _RJEM_MALLOC_CONF=narenas:1\n"),
            "{text}"
        );
        assert!(!preamble(&machine(), &signature, &[]).contains("environment"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.jsonl");
        let mut lines = JsonLines::open(&path, &machine(), Utc::now(), &env()).unwrap();
        lines.signature(&signature).unwrap();
        let line: Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(
            line["daemon_env"],
            json!({"MALLOC_ARENA_MAX": "2", "_RJEM_MALLOC_CONF": "narenas:1"})
        );
    }

    fn run(groups: usize, live: usize, rss_kib: u64) -> Bootstrap {
        Bootstrap {
            groups,
            channels: groups.div_ceil(15),
            live_groups: live,
            wall: Duration::from_millis(2 * groups as u64),
            cpu: Duration::from_millis(groups as u64),
            signature: SignatureCost {
                median_ms: 0.25,
                ops: 10,
            },
            memory: Memory {
                rss_kib,
                hwm_kib: rss_kib + 100,
                anon_kib: rss_kib / 2,
                file_kib: rss_kib / 2,
            },
            status: Some(Duration::from_millis(40)),
            plan: None,
            scrape: Scrape {
                elapsed: Duration::from_millis(3),
                bytes: groups * 400,
                peak_rise_kib: 2_000,
                memory: Memory {
                    rss_kib,
                    hwm_kib: rss_kib + 2_000,
                    anon_kib: rss_kib / 2,
                    file_kib: rss_kib / 2,
                },
            },
        }
    }

    #[test]
    fn per_group_figures_only_for_a_complete_bootstrap() {
        let done = run(1000, 1000, 20_000);
        assert_eq!(done.ms_per_group(), Some(2.0));
        assert_eq!(done.cpu_ms_per_group(), Some(1.0));
        let partial = run(1000, 400, 20_000);
        assert_eq!(partial.ms_per_group(), None);
        assert_eq!(done.cpu_per_signature(), Some(4.0));
        assert_eq!(partial.cpu_per_signature(), None);
        let row = table_row(&done);
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "1000", "67", "2.00", "2.000", "1.000", "0.250", "4.00", "19.5", "9.8", "9.8",
                "19.6", "40", "-", "3", "2.0"
            ]
        );
        let header: Vec<String> = table_header(15)
            .lines()
            .last()
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(header.len(), cells.len(), "{header:?}");
        assert_eq!(header[5], "sig_ms");
        assert!(table_row(&partial).contains("400 of 1000 groups live"));
    }

    #[test]
    fn rss_fit_uses_complete_runs_only() {
        let runs = [
            run(1000, 1000, 21_000),
            run(10_000, 10_000, 30_000),
            run(100_000, 5, 1),
        ];
        let line = rss_fit(&runs).expect("two complete runs");
        assert!((line.slope - 1.0).abs() < 1e-9);
        assert!((line.intercept - 20_000.0).abs() < 1e-6);
        assert_eq!(rss_fit(&runs[..1]), None);
    }

    #[test]
    fn idle_wakeups_per_minute() {
        let idle = Idle {
            waited: Duration::from_secs(30),
            wakeups: 2.0,
        };
        assert!((idle.per_minute() - 4.0).abs() < 1e-12);
    }
}
