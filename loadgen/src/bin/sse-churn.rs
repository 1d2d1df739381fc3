//! `sse-churn`: how fast a server opens streams. Each of `--parallel` workers loops: connect,
//! send `GET <url>`, read until the response head and the first body bytes arrived, close.
//! Prints cycles per second and the cycle latency (p50/p99/max), so the cost of accepting a
//! reconnect herd can be compared between servers (sse-bridge, nginx + nchan) with one client.
//!
//! `https://` URLs do the TLS handshake in every cycle (trusting `--ca-file`), so a reconnect
//! herd's TLS cost shows too.
//!
//! Loopback only. Connections come from `--source-ips` addresses (127.0.0.1, .2, …) so tens
//! of thousands of closed connections in `TIME_WAIT` do not exhaust one address's ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "../tls.rs"]
mod tls;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Connect / first bytes / close churn against one SSE URL on this machine.
#[derive(Debug, Parser)]
#[command(name = "sse-churn", version)]
struct Args {
    /// The stream URL (`http://` or `https://127.0.0.1:PORT/path?query`; loopback only).
    #[arg(long)]
    url: String,
    /// The CA certificate(s) (PEM) an `https://` URL is verified against.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Workers, each with one connection at a time.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// Seconds to run (after a one-second warm-up that is not counted).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Source addresses to spread connections over (127.0.0.1 … 127.0.0.N).
    #[arg(long, default_value_t = 16)]
    source_ips: u8,
    /// Label printed with the result (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
    /// Print one JSON line with the figures too.
    #[arg(long)]
    json: bool,
}

/// Counters every worker adds to.
#[derive(Default)]
struct Totals {
    cycles: AtomicU64,
    errors: AtomicU64,
    non_200: AtomicU64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(target) = parse_url(&args.url) else {
        eprintln!("error: --url must be http:// or https://127.0.0.1:PORT/… (loopback only)");
        return ExitCode::from(2);
    };
    let tls = match (target.tls, &args.ca_file) {
        (false, _) => None,
        (true, None) => {
            eprintln!("error: an https:// --url needs --ca-file");
            return ExitCode::from(2);
        }
        (true, Some(ca)) => match tls::Tls::new(ca) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(run(args, target, tls))
}

async fn run(args: Args, target: Target, tls: Option<tls::Tls>) -> ExitCode {
    let Target { addr, request, host, .. } = target;
    let request: Arc<[u8]> = request.into();
    let host: Arc<str> = host.into();
    let totals = Arc::new(Totals::default());
    let warm_up = Instant::now() + Duration::from_secs(1);
    let end = warm_up + Duration::from_secs_f64(args.duration);
    let mut workers = Vec::with_capacity(args.parallel);
    for i in 0..args.parallel {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % args.source_ips.max(1) as usize) as u8);
        let (request, totals) = (request.clone(), totals.clone());
        let to = Endpoint { addr, source, tls: tls.clone(), host: host.clone() };
        workers.push(tokio::spawn(worker(to, request, totals, warm_up, end)));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for w in workers {
        hist.add(w.await.expect("worker")).expect("histogram add");
    }
    let cycles = totals.cycles.load(Ordering::Relaxed);
    let rate = cycles as f64 / args.duration;
    let (errors, non_200) = (totals.errors.load(Ordering::Relaxed), totals.non_200.load(Ordering::Relaxed));
    let us = |q: f64| hist.value_at_quantile(q);
    println!(
        "{} churn: {cycles} cycles in {:.1}s = {rate:.0}/s with {} in parallel; cycle p50 {} µs, p99 {} µs, max {} µs; errors {errors}, non-200 {non_200}",
        args.label,
        args.duration,
        args.parallel,
        us(0.5),
        us(0.99),
        hist.max()
    );
    if args.json {
        println!(
            "{{\"label\":\"{}\",\"cycles_per_s\":{rate:.1},\"parallel\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"errors\":{errors},\"non_200\":{non_200}}}",
            args.label,
            args.parallel,
            us(0.5),
            us(0.99),
            hist.max()
        );
    }
    if cycles == 0 || errors + non_200 > cycles / 100 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Where a worker connects, from which source address, and how (TLS or not).
struct Endpoint {
    addr: SocketAddr,
    source: Ipv4Addr,
    tls: Option<tls::Tls>,
    /// The URL's host: the name TLS verifies.
    host: Arc<str>,
}

/// One worker: cycles until `end`, counting those that finish after `warm_up`.
async fn worker(
    to: Endpoint,
    request: Arc<[u8]>,
    totals: Arc<Totals>,
    warm_up: Instant,
    end: Instant,
) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut buf = vec![0u8; 4096];
    while Instant::now() < end {
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(5), cycle(&to, &request, &mut buf)).await;
        let counted = Instant::now() >= warm_up && Instant::now() < end;
        match outcome {
            Ok(Ok(true)) if counted => {
                totals.cycles.fetch_add(1, Ordering::Relaxed);
                let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
            }
            Ok(Ok(false)) if counted => {
                totals.non_200.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) | Err(_) if counted => {
                totals.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    hist
}

/// Connect, request, read the head and the first body bytes, close. `Ok(true)` for a `200`.
async fn cycle(to: &Endpoint, request: &[u8], buf: &mut [u8]) -> std::io::Result<bool> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(to.source), 0))?;
    let stream = socket.connect(to.addr).await?;
    stream.set_nodelay(true)?;
    let mut stream = tls::wrap(to.tls.as_ref(), &to.host, stream).await.map_err(std::io::Error::other)?;
    stream.write_all(request).await?;
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(std::io::Error::other("response head over 4 KiB"));
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        let got = &buf[..filled];
        if let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let ok = got.starts_with(b"HTTP/1.1 200") || got.starts_with(b"HTTP/1.0 200");
            // First body bytes: anything after the head (a refusal's body counts too).
            if !ok || filled > head_end + 4 {
                return Ok(ok);
            }
        }
    }
}

/// What `--url` names.
struct Target {
    addr: SocketAddr,
    /// `https://`.
    tls: bool,
    /// The host part (an IP address here).
    host: String,
    request: Vec<u8>,
}

/// `http://` or `https://127.0.0.1:PORT/path?query` → the address and the request bytes.
fn parse_url(url: &str) -> Option<Target> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, url.strip_prefix("http://")?),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = authority.parse().ok()?;
    if !addr.ip().is_loopback() {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    Some(Target { addr, tls, host: addr.ip().to_string(), request: request.into_bytes() })
}
