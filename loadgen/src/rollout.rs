//! `--mode rollout`: browser-like clients ([`crate::eventsource`]) on the first of several
//! bridges move to the others when it gets SIGTERM, as in a rolling deploy, while events are
//! published through NATS. It answers the questions of a rollout: does every client come back
//! (none dead for good), does a durable topic lose or repeat an event, does a ring-only topic
//! say what it lost (gap events), how long until everyone is back, and how the herd of
//! reconnects reaches the other bridges (connects per 100 ms, the kernel's listen-queue
//! overflows). `scripts/rollout-bench.sh` starts the broker and the bridges and runs it.
//!
//! The sequence: every client connects to the first target; once all streams are open,
//! publishing starts (event `i` to topic `i % K`, so every client can check every sequence);
//! after `--steady` seconds the first target gets SIGTERM; when every client has an admitted
//! stream again (or `--back-timeout`), publishing goes on for `--after` seconds, then the last
//! events are awaited (`--drain`) and the clients stop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::args::{Args, MAX_DURATION_S};
use crate::eventsource::{self, BUCKET, ClientResult, Fleet, GAP_REASONS, MAX_TOPICS, Tick, Timeline};
use crate::procstat;
use crate::publish::{self, Plan, PubStats, Via};
use crate::target::{encode, loopback_addr};

/// The kernel counters read around the move (see [`procstat::tcp_ext`]).
const NET_COUNTERS: [&str; 3] = ["ListenOverflows", "ListenDrops", "SyncookiesSent"];

/// Buckets shown before the signal in the timeline (1 s).
const LEAD_BUCKETS: usize = 10;

