//! Events and their SSE framing, done once per event.
//!
//! An [`Event`] is what the ingest sequencer makes of a broker message: a bridge-assigned
//! [`EventId`], the topic, and the complete SSE frame (`id:`, `event:`, `data:` lines and the
//! blank line) in one refcounted [`Bytes`]. Every subscriber queue, and later the replay ring,
//! holds a clone of the same `Arc<Event>`: no per-subscriber formatting, copying or allocation.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::config::SlowConsumerPolicy;
use crate::telemetry::{EventTrace, FanoutCounts};

/// A bridge-assigned event id: the run that assigned it and a sequence number.
///
/// One global sequence per bridge run, assigned by a single sequencer in arrival order, makes a
/// single id a complete resume cursor for any set of topics: "everything on my topics with a
/// larger `seq`". The run part lets a resume detect an id from another process (restart or
/// replica), where the sequence means nothing. Rendered as `<run hex>-<seq>`, e.g.
/// `5f3a9c01b2d7-42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    /// Random per process start; 48 bits keeps ids short while collisions stay negligible.
    pub run: u64,
    /// Strictly increasing within a run, starting at 1.
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}-{}", self.run, self.seq)
    }
}

/// Why a client-supplied id could not be read as an [`EventId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event id")]
pub struct MalformedId;

impl FromStr for EventId {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (run, seq) = s.split_once('-').ok_or(MalformedId)?;
        if run.len() != 12 || seq.is_empty() || seq.len() > 20 {
            return Err(MalformedId);
        }
        Ok(EventId {
            run: u64::from_str_radix(run, 16).map_err(|_| MalformedId)?,
            seq: seq.parse().map_err(|_| MalformedId)?,
        })
    }
}

/// A new random run id (48 bits) for this process.
pub fn new_run_id() -> u64 {
    rand::random::<u64>() & 0xffff_ffff_ffff
}

/// A position in a durable stream: a JetStream stream sequence (`a`, with `b` = 0) or a Redis
/// entry id (`a`-`b`: milliseconds and sequence). Ordered as the broker orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// JetStream stream sequence, or a Redis id's milliseconds.
    pub a: u64,
    /// A Redis id's sequence within its millisecond; 0 for JetStream.
    pub b: u64,
}

/// One message, sequenced and framed, shared by every subscriber that receives it.
#[derive(Debug)]
pub struct Event {
    /// The id clients resume from.
    pub id: EventId,
    /// The broker's name for the stream (NATS subject, Redis channel or key), matched against
    /// subscribers' filters.
    pub topic: Arc<str>,
    /// The complete SSE frame, ready for the socket.
    pub frame: Bytes,
    /// When the source handed the message to the bridge; the start of delivery latency.
    pub received_at: Instant,
    /// What a full subscriber queue does with this event (from the topic's delivery rule).
    pub policy: SlowConsumerPolicy,
    /// The delivery span, when tracing is on and this event's trace is sampled.
    pub trace: Option<Arc<EventTrace>>,
    /// The publisher's own timestamp (Unix ms), when it sent one.
    pub published_at_ms: Option<u64>,
    /// Index of the durable stream (JetStream, Redis Streams) the event came from, if any:
    /// its broker can replay it, so resumes need not find it in the ring.
    pub durable: Option<(u16, Pos)>,
}

/// What one fan-out did, for metrics and traces.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FanoutStats {
    /// Queues the event was placed in.
    pub delivered: usize,
    /// Subscribers that overflowed on this event and were disconnected.
    pub overflowed: usize,
    /// Older queued events dropped to make room (`drop-oldest`, `latest` without a match).
    pub dropped: usize,
    /// Older queued events of the same topic replaced (`latest`).
    pub conflated: usize,
}

impl FanoutStats {
    /// The figures the fan-out and delivery spans record.
    pub fn span_counts(self) -> FanoutCounts {
        FanoutCounts {
            subscribers: self.delivered,
            dropped: self.overflowed + self.dropped,
            conflated: self.conflated,
            disconnected: self.overflowed,
        }
    }
}

/// Event types that publishers may not use, because the bridge itself speaks with them
/// (`sse-bridge.gap`, …); a forged gap signal would mislead every client.
pub const RESERVED_EVENT_PREFIX: &str = "sse-bridge.";

/// What [`frame_event`] had to change to produce a valid frame, so the caller can count it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameNotes {
    /// The payload was not UTF-8; invalid sequences became U+FFFD.
    pub replaced_invalid_utf8: bool,
    /// The event type was unusable (line break, reserved prefix, empty) and was left out.
    pub dropped_event_type: bool,
}

