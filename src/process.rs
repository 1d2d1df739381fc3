//! Figures about this process itself: resident memory, CPU time and the live heap.
//!
//! Both the memory budget (`crate::memory`, which sheds when the heap grows too large) and the
//! metrics scrape (`/metrics`) read them; they live here, below both, so neither has to import
//! the other. Each figure is read on demand (a small `/proc` read or a jemalloc query), never
//! on the delivery path.

/// Resident set size of this process, from `/proc/self/statm` (Linux); 0 elsewhere.
pub fn resident_memory_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * PAGE_SIZE
}

/// The page size of the Linux targets we build for (x86_64, aarch64 with 4 KiB pages).
const PAGE_SIZE: u64 = 4096;

/// CPU seconds (user + system) of this process, from `/proc/self/stat`; 0 elsewhere.
pub fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / CLOCK_TICKS_PER_SEC
}

/// `sysconf(_SC_CLK_TCK)` on Linux: 100 on every architecture we build for.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Bytes allocated and not yet freed, as jemalloc counts them (None if unavailable).
pub fn heap_bytes() -> Option<usize> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read().ok()
}
