//! linetokd keeps LINE Messaging API channel access tokens alive.
//!
//! It issues channel access tokens v2.1 with signed JWT assertions, rotates
//! each one ahead of its expiry, keeps at most two live tokens per consumer
//! group, revokes or reports whatever goes stale, and hands the current token
//! to the programs that use it. The repository's `docs/design.md` is the
//! design (invariants, lifecycle, failure classes, store, time) and
//! `docs/architecture.md` the architecture; this page is the map of the
//! code.
//!
//! # Layout
//!
//! - [`domain`]: the vocabulary as plain data (channel, group, key ID, token
//!   record); [`secret`]: the newtype that keeps token values out of output.
//! - [`clock`]: where "now" comes from; a manual clock for tests.
//! - [`policy`]: the pure rotation policy: from a group's tokens, its
//!   channel's counts and the rules to a plan (issue, revoke, verify,
//!   reconcile, when to wake).
//! - [`line`]: the typed client for LINE's token endpoints, the JWT
//!   assertion ([`line::jwt`]) and assertion signing keys ([`line::keys`]).
//! - [`sandbox`]: a faithful emulator of LINE's token endpoints, used by the
//!   demo, the tests and users who want to try their setup offline.
//! - [`config`]: the config file: load (file, then environment), validate
//!   naming the bad key, print resolved with secrets masked.
//! - [`store`]: the SQLite store (tokens, the issuance journal, events) and
//!   its migrations; one writer per database.
//! - [`keygen`]: writes a fresh assertion key pair for the console.
//! - [`http`]: the daemon's HTTP listener: health and the token API.
//! - [`control`]: the local control socket behind `linetokd rotate` and
//!   `linetokd revoke`.
//! - [`accept`]: what every accept loop shares: backing off when accepting
//!   fails (out of descriptors) instead of spinning.
//! - [`channel_index`]: a channel by its ID or its configured name, for
//!   `--channel`, the token API's paths and the control socket alike.
//! - [`addresses`]: where a running daemon listens, recorded in its state
//!   directory for `linetokd health` and `status` (port 0 included).
//! - [`notify`]: the systemd notification protocol (ready, reloading,
//!   stopping, watchdog, status); `app` hands it the environment's values.
//! - [`forecast`]: the policy run forward in virtual time (`linetokd plan`);
//!   pure, like `policy`.
//! - [`status`]: what `linetokd status` and `linetokd plan` read from the
//!   store (read-only, beside a running daemon) and how they print it.
//! - [`cli`]: the command line; `main.rs` only parses and dispatches.
//! - [`bench`]: `linetokd bench`, which runs this binary as a daemon
//!   against the sandbox and measures it from outside; at `cli`'s level.
//!
//! # The dependency rule
//!
//! Arrows mean "may call"; nothing calls upward.
//!
//! - `main` → `cli` → `app` → `scheduler`, `http`, `control`
//! - `scheduler` → `rotator` → `policy`, `store`, `line`, `delivery`, `clock`
//! - `policy`, `store`, `line`, `delivery` → `domain`
//! - `sandbox` → `domain`, `line::jwt` and `line::keys` types only; the daemon
//!   never calls it
//! - nothing below `cli`/`app` reads the environment, the wall clock or the
//!   config file directly: they receive a [`clock::Clock`] and small settings
//!   structs.

pub mod accept;
pub mod addresses;
pub mod app;
pub mod channel_index;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod delivery;
pub mod demo;
pub mod domain;
pub mod event;
pub mod forecast;
pub mod http;
pub mod keygen;
pub mod line;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod rotator;
pub mod sandbox;
pub mod scheduler;
pub mod secret;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod watch;