/// Builds the SSE frame for one event.
///
/// Line endings in the payload (`\r\n`, `\r`, `\n`) each end one `data:` line, so the browser
/// reassembles the payload with `\n` in their place. Non-UTF-8 payloads are decoded lossily
/// (what a browser's decoder would do anyway) and reported in [`FrameNotes`], never a broken
/// stream.
pub fn frame_event(id: EventId, event_type: Option<&str>, payload: &[u8]) -> (Bytes, FrameNotes) {
    frame_event_with(id, "", event_type, payload)
}

/// [`frame_event`] with `id_suffix` written right after the id: the durable streams' positions
/// (see `crate::durable`), so one id is a complete cursor on any replica.
pub fn frame_event_with(
    id: impl fmt::Display,
    id_suffix: &str,
    event_type: Option<&str>,
    payload: &[u8],
) -> (Bytes, FrameNotes) {
    EventParts::of(id_suffix, event_type, payload).alone(id, id_suffix)
}

/// An event's frame checked and sized, ready to be written.
struct EventParts<'a> {
    text: std::borrow::Cow<'a, str>,
    event_type: Option<&'a str>,
    /// An upper bound of the frame's length.
    cap: usize,
    notes: FrameNotes,
}

impl<'a> EventParts<'a> {
    fn of(id_suffix: &str, event_type: Option<&'a str>, payload: &'a [u8]) -> Self {
        let mut notes = FrameNotes::default();
        let text = String::from_utf8_lossy(payload);
        notes.replaced_invalid_utf8 = matches!(text, std::borrow::Cow::Owned(_));
        let event_type = event_type.filter(|t| {
            let ok = !t.is_empty() && !t.contains(['\r', '\n']) && !t.starts_with(RESERVED_EVENT_PREFIX);
            notes.dropped_event_type = !ok;
            ok
        });
        let lines = count_lines(&text);
        // "id: " + 12 + "-" + 20 + "\n" ≤ 38; "event: " + type + "\n"; "data: " + "\n" per line; "\n".
        let cap = 38 + id_suffix.len() + event_type.map_or(0, |t| t.len() + 8) + text.len() + lines * 7 + 1;
        EventParts { text, event_type, cap, notes }
    }

    /// The frame in an allocation of its own.
    fn alone(&self, id: impl fmt::Display, id_suffix: &str) -> (Bytes, FrameNotes) {
        let mut buf = BytesMut::with_capacity(self.cap);
        self.write(&mut buf, id, id_suffix);
        (buf.freeze(), self.notes)
    }

    fn write(&self, buf: &mut BytesMut, id: impl fmt::Display, id_suffix: &str) {
        buf.put_slice(b"id: ");
        // Formats straight into the frame: no temporary String per event.
        let _ = write!(buf, "{id}");
        buf.put_slice(id_suffix.as_bytes());
        buf.put_u8(b'\n');
        if let Some(t) = self.event_type {
            buf.put_slice(b"event: ");
            buf.put_slice(t.as_bytes());
            buf.put_u8(b'\n');
        }
        put_data_lines(buf, &self.text);
        buf.put_u8(b'\n');
    }
}

/// Bytes of one [`FrameChunks`] allocation: a size class of its own in jemalloc (no rounding
/// up), and small enough that a replay's unread frames pin little beyond themselves.
pub const FRAME_CHUNK: usize = 1024 * 1024;

/// Builds a replay's frames back to back into shared allocations of [`FRAME_CHUNK`] bytes.
///
/// Each frame built alone is one allocation, which the allocator rounds up to its next size
/// class: a frame of a 64 KiB payload (65.7 KiB) takes 80 KiB, so a replay of 1,000 such
/// events held 78 MiB of heap for 64 MiB of frames. Replayed frames are written in the order
/// they were built and dropped soon after, so frames that share a chunk are freed together
/// (the chunk goes when its last frame is written). A frame larger than a chunk gets an
/// allocation of its own. Live frames are not built this way: a ring may keep one event of a
/// quiet topic for hours, which would pin its whole chunk.
#[derive(Debug, Default)]
pub struct FrameChunks {
    chunk: BytesMut,
}

impl FrameChunks {
    /// [`frame_event_with`], written into the current chunk (a new one when it is full).
    pub fn frame_event_with(
        &mut self,
        id: impl fmt::Display,
        id_suffix: &str,
        event_type: Option<&str>,
        payload: &[u8],
    ) -> (Bytes, FrameNotes) {
        let parts = EventParts::of(id_suffix, event_type, payload);
        if parts.cap > FRAME_CHUNK {
            return parts.alone(id, id_suffix);
        }
        if self.chunk.capacity() - self.chunk.len() < parts.cap {
            self.chunk = BytesMut::with_capacity(FRAME_CHUNK);
        }
        parts.write(&mut self.chunk, id, id_suffix);
        (self.chunk.split().freeze(), parts.notes)
    }
}

