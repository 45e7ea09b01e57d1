//! End-to-end tests of `tardbot-pipeline`: one test binary (see `crates/pipeline/Cargo.toml`).
//!
//! Orchestrator behaviour (kill/resume, locking, caching, concurrency, Ctrl-C) is exercised through the
//! real CLI code path in a child process that this test binary starts from itself
//! ([`support::child_process_entry`]) with the test-only stages of [`test_stages`]; config errors go
//! through the shipped binary.

mod config_errors;
mod ledger_concurrency;
mod orchestrator;
mod pipeline;
mod support;
mod test_stages;
