//! Resume correctness across replicas (issue #16, item 1): the id a client keeps is its whole
//! cursor, so no id it receives may go back on any durable stream, or its next resume reads
//! that stream again and the client gets those events twice. Two real bridge processes on one
//! real nats-server with JetStream (and a real redis-server where a second durable stream is
//! needed): resume, reconnect, resume again; every event exactly once, no gap event.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream;
use common::bridge_process::BridgeProcess;
use common::brokers::{NatsServer, RedisServer, nats_client, redis_conn};
use common::sse_client::{self, SseEvent, SseStream};
use common::{EVENT_TIMEOUT, TOKEN, wait_until};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const STREAM: &str = "ORDERS";

async fn js_stream(nats: &NatsServer) -> jetstream::Context {
    let js = jetstream::new(nats_client(&nats.url()).await);
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    js
}

async fn js_publish(js: &jetstream::Context, subject: &str, payload: &str) {
    js.publish(subject.to_owned(), payload.to_owned().into()).await.unwrap().await.expect("JetStream ack");
}

async fn xadd(conn: &mut redis::aio::MultiplexedConnection, key: &str, data: &str) {
    let _: String = redis::cmd("XADD").arg(key).arg("*").arg("data").arg(data).query_async(conn).await.expect("XADD");
}

fn jetstream_section(url: &str) -> String {
    format!("[jetstream]\nurl = \"{url}\"\nstreams = [\"{STREAM}\"]\nreconnect_max_delay = \"200ms\"\n\n")
}

/// Waits until a bridge process reports `source` up (`up`) or down on its admin listener.
async fn source_up(p: &BridgeProcess, source: &str, up: bool) {
    let series = format!("sse_bridge_broker_up{{source=\"{source}\"}}");
    let want = if up { 1.0 } else { 0.0 };
    wait_until(&format!("{source} up = {up}"), async || common::sample(&p.metrics().await, &series) == Some(want))
        .await;
}

/// Opens a stream on `p` for `topics`, resuming from `last` if given, and waits for its
/// opening comment (it is registered: later events reach it).
async fn open(p: &BridgeProcess, topics: &[&str], last: Option<&str>) -> SseStream {
    let query: Vec<String> = topics.iter().map(|t| format!("topic={}", common::urlencode(t))).collect();
    let url = p.url(&format!("/events?{}", query.join("&")));
    let headers: Vec<(&str, &str)> = last.map(|l| ("last-event-id", l)).into_iter().collect();
    let mut s = sse_client::connect(&url, &headers).await.expect("stream opens");
    s.wait_for_comments(1, EVENT_TIMEOUT).await;
    s
}

/// Takes `n` events; none may be a gap event.
async fn take(s: &mut SseStream, n: usize) -> Vec<SseEvent> {
    let got = s.take_events(n, EVENT_TIMEOUT).await;
    assert_eq!(got.len(), n, "got {got:?}");
    for e in &got {
        assert_ne!(e.event.as_deref(), Some("sse-bridge.gap"), "unexpected gap: {e:?}");
    }
    got
}

fn data(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

fn last_id(events: &[SseEvent]) -> String {
    events.last().and_then(|e| e.id.clone()).expect("an id")
}

/// The position of the JetStream stream in an id (`…_jXXXX:<seq>`).
fn js_pos(id: &str) -> u64 {
    id.split('_')
        .filter_map(|p| p.split_once(':'))
        .find(|(tag, _)| tag.starts_with('j'))
        .and_then(|(_, pos)| pos.parse().ok())
        .unwrap_or_else(|| panic!("no JetStream position in {id}"))
}

/// A TCP relay in front of nats-server that can be shut: a bridge that talks to NATS through
/// it falls behind on the stream (its connection is cut and reconnects are refused) while
/// the other replica reads on.
struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: parking_lot::Mutex<CancellationToken>,
    stop: CancellationToken,
}

impl Gate {
    async fn start(upstream: SocketAddr) -> Arc<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Arc::new(Gate {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            cut: parking_lot::Mutex::new(CancellationToken::new()),
            stop: CancellationToken::new(),
        });
        let g = gate.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    _ = g.stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                if !g.open.load(Ordering::Acquire) {
                    continue; // dropped: the connection is refused
                }
                let cut = g.cut.lock().clone();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut up) => {}
                    }
                });
            }
        });
        gate
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Cuts every relayed connection and refuses new ones.
    fn shut(&self) {
        self.open.store(false, Ordering::Release);
        let old = std::mem::replace(&mut *self.cut.lock(), CancellationToken::new());
        old.cancel();
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::Release);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut.lock().cancel();
    }
}

