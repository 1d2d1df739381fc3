//! Profiles in pprof format on the admin listener (`admin.profiling = true`), for the "RSS
//! climbing" and "CPU high" runbooks (docs/observability.md): what holds memory, what burns CPU.
//!
//! - `GET /debug/pprof/heap`: jemalloc's own sampled heap profile (one sample per 512 KiB
//!   allocated on average, with its stack), live allocations as of now, converted to pprof by
//!   `jemalloc_pprof`. Sampling runs from startup when profiling is on ([`activate`]), so the
//!   profile covers every allocation still live; its cost is measured in docs/benchmarks.md.
//!   Two profiles minutes apart, diffed with `pprof -base`, show what grew.
//! - `GET /debug/pprof/profile?seconds=N`: a CPU profile over the next N seconds (default 10, at
//!   most 60), sampled at 99 Hz with `SIGPROF` by the `pprof` crate. One at a time. The crate
//!   keeps ~170 MB on the heap from its first profile on ([`CPU_PROFILER_HEAP_BYTES`]), so the
//!   first is refused when the memory budget has no room for it.
//!
//! Both answer `application/octet-stream`, a gzipped `perftools.profiles.Profile` protobuf, as
//! Go's `net/http/pprof` does. They are not symbolized in process: that parses the binary's
//! DWARF and keeps 100-200 MB of it on the heap for the life of the process (measured), the
//! opposite of what a memory runbook needs. They carry return addresses and the mappings
//! (with build ids) they fall in, and `pprof` symbolizes them with a copy of the binary
//! (`go tool pprof ./sse-bridge heap.pb.gz`). Dumping runs on the blocking pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use jemalloc_pprof::{Mapping, StackProfile, WeightedStack};
use tracing::{info, warn};

use crate::memory::{MemoryBudget, used_bytes};
use crate::sse::body::ResponseBody;
use crate::sse::response::text;

/// CPU profile length when the request names none.
pub const DEFAULT_CPU_SECONDS: u64 = 10;
/// Longest CPU profile: the request holds an admin connection and a blocking thread that long.
pub const MAX_CPU_SECONDS: u64 = 60;
/// Samples per second: not 100, so sampling does not run in lockstep with 10 ms timers.
const CPU_FREQUENCY_HZ: i32 = 99;
/// Libraries whose frames are not unwound from the signal handler: unwinding through them
/// can deadlock (the `pprof` crate's advice).
const CPU_BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// Turns jemalloc's heap sampling on at startup when `admin.profiling` is set. The binary is
/// built with jemalloc's profiler compiled in but inactive (`main.rs`); without profiling it
/// stays inactive and costs one branch per sampled allocation interval.
pub async fn activate(profiling: bool) {
    if !profiling {
        return;
    }
    let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
        warn!("admin.profiling: jemalloc's profiler is not available in this process; heap profiles answer 501.");
        return;
    };
    let mut ctl = ctl.lock().await;
    match ctl.activate() {
        Ok(()) => info!(sample_bytes = 1u64 << ctl.lg_sample(), "Heap sampling on (admin.profiling)."),
        Err(e) => warn!(error = %e, "admin.profiling: cannot turn heap sampling on."),
    }
    // Said now rather than when the first profile is needed (a read-only root filesystem).
    if let Err(e) = temp_dir_writable() {
        warn!(
            dir = %std::env::temp_dir().display(),
            error = %e,
            "admin.profiling: heap profiles go through a temporary file and this directory is not \
             writable; mount one (an emptyDir at /tmp) or set TMPDIR."
        );
    }
}

/// Creates and removes a file in the temporary directory, where jemalloc dumps heap profiles.
fn temp_dir_writable() -> std::io::Result<()> {
    let probe = std::env::temp_dir().join(format!(".sse-bridge-probe-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// `GET /debug/pprof/heap`: the sampled live heap, gzipped pprof.
pub async fn heap() -> Response<ResponseBody> {
    let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "heap profiles need the sse-bridge binary: jemalloc's profiler is not this process's allocator",
        );
    };
    let mut ctl = ctl.clone().lock_owned().await;
    if !ctl.activated() {
        return text(
            StatusCode::CONFLICT,
            "heap sampling is off: it starts with the process when admin.profiling is set",
        );
    }
    // jemalloc writes the dump to a file (in TMPDIR) that is read back and converted.
    match tokio::task::spawn_blocking(move || ctl.dump_pprof()).await {
        Ok(Ok(profile)) => pprof_response(profile, "heap.pb.gz"),
        Ok(Err(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("heap profile failed (jemalloc writes it to a file in TMPDIR, which must be writable): {e:#}"),
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("heap profile failed: {e}")),
    }
}

/// What the `pprof` crate keeps on the heap from its first profile on, for the life of the
/// process, with headroom: its sample table (~80 MB) and the symbol tables its start-up
/// resolves (~90 MB on the release binary); measured in docs/benchmarks.md.
pub const CPU_PROFILER_HEAP_BYTES: usize = 256 << 20;

/// Whether the `pprof` crate's tables exist already (a profile ran in this process).
static CPU_PROFILER_LOADED: AtomicBool = AtomicBool::new(false);

/// `GET /debug/pprof/profile?seconds=N`: a CPU profile over the next N seconds, gzipped pprof.
/// The first one is refused when the memory budget has no room for the profiler's tables: a
/// profile must not make the bridge shed streams.
pub async fn cpu(query: Option<&str>, memory: &MemoryBudget) -> Response<ResponseBody> {
    let seconds = match cpu_seconds(query) {
        Ok(s) => s,
        Err(reason) => return text(StatusCode::BAD_REQUEST, &reason),
    };
    if let Some(limit) = memory.limit()
        && !CPU_PROFILER_LOADED.load(Ordering::Relaxed)
        && used_bytes() + CPU_PROFILER_HEAP_BYTES > limit
    {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "the CPU profiler keeps ~{} MiB on the heap from its first run on, and memory.limit leaves no room \
                 for it; use perf from a debug container instead",
                CPU_PROFILER_HEAP_BYTES >> 20
            ),
        );
    }
    CPU_PROFILER_LOADED.store(true, Ordering::Relaxed);
    match tokio::task::spawn_blocking(move || cpu_profile(Duration::from_secs(seconds))).await {
        Ok(Ok(profile)) => pprof_response(profile, "cpu.pb.gz"),
        Ok(Err(pprof::Error::Running)) => {
            text(StatusCode::CONFLICT, "a CPU profile is already running; retry after it")
        }
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("CPU profile failed: {e}")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("CPU profile failed: {e}")),
    }
}

