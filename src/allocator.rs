//! jemalloc's own figures: what the allocator holds beyond the live heap.
//!
//! RSS alone cannot tell a leak from an allocator that has not yet given freed pages back (after
//! a flood, RSS 394 MB with a live heap of 3 MB was seen). jemalloc's statistics split it:
//! `allocated` is what the program holds, `active` the pages those allocations occupy, `dirty`
//! the freed pages jemalloc keeps until its decay timer purges them, `resident` everything it
//! has in RAM (metadata included), `retained` the address space it unmapped from RAM but keeps
//! for reuse. Read on demand (a `/metrics` scrape, `/debug/runtime`), never on the delivery path.
//!
//! [`purge`] gives freed pages back at once; the memory budget's housekeeping calls it when
//! freed pages are many and large against the live heap (`crate::memory`), so RSS follows the
//! live heap within a second or two after a flood instead of staying at its peak.

use tikv_jemalloc_ctl::{Access, AsName};

/// jemalloc's statistics at one moment (one `epoch` refresh), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AllocatorStats {
    /// Bytes the program allocated and has not freed (the live heap).
    pub allocated: u64,
    /// Bytes in pages that hold live allocations (allocated + fragmentation within pages).
    pub active: u64,
    /// Bytes of allocator metadata.
    pub metadata: u64,
    /// Bytes in physically resident pages the allocator maps: active, dirty and metadata pages.
    pub resident: u64,
    /// Bytes in extents mapped by the allocator (active plus dirty and muzzy, not retained).
    pub mapped: u64,
    /// Bytes of virtual memory kept after its pages went back to the OS, for reuse.
    pub retained: u64,
    /// Freed pages not yet returned to the OS (they count in RSS until jemalloc's decay purges
    /// them, ~10 s by default).
    pub dirty: u64,
}

/// Refreshes jemalloc's statistics and reads them; `None` if jemalloc's stats are unavailable.
///
/// The figures describe jemalloc's heap: in a process whose global allocator is not jemalloc
/// (the in-process tests) they are near zero.
pub fn stats() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::stats;
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    let page = b"arenas.page\0".name().read().unwrap_or(4096usize) as u64;
    // Arena 4096 is `MALLCTL_ARENAS_ALL`: the sum over every arena.
    let pdirty: usize = b"stats.arenas.4096.pdirty\0".name().read().unwrap_or(0);
    Some(AllocatorStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        metadata: stats::metadata::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        mapped: stats::mapped::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
        dirty: pdirty as u64 * page,
    })
}

/// Gives every arena's unused dirty and muzzy pages back to the OS now
/// (`arena.<MALLCTL_ARENAS_ALL>.purge`), instead of when jemalloc's decay timer gets to them
/// (which, without a background thread, happens only on later allocator activity: an idle
/// process after a flood keeps its RSS). Returns whether jemalloc did it.
pub fn purge() -> bool {
    use std::ffi::{c_char, c_int, c_void};
    // tikv-jemalloc-sys builds jemalloc with the `_rjem_` prefix (see `main.rs`'s malloc conf);
    // `arena.<i>.purge` takes no value, so it is called with null pointers, which
    // tikv-jemalloc-ctl's typed accessors cannot do.
    unsafe extern "C" {
        #[link_name = "_rjem_mallctl"]
        fn mallctl(
            name: *const c_char,
            oldp: *mut c_void,
            oldlenp: *mut usize,
            newp: *mut c_void,
            newlen: usize,
        ) -> c_int;
    }
    let name = b"arena.4096.purge\0";
    let null = std::ptr::null_mut();
    // SAFETY: a NUL-terminated name and no value in or out, as `arena.<i>.purge` expects.
    unsafe { mallctl(name.as_ptr().cast(), null, std::ptr::null_mut(), null, 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_nest_as_jemalloc_documents() {
        let s = stats().expect("jemalloc is linked");
        assert!(s.allocated <= s.active, "{s:?}");
        assert!(s.active <= s.resident && s.active <= s.mapped, "{s:?}");
    }

    #[test]
    fn purge_gives_dirty_pages_back() {
        assert!(purge(), "jemalloc accepts arena.<all>.purge");
        let s = stats().expect("jemalloc is linked");
        assert_eq!(s.dirty, 0, "{s:?}");
    }
}
