//! Minimal, allocation-light parsing of an SSE response: the HTTP/1.1 head, a chunked (or
//! as-is) body, SSE lines, and the load generator's own payload format.
//!
//! Each connection keeps only a small line buffer (used when a line spans two reads) and a few
//! integers of decoder state, so tens of thousands of connections cost little client memory.

/// What the response head said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    /// `Content-Length`, when the body has one (a refusal; streams are chunked).
    pub content_length: Option<u64>,
    /// `Content-Type` is `text/event-stream` (an EventSource fails the connection otherwise).
    pub event_stream: bool,
    /// The `sse-bridge-refusal` header: why sse-bridge refused the stream (`None`: admitted).
    pub refusal: Option<Refusal>,
    /// Bytes of the buffer taken by the head (the body starts there).
    pub len: usize,
}

/// The reason in sse-bridge's `sse-bridge-refusal` header, as far as a client acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The replica is going away: a load balancer stops sending clients there.
    Draining,
    /// Any other reason (connect rate, caps, memory budget): come back after the hint.
    Other,
}

/// Parses a response head if `buf` holds all of it (`Ok(None)`: read more).
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Err("response head longer than 16 KiB".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let (mut chunked, mut content_length, mut event_stream, mut refusal) = (false, None, false, None);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("content-length") {
            content_length = Some(v.parse().map_err(|_| format!("bad content-length: {v:?}"))?);
        } else if k.eq_ignore_ascii_case("content-type") {
            // The essence only: `text/event-stream; charset=utf-8` is an event stream too.
            event_stream = v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"));
        } else if k.eq_ignore_ascii_case("sse-bridge-refusal") {
            refusal = Some(if v.eq_ignore_ascii_case("draining") { Refusal::Draining } else { Refusal::Other });
        }
    }
    Ok(Some(Head { status, chunked, content_length, event_stream, refusal, len: end + 4 }))
}

/// Incremental HTTP/1.1 body decoder: chunked transfer coding, or the bytes as they come.
#[derive(Debug)]
pub enum BodyDecoder {
    Identity,
    /// A `Content-Length` body: this many bytes left.
    Length(u64),
    Chunked {
        phase: Phase,
        size: u64,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the hex chunk size.
    Size,
    /// Skipping a chunk extension up to the end of the line.
    Ext,
    /// Expecting the LF after the size line's CR.
    SizeLf,
    /// Inside chunk data (`size` bytes left).
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
}

impl BodyDecoder {
    pub fn new(chunked: bool) -> Self {
        if chunked { BodyDecoder::Chunked { phase: Phase::Size, size: 0 } } else { BodyDecoder::Identity }
    }

    /// The decoder `head` calls for: chunked, then `Content-Length`, else up to the close.
    pub fn for_head(head: &Head) -> Self {
        match (head.chunked, head.content_length) {
            (false, Some(0)) => BodyDecoder::Done,
            (false, Some(n)) => BodyDecoder::Length(n),
            (chunked, _) => Self::new(chunked),
        }
    }

