//! The tools crate's integration tests.

mod browser;
mod python;
mod search;
mod tool_loop;
