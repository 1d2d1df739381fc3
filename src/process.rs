//! Figures about this process itself: resident memory, CPU time, file descriptors, threads and
//! the live heap.
//!
//! Both the memory budget (`crate::memory`, which sheds when the heap grows too large) and the
//! metrics scrape (`/metrics`) read them; they live here, below both, so neither has to import
//! the other. Each figure is read on demand (a small `/proc` read through `procfs`, or a jemalloc
//! query), never on the delivery path. `procfs` asks the kernel for the page size and the clock
//! tick rate instead of assuming 4 KiB and 100 Hz.

use std::sync::OnceLock;

use procfs::process::{LimitValue, Process};

/// What the kernel reports about this process: the figures of Prometheus' standard process
/// collector (`process_*`), read in one pass over `/proc/self`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// OS threads of the process.
    pub threads: u64,
    /// Open file descriptors: every stream is one socket, so this meets `max_fds` first.
    pub open_fds: u64,
    /// The soft limit on open file descriptors (`RLIMIT_NOFILE`); `None` when unlimited.
    pub max_fds: Option<u64>,
}

/// This process's figures, or `None` where `/proc` cannot be read (not Linux, or a sandbox).
pub fn stats() -> Option<ProcessStats> {
    let me = Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let max_fds = match me.limits().ok()?.max_open_files.soft_limit {
        LimitValue::Value(n) => Some(n),
        LimitValue::Unlimited => None,
    };
    Some(ProcessStats {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss * procfs::page_size(),
        virtual_bytes: stat.vsize,
        start_time_seconds: start_time_seconds(stat.starttime, ticks),
        threads: stat.num_threads.max(0) as u64,
        open_fds: me.fd_count().map_or(0, |n| n as u64),
        max_fds,
    })
}

/// The start time never changes: computed once from the boot time and the start tick.
fn start_time_seconds(start_ticks: u64, ticks_per_second: f64) -> f64 {
    static START: OnceLock<f64> = OnceLock::new();
    *START.get_or_init(|| {
        let boot = procfs::boot_time_secs().unwrap_or(0) as f64;
        boot + start_ticks as f64 / ticks_per_second
    })
}

/// Resident set size of this process (`/proc/self/statm`); 0 where it cannot be read.
pub fn resident_memory_bytes() -> u64 {
    Process::myself().and_then(|p| p.statm()).map_or(0, |m| m.resident * procfs::page_size())
}

/// CPU seconds (user + system) of this process; 0 where they cannot be read.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = Process::myself().and_then(|p| p.stat()) else { return 0.0 };
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

/// Bytes allocated and not yet freed, as jemalloc counts them (None if unavailable).
pub fn heap_bytes() -> Option<usize> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_a_live_process_are_plausible() {
        let s = stats().expect("/proc/self is readable on Linux");
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes, "{s:?}");
        assert!(s.threads >= 1 && s.open_fds >= 3, "{s:?}");
        assert!(s.max_fds.is_none_or(|m| m >= s.open_fds), "{s:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(s.start_time_seconds > now - 86_400.0 && s.start_time_seconds <= now + 1.0, "{s:?}");
        assert!(resident_memory_bytes() > 0);
    }
}
