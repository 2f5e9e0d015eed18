//! What `linetokd bench` was asked to do: the flags as given, and the
//! settings derived from them with `--quick`'s defaults filled in and every
//! value checked, before anything is measured.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The flags as the command line gave them (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--groups`: the N values to bootstrap.
    pub groups: Option<Vec<usize>>,
    /// `--per-channel`.
    pub per_channel: usize,
    /// `--clients`.
    pub clients: usize,
    /// `--requests`.
    pub requests: Option<usize>,
    /// `--idle`.
    pub idle: Option<Duration>,
    /// `--timeout`: the bound on each bootstrap and each timed command.
    pub timeout: Duration,
    /// `--quick`.
    pub quick: bool,
    /// `--json-out`.
    pub json_out: Option<PathBuf>,
    /// `--keep`.
    pub keep: bool,
    /// `--postgres`.
    pub postgres: bool,
}

/// The default N values: the 1k, 10k and 100k groups.
pub const DEFAULT_GROUPS: [usize; 3] = [1_000, 10_000, 100_000];
/// `--quick`'s N: a smoke run for CI and a first look.
pub const QUICK_GROUPS: [usize; 1] = [30];
/// Token API requests in a full run and in a quick one.
const REQUESTS: usize = 20_000;
const QUICK_REQUESTS: usize = 2_000;
/// How long idle wake-ups are counted in a full run and in a quick one.
const IDLE: Duration = Duration::from_secs(60);
const QUICK_IDLE: Duration = Duration::from_secs(5);
/// Signatures timed for the yardstick.
const SIGNATURE_OPS: usize = 500;
/// LINE keeps 30 live tokens per channel and each group may hold 2.
const MAX_PER_CHANNEL: usize = 15;

/// A checked plan for one benchmark run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The `linetokd` binary to run as the daemon and for `status`/`plan`.
    pub binary: PathBuf,
    /// The N values, ascending, without repeats; the smallest also
    /// measures the token API and idle wake-ups.
    pub groups: Vec<usize>,
    /// Groups per channel.
    pub per_channel: usize,
    /// Concurrent token API clients.
    pub clients: usize,
    /// Token API requests in all.
    pub requests: usize,
    /// How long idle wake-ups are counted.
    pub idle: Duration,
    /// The most one bootstrap, or one `status`/`plan`, may take.
    pub timeout: Duration,
    /// Signatures timed for the yardstick.
    pub signature_ops: usize,
    /// Where to append JSON lines, if anywhere.
    pub json_out: Option<PathBuf>,
    /// Keep each run's directory rather than deleting it.
    pub keep: bool,
    /// The daemon's store in a throwaway PostgreSQL cluster rather than a
    /// SQLite file.
    pub postgres: bool,
    /// The allocators' settings passed to the daemon, whose environment is
    /// otherwise empty ([`allocator_env`]), so their effect on memory can
    /// be measured. The report names them. Only the daemon gets them: the
    /// timed `status` and `plan` run with an empty environment.
    pub daemon_env: Vec<(OsString, OsString)>,
}

/// The variables of `vars` (the process environment, as `vars_os` gives
/// it: a value need not be UTF-8) that tune one of the daemon's two
/// allocators, sorted by name: jemalloc's `_RJEM_MALLOC_CONF` (the Rust
/// code's allocator) and glibc's `MALLOC_*` and `GLIBC_TUNABLES` (what
/// SQLite and aws-lc allocate with, as C code calls `malloc` directly).
pub fn allocator_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let tunes_an_allocator = |name: &str| {
        name == "_RJEM_MALLOC_CONF" || name == "GLIBC_TUNABLES" || name.starts_with("MALLOC_")
    };
    let mut env: Vec<_> = vars
        .into_iter()
        .filter(|(name, _)| name.to_str().is_some_and(tunes_an_allocator))
        .collect();
    env.sort();
    env
}

