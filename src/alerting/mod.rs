//! Alerts that reach people: the notifier that sends the alerts the engine
//! raised (rows of the store's `alerts` table) to the configured receivers.
//!
//! - [`route`]: PURE: from the time, the alerts and what each receiver was
//!   sent, the notifications due (group wait, repeats, one resolve, retries).
pub mod render;
pub mod route;
pub mod sign;
