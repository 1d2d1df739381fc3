//! The `sse-bridge.gap` control event a resume sends when it cannot prove it is complete.

use bytes::Bytes;

use crate::client::GAP_EVENT;
use crate::event::frame_control;

/// The gap event: why, on which topics, after which id (already cut to `MAX_CURSOR_LEN`).
pub(super) fn gap_frame(reason: &str, topics: &[String], last_event_id: &str) -> Bytes {
    let data = serde_json::json!({ "reason": reason, "topics": topics, "last_event_id": last_event_id });
    frame_control(GAP_EVENT, &data.to_string())
}

/// Sorted, without repeats: a gap names each topic once.
pub(super) fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}