/// Runs the rollout and prints its figures; `Ok(true)` when every client came back, none died,
/// and the durable topics lost and repeated nothing.
pub async fn run(args: Args) -> Result<bool, String> {
    let targets: Vec<SocketAddr> = args.targets.iter().map(|t| loopback_addr(t)).collect::<Result<_, _>>()?;
    let nats = loopback_addr(&args.nats)?;
    let durable = args.durable_topic.len();
    let topics: Vec<String> = args.durable_topic.iter().chain(&args.core_topic).cloned().collect();
    let k = topics.len();
    let query: Vec<String> = topics.iter().map(|t| format!("topic={}", encode(t))).collect();
    let path_query = format!("{}?{}", args.path, query.join("&"));
    let fleet = Arc::new(Fleet::new(&targets, &path_query, &topics, args.read_buf, args.reconnect_ms));
    let pid = args.sigterm_pid.ok_or("--sigterm-pid is required")?;
    let self_base = procstat::this_process();

    // Every client connects to the first target.
    let n = args.connections;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    let t_connect = Instant::now();
    for i in 0..n {
        let src = match targets[0].ip() {
            IpAddr::V4(_) => Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % args.source_ips as usize) as u8))),
            IpAddr::V6(_) => None,
        };
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        tasks.push(tokio::spawn(eventsource::client(i, src, fleet.clone(), permit)));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(30.0 + n as f64 / 500.0);
    while (fleet.open.load(Ordering::Relaxed) + fleet.dead.load(Ordering::Relaxed)) < n as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = fleet.open.load(Ordering::Relaxed);
    let connect_s = t_connect.elapsed().as_secs_f64();
    eprintln!("rollout: {connected} of {n} streams open on {} after {connect_s:.1} s", targets[0]);
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let self_connected = procstat::this_process();

    // Publish; after --steady seconds, SIGTERM the first target.
    let plan = Arc::new(Plan {
        rate: args.rate,
        total: (args.rate * MAX_DURATION_S) as u64,
        topics: topics.clone(),
        payload_bytes: args.payload_bytes,
        clock: fleet.clock,
    });
    let stats = Arc::new(PubStats::new(k));
    let stop_pub = CancellationToken::new();
    let t_pub = Instant::now();
    let publisher = tokio::spawn(publish::run(Via::Nats { addr: nats }, plan, stats.clone(), stop_pub.clone()));
    tokio::time::sleep(Duration::from_secs_f64(args.steady)).await;
    let net0 = procstat::tcp_ext(&NET_COUNTERS);
    let signal_ns = fleet.now_ns().max(1);
    fleet.signal_ns.store(signal_ns, Ordering::Relaxed);
    // SAFETY: kill(2) with a checked pid (> 1) and a valid signal number.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
        stop_pub.cancel();
        fleet.stop.cancel();
        return Err(format!("SIGTERM to pid {pid}: {}", std::io::Error::last_os_error()));
    }
    eprintln!("rollout: SIGTERM sent to pid {pid}");

    // Wait for everyone to be back (an admitted stream opened after the signal), or dead.
    let back_deadline = Instant::now() + Duration::from_secs_f64(args.back_timeout);
    while (fleet.back.load(Ordering::Relaxed) + fleet.dead.load(Ordering::Relaxed)) < n as u64
        && Instant::now() < back_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited_back_ns = fleet.now_ns();
    eprintln!(
        "rollout: {} back (receiving events on a new stream), {} dead, {:.2} s after SIGTERM",
        fleet.back.load(Ordering::Relaxed),
        fleet.dead.load(Ordering::Relaxed),
        (waited_back_ns - signal_ns) as f64 / 1e9
    );
    tokio::time::sleep(Duration::from_secs_f64(args.after)).await;
    stop_pub.cancel();
    let publish_error = match publisher.await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(e.to_string()),
    };
    let publish_s = t_pub.elapsed().as_secs_f64();
    let net1 = procstat::tcp_ext(&NET_COUNTERS);
    let end_ns = fleet.now_ns();

    // The last events of the durable topics reach every client still alive.
    let published: Vec<u64> = (0..k).map(|t| stats.per_topic[t].load(Ordering::Relaxed)).collect();
    let alive = n as u64 - fleet.dead.load(Ordering::Relaxed);
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while (0..durable).any(|t| fleet.received[t].load(Ordering::Relaxed) < published[t] * alive)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let self_end = procstat::this_process();
    fleet.stop.cancel();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.map_err(|e| format!("client task: {e}"))?);
    }

    let r = Report::new(&fleet, &results, &published, durable, signal_ns);
    let first = LEAD_BUCKETS.min(Timeline::bucket_of(signal_ns));
    let from = Timeline::bucket_of(signal_ns) - first;
    let to = Timeline::bucket_of(r.last_back_ns.unwrap_or(waited_back_ns).max(signal_ns)) + LEAD_BUCKETS + 1;
    let series = |target: usize, tick: Tick| fleet.timeline.series(target, tick, from, to);
    let t0_ms = -((first as u64 * BUCKET.as_millis() as u64) as i64);
    let per_target: Vec<serde_json::Value> = (0..targets.len())
        .map(|i| {
            json!({
                "addr": targets[i].to_string(),
                "connects": series(i, Tick::Connected),
                "attempts": series(i, Tick::Attempt),
                "admitted": series(i, Tick::Admitted),
                "refused": series(i, Tick::Refused),
                "ended": series(i, Tick::Ended),
            })
        })
        .collect();
    let delta = |i: usize| match (net0[i], net1[i]) {
        (Some(a), Some(b)) => json!(b.saturating_sub(a)),
        _ => json!(null),
    };
    let secs = |ns: u64| round((ns.saturating_sub(signal_ns)) as f64 / 1e9, 3);
    let per_client = |after: u64, before: u64| (after as f64 - before as f64) / n as f64;
    let self_cpu = self_end.cpu_s - self_base.cpu_s;
    let reasons: Vec<String> = (0..k).map(|t| gap_reasons(&fleet, t)).collect();
    let hists = fleet.latency.each_ref().map(|shards| {
        let mut hist =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds");
        for h in shards {
            let _ = hist.add(&*h.lock().unwrap());
        }
        hist
    });
    let q_ms = |phase: usize, q: f64| {
        let h = &hists[phase];
        if h.is_empty() { 0.0 } else { round(h.value_at_quantile(q) as f64 / 1000.0, 1) }
    };
    let latency = |phase: usize| json!({ "p50": q_ms(phase, 0.5), "p99": q_ms(phase, 0.99), "p999": q_ms(phase, 0.999), "max": q_ms(phase, 1.0) });
    let out = json!({
        "label": args.label,
        "scenario": args.scenario,
        "mode": "rollout",
        "targets": args.targets,
        "clients": n,
        "connected_before": connected,
        "connect_s": round(connect_s, 3),
        "topics": topics,
        "durable_topics": durable,
        "rate": args.rate,
        "published": published,
        "publish_errors": stats.errors.load(Ordering::Relaxed),
        "publish_failure": publish_error,
        "publish_rate_achieved": round(published.iter().sum::<u64>() as f64 / publish_s, 1),
        "publish_max_lag_ms": round(stats.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0, 3),
        "back": r.back,
        "open_at_end": r.open_at_end,
        "dead": r.dead,
        "first_dead": fleet.first_dead.lock().unwrap().clone(),
        "durable_lost": r.lost[..durable],
        "durable_undelivered": r.undelivered[..durable],
        "durable_clients_behind_at_end": r.behind_at_end[..durable],
        "durable_duplicated": r.behind[..durable],
        "durable_clients_affected": r.affected,
        "gap_events": r.gaps[..k],
        "gap_reasons": reasons,
        "latency_ms_before_signal": latency(0),
        "latency_ms_after_signal": latency(1),
        "clients_with_gap": r.clients_with_gap[..k],
        "core_missed": r.missing[durable..k],
        "core_duplicated": r.behind[durable..k],
        "all_back_s": r.last_back_ns.map(secs),
        "all_admitted_s": r.last_admitted_ns.map(secs),
        "back_p50_s": r.back_q(0.5).map(secs),
        "back_p99_s": r.back_q(0.99).map(secs),
        "listen_overflows": delta(0),
        "listen_drops": delta(1),
        "syncookies_sent": delta(2),
        "net_window_s": secs(end_ns),
        "slow_connects": fleet.slow_connects.load(Ordering::Relaxed),
        "max_connect_ms": round(fleet.max_connect_us.load(Ordering::Relaxed) as f64 / 1000.0, 3),
        "connection_refused": fleet.conn_refused.load(Ordering::Relaxed),
        "network_errors": fleet.net_errors.load(Ordering::Relaxed),
        "ended_before_signal": r.ended_before_signal,
        "timeline": { "bucket_ms": BUCKET.as_millis() as u64, "start_ms": t0_ms, "targets": per_target },
        "loadgen": {
            "threads": args.threads,
            "cpu_s": round(self_cpu, 3),
            "rss_bytes": self_end.rss_bytes,
            "rss_per_client_bytes": round(per_client(self_connected.rss_bytes, self_base.rss_bytes), 1),
        },
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });

    // Human table.
    println!("sse-loadgen rollout {} {}", args.label, args.scenario);
    println!(
        "  clients          {connected} of {n} connected to {} in {connect_s:.1} s from {} source address(es)",
        targets[0], args.source_ips
    );
    let names: Vec<String> = topics.iter().zip(&published).map(|(t, p)| format!("{t} {p}")).collect();
    println!(
        "  published        {} events ({} /s requested, {:.0} /s reached) via NATS: {}; {} errors, max lag {:.1} ms",
        published.iter().sum::<u64>(),
        args.rate,
        out["publish_rate_achieved"].as_f64().unwrap_or(0.0),
        names.join(", "),
        stats.errors.load(Ordering::Relaxed),
        stats.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
    if let Some(e) = &publish_error {
        println!("  publish failed   {e}");
    }
    println!("  SIGTERM          pid {pid} ({}) after {:.1} s of publishing to every client", targets[0], args.steady);
    let at_end: Vec<String> = targets.iter().zip(&r.open_at_end).map(|(t, c)| format!("{t} {c}")).collect();
    println!("  clients back     {} of {n} (streams open at the end: {})", r.back, at_end.join(", "));
    println!("  dead clients     {}", r.dead);
    if let Some(e) = fleet.first_dead.lock().unwrap().as_ref() {
        println!("  first death      {e}");
    }
    for (t, name) in topics.iter().enumerate().take(durable) {
        println!(
            "  durable topic    {}: {} lost, {} duplicated over all clients ({} clients affected); {} gap events{}; \
             {} not yet delivered when the run stopped ({} clients still catching up)",
            name, r.lost[t], r.behind[t], r.affected[t], r.gaps[t], reasons[t], r.undelivered[t], r.behind_at_end[t]
        );
    }
    for (t, name) in topics.iter().enumerate().skip(durable) {
        println!(
            "  core topic       {}: {} gap events{} at {} clients, {} events missed by the move, {} duplicated",
            name, r.gaps[t], reasons[t], r.clients_with_gap[t], r.missing[t], r.behind[t]
        );
    }
    for (phase, when) in ["before SIGTERM", "after SIGTERM"].iter().enumerate() {
        println!(
            "  latency          {when}: publish→receive p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            q_ms(phase, 0.5),
            q_ms(phase, 0.99),
            q_ms(phase, 0.999),
            q_ms(phase, 1.0)
        );
    }
    match r.last_back_ns {
        Some(last) => println!(
            "  time until back  {:.2} s after SIGTERM for all back, receiving events again (p50 {:.2} s, p99 \
             {:.2} s); the last stream was admitted at {:.2} s",
            secs(last),
            r.back_q(0.5).map(secs).unwrap_or(0.0),
            r.back_q(0.99).map(secs).unwrap_or(0.0),
            r.last_admitted_ns.map(secs).unwrap_or(0.0)
        ),
        None => println!("  time until back  nobody came back"),
    }
    println!(
        "  listen queue     ListenOverflows +{}, ListenDrops +{}, SyncookiesSent +{} (this network namespace, SIGTERM to \
         end of publishing); connects of 0.9 s or more (a SYN retry, or a busy client) {}, longest connect {:.1} ms",
        out["listen_overflows"],
        out["listen_drops"],
        out["syncookies_sent"],
        out["slow_connects"],
        out["max_connect_ms"]
    );
    println!(
        "  reconnects       {} refused TCP connects (next address tried), {} network errors, {} streams ended before SIGTERM",
        out["connection_refused"], out["network_errors"], r.ended_before_signal
    );
    for (i, t) in targets.iter().enumerate() {
        let (tick, what) = if i == 0 { (Tick::Ended, "streams ended") } else { (Tick::Connected, "connects") };
        print_series(&format!("{what} at {t}"), &series(i, tick), first);
        if i > 0 {
            let refused: u32 = series(i, Tick::Refused).iter().sum();
            let admitted: u32 = series(i, Tick::Admitted).iter().sum();
            println!("                   {admitted} streams admitted, {refused} refused (retry hint) at {t}");
        }
    }
    println!(
        "  load generator   CPU {self_cpu:.1} s, RSS {:.1} MiB ({:.0} B per client connected)",
        self_end.rss_bytes as f64 / 1048576.0,
        per_client(self_connected.rss_bytes, self_base.rss_bytes)
    );
    let line = out.to_string();
    println!("{line}");
    if let Some(p) = &args.json_out {
        append(p, &line)?;
    }
    if let Some(p) = &args.timeline_out {
        let mut csv = String::from("scenario,target,t_ms,connects,attempts,admitted,refused,ended\n");
        for (i, t) in targets.iter().enumerate() {
            let cols: Vec<Vec<u32>> = [Tick::Connected, Tick::Attempt, Tick::Admitted, Tick::Refused, Tick::Ended]
                .map(|k| series(i, k))
                .into();
            for b in 0..cols[0].len() {
                let ms = t0_ms + (b as u64 * BUCKET.as_millis() as u64) as i64;
                let v: Vec<String> = cols.iter().map(|c| c[b].to_string()).collect();
                csv.push_str(&format!("{},{t},{ms},{}\n", args.scenario, v.join(",")));
            }
        }
        append(p, csv.trim_end())?;
    }
    let durable_clean = r.missing[..durable].iter().chain(&r.behind[..durable]).all(|&v| v == 0);
    Ok(r.back == n as u64 && r.dead == 0 && durable_clean && publish_error.is_none())
}

