//! Tests for the SSE test client in `tests/common/sse_client.rs`: the parser
//! against the WHATWG event-stream rules, and the HTTP side against a canned
//! raw-TCP server (so these tests do not depend on the bridge itself).

mod common;

use std::time::Duration;

use common::sse_client::{self, SseEvent, SseParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(5);

fn ev(data: &str) -> SseEvent {
    SseEvent { data: data.to_owned(), ..SseEvent::default() }
}

/// Feeds `input` split at every possible pair of cut points (three chunks)
/// and asserts the result is identical to feeding it whole. This covers
/// lines and `\r\n` pairs split across chunk boundaries exhaustively.
fn parse_all_splits(input: &[u8]) -> Vec<SseEvent> {
    let mut whole = SseParser::new();
    let expected = whole.feed(input);
    for i in 0..=input.len() {
        for j in i..=input.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&input[..i]);
            got.extend(p.feed(&input[i..j]));
            got.extend(p.feed(&input[j..]));
            assert_eq!(got, expected, "split at {i},{j} of {input:?}");
            assert_eq!(p.last_event_id(), whole.last_event_id());
            assert_eq!(p.comments(), whole.comments());
        }
    }
    expected
}

#[test]
fn simple_event_with_all_fields() {
    let got = parse_all_splits(b"id: 7\nevent: greet\nretry: 1500\ndata: hello\n\n");
    assert_eq!(
        got,
        vec![SseEvent { id: Some("7".into()), event: Some("greet".into()), data: "hello".into(), retry: Some(1500) }]
    );
}

#[test]
fn byte_at_a_time() {
    let input = b"data: a\r\n\r\ndata: b\r\rdata: c\n\n";
    let mut p = SseParser::new();
    let got: Vec<_> = input.iter().flat_map(|b| p.feed(&[*b])).collect();
    assert_eq!(got, vec![ev("a"), ev("b"), ev("c")]);
}

#[test]
fn all_line_terminators() {
    for input in [
        &b"data: x\n\ndata: y\n\n"[..],
        b"data: x\r\n\r\ndata: y\r\n\r\n",
        b"data: x\r\rdata: y\r\r",
        b"data: x\r\n\ndata: y\n\r\n",
    ] {
        assert_eq!(parse_all_splits(input), vec![ev("x"), ev("y")], "{input:?}");
    }
}

#[test]
fn crlf_split_across_chunks_is_one_terminator() {
    // If the "\n" after a chunk-final "\r" were taken as a second line end,
    // it would be a blank line and dispatch "a" on its own; instead "a" and
    // "b" must stay in one event.
    let mut p = SseParser::new();
    assert!(p.feed(b"data: a\r").is_empty());
    assert!(p.feed(b"\ndata: b\r").is_empty());
    assert!(p.feed(b"\n").is_empty());
    assert_eq!(p.feed(b"\r\n"), vec![ev("a\nb")]);
}

#[test]
fn multi_line_data_joined_with_newline() {
    let got = parse_all_splits(b"data: one\ndata:two\ndata:  three\ndata\ndata:\n\n");
    // One leading space stripped, second kept; bare `data` and `data:` add
    // empty lines.
    assert_eq!(got, vec![ev("one\ntwo\n three\n\n")]);
}

#[test]
fn comments_are_counted_not_dispatched() {
    let mut p = SseParser::new();
    let got = p.feed(b": open\n\n:heartbeat\n\ndata: x\n: inside\n\n:\n");
    assert_eq!(got, vec![ev("x")]);
    assert_eq!(p.comments(), [" open", "heartbeat", " inside", ""]);
}

#[test]
fn empty_data_buffer_not_dispatched_but_id_updates() {
    let mut p = SseParser::new();
    assert!(p.feed(b"id: 41\n\n").is_empty());
    assert_eq!(p.last_event_id(), Some("41"));
    assert!(p.feed(b"event: nothing\nretry: 10\n\n").is_empty());
    assert_eq!(p.retry(), Some(10));
    // The event type did not leak into the next event.
    assert_eq!(p.feed(b"data: y\n\n"), vec![ev("y")]);
    // The last event ID is sticky but `id` reports only this block's field.
    assert_eq!(p.last_event_id(), Some("41"));
}

#[test]
fn empty_data_field_is_dispatched() {
    // `data:` puts "\n" in the buffer, so the buffer is not empty.
    assert_eq!(parse_all_splits(b"data:\n\n"), vec![ev("")]);
    assert_eq!(parse_all_splits(b"data\n\n"), vec![ev("")]);
}

#[test]
fn id_rules() {
    let mut p = SseParser::new();
    // Not applied until the blank line.
    p.feed(b"id: 1\n");
    assert_eq!(p.last_event_id(), None);
    p.feed(b"\n");
    assert_eq!(p.last_event_id(), Some("1"));
    // NUL makes the whole field ignored.
    p.feed(b"id: 2\0x\ndata: d\n\n");
    assert_eq!(p.last_event_id(), Some("1"));
    // `id` with no value resets to empty.
    let got = p.feed(b"id\ndata: e\n\n");
    assert_eq!(got[0].id.as_deref(), Some(""));
    assert_eq!(p.last_event_id(), Some(""));
}