    /// Feeds raw bytes; calls `out` with each piece of body. Returns `Ok(true)` when the body
    /// ended (last chunk), `Err` on a malformed chunk.
    pub fn feed(&mut self, mut data: &[u8], mut out: impl FnMut(&[u8])) -> Result<bool, &'static str> {
        loop {
            match self {
                BodyDecoder::Done => return Ok(true),
                BodyDecoder::Identity => {
                    if !data.is_empty() {
                        out(data);
                    }
                    return Ok(false);
                }
                BodyDecoder::Length(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    if n > 0 {
                        out(&data[..n]);
                    }
                    *left -= n as u64;
                    if *left > 0 {
                        return Ok(false);
                    }
                    *self = BodyDecoder::Done;
                }
                BodyDecoder::Chunked { phase, size } => {
                    if data.is_empty() {
                        return Ok(false);
                    }
                    match phase {
                        Phase::Data => {
                            let n = (*size).min(data.len() as u64) as usize;
                            out(&data[..n]);
                            data = &data[n..];
                            *size -= n as u64;
                            if *size == 0 {
                                *phase = Phase::DataCr;
                            }
                            continue;
                        }
                        _ => {
                            let b = data[0];
                            data = &data[1..];
                            match (*phase, b) {
                                (Phase::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                                    *size = size.checked_mul(16).ok_or("chunk size overflow")? + d;
                                }
                                (Phase::Size, b';' | b' ' | b'\t') => *phase = Phase::Ext,
                                (Phase::Size | Phase::Ext, b'\r') => *phase = Phase::SizeLf,
                                (Phase::Size | Phase::Ext | Phase::SizeLf, b'\n') => {
                                    if *size == 0 {
                                        *self = BodyDecoder::Done;
                                        return Ok(true);
                                    }
                                    *phase = Phase::Data;
                                }
                                (Phase::Ext, _) => {}
                                (Phase::DataCr, b'\r') => *phase = Phase::DataLf,
                                (Phase::DataCr | Phase::DataLf, b'\n') => {
                                    *phase = Phase::Size;
                                    *size = 0;
                                }
                                _ => return Err("malformed chunked body"),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Splits an SSE stream into lines (`\n`, `\r\n` or `\r` end a line).
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The start of a line that began in an earlier read.
    partial: Vec<u8>,
    /// The previous read ended on `\r`: a `\n` right after it belongs to that line end.
    after_cr: bool,
}

impl LineSplitter {
    /// Longest line kept; longer lines are cut (and counted by the caller as malformed).
    pub const MAX_LINE: usize = 64 * 1024;

    pub fn feed(&mut self, mut data: &[u8], mut on_line: impl FnMut(&[u8])) {
        if self.after_cr {
            self.after_cr = false;
            if data.first() == Some(&b'\n') {
                data = &data[1..];
            }
        }
        while let Some(i) = data.iter().position(|&b| b == b'\n' || b == b'\r') {
            if self.partial.is_empty() {
                on_line(&data[..i]);
            } else {
                self.extend(&data[..i]);
                on_line(&self.partial);
                self.partial.clear();
            }
            if data[i] == b'\r' {
                match data.get(i + 1) {
                    Some(b'\n') => data = &data[i + 2..],
                    Some(_) => data = &data[i + 1..],
                    None => {
                        self.after_cr = true;
                        data = &[];
                    }
                }
            } else {
                data = &data[i + 1..];
            }
        }
        if !data.is_empty() {
            self.extend(data);
        }
        // Give back memory a rare long line took.
        if self.partial.is_empty() && self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        }
    }

    fn extend(&mut self, data: &[u8]) {
        let room = Self::MAX_LINE.saturating_sub(self.partial.len());
        self.partial.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// The load generator's payload: `<topic index>:<sequence>:<send time ns>:` padded with `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub topic: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Writes a payload of exactly `len` bytes (at least the stamp itself) into `out`.
pub fn write_payload(out: &mut Vec<u8>, s: Stamp, len: usize) {
    use std::io::Write as _;
    out.clear();
    let _ = write!(out, "{}:{}:{}:", s.topic, s.seq, s.sent_ns);
    if out.len() < len {
        out.resize(len, b'x');
    }
}

/// Reads the stamp from an SSE `data:` value; `None` if it is not one of ours.
pub fn parse_payload(v: &[u8]) -> Option<Stamp> {
    let mut it = v.splitn(4, |&b| b == b':');
    let topic = parse_u64(it.next()?)?;
    let seq = parse_u64(it.next()?)?;
    let sent_ns = parse_u64(it.next()?)?;
    it.next()?;
    Some(Stamp { topic: u32::try_from(topic).ok()?, seq, sent_ns })
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

/// The value of an SSE `data:` line (one optional space after the colon is not part of it).
pub fn data_value(line: &[u8]) -> Option<&[u8]> {
    let v = line.strip_prefix(b"data:")?;
    Some(v.strip_prefix(b" ").unwrap_or(v))
}

/// Tracks one connection's sequence numbers: lost, duplicate and reordered events.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqTracker {
    /// The next sequence expected (1 before anything arrived).
    pub expected: u64,
    pub last: u64,
    pub received: u64,
    /// Sequences skipped over (some may arrive later; those are taken back as reordered).
    pub gaps: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl SeqTracker {
    pub fn new() -> Self {
        SeqTracker { expected: 1, ..Default::default() }
    }

    pub fn observe(&mut self, seq: u64) {
        self.received += 1;
        if seq == self.expected {
            self.expected += 1;
        } else if seq > self.expected {
            self.gaps += seq - self.expected;
            self.expected = seq + 1;
        } else if seq == self.last {
            self.duplicates += 1;
        } else {
            self.reordered += 1;
            self.gaps = self.gaps.saturating_sub(1);
        }
        self.last = seq;
    }

    /// Events lost when `published` events were sent on this connection's topic.
    pub fn lost(&self, published: u64) -> u64 {
        self.gaps + published.saturating_sub(self.expected - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_chunked_body_split_anywhere() {
        let expected: &[u8] = b": ok\n\nretry: 2000\n\nid: 1\ndata: 0:1:5:x\n\n";
        // The body in three chunks of 11, 24 and the rest bytes, one with an extension.
        let (a, rest) = expected.split_at(11);
        let (b, c) = rest.split_at(24);
        let mut resp =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        resp.extend_from_slice(format!("{:x}\r\n", a.len()).as_bytes());
        resp.extend_from_slice(a);
        resp.extend_from_slice(format!("\r\n{:X};ext=1\r\n", b.len()).as_bytes());
        resp.extend_from_slice(b);
        resp.extend_from_slice(format!("\r\n{:x}\r\n", c.len()).as_bytes());
        resp.extend_from_slice(c);
        resp.extend_from_slice(b"\r\n0\r\n\r\n");
        let head = parse_head(&resp).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert!(head.chunked);
        let body = &resp[head.len..];
        // Every split point gives the same decoded body.
        for split in 0..body.len() {
            let mut d = BodyDecoder::new(true);
            let mut out = Vec::new();
            let first = d.feed(&body[..split], |p| out.extend_from_slice(p)).unwrap();
            let second = d.feed(&body[split..], |p| out.extend_from_slice(p)).unwrap();
            // The body ends with the last-chunk line "0\r\n"; the final CRLF is not needed.
            assert!(!first || split >= body.len() - 2, "ended early at split {split}");
            assert!(second, "did not end at split {split}");
            assert_eq!(out, expected, "split {split}");
        }
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn lines_split_on_every_ending_across_reads() {
        let text = b"a\r\nb\rc\nd\r\r\nxyz\n";
        for split in 0..text.len() {
            let mut s = LineSplitter::default();
            let mut lines = Vec::new();
            s.feed(&text[..split], |l| lines.push(l.to_vec()));
            s.feed(&text[split..], |l| lines.push(l.to_vec()));
            assert_eq!(lines, [&b"a"[..], b"b", b"c", b"d", b"", b"xyz"], "split {split}");
        }
    }

    #[test]
    fn payload_round_trip() {
        let mut v = Vec::new();
        let s = Stamp { topic: 3, seq: 42, sent_ns: 123_456_789 };
        write_payload(&mut v, s, 256);
        assert_eq!(v.len(), 256);
        assert_eq!(parse_payload(&v), Some(s));
        assert_eq!(data_value(b"data: abc"), Some(&b"abc"[..]));
        assert_eq!(data_value(b"data:abc"), Some(&b"abc"[..]));
        assert_eq!(parse_payload(b"hello"), None);
    }

    #[test]
    fn tracker_counts_loss_duplicates_reorder() {
        let mut t = SeqTracker::new();
        for s in [1, 2, 4, 3, 3, 6] {
            t.observe(s);
        }
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.lost(7), 1 + 1); // 5 never came, 7 not received
    }
}
