//! `Last-Event-ID` parsing: `EventId::from_str`, `replay::Cursor::parse` and the request bound
//! `sse::input::check_last_event_id` never panic and agree. Input: 8 bytes run, 8 bytes newest
//! sequence, then the id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_bridge::event::EventId;
use sse_bridge::sse::input::check_last_event_id;
use sse_bridge::replay::{Cursor, MAX_CURSOR_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let run = u64::from_le_bytes(data[0..8].try_into().unwrap()) & 0xffff_ffff_ffff;
    let newest = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let raw = &data[16..];
    let checked = check_last_event_id(raw);
    let Ok(s) = std::str::from_utf8(raw) else {
        assert!(checked.is_err(), "non-UTF-8 ids are refused");
        return;
    };
    let cursor = Cursor::parse(s, run, newest);
    match s.parse::<EventId>() {
        Ok(id) => {
            assert!(checked.is_ok(), "a parsable id passes the request bound");
            // Its canonical form reads back as the same id.
            assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
            let want = if s.len() > MAX_CURSOR_LEN {
                Cursor::Malformed
            } else if id.run != run {
                Cursor::OtherRun
            } else if id.seq > newest {
                Cursor::Malformed
            } else {
                Cursor::Ours(id.seq)
            };
            assert_eq!(cursor, want);
        }
        Err(_) => assert_eq!(cursor, Cursor::Malformed),
    }
    // What the bridge sends comes back as ours.
    let mine = EventId { run, seq: newest }.to_string();
    assert_eq!(Cursor::parse(&mine, run, newest), Cursor::Ours(newest));
});
