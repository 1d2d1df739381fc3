//! The resume promise as a property: whatever happens between them (publishes on every kind of
//! source, disconnects, resumes on either of two bridge processes, restarts of either), a
//! client's view of each topic is exactly the published events in order, except where it was
//! told of a gap naming that topic, and never one event twice. Durable topics (JetStream, Redis
//! Streams) never need a gap at all here: the brokers hold every event.
//!
//! Random steps from a seed: `RESUME_PROPERTY_SEED` picks it (default fixed, so CI is
//! repeatable), `RESUME_PROPERTY_STEPS` the length (default 200); a failure prints both and the
//! whole history. Run longer by hand:
//! `RESUME_PROPERTY_SEED=$RANDOM RESUME_PROPERTY_STEPS=2000 cargo test --test resume_property`.
//! Real nats-server (with JetStream) and redis-server, two real `sse-bridge` processes.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;

use async_nats::jetstream;
use common::bridge_process::BridgeProcess;
use common::brokers::{NatsServer, RedisServer, nats_client, redis_conn};
use common::sse_client::{self, SseStream};
use common::{EVENT_TIMEOUT, TOKEN, wait_until};

/// How each topic is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CoreNats,
    JetStream,
    RedisChannel,
    RedisPattern,
    RedisStream,
    Publish,
}

const TOPICS: [(&str, Kind); 6] = [
    ("core.a", Kind::CoreNats),
    ("js.a", Kind::JetStream),
    ("rp.a", Kind::RedisChannel),
    ("rp.p.x", Kind::RedisPattern),
    ("rs.a", Kind::RedisStream),
    ("pub.a", Kind::Publish),
];

fn durable(kind: Kind) -> bool {
    matches!(kind, Kind::JetStream | Kind::RedisStream)
}

/// A small deterministic generator (xorshift64*): the steps follow from the seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the client saw, in order: a (re)connection, an event (topic, index of its payload in
/// that topic's published list) or a gap naming topics.
// The fields are read through `Debug`, in the failure report.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Seen {
    /// `published`: how many events each topic had when the stream opened.
    Connected {
        process: usize,
        last_event_id: Option<String>,
        published: HashMap<&'static str, usize>,
    },
    Event {
        topic: String,
        index: usize,
        id: String,
    },
    Gap {
        reason: String,
        topics: Vec<String>,
    },
}

struct World {
    nats: NatsServer,
    redis: RedisServer,
    js: jetstream::Context,
    nats_pub: async_nats::Client,
    redis_pub: redis::aio::MultiplexedConnection,
    processes: [Option<BridgeProcess>; 2],
    /// Per topic, the payload indexes published so far (0, 1, 2, …).
    published: HashMap<&'static str, usize>,
    /// The client's stream and the process it is on.
    stream: Option<(usize, SseStream)>,
    last_event_id: Option<String>,
    seen: Vec<Seen>,
    history: String,
}

fn section(nats: &NatsServer, redis: &RedisServer) -> String {
    format!(
        r#"[limits]
connect_rate_per_ip = 0
max_streams_per_ip = 0

[publish]
token = "{TOKEN}"

[nats]
url = "{nats}"
subjects = ["core.>"]
reconnect_max_delay = "500ms"

[redis]
url = "{redis}"
channels = ["rp.a"]
patterns = ["rp.p.*"]
reconnect_max_delay = "500ms"

[jetstream]
url = "{nats}"
streams = ["PROP"]
reconnect_max_delay = "500ms"

[redis_streams]
url = "{redis}"
keys = ["rs.a"]
block = "200ms"
reconnect_max_delay = "500ms"
"#,
        nats = nats.url(),
        redis = redis.url()
    )
}

async fn connected(p: &BridgeProcess) {
    for source in ["nats", "redis", "jetstream", "redis_streams"] {
        let series = format!("sse_bridge_broker_up{{source=\"{source}\"}}");
        wait_until(&format!("{source} connected"), async || common::sample(&p.metrics().await, &series) == Some(1.0))
            .await;
    }
}

impl World {
    async fn start_process(&mut self, i: usize) {
        let p = BridgeProcess::start(&section(&self.nats, &self.redis), &[]);
        connected(&p).await;
        self.processes[i] = Some(p);
    }

    fn process(&self, i: usize) -> &BridgeProcess {
        self.processes[i].as_ref().expect("both processes run between steps")
    }

