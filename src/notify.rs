//! The systemd notification protocol (`sd_notify(3)`): telling the service
//! manager that the daemon is ready, reloading, stopping, still alive, and
//! what it is doing.
//!
//! With `Type=notify` (deploy/systemd/linetokd.service) systemd starts the
//! daemon with `NOTIFY_SOCKET` naming a Unix datagram socket and waits for
//! `READY=1` before it counts the service as started; with `WatchdogSec=` it
//! also sets `WATCHDOG_USEC` (and `WATCHDOG_PID`) and kills the daemon if no
//! `WATCHDOG=1` arrives within that time. Each message is one datagram of
//! `KEY=VALUE` lines.
//!
//! How `app` is meant to use it:
//!
//! 1. at start, `Notifier::from_env_values(env NOTIFY_SOCKET, env
//!    WATCHDOG_USEC, env WATCHDOG_PID, std::process::id())`; `Ok(None)`
//!    means "not under systemd" and every step below is skipped; an error
//!    is logged (the daemon runs on without notifications);
//! 2. once the store is open and the first pass is planned: [`Notifier::ready`],
//!    and spawn [`Notifier::keep_watchdog`] with the clock and the shutdown
//!    token;
//! 3. on SIGHUP: [`Notifier::reloading`], reload, then [`Notifier::ready`]
//!    again (the same pair `Type=notify-reload` expects on systemd 253+);
//! 4. on SIGTERM/SIGINT: [`Notifier::stopping`] before finishing the work
//!    in flight;
//! 5. [`Notifier::status`] for a one-line summary `systemctl status` shows.
//!
//! Child processes (the `on_rotate` hooks) should not inherit
//! `NOTIFY_SOCKET`, `WATCHDOG_USEC` or `WATCHDOG_PID` ([`ENV_VARS`]):
//! whoever spawns them removes those variables. The socket itself is close-on-exec (std's
//! default), so hooks never get it.
//!
//! Invariants: nothing here reads the environment (the values are
//! parameters, so tests pass their own and run in parallel); a send never
//! blocks the async runtime (the socket is non-blocking: a full queue is an
//! error, not a stall); a status text cannot smuggle in another field
//! (line breaks become spaces). Only std's `UnixDatagram` is used for the
//! socket, including abstract addresses (`@name`); `rustix` supplies
//! `CLOCK_MONOTONIC` for `MONOTONIC_USEC`, which std does not expose.
//! Depends on `clock` only (the watchdog waits on it).

