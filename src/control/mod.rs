//! The local control socket: how `linetokd rotate`, `linetokd revoke` and
//! `linetokd long-lived retire` reach the running daemon (docs/design.md
//! section 6, "Control"), so the daemon stays the only writer of the
//! database. A retire is answered at once by the long-lived watchers
//! ([`LongLivedEngine`]), not through the rotator's request rows.
//!
//! # Protocol
//!
//! One connection per command: the client writes one JSON [`Request`] on a
//! line, the daemon answers one JSON [`Response`] on a line and closes. The
//! daemon answers once the request is carried out (a fresh token issued
//! and, for an incident, every older token of the group revoked), when a
//! step fails (LINE refused or could not be reached: the daemon keeps
//! retrying with backoff and says when), or after a bounded wait
//! ([`DEFAULT_WAIT`]) with what happened so far.
//!
//! # The socket file
//!
//! `<state_dir>/control.sock`, mode 0600, so only the daemon's user (and
//! root) can connect; the daemon also checks the peer's uid. It is created
//! without a moment of wider access whatever the umask: the socket is bound
//! inside a fresh 0700 directory, chmod-ed to 0600 there, and renamed into
//! place. It is removed on shutdown.
//!
//! One daemon per state directory: the daemon holds an exclusive `flock` on
//! `<state_dir>/control.lock` while it runs (the store's writer lock only
//! covers one database; two daemons with different databases but the same
//! state directory would otherwise fight over the socket). Holding that
//! lock also proves any socket file already there is stale, left by a
//! crashed run, so it is replaced; a non-socket file at that path is never
//! touched.
//!
//! # Waiting for the outcome
//!
//! The handler subscribes to the rotator's events before it asks, wakes the
//! scheduler, and then watches two things: the events of the targeted
//! groups (what was revoked, what was issued, what failed) and the end of
//! each scheduler pass. After each, it asks the engine where its own
//! request rows stand ([`Engine::request_outcome`]): the issue that carries
//! a request out closes it in the transaction that stores the new token, so
//! "closed" is exactly "done", with no guessing from timestamps.
//!
//! The engine announces the new token (`Issued`) right after that
//! transaction commits, so the handler can see a request closed a moment
//! before the event is sent. A request closed by an issue is therefore
//! answered only once its group's `Issued` event is in (or events were lost
//! to lag); answering at the first sight of the closed row sent `done`
//! without the new key ID, which a loaded machine showed.
//!
//! Depends on the [`Engine`] contract (which `app` implements for the
//! rotator), `event`, `scheduler` (its progress) and `domain`; reads no
//! config: `app` binds the server and hands it a [`ControlHandler`]. The
//! client half ([`send`]) is plain blocking std IO for the CLI.
//!
//! The parts: `protocol` (the wire format), `server` (the socket), `handler`
//! (carrying a request out), `client` (the CLI's half).

mod client;
mod handler;
mod protocol;
mod server;

pub use client::*;
pub use handler::*;
pub use protocol::*;
pub use server::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket's file name inside the state directory.
pub const SOCKET_FILE: &str = "control.sock";

/// The lock file that keeps a second daemon off the same state directory.
pub const LOCK_FILE: &str = "control.lock";

/// How long the daemon waits for a request to be carried out before it
/// answers with what happened so far.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How long the client waits for the answer: the daemon's wait plus room.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// The largest request line read; a real one is under 200 bytes.
const MAX_REQUEST: u64 = 4096;

/// The largest response line read by the client.
const MAX_RESPONSE: u64 = 1 << 20;

/// How long a client may take to send its request line.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket of a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}
