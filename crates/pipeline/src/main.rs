//! `tardbot-pipeline`: see `tardbot-pipeline --help` and the README.

use std::process::ExitCode;

// Training and data stages allocate many short-lived buffers; mimalloc handles that far better
// than the system allocator. Counting live bytes costs two relaxed atomics per allocation (few and
// large in training) and lets benchmarks separate held memory from allocator-kept RSS.
#[global_allocator]
static GLOBAL: tardbot_core::memory::CountingAlloc<mimalloc::MiMalloc> =
    tardbot_core::memory::CountingAlloc(mimalloc::MiMalloc);

fn main() -> ExitCode {
    // Before any thread starts: it sets environment variables candle reads once.
    tardbot_pipeline::runtime::tune_cpu_runtime();
    tardbot_pipeline::cli::main(tardbot_pipeline::registry::stages())
}
