//! The SSE framer: any payload and event type, framed by `event::frame_event` and read back by
//! a spec-conforming parser, gives exactly one event whose data is the payload byte for byte,
//! modulo line-ending normalisation (CRLF and CR become LF) and U+FFFD for invalid UTF-8; whose
//! id is the event's id; and whose type is the publisher's when usable (else `message`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_bridge::event::{EventId, RESERVED_EVENT_PREFIX, frame_control, frame_event};
use sse_bridge_fuzz::parse_event_stream;

fuzz_target!(|input: (u64, u64, Option<&str>, &[u8])| {
    let (run, seq, event_type, payload) = input;
    let id = EventId { run: run & 0xffff_ffff_ffff, seq };
    let (frame, notes) = frame_event(id, event_type, payload);

    let events = parse_event_stream(&frame);
    assert_eq!(events.len(), 1, "one frame, one event: {frame:?}");
    let ev = &events[0];
    let want = String::from_utf8_lossy(payload).replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(ev.data, want);
    assert_eq!(notes.replaced_invalid_utf8, std::str::from_utf8(payload).is_err());
    assert_eq!(ev.last_event_id, id.to_string());
    let usable =
        event_type.filter(|t| !t.is_empty() && !t.contains(['\r', '\n']) && !t.starts_with(RESERVED_EVENT_PREFIX));
    assert_eq!(ev.event, usable.unwrap_or(""));
    assert_eq!(notes.dropped_event_type, event_type.is_some() && usable.is_none());

    // Frames concatenate: a stream of two is two events, in order.
    let mut two = frame.to_vec();
    two.extend_from_slice(&frame);
    assert_eq!(parse_event_stream(&two).len(), 2);

    // Control frames (the gap signal) carry any JSON-ish text the same way, with no id.
    let text = String::from_utf8_lossy(payload);
    let control = frame_control("sse-bridge.gap", &text);
    let events = parse_event_stream(&control);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, text.replace("\r\n", "\n").replace('\r', "\n"));
    assert_eq!(events[0].event, "sse-bridge.gap");
    assert_eq!(events[0].last_event_id, "");
});
