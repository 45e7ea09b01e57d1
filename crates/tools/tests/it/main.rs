//! The tools crate's integration tests.

mod tool_loop;