use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// The environment variables the protocol uses, in the order
/// [`Notifier::from_env_values`] takes their values. `app` reads them; a
/// spawner of child processes (hooks) removes them from the child's
/// environment, so no child speaks for the daemon.
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Why notifications cannot be set up or sent. Every variant names the
/// variable or the message involved; none carries a secret (the protocol
/// carries none).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` names something other than an absolute path or an
    /// abstract socket (`@name`), or a path too long for a socket address.
    #[error("NOTIFY_SOCKET={value:?} cannot be used: {reason}")]
    Address {
        /// The variable's value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `WATCHDOG_USEC` is not a positive whole number of microseconds.
    #[error("WATCHDOG_USEC={value:?} is not a positive number of microseconds")]
    WatchdogUsec {
        /// The variable's value.
        value: String,
    },
    /// `WATCHDOG_PID` is not a process ID.
    #[error("WATCHDOG_PID={value:?} is not a process ID")]
    WatchdogPid {
        /// The variable's value.
        value: String,
    },
    /// The process could not create a Unix datagram socket.
    #[error("while creating a socket to notify the service manager")]
    Socket(#[source] io::Error),
    /// A message could not be sent (the manager is gone, or its queue is
    /// full).
    #[error("while sending {message} to the service manager at {address}")]
    Send {
        /// The message's first field, e.g. `READY=1` or `STATUS`.
        message: String,
        /// The socket's address as `NOTIFY_SOCKET` gave it.
        address: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// A connection to the service manager's notification socket.
///
/// Built only from values the caller read from the environment; `None`
/// from [`Notifier::from_env_values`] means the daemon is not supervised by
/// systemd (a shell, Docker, the tests), and there is nothing to notify.
#[derive(Debug)]
pub struct Notifier {
    /// Unbound and non-blocking: each message is a `send_to`, as
    /// `sd_notify` does, so a restarted manager is found at the same address.
    socket: UnixDatagram,
    /// Where messages go.
    target: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for error messages.
    address: String,
    /// The manager's full watchdog timeout (`WatchdogSec=`), when it
    /// watches this process.
    watchdog_timeout: Option<Duration>,
}

impl Notifier {
    /// Sets up notifications from the values of `NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC` and `WATCHDOG_PID` (each `None` when unset) and this
    /// process's ID (`std::process::id()`).
    ///
    /// Returns `Ok(None)` when `NOTIFY_SOCKET` is unset or empty. The
    /// watchdog is enabled only when `WATCHDOG_USEC` is set and
    /// `WATCHDOG_PID`, if set, is `own_pid` (it names the process the
    /// manager watches; a child that inherited it must not answer for its
    /// parent), as `sd_watchdog_enabled(3)` decides.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Address`] for a relative path, a `vsock:` address
    /// (std has no vsock sockets) or a path longer than a socket address
    /// holds; [`NotifyError::WatchdogUsec`] or [`NotifyError::WatchdogPid`]
    /// for values that are not numbers; [`NotifyError::Socket`] when no
    /// socket can be created.
    pub fn from_env_values(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Result<Option<Self>, NotifyError> {
        let Some(address) = notify_socket.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let target = parse_address(address)?;
        let watchdog_timeout = watchdog(watchdog_usec, watchdog_pid, own_pid)?;
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        socket.set_nonblocking(true).map_err(NotifyError::Socket)?;
        Ok(Some(Self {
            socket,
            target,
            address: address.to_owned(),
            watchdog_timeout,
        }))
    }

    /// `READY=1`: start-up is complete (or a reload is), so systemd counts
    /// the service as running and `systemctl start` returns.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Send`] when the message cannot be sent.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send("READY=1")
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (now, on `CLOCK_MONOTONIC`):
    /// the configuration is being reloaded; send [`Notifier::ready`] when
    /// done. systemd 253+ uses the timestamp to tell this reload from an
    /// earlier one (`Type=notify-reload`); older versions ignore it.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Send`] when the message cannot be sent.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// `STOPPING=1`: shutdown has begun, so systemd shows the service as
    /// deactivating while the work in flight finishes.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Send`] when the message cannot be sent.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }

    /// `WATCHDOG=1`: the daemon is alive. Sent every
    /// [`Notifier::watchdog_interval`] by [`Notifier::keep_watchdog`].
    ///
    /// # Errors
    ///
    /// [`NotifyError::Send`] when the message cannot be sent.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }

    /// `STATUS=<text>`: one line that `systemctl status` shows. Line breaks
    /// become spaces, so a text can never add a field of its own (a
    /// `READY=1` inside a status must not count as one). Never put a token
    /// or secret in it.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Send`] when the message cannot be sent.
    pub fn status(&self, text: &str) -> Result<(), NotifyError> {
        let line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}"))
    }

    /// How often to send `WATCHDOG=1`: half the manager's watchdog timeout
    /// (`sd_watchdog_enabled(3)` advises half), or `None` when this
    /// process is not watched.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_timeout.map(|t| t / 2)
    }

    /// Sends `WATCHDOG=1` every [`Notifier::watchdog_interval`] (the first
    /// at once) until `shutdown` is cancelled; returns at once when the
    /// process is not watched.
    ///
    /// The pings prove that the async runtime still runs tasks, which is
    /// what a wedged daemon stops doing. A failed send is logged and the
    /// next one tries again: systemd decides what a missing ping means.
    ///
    /// Waits on `clock` so tests drive it with a [`ManualClock`]
    /// (`next_deadline`, then `advance`). Each wait starts from the time
    /// read just before it, so on the system clock it lasts the interval
    /// whatever the wall clock does meanwhile (and at most
    /// [`MAX_SYSTEM_SLEEP`]: waking early only pings early, which is safe).
    ///
    /// [`ManualClock`]: crate::clock::ManualClock
    /// [`MAX_SYSTEM_SLEEP`]: crate::clock::MAX_SYSTEM_SLEEP
    pub async fn keep_watchdog(&self, clock: &dyn Clock, shutdown: CancellationToken) {
        let Some(every) = self
            .watchdog_interval()
            .filter(|d| !d.is_zero())
            .and_then(|d| chrono::Duration::from_std(d).ok())
        else {
            return;
        };
        loop {
            if let Err(e) = self.watchdog() {
                tracing::warn!(error = %e, "watchdog ping not sent");
            }
            let Some(next) = clock.now().checked_add_signed(every) else {
                // An interval past the end of time: nothing more to send.
                shutdown.cancelled().await;
                return;
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = clock.sleep_until(next) => {}
            }
        }
    }

    /// Sends one datagram. Sockets that drop part of a datagram do not
    /// exist, but a short write is reported rather than assumed away.
    fn send(&self, message: &str) -> Result<(), NotifyError> {
        let fail = |source: io::Error| NotifyError::Send {
            message: message
                .lines()
                .next()
                .map(|first| match first.split_once('=') {
                    Some(("STATUS", _)) => "STATUS".to_owned(),
                    _ => first.to_owned(),
                })
                .unwrap_or_default(),
            address: self.address.clone(),
            source,
        };
        let sent = self
            .socket
            .send_to_addr(message.as_bytes(), &self.target)
            .map_err(fail)?;
        if sent == message.len() {
            Ok(())
        } else {
            Err(fail(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", message.len()),
            )))
        }
    }
}

/// `NOTIFY_SOCKET` as systemd writes it: an absolute path, or `@` and an
/// abstract socket name.
fn parse_address(value: &str) -> Result<SocketAddr, NotifyError> {
    let bad = |reason: String| NotifyError::Address {
        value: value.to_owned(),
        reason,
    };
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() {
            return Err(bad("an abstract socket needs a name after '@'".into()));
        }
        SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| bad(format!("not an abstract socket name: {e}")))
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value).map_err(|e| bad(format!("not a socket path: {e}")))
    } else if value.starts_with("vsock:") {
        Err(bad(
            "vsock addresses are not supported; use a Unix socket path".into(),
        ))
    } else {
        Err(bad(
            "expected an absolute socket path or '@' and an abstract socket name".into(),
        ))
    }
}

