//! `tardbot-pipeline`: see `tardbot-pipeline --help` and the README.

use std::process::ExitCode;

// Training and data stages allocate many short-lived buffers; mimalloc handles that far better
// than the system allocator. Counting live bytes costs two relaxed atomics per allocation (few and
// large in training) and lets benchmarks separate held memory from allocator-kept RSS.
#[global_allocator]
static GLOBAL: tardbot_core::memory::CountingAlloc<mimalloc::MiMalloc> =
    tardbot_core::memory::CountingAlloc(mimalloc::MiMalloc);

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Keeps freed memory mapped instead of returning it to the OS 10 ms later (mimalloc's default).
/// A training step frees and reallocates the same large activation buffers every step; returned
/// pages come back as page faults the kernel zero-fills: ~1M faults and 13% of the CPU time of a
/// mac_nano step (`clear_page_erms` in `perf`). The process's RSS then stays at its peak, which is
/// what a training run needs anyway. `MIMALLOC_PURGE_DELAY` in the environment still decides.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option of the allocator this binary links; callable any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Before any thread starts: it sets environment variables candle reads once.
    tardbot_pipeline::runtime::tune_cpu_runtime();
    tardbot_pipeline::cli::main(tardbot_pipeline::registry::stages())
}
