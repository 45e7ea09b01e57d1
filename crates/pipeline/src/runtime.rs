//! Process-wide settings for CPU training with candle, applied once at start-up by `main`.

unsafe extern "C" {
    /// mimalloc's runtime option setter (the C library linked by the `mimalloc` crate).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc 2.x's `mi_option_t`.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Runtime settings that matter for CPU training with candle, applied unless the environment
/// already sets them; returns what was applied. Call at start-up, before any candle op and while no
/// other thread reads the environment (`main` is the right place; `bench train` calls it too).
///
/// - `CANDLE_NUM_THREADS=1`: candle splits element-wise ops of ≥ 64k elements over a pool of
///   threads that busy-wait for each other; on 2 cores shared with the gemm threads (and other
///   processes) a waiting thread spins for whole scheduler slices. Measured on `tiny` 8 × 256
///   under load: 1.8× faster steps without that pool (matmuls still use every core via rayon,
///   and the fused training kernels split rows over rayon).
/// - mimalloc purge delay -1 (keep freed memory): candle allocates every intermediate fresh;
///   returning it to the OS re-faults (and zeroes) the same huge pages each step. Measured:
///   page faults per run 26k → 1.3k, about 10% faster steps. Peak RSS is unchanged.
pub fn tune_cpu_runtime() -> Vec<&'static str> {
    let mut applied = Vec::new();
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called at start-up, before threads that could read the environment run
        // (see the doc comment); candle reads this variable once, at its first element-wise op.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
        applied.push("CANDLE_NUM_THREADS=1");
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // Force the mimalloc crate to be linked, then set the option (safe at any time in
        // mimalloc; "not thread safe" in its docs means racing setters, and there is one).
        let _ = std::mem::size_of::<mimalloc::MiMalloc>();
        // SAFETY: a plain C call with a valid option index and value.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
        applied.push("mimalloc purge_delay=-1");
    }
    applied
}