/// The figures collected from every client.
struct Report {
    back: u64,
    dead: u64,
    open_at_end: Vec<u64>,
    /// Events a client never got: `lost` (its stream moved past them) plus `undelivered`.
    missing: [u64; MAX_TOPICS],
    /// Events a client's stream moved past without them (see [`eventsource::Sequence::lost`]).
    lost: [u64; MAX_TOPICS],
    /// Events after a client's last one when the run stopped (still to come on its resume).
    undelivered: [u64; MAX_TOPICS],
    /// Clients with `undelivered` events.
    behind_at_end: [u64; MAX_TOPICS],
    behind: [u64; MAX_TOPICS],
    affected: [u64; MAX_TOPICS],
    gaps: [u64; MAX_TOPICS],
    clients_with_gap: [u64; MAX_TOPICS],
    ended_before_signal: u64,
    /// Back times (ns on the fleet's clock), sorted.
    back_ns: Vec<u64>,
    last_back_ns: Option<u64>,
    /// The last admission of a stream after the signal (a resuming stream is admitted before
    /// its broker read; back after it).
    last_admitted_ns: Option<u64>,
}

impl Report {
    fn new(fleet: &Fleet, results: &[ClientResult], published: &[u64], durable: usize, _signal_ns: u64) -> Self {
        let mut r = Report {
            back: 0,
            dead: 0,
            open_at_end: vec![0; fleet.targets.len()],
            missing: [0; MAX_TOPICS],
            lost: [0; MAX_TOPICS],
            undelivered: [0; MAX_TOPICS],
            behind_at_end: [0; MAX_TOPICS],
            behind: [0; MAX_TOPICS],
            affected: [0; MAX_TOPICS],
            gaps: [0; MAX_TOPICS],
            clients_with_gap: [0; MAX_TOPICS],
            ended_before_signal: 0,
            back_ns: Vec::with_capacity(results.len()),
            last_back_ns: None,
            last_admitted_ns: results.iter().filter(|c| !c.dead).filter_map(|c| c.admitted_ns).max(),
        };
        for c in results {
            r.ended_before_signal += u64::from(c.ended_before_signal);
            if c.dead {
                r.dead += 1;
                continue;
            }
            if let Some(t) = c.open_at_end {
                r.open_at_end[t as usize] += 1;
            }
            if let Some(b) = c.back_ns {
                r.back_ns.push(b);
                if c.open_at_end.is_some() {
                    r.back += 1;
                }
            }
            for (t, &p) in published.iter().enumerate() {
                let (missing, behind) = (c.seq[t].missing(p), c.seq[t].behind);
                r.missing[t] += missing;
                r.lost[t] += c.seq[t].lost();
                let undelivered = c.seq[t].undelivered(p);
                r.undelivered[t] += undelivered;
                r.behind_at_end[t] += u64::from(undelivered > 0);
                r.behind[t] += behind;
                if t < durable && c.seq[t].lost() + behind > 0 {
                    r.affected[t] += 1;
                }
                r.gaps[t] += u64::from(c.gaps[t]);
                r.clients_with_gap[t] += u64::from(c.gaps[t] > 0);
            }
        }
        r.back_ns.sort_unstable();
        r.last_back_ns = r.back_ns.last().copied();
        r
    }

