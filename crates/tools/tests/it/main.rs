//! The tools crate's integration tests.

mod browser;
mod data_runner;
mod python;
mod search;
mod tool_loop;