/// (a) B is behind A on the JetStream stream. A client moves from A to B: B must not read the
/// stream (it has nothing newer), and the ids of what B sends it (Redis Streams events here)
/// must keep A's newer JetStream position, or its next resume reads the stream again.
#[tokio::test]
async fn a_replica_behind_on_a_stream_keeps_the_clients_position() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats).await;
    let redis = RedisServer::start().await;
    let mut conn = redis_conn(&redis.url()).await;
    let gate = Gate::start(([127, 0, 0, 1], nats.port()).into()).await;
    let redis_section = format!("[redis_streams]\nurl = \"{}\"\nkeys = [\"audit\"]\nblock = \"200ms\"\n", redis.url());
    let a = BridgeProcess::start(&format!("{}{redis_section}", jetstream_section(&nats.url())), &[]);
    let b = BridgeProcess::start(&format!("{}{redis_section}", jetstream_section(&gate.url())), &[]);
    for p in [&a, &b] {
        source_up(p, "jetstream", true).await;
        source_up(p, "redis_streams", true).await;
    }
    let topics = ["orders.>", "audit"];
    let mut got: Vec<SseEvent> = Vec::new();

    let mut on_a = open(&a, &topics, None).await;
    js_publish(&js, "orders.x", "j1").await;
    js_publish(&js, "orders.x", "j2").await;
    got.extend(take(&mut on_a, 2).await);
    // B loses NATS: it stays at j2 while A reads on.
    gate.shut();
    source_up(&b, "jetstream", false).await;
    js_publish(&js, "orders.x", "j3").await;
    js_publish(&js, "orders.x", "j4").await;
    got.extend(take(&mut on_a, 2).await);
    drop(on_a);
    let from_a = last_id(&got);

    // Resume on B, which is behind on ORDERS: nothing to replay there, and B's own events
    // must not take the client's ORDERS position back.
    let mut on_b = open(&b, &topics, Some(&from_a)).await;
    xadd(&mut conn, "audit", "a1").await;
    xadd(&mut conn, "audit", "a2").await;
    let from_b = take(&mut on_b, 2).await;
    for e in &from_b {
        let id = e.id.as_deref().unwrap();
        assert!(js_pos(id) >= js_pos(&from_a), "id {id} goes back on ORDERS from {from_a}");
    }
    got.extend(from_b);
    drop(on_b);

    // Resume again, on A: everything exactly once, then live.
    let mut again = open(&a, &topics, Some(&last_id(&got))).await;
    xadd(&mut conn, "audit", "a3").await;
    got.extend(take(&mut again, 1).await);
    js_publish(&js, "orders.x", "j5").await;
    got.extend(take(&mut again, 1).await);
    drop(again);
    assert_eq!(data(&got), ["j1", "j2", "j3", "j4", "a1", "a2", "a3", "j5"], "each event once, in order");

    // B catches up: the events it now reads are the client's already, and are not sent again.
    gate.reopen();
    source_up(&b, "jetstream", true).await;
    let mut back_on_b = open(&b, &topics, Some(&last_id(&got))).await;
    js_publish(&js, "orders.x", "j6").await;
    assert_eq!(data(&take(&mut back_on_b, 1).await), ["j6"], "caught-up events are not repeated");
    drop(back_on_b);
    a.stop();
    b.stop();
}

/// (b) A broker read plus ring events: the broker's frames (the durable stream, up to the
/// snapshot) go out before the ring's non-durable events of lower sequence numbers, whose
/// frames carry the older position of their time. The last id the client keeps must still
/// place it after every broker event it got.
#[tokio::test]
async fn broker_frames_ahead_of_ring_events_keep_the_clients_position() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats).await;
    let publish = format!("[publish]\ntoken = \"{TOKEN}\"\n\n");
    let a = BridgeProcess::start(&format!("{publish}{}", jetstream_section(&nats.url())), &[]);
    // B's rings keep 2 events per topic: a resume from before that reads the broker.
    let b = BridgeProcess::start(
        &format!("{publish}{}[replay]\nmax_events_per_topic = 2\n", jetstream_section(&nats.url())),
        &[],
    );
    source_up(&a, "jetstream", true).await;
    source_up(&b, "jetstream", true).await;
    let topics = ["orders.>", "news"];
    let mut got: Vec<SseEvent> = Vec::new();

    let mut on_b = open(&b, &topics, None).await;
    js_publish(&js, "orders.x", "j1").await;
    got.extend(take(&mut on_b, 1).await);
    drop(on_b);
    // Missed while away: j2, j3, then a non-durable event, then j4..j6 (which push j4 out of
    // B's ring, so the resume reads ORDERS from the broker).
    let mut probe = open(&b, &["orders.>"], None).await;
    js_publish(&js, "orders.x", "j2").await;
    js_publish(&js, "orders.x", "j3").await;
    take(&mut probe, 2).await;
    b.publish("news", "n1").await;
    for j in ["j4", "j5", "j6"] {
        js_publish(&js, "orders.x", j).await;
    }
    take(&mut probe, 3).await;

    let mut resumed = open(&b, &topics, Some(&last_id(&got))).await;
    let replay = take(&mut resumed, 6).await;
    assert_eq!(data(&replay), ["j2", "j3", "j4", "j5", "j6", "n1"], "broker part, then the ring's");
    let last = last_id(&replay);
    assert!(js_pos(&last) >= js_pos(replay[4].id.as_deref().unwrap()), "{last} goes back before j6");
    got.extend(replay);
    drop(resumed);

    // Resume again on B, then on A: nothing twice, nothing missing.
    let mut again = open(&b, &topics, Some(&last_id(&got))).await;
    js_publish(&js, "orders.x", "j7").await;
    got.extend(take(&mut again, 1).await);
    drop(again);
    let mut on_a = open(&a, &topics, Some(&last_id(&got))).await;
    // `news` is not durable: A cannot place B's id for it, and says so (and only for it).
    let gap = on_a.next_event(EVENT_TIMEOUT).await.expect("a gap event");
    let gap = common::events::gap_data(&gap);
    assert_eq!(gap["reason"], "unknown-run");
    assert_eq!(gap["topics"], serde_json::json!(["news"]));
    js_publish(&js, "orders.x", "j8").await;
    got.extend(take(&mut on_a, 1).await);
    drop(on_a);
    assert_eq!(data(&got), ["j1", "j2", "j3", "j4", "j5", "j6", "n1", "j7", "j8"], "each event once, in order");
    drop(probe);
    a.stop();
    b.stop();
}
