//! Alerts that reach people: the notifier that sends the alerts the engine
//! raised (rows of the store's `alerts` table) to the configured receivers
//! (docs/design.md, "Alerts").
//!
//! - [`route`]: PURE: from the time, the alerts and what each receiver was
//!   sent, the notifications due (group wait, repeats, one resolve,
//!   retries, give-up).
//! - [`render`]: PURE: the payloads (Alertmanager's webhook v4, linetokd's
//!   event, Slack, Alertmanager's API).
//! - [`sign`]: Standard Webhooks signatures.
//! - [`send`]: the receivers' requests (webhook, Slack, Alertmanager, LINE
//!   push) and how answers are read.
//! - [`notifier`]: the daemon's task: reads the store, routes, sends,
//!   records; wakes on alert changes and due times.
//!
//! Depends on `store`, `clock`, `metrics`, `channel_index`, `secret`;
//! never on `config` (`app` builds [`NotifierSettings`]) or the rotator
//! (alerts arrive through the store).
//!
//! Invariants: no token value leaves in a notification (every text is
//! screened against the stored tokens, and a rendered body that still holds
//! one is withheld); receiver URLs and secrets appear in no log line or
//! error; what was sent is in the store before the notifier moves on, so a
//! restart neither pages again inside the repeat interval nor forgets a
//! resolve.

pub mod notifier;
pub mod render;
pub mod route;
pub mod send;
pub mod sign;

pub use notifier::{Notifier, NotifierSettings, TokenSource};
pub use route::{RouteSettings, Severity};
pub use send::{Endpoint, Receiver, ReceiverKind, WebhookFormat};
