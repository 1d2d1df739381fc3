//! Fixed-rate publishers: HTTP (`POST` to the server's own publish endpoint), NATS (text
//! protocol) and Redis (`PUBLISH`, RESP). Each event carries its topic index, its sequence in
//! that topic and its send time, so subscribers measure latency, loss and order.
//!
//! Event `i` goes to topic `i % K` as sequence `i / K + 1` at `start + i / rate`. A publisher
//! that falls behind sends at once (no catch-up burst is hidden: the stamp is the real send
//! time) and the worst lag is reported. Per-topic order is kept: with several HTTP
//! connections, each topic always goes through the same connection, one request at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::sse::{Stamp, write_payload};
use crate::target::UrlTemplate;
use crate::tls::{self, Tls};

/// How events are published.
#[derive(Debug, Clone)]
pub enum Via {
    Http { url: UrlTemplate, tls: Option<Tls>, token: Option<String>, conns: usize },
    Nats { addr: SocketAddr },
    Redis { addr: SocketAddr },
}

/// The schedule and what it shares with the subscribers.
#[derive(Debug)]
pub struct Plan {
    pub rate: f64,
    pub total: u64,
    pub topics: Vec<String>,
    pub payload_bytes: usize,
    /// Time base of the stamps (shared with subscribers).
    pub clock: Instant,
}

/// What the publishers did; read while and after they run.
#[derive(Debug)]
pub struct PubStats {
    /// Events accepted per topic (2xx, or written for NATS/Redis).
    pub per_topic: Vec<AtomicU64>,
    pub errors: AtomicU64,
    /// Worst lateness behind the schedule, in microseconds.
    pub max_lag_us: AtomicU64,
}

impl PubStats {
    pub fn new(topics: usize) -> Self {
        PubStats {
            per_topic: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            errors: AtomicU64::new(0),
            max_lag_us: AtomicU64::new(0),
        }
    }

