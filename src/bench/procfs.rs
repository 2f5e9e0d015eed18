//! What Linux's `/proc` says about the daemon process: CPU time spent and
//! resident memory.
//!
//! Parsing is pure ([`parse_cpu_ticks`], [`parse_memory`]) so it is tested
//! on sample text; [`cpu`] and [`memory`] read the files. Linux only, like
//! the daemon's deployment.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

/// Clock ticks per second in `/proc/<pid>/stat`. The kernel exports CPU
/// times in `USER_HZ`, which is 100 on every architecture Linux still
/// supports (it is part of the user ABI, independent of the kernel's HZ);
/// `sysconf(_SC_CLK_TCK)` would need `unsafe` or another dependency to ask.
const USER_HZ: u64 = 100;

/// User plus system CPU time of every thread of `pid`, the exited ones
/// included (the kernel folds them into the process's totals).
///
/// # Errors
/// When the file cannot be read (the process is gone) or is not in the
/// shape Linux writes.
pub fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = proc_file(pid, "stat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("while reading {}", path.display()))?;
    let ticks = parse_cpu_ticks(&text)
        .with_context(|| format!("{} is not in the shape Linux writes", path.display()))?;
    Ok(Duration::from_millis(ticks.saturating_mul(1000) / USER_HZ))
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident (the high-water mark).
    pub hwm_kib: u64,
    /// `RssAnon`: the resident part of `VmRSS` that is the process's own
    /// memory (heap, stacks), as opposed to pages of files it maps (its
    /// binary's code and data, `RssFile`) that the kernel may share and
    /// drop.
    pub anon_kib: u64,
    /// `RssFile`: resident pages of mapped files, mostly the binary.
    pub file_kib: u64,
}

/// `VmRSS`, `VmHWM`, `RssAnon` and `RssFile` of `pid`.
///
/// # Errors
/// When the file cannot be read or lacks either line.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = proc_file(pid, "status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("while reading {}", path.display()))?;
    parse_memory(&text)
        .with_context(|| format!("{} lacks VmRSS, VmHWM, RssAnon or RssFile", path.display()))
}

/// Resets `pid`'s `VmHWM` to its `VmRSS` now (`clear_refs` value 5), so
/// the next reading's peak is the peak since this call.
///
/// # Errors
/// When the file cannot be written (the process is gone, or is not ours).
pub fn reset_peak(pid: u32) -> anyhow::Result<()> {
    let path = proc_file(pid, "clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("while writing {}", path.display()))
}

fn proc_file(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`.
/// The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted after the last `)`:
/// there, `state` is the first and `utime`/`stime` the 12th and 13th.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS`, `VmHWM`, `RssAnon` and `RssFile` from the text of
/// `/proc/<pid>/status` (all four since Linux 4.5).
pub fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some(Memory {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
        anon_kib: field("RssAnon")?,
        file_kib: field("RssFile")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as `prctl` allows.
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 5 0 123456 100000000 5000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn memory_lines_in_kib() {
        let status = "Name:\tlinetokd\nVmPeak:\t  900000 kB\nVmHWM:\t   25100 kB\nVmRSS:\t   24000 kB\n\
             RssAnon:\t    9000 kB\nRssFile:\t   14000 kB\nRssShmem:\t    1000 kB\n";
        assert_eq!(
            parse_memory(status),
            Some(Memory {
                rss_kib: 24_000,
                hwm_kib: 25_100,
                anon_kib: 9_000,
                file_kib: 14_000,
            })
        );
        assert_eq!(parse_memory("VmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(memory(me).expect("own status").rss_kib > 0);
        cpu(me).expect("own stat");
    }
}
