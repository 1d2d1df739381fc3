//! What the bridge's events say, read back from the client side: the id ([`event_id`]) and the
//! `sse-bridge.gap` signal ([`gap_data`]), as SPEC.md defines them.

use sse_bridge::event::EventId;

use super::sse_client::SseEvent;

/// The event type of the gap signal.
pub const GAP_EVENT: &str = "sse-bridge.gap";

/// The bridge id an event carries; panics if it has none or another server's.
pub fn event_id(ev: &SseEvent) -> EventId {
    ev.id
        .as_deref()
        .unwrap_or_else(|| panic!("event without id: {ev:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("event id is not a bridge id: {ev:?}"))
}

/// The JSON data of a gap event; panics if `e` is not one, or if it moves the resume cursor
/// (a gap event carries no id).
pub fn gap_data(e: &SseEvent) -> serde_json::Value {
    assert_eq!(e.event.as_deref(), Some(GAP_EVENT), "expected a gap event, got {e:?}");
    assert_eq!(e.id, None, "the gap event leaves the resume cursor alone");
    serde_json::from_str(&e.data).expect("gap data is JSON")
}
