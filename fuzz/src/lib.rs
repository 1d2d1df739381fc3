//! Helpers shared by the fuzz targets: a spec-conforming SSE parser (the oracle of the framer
//! target) and a way to build a topic that a filter matches.

/// One dispatched event, as a browser's `EventSource` would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// The event type (`""` means `message`).
    pub event: String,
    pub data: String,
    /// The last event ID at dispatch time.
    pub last_event_id: String,
}

/// Parses a complete `text/event-stream` body following the WHATWG "event stream
/// interpretation" (https://html.spec.whatwg.org/multipage/server-sent-events.html): UTF-8
/// decode (U+FFFD for invalid bytes), one leading BOM stripped, lines ended by CRLF, CR or LF,
/// comments ignored, `field: value` with one leading space removed from the value, dispatch at
/// a blank line, and an unterminated trailing event discarded.
pub fn parse_event_stream(bytes: &[u8]) -> Vec<Dispatched> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    let (mut data, mut event, mut last_id) = (String::new(), String::new(), String::new());
    let mut rest = text;
    // Only terminated lines count: the text after the last terminator is an incomplete line.
    while let Some(i) = rest.find(['\r', '\n']) {
        let line = &rest[..i];
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                if data.ends_with('\n') {
                    data.pop();
                }
                out.push(Dispatched {
                    event: std::mem::take(&mut event),
                    data: std::mem::take(&mut data),
                    last_event_id: last_id.clone(),
                });
            } else {
                event.clear();
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => last_id = value.to_owned(),
            _ => {}
        }
    }
    out
}

/// A topic matched by the NATS-style filter `f`: `*` becomes `tok`, `>` becomes `tok.tok2`.
pub fn instantiate(f: &str, tok: &str, tok2: &str) -> String {
    f.split('.')
        .map(|t| match t {
            "*" => tok.to_owned(),
            ">" => format!("{tok}.{tok2}"),
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(".")
}