    pub fn published(&self) -> u64 {
        self.per_topic.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Runs the plan to its end (or until `stop`), then returns.
pub async fn run(
    via: Via,
    plan: Arc<Plan>,
    stats: Arc<PubStats>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let start = tokio::time::Instant::now();
    match via {
        Via::Http { url, tls, token, conns } => {
            let k = plan.topics.len();
            let conns = conns.clamp(1, k);
            let mut tasks = Vec::new();
            for p in 0..conns {
                let (url, tls, token, plan, stats, stop) =
                    (url.clone(), tls.clone(), token.clone(), plan.clone(), stats.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
                    let mut buf = Vec::with_capacity(plan.payload_bytes);
                    for i in (0..plan.total).filter(|i| (*i as usize % k) % conns == p) {
                        let Some(stamp) = wait_turn(&plan, &stats, start, i, &stop).await else { break };
                        write_payload(&mut buf, stamp, plan.payload_bytes);
                        let path = url.path_for(&plan.topics[stamp.topic as usize]);
                        // One retry on a broken connection; errors are counted, not fatal.
                        let mut ok = false;
                        for _attempt in 0..2 {
                            if conn.is_none() {
                                conn = http_connect(&url, tls.as_ref()).await.ok();
                            }
                            let Some(sender) = conn.as_mut() else { continue };
                            match http_post(sender, &url.host_header, &path, token.as_deref(), &buf).await {
                                Ok(true) => {
                                    ok = true;
                                    break;
                                }
                                Ok(false) => break,
                                Err(_) => conn = None,
                            }
                        }
                        if ok {
                            stats.per_topic[stamp.topic as usize].fetch_add(1, Ordering::Relaxed);
                        } else {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Via::Nats { addr } => {
            let stream = TcpStream::connect(addr).await.map_err(|e| format!("NATS {addr}: {e}"))?;
            stream.set_nodelay(true).ok();
            let (rd, mut wr) = stream.into_split();
            let mut rd = BufReader::new(rd);
            let mut line = String::new();
            rd.read_line(&mut line).await.map_err(|e| e.to_string())?;
            if !line.starts_with("INFO") {
                return Err(format!("NATS {addr}: expected INFO, got {line:?}"));
            }
            wr.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"sse-loadgen\"}\r\nPING\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let (pong_tx, pong_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let errs = stats.clone();
            // Answers the server's PINGs and counts -ERR lines.
            let reader = tokio::spawn(async move {
                let mut line = String::new();
                loop {
                    line.clear();
                    match rd.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line.starts_with("PING") => {
                            let _ = pong_tx.send(());
                        }
                        Ok(_) if line.starts_with("-ERR") => {
                            errs.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                    }
                }
            });
            let mut pong_rx = pong_rx;
            let mut buf = Vec::with_capacity(plan.payload_bytes);
            let mut frame = Vec::with_capacity(plan.payload_bytes + 64);
            for i in 0..plan.total {
                let Some(stamp) = wait_turn(&plan, &stats, start, i, &stop).await else { break };
                while pong_rx.try_recv().is_ok() {
                    wr.write_all(b"PONG\r\n").await.map_err(|e| e.to_string())?;
                }
                write_payload(&mut buf, stamp, plan.payload_bytes);
                frame.clear();
                frame.extend_from_slice(
                    format!("PUB {} {}\r\n", plan.topics[stamp.topic as usize], buf.len()).as_bytes(),
                );
                frame.extend_from_slice(&buf);
                frame.extend_from_slice(b"\r\n");
                match wr.write_all(&frame).await {
                    Ok(()) => stats.per_topic[stamp.topic as usize].fetch_add(1, Ordering::Relaxed),
                    Err(e) => return Err(format!("NATS publish: {e}")),
                };
            }
            let _ = wr.write_all(b"PING\r\n").await;
            drop(wr);
            reader.abort();
            Ok(())
        }
        Via::Redis { addr } => {
            let stream = TcpStream::connect(addr).await.map_err(|e| format!("Redis {addr}: {e}"))?;
            stream.set_nodelay(true).ok();
            let (rd, mut wr) = stream.into_split();
            let errs = stats.clone();
            let reader = tokio::spawn(redis_replies(rd, errs));
            let mut buf = Vec::with_capacity(plan.payload_bytes);
            let mut frame = Vec::with_capacity(plan.payload_bytes + 64);
            for i in 0..plan.total {
                let Some(stamp) = wait_turn(&plan, &stats, start, i, &stop).await else { break };
                write_payload(&mut buf, stamp, plan.payload_bytes);
                let topic = &plan.topics[stamp.topic as usize];
                frame.clear();
                frame.extend_from_slice(
                    format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{topic}\r\n${}\r\n", topic.len(), buf.len()).as_bytes(),
                );
                frame.extend_from_slice(&buf);
                frame.extend_from_slice(b"\r\n");
                match wr.write_all(&frame).await {
                    Ok(()) => stats.per_topic[stamp.topic as usize].fetch_add(1, Ordering::Relaxed),
                    Err(e) => return Err(format!("Redis publish: {e}")),
                };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            reader.abort();
            Ok(())
        }
    }
}

/// Sleeps until event `i` is due and returns its stamp (send time taken now); `None` if stopped.
async fn wait_turn(
    plan: &Plan,
    stats: &PubStats,
    start: tokio::time::Instant,
    i: u64,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<Stamp> {
    let due = start + Duration::from_secs_f64(i as f64 / plan.rate);
    tokio::select! {
        _ = tokio::time::sleep_until(due) => {}
        _ = stop.cancelled() => return None,
    }
    let lag = tokio::time::Instant::now().saturating_duration_since(due).as_micros() as u64;
    stats.max_lag_us.fetch_max(lag, Ordering::Relaxed);
    let k = plan.topics.len() as u64;
    Some(Stamp { topic: (i % k) as u32, seq: i / k + 1, sent_ns: plan.clock.elapsed().as_nanos() as u64 })
}

async fn http_connect(
    url: &UrlTemplate,
    tls: Option<&Tls>,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(url.addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).ok();
    let stream = tls::wrap(tls, &url.host, stream).await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One publish request; `Ok(true)` on a 2xx answer, `Ok(false)` on another status.
async fn http_post(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<bool, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let mut req = Request::post(path).header("host", host).header("content-type", "text/plain");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let ok = resp.status().is_success();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?;
    if !ok {
        static WARNED: AtomicU64 = AtomicU64::new(0);
        if WARNED.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("publish {path}: answered non-2xx: {}", String::from_utf8_lossy(&body.to_bytes()));
        }
    }
    Ok(ok)
}

/// Reads Redis replies (`:N`), counting errors (`-ERR`).
async fn redis_replies(rd: OwnedReadHalf, stats: Arc<PubStats>) {
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        match rd.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) if line.first() == Some(&b'-') => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
        }
    }
}