    /// The `q` quantile of the back times.
    fn back_q(&self, q: f64) -> Option<u64> {
        let n = self.back_ns.len();
        (n > 0).then(|| self.back_ns[((n as f64 * q).ceil() as usize).clamp(1, n) - 1])
    }
}

/// The gap reasons counted for topic `t`, as ` (reason n, …)` (empty when none).
fn gap_reasons(fleet: &Fleet, t: usize) -> String {
    let counts: Vec<String> = GAP_REASONS
        .iter()
        .zip(&fleet.gap_reasons[t])
        .filter_map(|(r, c)| Some(c.load(Ordering::Relaxed)).filter(|&c| c > 0).map(|c| format!("{r} {c}")))
        .collect();
    if counts.is_empty() { String::new() } else { format!(" ({})", counts.join(", ")) }
}

/// One line per second of 100 ms buckets, from `lead` buckets before the signal.
fn print_series(title: &str, s: &[u32], lead: usize) {
    let (peak, at) = s.iter().enumerate().map(|(i, &v)| (v, i)).max().unwrap_or((0, 0));
    println!(
        "  {title} per 100 ms from SIGTERM (total {}, peak {peak} = {}/s at {:+.1} s):",
        s.iter().sum::<u32>(),
        peak * 10,
        (at as f64 - lead as f64) / 10.0
    );
    let last = s.iter().rposition(|&v| v > 0).map_or(lead, |i| i.max(lead));
    for (sec, row) in s[..=last.min(s.len() - 1)].chunks(10).enumerate() {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:>5}")).collect();
        println!("    {:>+4} s {}", sec as i64 - (lead / 10) as i64, cells.join(""));
    }
}

fn append(p: &std::path::Path, line: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    writeln!(f, "{line}").map_err(|e| e.to_string())
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_quantiles() {
        let fleet = Fleet::new(&["127.0.0.1:1".parse().unwrap()], "/e?topic=a", &["a".into()], 1024, 3000);
        let results: Vec<ClientResult> = (1..=100)
            .map(|i| ClientResult { back_ns: Some(i * 10), open_at_end: Some(0), ..Default::default() })
            .collect();
        let r = Report::new(&fleet, &results, &[0], 1, 0);
        assert_eq!((r.back, r.back_q(0.5), r.back_q(0.99), r.last_back_ns), (100, Some(500), Some(990), Some(1000)));
    }
}