impl Settings {
    /// Fills in defaults (`--quick`'s when asked) and checks the values.
    ///
    /// # Errors
    /// A message naming the flag whose value cannot work.
    pub fn resolve(flags: Flags, binary: PathBuf) -> Result<Self, String> {
        let mut groups = flags.groups.unwrap_or_else(|| {
            if flags.quick {
                QUICK_GROUPS.to_vec()
            } else {
                DEFAULT_GROUPS.to_vec()
            }
        });
        groups.sort_unstable();
        groups.dedup();
        if groups.is_empty() || groups.contains(&0) {
            return Err("--groups needs one or more group counts above 0, e.g. 1000,10000".into());
        }
        if !(1..=MAX_PER_CHANNEL).contains(&flags.per_channel) {
            return Err(format!(
                "--per-channel must be 1 to {MAX_PER_CHANNEL} (LINE keeps 30 live tokens per channel, 2 per group)"
            ));
        }
        if flags.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        let requests = flags.requests.unwrap_or(if flags.quick {
            QUICK_REQUESTS
        } else {
            REQUESTS
        });
        if requests < flags.clients {
            return Err(format!(
                "--requests ({requests}) must be at least --clients ({})",
                flags.clients
            ));
        }
        let idle = flags
            .idle
            .unwrap_or(if flags.quick { QUICK_IDLE } else { IDLE });
        if idle.is_zero() {
            return Err("--idle must be above zero: wake-ups are counted over it".into());
        }
        if flags.timeout.is_zero() {
            return Err("--timeout must be above zero".into());
        }
        Ok(Self {
            binary,
            groups,
            per_channel: flags.per_channel,
            clients: flags.clients,
            requests,
            idle,
            timeout: flags.timeout,
            signature_ops: SIGNATURE_OPS,
            json_out: flags.json_out,
            keep: flags.keep,
            postgres: flags.postgres,
            daemon_env: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allocators_variables_reach_the_daemon() {
        let vars = [
            ("PATH", "/bin"),
            ("MALLOC_ARENA_MAX", "2"),
            ("LINETOKD__DAEMON__STATE_DIR", "/x"),
            ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
            ("XMALLOC_ARENA_MAX", "1"),
            ("_RJEM_MALLOC_CONF", "narenas:1"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        assert_eq!(
            allocator_env(vars),
            [
                ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
                ("MALLOC_ARENA_MAX", "2"),
                ("_RJEM_MALLOC_CONF", "narenas:1"),
            ]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        );
    }

    #[test]
    fn a_variable_that_is_not_utf8_is_no_trouble() {
        use std::os::unix::ffi::OsStringExt as _;
        let odd = OsString::from_vec(vec![b'L', 0xff, b'X']);
        let vars = [
            (odd.clone(), OsString::from("1")),
            (OsString::from("MALLOC_TOP_PAD_"), odd.clone()),
        ];
        assert_eq!(
            allocator_env(vars),
            [(OsString::from("MALLOC_TOP_PAD_"), odd)]
        );
    }

    fn flags() -> Flags {
        Flags {
            per_channel: 15,
            clients: 8,
            timeout: Duration::from_secs(1800),
            ..Flags::default()
        }
    }

    #[test]
    fn full_and_quick_defaults() {
        let full = Settings::resolve(flags(), "linetokd".into()).unwrap();
        assert_eq!(full.groups, DEFAULT_GROUPS);
        assert_eq!((full.requests, full.idle), (REQUESTS, IDLE));
        let quick = Settings::resolve(
            Flags {
                quick: true,
                ..flags()
            },
            "linetokd".into(),
        )
        .unwrap();
        assert_eq!(quick.groups, QUICK_GROUPS);
        assert_eq!((quick.requests, quick.idle), (QUICK_REQUESTS, QUICK_IDLE));
    }

    #[test]
    fn explicit_flags_win_over_quick_and_groups_are_sorted() {
        let s = Settings::resolve(
            Flags {
                quick: true,
                groups: Some(vec![10_000, 1_000, 10_000]),
                idle: Some(Duration::from_secs(2)),
                ..flags()
            },
            "linetokd".into(),
        )
        .unwrap();
        assert_eq!(s.groups, [1_000, 10_000]);
        assert_eq!(s.idle, Duration::from_secs(2));
    }

    #[test]
    fn values_that_cannot_work_are_refused_by_flag() {
        for (bad, flag) in [
            (
                Flags {
                    groups: Some(vec![0]),
                    ..flags()
                },
                "--groups",
            ),
            (
                Flags {
                    per_channel: 16,
                    ..flags()
                },
                "--per-channel",
            ),
            (
                Flags {
                    clients: 0,
                    ..flags()
                },
                "--clients",
            ),
            (
                Flags {
                    requests: Some(3),
                    ..flags()
                },
                "--requests",
            ),
            (
                Flags {
                    idle: Some(Duration::ZERO),
                    ..flags()
                },
                "--idle",
            ),
        ] {
            let err = Settings::resolve(bad, "linetokd".into()).unwrap_err();
            assert!(err.starts_with(flag), "{flag}: {err}");
        }
    }
}
