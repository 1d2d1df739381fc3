//! Bounds on untrusted HTTP input: request headers and `Last-Event-ID` (topics, their count and
//! the query length are checked where they are parsed, in `sse::handler`). Each violation is a
//! `400` with a one-line reason and a `sse_bridge_requests_rejected_total{reason}` count; see
//! `sse::guard`.

use http::HeaderMap;

/// Longest `Last-Event-ID` (header or `lastEventId` query parameter) accepted. A bridge id is
/// at most 33 bytes; ids up to this length that are not ours get the `malformed-id` gap signal
/// (a browser carrying another server's id must keep working); longer ones get `400`.
pub const MAX_LAST_EVENT_ID_BYTES: usize = 1024;

/// Request header bytes (names plus values) accepted; more gets `400`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// hyper's HTTP/1.1 read buffer, which bounds a request head (request line plus headers):
/// a larger head is answered `431` by hyper itself, before any handler runs. HTTP/2 header
/// lists are bounded by hyper's own default (16 KiB, `SETTINGS_MAX_HEADER_LIST_SIZE`).
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Longest `event` type accepted by `POST /publish`.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;

/// Why a `Last-Event-ID` value is refused with `400`, if it is.
///
/// Refused: longer than [`MAX_LAST_EVENT_ID_BYTES`], not UTF-8, or containing control
/// characters (an SSE id cannot hold CR, LF or NUL, and no server sends the others). Anything
/// else is read by `replay::Cursor::parse`; ids that are not this bridge's get a gap signal.
pub fn check_last_event_id(v: &[u8]) -> Result<(), String> {
    if v.len() > MAX_LAST_EVENT_ID_BYTES {
        return Err(format!("Last-Event-ID is longer than {MAX_LAST_EVENT_ID_BYTES} bytes"));
    }
    let s = std::str::from_utf8(v).map_err(|_| "Last-Event-ID is not UTF-8".to_string())?;
    if s.chars().any(char::is_control) {
        return Err("Last-Event-ID contains a control character".into());
    }
    Ok(())
}

/// Bytes of all request headers, names and values.
pub fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_bounds() {
        assert!(check_last_event_id(b"5f3a9c01b2d7-1").is_ok());
        assert!(check_last_event_id(b"urn:uuid:whatever other servers send").is_ok());
        assert!(check_last_event_id(&[b'a'; MAX_LAST_EVENT_ID_BYTES]).is_ok());
        assert!(check_last_event_id(&[b'a'; MAX_LAST_EVENT_ID_BYTES + 1]).is_err());
        assert!(check_last_event_id(b"a\xffb").is_err());
        assert!(check_last_event_id(b"a\x01b").is_err());
    }
}
