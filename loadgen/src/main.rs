//! `sse-loadgen`: many real SSE connections over loopback, a fixed-rate publisher, and the
//! figures that matter for an SSE fan-out server: connections, deliveries per second,
//! publish→receive latency, lost/duplicate/reordered events, and the server's CPU per delivery
//! and memory per connection (from `/proc/<pid>`).
//!
//! It speaks plain HTTP/1.1 on raw sockets with a minimal SSE parser, so one connection costs
//! the client a small read buffer and a few counters; `https://` URLs speak the same inside
//! TLS (rustls, trusting `--ca-file`). Works against any SSE server whose
//! subscribe and publish URLs take a topic (sse-bridge, nginx + nchan, …). See
//! docs/benchmarks.md for the commands and how to read the output.

// serde_json's json! macro recurses once per token of the report below.
#![recursion_limit = "256"]

mod args;
mod eventsource;
mod procstat;
mod publish;
mod rollout;
mod sse;
mod target;
mod tls;

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::args::{Args, Mode, Publisher, check};
use crate::publish::{Plan, PubStats, Via};
use crate::sse::{BodyDecoder, LineSplitter, SeqTracker, data_value, parse_head, parse_payload};
use crate::target::{UrlTemplate, loopback_addr};
use crate::tls::Tls;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = check(&args) {
        eprintln!("sse-loadgen: {e}");
        return ExitCode::from(2);
    }
    let nofile = procstat::raise_nofile(args.connections as u64 + 4096);
    if nofile < args.connections as u64 + 64 {
        eprintln!("sse-loadgen: warning: RLIMIT_NOFILE is {nofile}, too low for {} connections", args.connections);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sse-loadgen: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = if args.mode == Mode::Rollout { rt.block_on(rollout::run(args)) } else { rt.block_on(run(args)) };
    match outcome {
        Ok(clean) if clean => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(3),
        Err(e) => {
            eprintln!("sse-loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

/// State shared by every subscriber.
struct Shared {
    clock: Instant,
    hist: Vec<Mutex<Histogram<u64>>>,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Streams the server ended while we were still listening.
    ended: AtomicU64,
    received: AtomicU64,
    ok_per_topic: Vec<AtomicU64>,
    stop: CancellationToken,
    first_error: Mutex<Option<String>>,
    read_buf: usize,
    /// TLS for an `https://` subscribe URL.
    tls: Option<Tls>,
}

impl Shared {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut e = self.first_error.lock().unwrap();
        if e.is_none() {
            *e = Some(why);
        }
    }
}

/// One connection's outcome.
struct ConnResult {
    topic: u32,
    connected: bool,
    tracker: SeqTracker,
    /// `data:` lines that were not our stamps on our topic.
    foreign: u64,
}

const HIST_SHARDS: usize = 16;

async fn run(args: Args) -> Result<bool, String> {
    let url = Arc::new(UrlTemplate::parse(&args.sub_url)?);
    let tls = args.ca_file.as_deref().map(Tls::new).transpose()?;
    let prefix = args.topic_prefix.clone().unwrap_or_else(|| {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        format!("bench.r{:x}", (nanos ^ std::process::id().rotate_left(16)) & 0xffffff)
    });
    let topics: Vec<String> = (0..args.topics as u64).map(|k| format!("{prefix}.{}", args.topic_offset + k)).collect();
    let requests: Vec<Arc<[u8]>> = topics
        .iter()
        .map(|t| {
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: sse-loadgen\r\n\r\n",
                url.path_for(t),
                url.host_header
            )
            .into_bytes()
            .into()
        })
        .collect();
    let shared = Arc::new(Shared {
        clock: Instant::now(),
        hist: (0..HIST_SHARDS)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")))
            .collect(),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ended: AtomicU64::new(0),
        received: AtomicU64::new(0),
        ok_per_topic: (0..args.topics).map(|_| AtomicU64::new(0)).collect(),
        stop: CancellationToken::new(),
        first_error: Mutex::new(None),
        read_buf: args.read_buf,
        tls: tls.clone().filter(|_| url.tls),
    });
    let pids = args.server_pid.clone();
    let srv_base = procstat::sample(&pids);
    let self_base = procstat::this_process();
    if !pids.is_empty() && srv_base.missing > 0 {
        return Err(format!("cannot read /proc for server pid(s) {pids:?}"));
    }

    // Connect.
    let n = args.connections;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    let t_connect = Instant::now();
    for i in 0..n {
        let topic = (i % args.topics) as u32;
        let src = match url.addr.ip() {
            IpAddr::V4(_) => Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % args.source_ips as usize) as u8))),
            IpAddr::V6(_) => None,
        };
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        tasks.push(tokio::spawn(subscriber(
            i,
            topic,
            src,
            url.clone(),
            requests[topic as usize].clone(),
            shared.clone(),
            permit,
        )));
    }
    let connect_deadline = Instant::now() + Duration::from_secs_f64(30.0 + n as f64 / 500.0);
    while shared.ok.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < n as u64
        && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    // Stalled clients: subscribe, then never read (kept open until the end of the run).
    let mut stalled = Vec::with_capacity(args.stalled);
    for j in 0..args.stalled {
        let sock = if url.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| format!("stalled socket: {e}"))?;
        let _ = sock.set_recv_buffer_size(4096);
        let s = sock.connect(url.addr).await.map_err(|e| format!("stalled connect: {e}"))?;
        let mut s = tls::wrap(shared.tls.as_ref(), &url.host, s).await.map_err(|e| format!("stalled: {e}"))?;
        s.write_all(&requests[j % args.topics]).await.map_err(|e| format!("stalled request: {e}"))?;
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let late_ms = wait_for_start(args.start_at_ms).await;
    if late_ms > 0 {
        eprintln!("sse-loadgen: warning: connected {late_ms} ms after --start-at-ms; publishing starts late");
    }
    let ok = shared.ok.load(Ordering::Relaxed);
    let srv_conn = procstat::sample(&pids);
    let self_conn = procstat::this_process();

    // Measure.
    let plan = Arc::new(Plan {
        rate: args.rate,
        total: if args.mode == Mode::Load { (args.rate * args.duration).round().max(1.0) as u64 } else { 0 },
        topics: topics.clone(),
        payload_bytes: args.payload_bytes,
        clock: shared.clock,
    });
    let stats = Arc::new(PubStats::new(args.topics));
    let srv0 = procstat::sample(&pids);
    let self0 = procstat::this_process();
    let t0 = Instant::now();
    let mut publish_error = None;
    let mut expected = 0u64;
    let mut publish_s = 0.0;
    if args.mode == Mode::Load {
        let via = match args.publisher {
            Publisher::Http => {
                let url = UrlTemplate::parse(&args.pub_url)?;
                let tls = tls.clone().filter(|_| url.tls);
                Via::Http { url, tls, token: args.pub_token.clone(), conns: args.pub_conns }
            }
            Publisher::Nats => Via::Nats { addr: loopback_addr(&args.nats)? },
            Publisher::Redis => Via::Redis { addr: loopback_addr(&args.redis)? },
        };
        let stop_pub = CancellationToken::new();
        let t_pub = Instant::now();
        let limit = Duration::from_secs_f64(args.duration * 2.0 + 30.0);
        match tokio::time::timeout(limit, publish::run(via, plan.clone(), stats.clone(), stop_pub.clone())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => publish_error = Some(e),
            Err(_) => {
                stop_pub.cancel();
                publish_error = Some("publisher overran its time limit".into());
            }
        }
        publish_s = t_pub.elapsed().as_secs_f64();
        expected = (0..args.topics)
            .map(|t| stats.per_topic[t].load(Ordering::Relaxed) * shared.ok_per_topic[t].load(Ordering::Relaxed))
            .sum();
        let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
        while shared.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let srv1 = procstat::sample(&pids);
    let self1 = procstat::this_process();

    // Collect.
    shared.stop.cancel();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(r) = t.await {
            results.push(r);
        }
    }
    let mut lost = 0;
    let mut dup = 0;
    let mut reorder = 0;
    let mut foreign = 0;
    for r in results.iter().filter(|r| r.connected) {
        lost += r.tracker.lost(stats.per_topic[r.topic as usize].load(Ordering::Relaxed));
        dup += r.tracker.duplicates;
        reorder += r.tracker.reordered;
        foreign += r.foreign;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds");
    for h in &shared.hist {
        let _ = hist.add(&*h.lock().unwrap());
    }
    let deliveries = shared.received.load(Ordering::Relaxed);
    let published = stats.published();
    let failed = shared.failed.load(Ordering::Relaxed) + (n as u64 - ok - shared.failed.load(Ordering::Relaxed));
    let srv_cpu = srv1.cpu_s - srv0.cpu_s;
    let self_cpu = self1.cpu_s - self0.cpu_s;
    let per_conn = |after: u64, before: u64| if ok > 0 { (after as f64 - before as f64) / ok as f64 } else { 0.0 };
    let has_srv = !pids.is_empty();
    let q = |p: f64| if hist.is_empty() { 0.0 } else { hist.value_at_quantile(p) as f64 / 1000.0 };

    let out = json!({
        "label": args.label,
        "scenario": args.scenario,
        "mode": if args.mode == Mode::Load { "load" } else { "idle" },
        "sub_url": args.sub_url,
        "connections": n,
        "connections_ok": ok,
        "connections_failed": failed,
        "stalled": args.stalled,
        "connect_s": round(connect_s, 3),
        "streams_ended_by_server": shared.ended.load(Ordering::Relaxed),
        "first_error": shared.first_error.lock().unwrap().clone(),
        "topics": args.topics,
        "rate": args.rate,
        "duration_s": args.duration,
        "payload_bytes": args.payload_bytes,
        "publisher": format!("{:?}", args.publisher).to_lowercase(),
        "published": published,
        "publish_errors": stats.errors.load(Ordering::Relaxed),
        "publish_failure": publish_error,
        "publish_s": round(publish_s, 3),
        "publish_rate_achieved": round(if publish_s > 0.0 { stats.published() as f64 / publish_s } else { 0.0 }, 1),
        "publish_max_lag_ms": round(stats.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0, 3),
        "expected_deliveries": expected,
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries as f64 / wall, 1),
        "window_s": round(wall, 3),
        "latency_ms": {
            "p50": round(q(0.5), 3), "p99": round(q(0.99), 3), "p999": round(q(0.999), 3),
            "max": round(if hist.is_empty() { 0.0 } else { hist.max() as f64 / 1000.0 }, 3),
            "mean": round(if hist.is_empty() { 0.0 } else { hist.mean() / 1000.0 }, 3),
        },
        "lost": lost,
        "duplicates": dup,
        "reordered": reorder,
        "foreign_data_lines": foreign,
        "server": if has_srv { json!({
            "pids": pids,
            "cpu_s": round(srv_cpu, 3),
            "cpu_pct": round(100.0 * srv_cpu / wall, 1),
            "cpu_us_per_delivery": if deliveries > 0 { json!(round(srv_cpu * 1e6 / deliveries as f64, 3)) } else { json!(null) },
            "rss_bytes_before": srv_base.rss_bytes,
            "rss_bytes_connected": srv_conn.rss_bytes,
            "rss_bytes_end": srv1.rss_bytes,
            "rss_per_conn_bytes": round(per_conn(srv_conn.rss_bytes, srv_base.rss_bytes), 1),
            "pss_bytes_before": srv_base.pss_bytes,
            "pss_bytes_connected": srv_conn.pss_bytes,
            "pss_per_conn_bytes": round(per_conn(srv_conn.pss_bytes, srv_base.pss_bytes), 1),
        }) } else { json!(null) },
        "loadgen": {
            "threads": args.threads,
            "cpu_s": round(self_cpu, 3),
            "cpu_pct": round(100.0 * self_cpu / wall, 1),
            "rss_bytes": self1.rss_bytes,
            "rss_per_conn_bytes": round(per_conn(self_conn.rss_bytes, self_base.rss_bytes), 1),
        },
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });

    // Human table.
    let ms = |v: f64| format!("{v:.2} ms");
    println!("sse-loadgen {} {}  {}", out["mode"].as_str().unwrap_or(""), args.label, args.sub_url);
    println!(
        "  connections     {ok} ok, {failed} failed, {} ended by the server (connected in {connect_s:.1} s over {} source addresses)",
        shared.ended.load(Ordering::Relaxed),
        args.source_ips
    );
    if let Some(e) = shared.first_error.lock().unwrap().as_ref() {
        println!("  first error     {e}");
    }
    if args.stalled > 0 {
        println!("  stalled         {} connections that never read (not counted above)", args.stalled);
    }
    drop(stalled);
    if args.mode == Mode::Load {
        println!(
            "  published       {published} events ({} /s requested, {} B payloads, {} topics, via {:?}), {} errors, max lag {}",
            args.rate,
            args.payload_bytes,
            args.topics,
            args.publisher,
            stats.errors.load(Ordering::Relaxed),
            ms(stats.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0)
        );
        let achieved = if publish_s > 0.0 { published as f64 / publish_s } else { 0.0 };
        if achieved < 0.95 * args.rate {
            println!(
                "  WARNING         the publisher reached only {achieved:.0} events/s of {} (slow publish answers; \
                 try more --pub-conns, or a quieter machine)",
                args.rate
            );
        }
        if let Some(e) = &publish_error {
            println!("  publish failed  {e}");
        }
        println!(
            "  deliveries      {deliveries} of {expected} expected, {:.0} /s over {wall:.2} s",
            deliveries as f64 / wall
        );
        println!(
            "  latency         p50 {}  p99 {}  p99.9 {}  max {}  (publish→receive)",
            ms(q(0.5)),
            ms(q(0.99)),
            ms(q(0.999)),
            ms(if hist.is_empty() { 0.0 } else { hist.max() as f64 / 1000.0 })
        );
        println!("  lost/dup/reord  {lost} / {dup} / {reorder}");
    }
    if has_srv {
        if args.mode == Mode::Load && deliveries > 0 {
            println!(
                "  server CPU      {srv_cpu:.2} s ({:.0}% of one core) = {:.2} µs per delivery",
                100.0 * srv_cpu / wall,
                srv_cpu * 1e6 / deliveries as f64
            );
        }
        println!(
            "  server memory   RSS {:.1} MiB → {:.1} MiB connected: {:.0} B per connection (PSS {:.0} B per connection)",
            srv_base.rss_bytes as f64 / 1048576.0,
            srv_conn.rss_bytes as f64 / 1048576.0,
            per_conn(srv_conn.rss_bytes, srv_base.rss_bytes),
            per_conn(srv_conn.pss_bytes, srv_base.pss_bytes)
        );
    }
    println!(
        "  load generator  CPU {self_cpu:.2} s ({:.0}% of one core, {} thread(s)), RSS {:.1} MiB ({:.0} B per connection)",
        100.0 * self_cpu / wall,
        args.threads,
        self1.rss_bytes as f64 / 1048576.0,
        per_conn(self_conn.rss_bytes, self_base.rss_bytes)
    );
    println!("  note            the load generator and the server share this machine's {} cores", out["cores"]);
    let line = out.to_string();
    println!("{line}");
    if let Some(p) = &args.json_out {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        writeln!(f, "{line}").map_err(|e| e.to_string())?;
    }
    let rate_ok = published as f64 >= 0.95 * args.rate * publish_s;
    let clean = failed == 0
        && publish_error.is_none()
        && (args.mode == Mode::Idle || (lost == 0 && dup == 0 && reorder == 0 && rate_ok));
    Ok(clean)
}