/// Builds a frame the bridge itself sends (no id, so the client's resume cursor is untouched),
/// such as the `sse-bridge.gap` signal.
pub fn frame_control(event_type: &str, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(event_type.len() + data.len() + 32);
    buf.put_slice(b"event: ");
    buf.put_slice(event_type.as_bytes());
    buf.put_u8(b'\n');
    put_data_lines(&mut buf, data);
    buf.put_u8(b'\n');
    buf.freeze()
}

fn count_lines(text: &str) -> usize {
    let mut n = 1;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' => {
                n += 1;
                if b.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => n += 1,
            _ => {}
        }
        i += 1;
    }
    n
}

fn put_data_lines(buf: &mut BytesMut, text: &str) {
    let b = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' | b'\n' => {
                put_data_line(buf, &b[start..i]);
                if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    put_data_line(buf, &b[start..]);
}

fn put_data_line(buf: &mut BytesMut, line: &[u8]) {
    buf.put_slice(b"data: ");
    buf.put_slice(line);
    buf.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: EventId = EventId { run: 0xabc, seq: 7 };

    fn frame(t: Option<&str>, p: &[u8]) -> String {
        String::from_utf8(frame_event(ID, t, p).0.to_vec()).unwrap()
    }

    #[test]
    fn id_round_trips() {
        let s = ID.to_string();
        assert_eq!(s, "000000000abc-7");
        assert_eq!(s.parse::<EventId>(), Ok(ID));
        assert!("abc-7".parse::<EventId>().is_err());
        assert!("000000000abc-".parse::<EventId>().is_err());
        assert!("000000000abc-x".parse::<EventId>().is_err());
        assert!("garbage".parse::<EventId>().is_err());
    }

    #[test]
    fn frames_every_line_ending() {
        assert_eq!(frame(None, b"a\nb\r\nc\rd"), "id: 000000000abc-7\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
        assert_eq!(frame(None, b"x\n"), "id: 000000000abc-7\ndata: x\ndata: \n\n");
        assert_eq!(frame(Some("greet"), b""), "id: 000000000abc-7\nevent: greet\ndata: \n\n");
    }

    #[test]
    fn chunked_frames_are_the_same_bytes_and_share_their_allocation() {
        let mut chunks = FrameChunks::default();
        let payload = vec![b'x'; 64 * 1024];
        let (a, _) = chunks.frame_event_with(ID, ":v1", Some("t"), &payload);
        let (b, notes) = chunks.frame_event_with(ID, ":v2", None, b"\xffz");
        assert_eq!(a, frame_event_with(ID, ":v1", Some("t"), &payload).0);
        assert_eq!(b, frame_event_with(ID, ":v2", None, b"\xffz").0);
        assert!(notes.replaced_invalid_utf8);
        // Back to back in one chunk.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        // A chunk holds as many as fit; then a new one starts.
        let n = FRAME_CHUNK / a.len();
        let frames: Vec<Bytes> = (0..n + 1).map(|_| chunks.frame_event_with(ID, "", None, &payload).0).collect();
        assert!(frames.windows(2).any(|w| w[0].as_ptr().wrapping_add(w[0].len()) != w[1].as_ptr()));
        // Larger than a chunk: its own allocation, same bytes.
        let big = vec![b'y'; FRAME_CHUNK + 1];
        assert_eq!(chunks.frame_event_with(ID, "", None, &big).0, frame_event(ID, None, &big).0);
    }

    #[test]
    fn refuses_unsafe_event_types() {
        let (f, n) = frame_event(ID, Some("a\nb"), b"x");
        assert!(n.dropped_event_type);
        assert!(!String::from_utf8_lossy(&f).contains("event:"));
        let (_, n) = frame_event(ID, Some("sse-bridge.gap"), b"x");
        assert!(n.dropped_event_type);
    }

    #[test]
    fn replaces_invalid_utf8() {
        let (f, n) = frame_event(ID, None, b"a\xffb");
        assert!(n.replaced_invalid_utf8);
        assert_eq!(String::from_utf8(f.to_vec()).unwrap(), "id: 000000000abc-7\ndata: a\u{fffd}b\n\n");
    }

    #[test]
    fn capacity_estimate_avoids_regrowth() {
        let payload = "line\n".repeat(100);
        let (f, _) = frame_event(EventId { run: u64::MAX >> 16, seq: u64::MAX }, Some("t"), payload.as_bytes());
        assert!(f.len() <= 38 + 9 + payload.len() + 101 * 7 + 1);
    }
}