/// The `seconds` query parameter: 1 to [`MAX_CPU_SECONDS`], [`DEFAULT_CPU_SECONDS`] if absent.
fn cpu_seconds(query: Option<&str>) -> Result<u64, String> {
    let given = form_urlencoded::parse(query.unwrap_or("").as_bytes()).find(|(k, _)| k == "seconds").map(|(_, v)| v);
    let Some(v) = given else { return Ok(DEFAULT_CPU_SECONDS) };
    match v.parse::<u64>() {
        Ok(s) if (1..=MAX_CPU_SECONDS).contains(&s) => Ok(s),
        _ => Err(format!("seconds={v}: must be a whole number from 1 to {MAX_CPU_SECONDS}")),
    }
}

/// Samples every thread for `length` (this blocking thread sleeps meanwhile), then encodes the
/// stacks unresolved: addresses and the mappings they fall in.
fn cpu_profile(length: Duration) -> pprof::Result<Vec<u8>> {
    let guard = pprof::ProfilerGuardBuilder::default().frequency(CPU_FREQUENCY_HZ).blocklist(&CPU_BLOCKLIST).build()?;
    std::thread::sleep(length);
    let report = guard.report().build_unresolved()?;
    drop(guard);
    let mappings = mappings::MAPPINGS.as_deref().unwrap_or_default();
    let stacks = report.data.iter().map(|(frames, &count)| {
        // A walk can end on a null return address; it names no code.
        let ips: Vec<usize> = frames.frames.iter().map(|f| f.ip() as usize).filter(|&ip| ip != 0).collect();
        (interrupted_frames(&ips, mappings).to_vec(), count.max(0) as u64)
    });
    Ok(cpu_pprof(stacks, mappings))
}

/// Encodes CPU samples (leaf-first stacks of return addresses, and how often each was seen) as
/// gzipped pprof: one value per stack, the CPU time its samples stand for.
fn cpu_pprof(stacks: impl Iterator<Item = (Vec<usize>, u64)>, mappings: &[Mapping]) -> Vec<u8> {
    let mut profile = StackProfile::default();
    for m in mappings {
        profile.push_mapping(m.clone());
    }
    let nanos_per_sample = 1e9 / f64::from(CPU_FREQUENCY_HZ);
    for (mut addrs, count) in stacks {
        // StackProfile lists a stack from its outermost frame.
        addrs.reverse();
        profile.push_stack(WeightedStack { addrs, weight: count as f64 * nanos_per_sample }, None);
    }
    profile.to_pprof(("cpu", "nanoseconds"), ("cpu", "nanoseconds"), None)
}

/// The interrupted code's frames of a stack walked from inside the `SIGPROF` handler: the walk
/// starts with the unwinder's and the handler's own frames, then the signal-return trampoline
/// (`__restore_rt`, in libc), then what was running. Samples taken inside libc are dropped by
/// [`CPU_BLOCKLIST`], so the first libc frame is the trampoline, and everything up to it goes.
/// (`pprof` itself finds the handler by symbolizing, which this avoids.)
fn interrupted_frames<'a>(ips: &'a [usize], mappings: &[Mapping]) -> &'a [usize] {
    let in_libc = |ip: usize| {
        mappings.iter().any(|m| {
            (m.memory_start..m.memory_end).contains(&ip)
                && m.pathname.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libc.so"))
        })
    };
    match ips.iter().position(|&ip| in_libc(ip)) {
        Some(i) => &ips[i + 1..],
        None => ips,
    }
}

/// `200` with a gzipped pprof body, named for `curl -OJ`.
fn pprof_response(profile: Vec<u8>, file: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(profile));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_bounded() {
        assert_eq!(cpu_seconds(None), Ok(DEFAULT_CPU_SECONDS));
        assert_eq!(cpu_seconds(Some("debug=1")), Ok(DEFAULT_CPU_SECONDS));
        assert_eq!(cpu_seconds(Some("seconds=3")), Ok(3));
        assert_eq!(cpu_seconds(Some("seconds=60")), Ok(60));
        for bad in ["seconds=0", "seconds=61", "seconds=-1", "seconds=x", "seconds="] {
            assert!(cpu_seconds(Some(bad)).is_err(), "{bad}");
        }
    }
}
