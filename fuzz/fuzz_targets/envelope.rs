//! The Redis envelope decoder never panics; what it accepts is JSON whose `event` and string
//! `data` come out verbatim, and the result always frames.
//!
//! The oracle is `serde_json::Value`, which is stricter than JSON's grammar in one place: it
//! refuses a `\u` escape naming an unpaired surrogate (RFC 8259 §8.2 allows it and leaves its
//! meaning open). The decoder skips unknown fields without decoding their strings, so an envelope
//! with an unpaired surrogate in a field it ignores is accepted, and that is right: the fields it
//! uses are decoded as strings and refuse one (found by fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sse_bridge::event::{EventId, frame_event};
use sse_bridge::sources::redis::decode_envelope;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = decode_envelope(data) else { return };
    let v: Value = match serde_json::from_slice(data) {
        Ok(v) => v,
        Err(e) => {
            let why = e.to_string();
            assert!(
                why.contains("surrogate") || why.contains("hex escape") || why.contains("code point"),
                "an accepted envelope is JSON: {why}"
            );
            return;
        }
    };
    match v.get("data") {
        Some(Value::String(s)) => assert_eq!(&d.payload[..], s.as_bytes()),
        Some(other) => assert_eq!(&d.payload[..], other.to_string().as_bytes()),
        None => panic!("accepted an envelope without data"),
    }
    assert_eq!(d.event_type.as_deref(), v.get("event").and_then(Value::as_str));
    let (frame, _) = frame_event(EventId { run: 1, seq: 1 }, d.event_type.as_deref(), &d.payload);
    assert!(frame.ends_with(b"\n\n"));
});
