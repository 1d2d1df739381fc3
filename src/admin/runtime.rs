//! `GET /debug/runtime` (`admin.profiling = true`): what the runtime is doing now, as JSON.
//!
//! The "tasks climbing" runbook asks which tasks: `sse_bridge_tokio_alive_tasks` says how many,
//! this says of which kind. The bridge spawns its own tasks on one `TaskTracker` (sequencer,
//! housekeeping, one per source, the two accept loops, one per TCP connection, hyper's HTTP/2
//! stream tasks), so the tracker's count against the runtime's splits the bridge's tasks from
//! those the broker clients spawn for themselves; the public connections gauge splits the
//! bridge's own. Alongside: the runtime's workers (busy time, parks), the queue of tasks
//! waiting for a worker, and the process and allocator figures of the "RSS climbing" runbook,
//! so one request answers both.

use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use crate::allocator;
use crate::process;
use crate::state::AppState;

/// Tasks the bridge always runs besides its sources: the sequencer, housekeeping and the two
/// accept loops (public, admin).
const FIXED_TASKS: usize = 4;

/// The runtime dump.
pub fn dump(state: &AppState, tracker: &TaskTracker) -> Value {
    let rt = tokio::runtime::Handle::current().metrics();
    let alive = rt.num_alive_tasks();
    let tracked = tracker.len();
    let sources = state.sources.len();
    let public = state.metrics.open_connections.get().max(0) as usize;
    let own = FIXED_TASKS + sources + public;
    let workers: Vec<Value> = (0..rt.num_workers())
        .map(|w| {
            json!({
                "busy_seconds": rt.worker_total_busy_duration(w).as_secs_f64(),
                "parks": rt.worker_park_count(w),
            })
        })
        .collect();
    let process = process::stats().unwrap_or_default();
    json!({
        "tasks": {
            "alive": alive,
            "by_kind": {
                "sequencer_housekeeping_accept_loops": FIXED_TASKS,
                "sources": sources,
                "public_connections": public,
                "admin_connections_and_http2_streams": tracked.saturating_sub(own),
                "broker_clients_and_other_untracked": alive.saturating_sub(tracked),
            },
        },
        "streams": {
            "open": state.registry.subscriber_count(),
            "queued_frames": state.registry.queued_frames(),
            "resume_reads_active": state.metrics.resume_reads_active.get(),
        },
        "runtime": {
            "workers": workers,
            "global_queue_depth": rt.global_queue_depth(),
        },
        "process": {
            "resident_bytes": process.resident_bytes,
            "threads": process.threads,
            "open_fds": process.open_fds,
            "max_fds": process.max_fds,
        },
        "allocator": allocator::stats(),
    })
}