#[test]
fn retry_rules_and_unknown_fields() {
    let mut p = SseParser::new();
    let got = p.feed(b"retry: 12a\nretry:  5\nretry:\nfoo: bar\nDATA: no\ndata: ok\n\n");
    assert_eq!(got, vec![ev("ok")]);
    assert_eq!(p.retry(), None);
    let got = p.feed(b"retry:250\ndata: r\n\n");
    assert_eq!(got[0].retry, Some(250));
}

#[test]
fn value_colons_and_bom() {
    let got = parse_all_splits(b"\xEF\xBB\xBFdata: a: b:c\nevent:x:y\n\n");
    assert_eq!(got, vec![SseEvent { event: Some("x:y".into()), data: "a: b:c".into(), ..SseEvent::default() }]);
}

#[test]
fn utf8_split_across_chunks() {
    let input = "data: h\u{e9}llo \u{1F600}\n\n".as_bytes();
    assert_eq!(parse_all_splits(input), vec![ev("h\u{e9}llo \u{1F600}")]);
}

#[test]
fn unterminated_event_discarded_at_end() {
    let mut p = SseParser::new();
    assert!(p.feed(b"id: 9\ndata: partial\n").is_empty());
    p.finish();
    assert_eq!(p.last_event_id(), None);
    assert!(p.feed(b"\n").is_empty(), "finish() must drop the pending data");
}

// ---------------------------------------------------------------------------
// Over HTTP, against a canned server.

/// Serves one connection: reads the request head, returns it, writes
/// `head` and then each of `body_parts` with a short pause (so they arrive
/// as separate chunks), then closes.
async fn serve_once(head: &'static str, body_parts: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed before sending a request");
            req.extend_from_slice(&buf[..n]);
        }
        sock.write_all(head.as_bytes()).await.unwrap();
        for part in body_parts {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sock.write_all(part).await.unwrap();
        }
        String::from_utf8(req).unwrap()
    });
    (url, task)
}

#[tokio::test]
async fn http_stream_events_comments_and_end() {
    let (url, server) = serve_once(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        vec![b": hi\n\n", b"id: 1\ndata: a\r", b"\n\r\ndata: b", b"\n\n:hb\n\n", b"data: lost"],
    )
    .await;
    let mut s = sse_client::connect(&url, &[("Last-Event-ID", "0")]).await.unwrap();
    assert_eq!(s.status(), 200);
    assert_eq!(s.headers()["content-type"], "text/event-stream");
    s.wait_for_comments(1, T).await;
    assert_eq!(s.comments()[0], " hi");
    let a = s.next_event(T).await.unwrap();
    assert_eq!((a.id.as_deref(), a.data.as_str()), (Some("1"), "a"));
    assert_eq!(s.next_event(T).await.unwrap(), ev("b"));
    assert_eq!(s.last_event_id(), Some("1"));
    // The unterminated last event is discarded; then the stream ends.
    assert_eq!(s.next_event(T).await, None);
    assert!(s.is_ended());
    assert_eq!(s.comments_seen(), 2);

    let req = server.await.unwrap().to_ascii_lowercase();
    assert!(req.contains("accept: text/event-stream\r\n"), "{req}");
    assert!(req.contains("last-event-id: 0\r\n"), "{req}");
}

#[tokio::test]
async fn http_timeout_is_recoverable() {
    let (url, _server) = serve_once(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        vec![b"data: late\n\n"],
    )
    .await;
    let mut s = sse_client::connect(&url, &[]).await.unwrap();
    // Nothing yet: the non-panicking variant reports the timeout...
    assert!(s.next_event_or_end(Duration::ZERO).await.is_err());
    // ...and the stream still works afterwards.
    assert_eq!(s.next_event(T).await, Some(ev("late")));
}

#[tokio::test]
async fn http_non_200_is_error_with_body() {
    let (url, _server) = serve_once(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\nconnection: close\r\n\r\nno broker",
        vec![],
    )
    .await;
    let err = match sse_client::connect(&url, &[("accept", "*/*")]).await {
        Ok(_) => panic!("expected an error for 503"),
        Err(e) => e,
    };
    assert_eq!(err.status(), Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.body(), Some("no broker"));
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test]
#[should_panic(expected = "no SSE event or end of stream within")]
async fn next_event_panics_on_timeout() {
    let (url, _server) = serve_once(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        vec![b": only a comment\n\n"],
    )
    .await;
    let mut s = sse_client::connect(&url, &[]).await.unwrap();
    // The server pauses 20ms before writing, so a 1ms wait sees nothing
    // (a comment alone would not satisfy next_event anyway).
    s.next_event(Duration::from_millis(1)).await;
}
