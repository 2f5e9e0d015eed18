//! Integration tests, built as one binary (one link, one place to look).
//! One module per area; shared helpers live in `support`.

// Tests fail loudly by design: an unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alerting;
mod bench;
mod cli;
mod cli_output;
mod config;
mod contract;
mod control;
mod demo;
mod deploy;
mod e2e;
mod encryption;
mod hooks;
mod hostile;
mod issue_round;
mod keygen;
mod keys;
mod line_client;
mod login;
mod login_client;
mod login_daemon;
mod login_import;
mod login_sandbox;
mod long_lived;
mod migrate_v3;
mod observability;
mod package;
mod pg_harness;
mod pg_lease;
mod pg_store;
mod recovery;
mod regressions;
mod reload;
mod sandbox;
mod short_lived;
mod simulation;
mod sinks;
mod stateless;
mod status_plan;
mod store;
mod support;
mod token_api;
