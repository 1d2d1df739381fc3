//! The paced drain (issue #12) on the real binary: 1,000 open streams, SIGTERM. Streams end
//! spread over `drain_spread` × `drain_timeout` (the histogram of end times is printed), each
//! with a `retry:` of its own; events published during the drain still reach every stream not
//! yet ended; the process exits 0 within `drain_timeout`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::TOKEN;
use common::bridge_process::BridgeProcess;

const STREAMS: usize = 1000;
const DRAIN: Duration = Duration::from_secs(8);
const SPREAD: f64 = 0.5;

/// One raw stream: everything it read and when the server ended it.
#[derive(Default)]
struct Seen {
    bytes: Vec<u8>,
    ended_at: Option<Instant>,
}

/// Opens a raw HTTP/1.1 stream and reads it to its end in the background.
async fn open(addr: std::net::SocketAddr, seen: Arc<Mutex<Seen>>, opened: tokio::sync::mpsc::Sender<()>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /events?topic=drain.t HTTP/1.1\r\nhost: bridge\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let mut told = false;
    loop {
        let n = s.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            seen.lock().ended_at = Some(Instant::now());
            return;
        }
        let mut g = seen.lock();
        g.bytes.extend_from_slice(&buf[..n]);
        if !told && g.bytes.windows(5).any(|w| w == b": ok\n") {
            told = true;
            let _ = opened.try_send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_1000_streams_paced_and_events_reach_the_ones_left() {
    let extra =
        format!("[publish]\ntoken = \"{TOKEN}\"\n\n[limits]\nconnect_rate_per_ip = 0\nmax_streams_per_ip = 0\n");
    let drain = format!("{}s", DRAIN.as_secs());
    let spread = SPREAD.to_string();
    let mut bridge = BridgeProcess::start(
        &extra,
        &[("SSE_BRIDGE_SERVER__DRAIN_TIMEOUT", &drain), ("SSE_BRIDGE_SERVER__DRAIN_SPREAD", &spread)],
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(STREAMS);
    let streams: Vec<Arc<Mutex<Seen>>> = (0..STREAMS).map(|_| Arc::default()).collect();
    for s in &streams {
        tokio::spawn(open(bridge.addr, s.clone(), tx.clone()));
    }
    for _ in 0..STREAMS {
        tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("every stream opens");
    }

    let signalled = Instant::now();
    bridge.daemon.signal(Signal::SIGTERM);
    // Publish through the draining bridge: every stream still open when an event was
    // acknowledged must get it.
    let mut published = Vec::new();
    for k in 0.. {
        if streams.iter().all(|s| s.lock().ended_at.is_some()) || signalled.elapsed() > DRAIN {
            break;
        }
        let sent = Instant::now();
        let body = format!("during-{k}");
        let url = bridge.url("/publish?topic=drain.t");
        let ok = common::sse_client::test_client().post(url).bearer_auth(TOKEN).body(body.clone()).send().await;
        if ok.is_ok_and(|r| r.status().is_success()) {
            published.push((sent, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = bridge.daemon.wait_exit(DRAIN + Duration::from_secs(5)).expect("the bridge exits");
    let exited = signalled.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", bridge.daemon.stderr());
    assert!(exited <= DRAIN + Duration::from_secs(2), "exited {exited:?} after SIGTERM");

    let ends: Vec<Duration> = streams
        .iter()
        .map(|s| s.lock().ended_at.expect("every stream ended before the exit").duration_since(signalled))
        .collect();
    let window = DRAIN.mul_f64(SPREAD);
    print_histogram(&ends, window);
    let (first, last) = (ends.iter().min().unwrap(), ends.iter().max().unwrap());
    assert!(*first < window / 5, "the first batch ends at once: {first:?}");
    assert!(*last >= window.mul_f64(0.8), "streams end spread over the window ({window:?}): last {last:?}");
    let late = ends.iter().filter(|e| **e > window / 2).count();
    assert!(late >= STREAMS / 3, "{late} of {STREAMS} streams ended in the second half of the window");

    assert!(!published.is_empty(), "events were published during the drain");
    let mut checked = 0;
    for (s, end) in streams.iter().zip(&ends) {
        let text = String::from_utf8_lossy(&s.lock().bytes).into_owned();
        // The opening retry and the drain's own, jittered one.
        assert!(text.matches("retry: ").count() >= 2, "no retry: at the end of the stream: {text:?}");
        for (sent, body) in &published {
            if sent.duration_since(signalled) + Duration::from_millis(500) < *end {
                assert!(text.contains(&format!("data: {body}\n")), "a stream open until {end:?} missed {body}");
                checked += 1;
            }
        }
    }
    println!(
        "{} events published during the drain; {checked} deliveries to streams still open checked",
        published.len()
    );
}

fn print_histogram(ends: &[Duration], window: Duration) {
    let buckets = 10;
    let width = window / buckets as u32;
    let mut counts = vec![0usize; buckets + 1];
    for e in ends {
        counts[((e.as_secs_f64() / width.as_secs_f64()) as usize).min(buckets)] += 1;
    }
    println!("stream end times after SIGTERM (window {window:?}, {} streams):", ends.len());
    for (i, c) in counts.iter().enumerate() {
        let label = if i == buckets {
            format!(">= {:?}", window)
        } else {
            format!("{:?}..{:?}", width * i as u32, width * (i as u32 + 1))
        };
        println!("  {label:>22} {c:5} {}", "#".repeat(c / 5));
    }
}
