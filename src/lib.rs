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
//! The vocabulary and the pure heart:
//! - [`domain`]: the vocabulary as plain data (channel, group, key ID, token
//!   record, failure kinds, operator requests); [`secret`]: the newtype that
//!   keeps token values out of output.
//! - [`clock`]: where "now" comes from; a manual clock for tests.
//! - [`policy`]: the pure rotation policy: a group's plan
//!   ([`policy::plan_group`]) and the one channel driver ([`policy::drive`]:
//!   execute a group's plan, free capacity, or idle until an instant) that
//!   the rotator, `plan` and the property tests all call; the issue round
//!   ([`policy::issue_round`]: the lone issues of a channel the driver
//!   would name one after another); its words for people
//!   ([`policy::words`]).
//! - [`forecast`]: the driver run forward in virtual time (`linetokd plan`);
//!   pure, like `policy`.
//! - [`ha`]: the pure rules of high availability: per-channel leases
//!   judged by the database's clock, fencing, step-downs, orphaned tokens
//!   and how channels spread over instances.
//!
//! Around it, with IO:
//! - [`store`]: the store (tokens, the issuance journal, failure streaks
//!   and holds, operator requests, alerts, events) and its migrations, on a
//!   SQLite file or a PostgreSQL database behind one set of queries
//!   ([`store::sql`]); every instant in milliseconds; one writer per
//!   database.
//! - [`snapshot`]: one channel's state read from the store as the driver
//!   sees it, shared by the rotator, `status` and `plan`.
//! - [`line`](mod@line): the typed client for LINE's token endpoints, the JWT
//!   assertion ([`line::jwt`]), assertion signing keys ([`line::keys`]) and
//!   the checks on what LINE answers ([`line::validate`]).
//! - [`rotator`]: where the driver's decisions meet IO: one channel worked
//!   until idle, every outcome stored before anyone is told.
//! - [`event`]: what the rotator tells the rest ([`event::RotationEvent`]).
//! - [`scheduler`]: owns every channel's due time; works the due ones;
//!   [`wakes`]: the channels something outside their own work (an operator
//!   request, a reload, a new leader) asks it to look at now.
//! - [`leader`]: under `[ha]`, this instance's leases on PostgreSQL: the
//!   keeper task that acquires, renews and releases them by `ha`'s rules,
//!   each channel's standing and fence, and whether it may call LINE.
//! - [`rekey`]: re-encrypts stored token values after the active database
//!   key changed, a small step per tick, and keeps the `linetokd_db_*`
//!   metrics current.
//! - [`delivery`]: file sinks, hooks and the token book, fed by events.
//! - [`alerting`]: the alert notifier: routes the alerts the engine stored
//!   ([`alerting::route`], pure) and sends them to webhook, Slack,
//!   Alertmanager and LINE receivers, recording what was sent in the store.
//! - [`http`]: the daemon's HTTP listener: health, metrics, the token API.
//! - [`stateless`]: stateless channel tokens on demand, held in memory
//!   only: one cache slot per channel, a single flight per miss, a
//!   refresh ahead of expiry, a backoff after failures ([`stateless::rules`]
//!   is the pure part).
//! - [`control`]: the local control socket behind `linetokd rotate` and
//!   `linetokd revoke`, speaking to the engine through [`control::Engine`].
//! - [`longlived`]: watches each channel's console-issued long-lived
//!   token (read from its file, verified, the old value kept in memory
//!   through LINE's reissue grace), alerts and retires it; its rules
//!   ([`longlived::rules`]) are pure.
//! - [`login`](mod@login): LINE Login users' grants (access and refresh
//!   token, stored only encrypted) imported over the API, refreshed ahead
//!   of expiry and before the 90-day horizon under a per-channel rate,
//!   journaled like an issuance, with re-login notices; its rules
//!   ([`login::rules`]) are pure.
//! - [`accept`]: what every accept loop shares: backing off when accepting
//!   fails (out of descriptors) instead of spinning.
//! - [`metrics`]: the Prometheus metrics; [`logging`]: log output and the
//!   one-line error chain.
//! - [`notify`]: the systemd notification protocol (ready, reloading,
//!   stopping, watchdog, status); `app` hands it the environment's values.
//! - [`watch`]: notices edits of the config file.
//! - [`keygen`]: writes a fresh assertion key pair for the console.
//! - [`sandbox`]: a faithful emulator of LINE's token endpoints, used by the
//!   demo, the tests, the benchmark and users who want to try their setup
//!   offline.
//!
//! At the top:
//! - [`config`]: the config file: load (file, then environment), validate
//!   naming the bad key, print resolved with secrets masked;
//!   [`channel_index`]: a channel by its ID or its configured name.
//! - [`app`]: wiring for `run` and `demo`; [`addresses`]: where a running
//!   daemon listens, recorded in its state directory.
//! - [`status`]: what `linetokd status` and `linetokd plan` read from the
//!   store (read-only, beside a running daemon) and how they print it.
//! - [`login_import`]: `linetokd login import`, a client of the running
//!   daemon's grant API.
//! - [`demo`]: `linetokd demo`; [`bench`](mod@bench): `linetokd bench`, which runs this
//!   binary as a daemon against the sandbox and measures it from outside.
//! - [`cli`]: the command line; `main.rs` only parses and dispatches.
//!
//! # The dependency rule
//!
//! Arrows mean "may call"; nothing calls upward.
//!
//! - `main` → `cli` → `app`, `status`, `demo`, `bench`, `config`,
//!   `login_import` (an HTTP client of the daemon: `domain`, `secret`), and
//!   `alerting` for `linetokd alerts test`
//! - `app` → `scheduler`, `http`, `control`, `delivery`, `alerting`,
//!   `rotator`, `store`
//! - `http` → `stateless` → `line`, `delivery` (the sink writer),
//!   `metrics`, `clock`
//! - `alerting` → `store`, `metrics`, `clock`, `channel_index` (never
//!   `rotator`: alerts reach it through the store)
//! - `rekey` → `store`, `metrics`, `clock`, `event`
//! - `longlived` → `line`, `store`, `metrics`, `clock`, `watch`
//! - `http` → `login` → `line`, `store`, `metrics`, `clock`
//! - `scheduler` → `rotator` → `policy`, `snapshot`, `store`, `line`,
//!   `event`, `metrics`, `clock`, `leader`, `wakes`
//! - `leader` → `ha`, `store`, `metrics`, `clock`, `wakes`
//! - `status` → `snapshot`, `forecast`, `policy`, `store` (never `rotator`)
//! - `control`, `delivery` → `event` (never `rotator`); `control` reaches
//!   the engine only through the [`control::Engine`] contract and watches
//!   the scheduler's progress; `demo` runs `app` and the sandbox
//! - `snapshot` → `store`, `policy`; `forecast` → `policy`
//! - `ha` → `domain`, `policy::jitter` (its stable hash); `wakes` →
//!   `domain`
//! - `policy`, `store`, `line`, `event` → `domain`
//! - `sandbox` → `domain`, `accept` (its accept loop backs off like the
//!   daemon's), `line::jwt` and `line::keys` types only; the daemon never
//!   calls it
//! - nothing below `cli`/`app` reads the environment, the wall clock or the
//!   config file directly: they receive a [`clock::Clock`] and small settings
//!   structs.

pub mod accept;
pub mod addresses;
pub mod alerting;
pub mod app;
pub mod bench;
pub mod channel_index;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod delivery;
pub mod demo;
pub mod domain;
pub mod event;
pub mod forecast;
pub mod ha;
pub mod http;
pub mod keygen;
pub mod leader;
pub mod line;
pub mod logging;
pub mod login;
pub mod login_import;
pub mod longlived;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod rekey;
pub mod rotator;
pub mod sandbox;
pub mod scheduler;
pub mod secret;
pub mod snapshot;
pub mod stateless;
pub mod status;
pub mod store;
pub mod wakes;
pub mod watch;