/// Sleeps until the Unix time `at_ms`, if given and still ahead; returns how many
/// milliseconds late it was (0 when on time or not given).
async fn wait_for_start(at_ms: Option<u64>) -> u64 {
    let Some(at) = at_ms else { return 0 };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    if now >= at {
        return now - at;
    }
    tokio::time::sleep(Duration::from_millis(at - now)).await;
    0
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// One SSE connection: connect (from `src`), send the request, read the head, then count and
/// time every event until told to stop.
async fn subscriber(
    id: usize,
    topic: u32,
    src: Option<IpAddr>,
    url: Arc<UrlTemplate>,
    request: Arc<[u8]>,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> ConnResult {
    let mut res = ConnResult { topic, connected: false, tracker: SeqTracker::new(), foreign: 0 };
    let connect = async {
        let sock = if url.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = src {
            sock.bind((ip, 0).into()).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let tcp = sock.connect(url.addr).await.map_err(|e| format!("connect {}: {e}", url.addr))?;
        let mut stream = tls::wrap(shared.tls.as_ref(), &url.host, tcp).await?;
        stream.write_all(&request).await.map_err(|e| format!("write request: {e}"))?;
        let mut buf = vec![0u8; shared.read_buf].into_boxed_slice();
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                return Err("response head larger than the read buffer".to_string());
            }
            let n = stream.read(&mut buf[filled..]).await.map_err(|e| format!("read head: {e}"))?;
            if n == 0 {
                return Err("connection closed before the response head".into());
            }
            filled += n;
            if let Some(h) = parse_head(&buf[..filled])? {
                if h.status != 200 {
                    return Err(format!(
                        "HTTP {} for {}",
                        h.status,
                        String::from_utf8_lossy(&request).lines().next().unwrap_or("")
                    ));
                }
                return Ok((stream, buf, h, filled));
            }
        }
    };
    let (mut stream, mut buf, head, filled) = match tokio::time::timeout(Duration::from_secs(30), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.fail(e);
            return res;
        }
        Err(_) => {
            shared.fail("connect/response timed out after 30 s".into());
            return res;
        }
    };
    drop(permit);
    res.connected = true;
    shared.ok.fetch_add(1, Ordering::Relaxed);
    shared.ok_per_topic[topic as usize].fetch_add(1, Ordering::Relaxed);

    let mut decoder = BodyDecoder::new(head.chunked);
    let mut lines = LineSplitter::default();
    let hist = &shared.hist[id % HIST_SHARDS];
    let mut on_bytes = |data: &[u8], res: &mut ConnResult| -> Result<bool, &'static str> {
        decoder.feed(data, |piece| {
            lines.feed(piece, |line| {
                let Some(v) = data_value(line) else { return };
                match parse_payload(v) {
                    Some(s) if s.topic == topic => {
                        let now = shared.clock.elapsed().as_nanos() as u64;
                        let us = (now.saturating_sub(s.sent_ns) / 1000).max(1);
                        hist.lock().unwrap().saturating_record(us);
                        res.tracker.observe(s.seq);
                        shared.received.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => res.foreign += 1,
                }
            })
        })
    };
    let leftover = buf[head.len..filled].to_vec();
    let mut done = matches!(on_bytes(&leftover, &mut res), Ok(true) | Err(_));
    while !done {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => done = true,
                Ok(n) => done = matches!(on_bytes(&buf[..n], &mut res), Ok(true) | Err(_)),
            },
            _ = shared.stop.cancelled() => return res,
        }
    }
    if !shared.stop.is_cancelled() {
        shared.ended.fetch_add(1, Ordering::Relaxed);
    }
    res
}