    async fn publish(&mut self, topic: &'static str, kind: Kind, via: usize) {
        let index = *self.published.get(topic).unwrap_or(&0);
        let payload = format!("{topic}#{index}");
        match kind {
            Kind::CoreNats => {
                self.nats_pub.publish(topic, payload.into()).await.unwrap();
                self.nats_pub.flush().await.unwrap();
            }
            Kind::JetStream => {
                self.js.publish(topic, payload.into()).await.unwrap().await.expect("JetStream ack");
            }
            Kind::RedisChannel | Kind::RedisPattern => {
                let _: i64 =
                    redis::cmd("PUBLISH").arg(topic).arg(&payload).query_async(&mut self.redis_pub).await.unwrap();
            }
            Kind::RedisStream => {
                let _: String = redis::cmd("XADD")
                    .arg(topic)
                    .arg("*")
                    .arg("data")
                    .arg(&payload)
                    .query_async(&mut self.redis_pub)
                    .await
                    .unwrap();
            }
            Kind::Publish => {
                self.process(via).publish(topic, payload).await;
            }
        }
        self.published.insert(topic, index + 1);
    }

    /// Reads what the stream has until `done` holds for what was seen (or the stream ends).
    async fn read_until(&mut self, what: &str, done: impl Fn(&[Seen]) -> bool) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while !done(&self.seen) {
            let Some((_, stream)) = self.stream.as_mut() else { return };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match stream.next_event_or_end(left).await {
                Ok(Some(ev)) => {
                    if ev.event.as_deref() == Some(common::events::GAP_EVENT) {
                        let gap = common::events::gap_data(&ev);
                        let topics =
                            gap["topics"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
                        self.seen.push(Seen::Gap { reason: gap["reason"].as_str().unwrap().to_owned(), topics });
                    } else {
                        let (topic, index) = ev.data.split_once('#').expect("payload is topic#index");
                        let id = ev.id.clone().expect("events carry ids");
                        self.last_event_id = Some(id.clone());
                        self.seen.push(Seen::Event { topic: topic.to_owned(), index: index.parse().unwrap(), id });
                    }
                }
                Ok(None) => {
                    self.stream = None;
                    return;
                }
                Err(_) => self.fail(&format!("timed out waiting for {what}")),
            }
        }
    }

    async fn connect(&mut self, process: usize) {
        let filters: String = TOPICS.iter().map(|(t, _)| format!("topic={t}&")).collect();
        let url = self.process(process).url(&format!("/events?{}", filters.trim_end_matches('&')));
        let headers: Vec<(&str, &str)> =
            self.last_event_id.as_deref().map(|id| vec![("last-event-id", id)]).unwrap_or_default();
        let mut stream = sse_client::connect(&url, &headers).await.expect("connect");
        assert_eq!(stream.status(), 200);
        stream.wait_for_comments(1, EVENT_TIMEOUT).await;
        self.seen.push(Seen::Connected {
            process,
            last_event_id: self.last_event_id.clone(),
            published: self.published.clone(),
        });
        self.stream = Some((process, stream));
    }

    /// Waits until the client has the newest event of `topic` (it was published while the
    /// client was connected, after its `: ok`, so it must arrive).
    async fn expect_newest(&mut self, topic: &'static str) {
        let want = self.published[topic] - 1;
        self.read_until(&format!("{topic}#{want}"), |seen| {
            seen.iter().any(|s| matches!(s, Seen::Event { topic: t, index, .. } if t == topic && *index == want))
        })
        .await;
        if self.stream.is_none() {
            self.fail(&format!("the stream ended before {topic}#{want} arrived"));
        }
    }

    fn fail(&self, why: &str) -> ! {
        let mut seen = String::new();
        for s in &self.seen {
            let _ = writeln!(seen, "  {s:?}");
        }
        panic!("{why}\nseed {} steps {}\nhistory:\n{}seen:\n{seen}", seed(), steps(), self.history);
    }

    /// The invariant, over everything seen so far: per topic, the indexes seen increase by one,
    /// except that a gap event naming the topic, seen between two of its events, excuses a
    /// jump between them (it told the client that events may be missing there).
    fn check(&self) {
        let mut next: HashMap<&str, usize> = HashMap::new();
        let mut excused: HashMap<&str, bool> = HashMap::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut fresh: HashMap<&str, usize> = HashMap::new();
        for (at, s) in self.seen.iter().enumerate() {
            match s {
                Seen::Connected { last_event_id: None, published, .. } => {
                    // A stream without an id starts live: what was published before it opened is
                    // not owed, and what a source was still delivering then may arrive or not.
                    next.clear();
                    fresh = published.clone();
                }
                Seen::Connected { .. } => {}
                Seen::Gap { topics, reason } => {
                    for (t, kind) in TOPICS {
                        if topics.iter().any(|g| g == t) {
                            if durable(kind) {
                                self.fail(&format!("gap {reason} on durable topic {t} at #{at}: the broker holds it"));
                            }
                            excused.insert(t, true);
                        }
                    }
                }
                Seen::Event { topic, index, id } => {
                    let (t, _) = TOPICS.iter().find(|(t, _)| t == topic).expect("known topic");
                    let want = match fresh.remove(t) {
                        Some(at_open) => (*index).min(at_open),
                        None => next.get(t).copied().unwrap_or(0),
                    };
                    if *index < want {
                        self.fail(&format!("{topic}#{index} at #{at}: duplicate or backwards (next owed #{want})"));
                    }
                    if *index > want && !excused.get(t).copied().unwrap_or(false) {
                        self.fail(&format!("{topic}#{want}..#{} skipped silently before #{at}", index - 1));
                    }
                    if let Some(first) = ids.insert(id.clone(), at) {
                        self.fail(&format!("id {id} sent twice (#{first} and #{at})"));
                    }
                    next.insert(t, index + 1);
                    excused.insert(t, false);
                }
            }
        }
    }
}

