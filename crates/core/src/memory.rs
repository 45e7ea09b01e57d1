//! This process's memory and CPU time, for benchmarks and memory checks.
//!
//! Portable where it can be: the peak resident set size and the CPU time come from
//! `getrusage(RUSAGE_SELF)` on every Unix (Linux, macOS); the current resident set size comes from
//! `/proc/self/status` on Linux and from `proc_pidinfo(PROC_PIDTASKINFO)` on macOS. Resetting the
//! peak ([`reset_peak_rss`]) is Linux-only (`/proc/self/clear_refs`). Every function returns `None`
//! (or false) where its source is not available.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Set once [`reset_peak_rss`] succeeded: from then on the peak is `VmHWM`, which the reset lowers
/// (`ru_maxrss` never goes down).
#[cfg(target_os = "linux")]
static PEAK_WAS_RESET: AtomicBool = AtomicBool::new(false);

/// `getrusage(RUSAGE_SELF)`, all threads of the process.
#[cfg(unix)]
fn rusage_self() -> Option<libc::rusage> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable `rusage`; getrusage only writes it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    // SAFETY: on success getrusage filled the struct (and zeroed memory is a valid `rusage` anyway).
    (rc == 0).then(|| unsafe { ru.assume_init() })
}

#[cfg(target_os = "linux")]
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident set size, bytes: `ru_maxrss` of `getrusage(RUSAGE_SELF)` (KiB on Linux, bytes on
/// macOS). On Linux after a successful [`reset_peak_rss`], `VmHWM` (the peak since the reset).
pub fn peak_rss_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        if PEAK_WAS_RESET.load(Ordering::Relaxed)
            && let Some(k) = status_kib("VmHWM:")
        {
            return Some(k * 1024);
        }
    }
    #[cfg(unix)]
    {
        let max = u64::try_from(rusage_self()?.ru_maxrss).ok()?;
        // Linux (and the other Unixes but the Apple ones) count KiB; macOS and iOS count bytes.
        let bytes = if cfg!(target_vendor = "apple") {
            max
        } else {
            max * 1024
        };
        Some(bytes)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Current resident set size, bytes: `VmRSS` of `/proc/self/status` on Linux, the task's resident
/// size from `proc_pidinfo(PROC_PIDTASKINFO)` on macOS, `None` elsewhere.
pub fn rss_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        status_kib("VmRSS:").map(|k| k * 1024)
    }
    #[cfg(target_os = "macos")]
    {
        let mut info = std::mem::MaybeUninit::<libc::proc_taskinfo>::zeroed();
        let size = std::mem::size_of::<libc::proc_taskinfo>() as libc::c_int;
        // SAFETY: `info` is a writable buffer of `size` bytes, the size PROC_PIDTASKINFO fills.
        let n = unsafe {
            libc::proc_pidinfo(
                libc::getpid(),
                libc::PROC_PIDTASKINFO,
                0,
                info.as_mut_ptr().cast(),
                size,
            )
        };
        // SAFETY: a full-size answer filled the struct (zeroed memory is valid for it anyway).
        (n == size).then(|| unsafe { info.assume_init() }.pti_resident_size)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        None
    }
}

/// Peak resident set size, MiB.
pub fn peak_rss_mib() -> Option<f64> {
    peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}

/// Current resident set size, MiB.
pub fn rss_mib() -> Option<f64> {
    rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}

/// Resets the peak to the current resident set size (`clear_refs` 5, Linux only); false where
/// unsupported. After a reset [`peak_rss_bytes`] reports the peak since the reset.
pub fn reset_peak_rss() -> bool {
    #[cfg(target_os = "linux")]
    {
        let ok = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        if ok {
            PEAK_WAS_RESET.store(true, Ordering::Relaxed);
        }
        ok
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// CPU seconds (user + system, every thread) this process has used so far, from
/// `getrusage(RUSAGE_SELF)`; `None` where unavailable.
pub fn cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        let ru = rusage_self()?;
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(secs(ru.ru_utime) + secs(ru.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK_LIVE: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

/// A global allocator wrapper that counts live heap bytes and their peak, so that benchmarks can tell
/// memory the program holds from memory the allocator keeps (RSS). The binary installs it:
/// `#[global_allocator] static A: CountingAlloc<MiMalloc> = CountingAlloc(MiMalloc);`.
pub struct CountingAlloc<A>(pub A);

// SAFETY: every call forwards to the inner allocator unchanged; the counters are only bookkeeping.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from this allocator with `layout`.
        unsafe { self.0.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            added(new_size);
        }
        p
    }
}

fn added(size: usize) {
    COUNTING.store(true, Ordering::Relaxed);
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK_LIVE.fetch_max(now, Ordering::Relaxed);
}

/// Peak live heap bytes since the start or the last [`reset_peak_live`]; `None` unless the process
/// runs under [`CountingAlloc`].
pub fn peak_live_bytes() -> Option<u64> {
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| PEAK_LIVE.load(Ordering::Relaxed) as u64)
}

/// Live heap bytes now; `None` unless the process runs under [`CountingAlloc`].
pub fn live_bytes() -> Option<u64> {
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| LIVE.load(Ordering::Relaxed) as u64)
}

/// Resets the live-heap peak to the current live bytes.
pub fn reset_peak_live() {
    PEAK_LIVE.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The process's memory is shared by the tests: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    fn resident_sizes_and_cpu_time_are_read() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let held = vec![1u8; 64 << 20];
        let rss = rss_bytes().expect("current RSS");
        let peak = peak_rss_bytes().expect("peak RSS");
        assert!(rss >= 32 << 20, "{rss}");
        // The peak is in bytes on every platform (macOS reports bytes, Linux KiB).
        assert!(peak >= rss && peak < 1 << 40, "peak {peak} rss {rss}");
        assert_eq!(held.iter().map(|&b| b as u64).sum::<u64>(), 64 << 20);
        let before = cpu_seconds().expect("CPU time");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 100 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = cpu_seconds().unwrap();
        assert!(after - before > 0.02, "{before} → {after}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_reset_peak_is_the_peak_since_the_reset() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let big = vec![1u8; 128 << 20];
        std::hint::black_box(&big);
        drop(big);
        let whole = peak_rss_bytes().unwrap();
        if !reset_peak_rss() {
            eprintln!("skipped: /proc/self/clear_refs is not writable");
            return;
        }
        let since = peak_rss_bytes().unwrap();
        assert!(since <= whole, "{since} > {whole}");
    }
}
