//! The tools crate's integration tests.

mod python;
mod tool_loop;