fn seed() -> u64 {
    std::env::var("RESUME_PROPERTY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_2026)
}

fn steps() -> usize {
    std::env::var("RESUME_PROPERTY_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_is_exact_or_announced_across_replicas_and_restarts() {
    let nats = NatsServer::start().await;
    let redis = RedisServer::start().await;
    let nats_pub = nats_client(&nats.url()).await;
    let js = jetstream::new(nats_pub.clone());
    js.create_stream(jetstream::stream::Config {
        name: "PROP".into(),
        subjects: vec!["js.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let redis_pub = redis_conn(&redis.url()).await;
    let mut w = World {
        nats,
        redis,
        js,
        nats_pub,
        redis_pub,
        processes: [None, None],
        published: HashMap::new(),
        stream: None,
        last_event_id: None,
        seen: Vec::new(),
        history: String::new(),
    };
    w.start_process(0).await;
    w.start_process(1).await;
    let mut rng = Rng(seed().wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    eprintln!("resume property: seed {} steps {}", seed(), steps());

    for step in 0..steps() {
        let roll = rng.below(100);
        match (roll, w.stream.as_ref().map(|(p, _)| *p)) {
            (0..55, on) => {
                let (topic, kind) = TOPICS[rng.below(TOPICS.len() as u64) as usize];
                let n = 1 + rng.below(3);
                // `POST /publish` reaches only the process it is sent to: always process 0 here,
                // so its events are owed to the client through process 0's history.
                let via = if kind == Kind::Publish { 0 } else { on.unwrap_or(rng.below(2) as usize) };
                let _ = writeln!(w.history, "{step}: publish {n} on {topic} (via {via})");
                for _ in 0..n {
                    w.publish(topic, kind, via).await;
                }
                if on.is_some() && (kind != Kind::Publish || on == Some(0)) {
                    w.expect_newest(topic).await;
                }
            }
            (55..75, Some(p)) => {
                let _ = writeln!(w.history, "{step}: disconnect from {p}");
                w.stream = None;
            }
            (55..75, None) | (75..90, None) => {
                let p = rng.below(2) as usize;
                let _ = writeln!(w.history, "{step}: connect to {p} with {:?}", w.last_event_id);
                w.connect(p).await;
            }
            (75..90, Some(p)) => {
                let _ = writeln!(w.history, "{step}: disconnect from {p}, resume on {}", 1 - p);
                w.stream = None;
                w.connect(1 - p).await;
            }
            (_, on) => {
                let p = rng.below(2) as usize;
                let _ = writeln!(w.history, "{step}: restart {p}");
                if on == Some(p) {
                    // The paced drain ends the stream; read what it sends until the end.
                    let stop = std::thread::spawn({
                        let proc = w.processes[p].take().unwrap();
                        move || proc.stop()
                    });
                    w.read_until("the drained stream's end", |_| false).await;
                    stop.join().expect("stop");
                } else {
                    w.processes[p].take().unwrap().stop();
                }
                w.start_process(p).await;
            }
        }
        w.check();
    }

    // Finally every topic must reach the client: one more event each, while connected.
    if w.stream.is_none() {
        let _ = writeln!(w.history, "end: connect to 0 with {:?}", w.last_event_id);
        w.connect(0).await;
    }
    if w.stream.as_ref().unwrap().0 != 0 {
        let _ = writeln!(w.history, "end: resume on 0 with {:?}", w.last_event_id);
        w.stream = None;
        w.connect(0).await;
    }
    for (topic, kind) in TOPICS {
        w.publish(topic, kind, 0).await;
        w.expect_newest(topic).await;
    }
    w.check();
    let events = w.seen.iter().filter(|s| matches!(s, Seen::Event { .. })).count();
    let gaps = w.seen.iter().filter(|s| matches!(s, Seen::Gap { .. })).count();
    eprintln!("resume property: {events} events and {gaps} gap events seen, invariant held");
    for p in w.processes.iter_mut() {
        p.take().unwrap().stop();
    }
}