/// The watchdog timeout, if the manager watches this process.
fn watchdog(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = usec.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let micros = usec
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| NotifyError::WatchdogUsec {
            value: usec.to_owned(),
        })?;
    if let Some(pid) = pid.filter(|s| !s.is_empty()) {
        let watched = pid
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| NotifyError::WatchdogPid {
                value: pid.to_owned(),
            })?;
        if watched != own_pid {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(micros)))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares
/// `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec / 1_000).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_socket_means_not_supervised() {
        assert!(
            Notifier::from_env_values(None, Some("1000000"), None, 1)
                .unwrap()
                .is_none()
        );
        assert!(
            Notifier::from_env_values(Some(""), None, None, 1)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn addresses_systemd_writes_are_accepted_and_others_named() {
        assert!(parse_address("/run/systemd/notify").is_ok());
        assert!(parse_address("@/org/freedesktop/systemd1/notify/42").is_ok());
        for bad in ["run/notify", "@", "vsock:2:1234", "notify"] {
            let err = parse_address(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let long = format!("/{}", "x".repeat(200));
        assert!(matches!(
            parse_address(&long),
            Err(NotifyError::Address { .. })
        ));
    }

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_the_watched_pid() {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        assert_eq!(
            secs(watchdog(Some("30000000"), None, 7).unwrap()),
            Some(30.0)
        );
        assert_eq!(
            secs(watchdog(Some("30000000"), Some("7"), 7).unwrap()),
            Some(30.0)
        );
        assert_eq!(watchdog(Some("30000000"), Some("8"), 7).unwrap(), None);
        assert_eq!(watchdog(None, Some("7"), 7).unwrap(), None);
        assert_eq!(watchdog(Some(""), None, 7).unwrap(), None);
        for bad in ["0", "-5", "soon", "1.5"] {
            assert!(matches!(
                watchdog(Some(bad), None, 7),
                Err(NotifyError::WatchdogUsec { .. })
            ));
        }
        assert!(matches!(
            watchdog(Some("1000"), Some("me"), 7),
            Err(NotifyError::WatchdogPid { .. })
        ));
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a, "{a} then {b}");
    }
}
