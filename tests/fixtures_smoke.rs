//! Smoke tests for the private broker fixtures in `tests/common/brokers.rs`:
//! they start, carry messages, survive kill -9 + restart on the same port,
//! and leave no process or directory behind when dropped.

mod common;

use std::time::Duration;

use common::brokers::{self, NatsServer, RedisServer};
use futures_util::StreamExt;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

const T: Duration = Duration::from_secs(5);

fn process_exists(pid: u32) -> bool {
    // Signal 0 checks existence without sending anything. The fixture reaps
    // its child, so a killed server is ESRCH rather than a zombie.
    match kill(Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => panic!("kill({pid}, 0): {e}"),
    }
}

async fn port_refuses(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

async fn nats_round_trip(url: &str, subject: &str, payload: &'static str) {
    let client = brokers::nats_client(url).await;
    let mut sub = client.subscribe(subject.to_owned()).await.unwrap();
    // Make sure the server has registered the subscription before publishing.
    client.flush().await.unwrap();
    client.publish(subject.to_owned(), payload.into()).await.unwrap();
    let msg =
        tokio::time::timeout(T, sub.next()).await.expect("NATS message within timeout").expect("subscription open");
    assert_eq!(msg.subject.as_str(), subject);
    assert_eq!(&msg.payload[..], payload.as_bytes());
}

async fn redis_round_trip(url: &str, channel: &str, payload: &'static str) {
    let mut pubsub = brokers::redis_pubsub(url).await;
    pubsub.subscribe(channel).await.unwrap();
    let mut conn = brokers::redis_conn(url).await;
    assert_eq!(brokers::redis_publish(&mut conn, channel, payload).await, 1);
    let msg = tokio::time::timeout(T, pubsub.on_message().next())
        .await
        .expect("Redis message within timeout")
        .expect("pub/sub stream open");
    assert_eq!(msg.get_channel_name(), channel);
    assert_eq!(msg.get_payload_bytes(), payload.as_bytes());
}

#[tokio::test]
async fn nats_starts_on_private_port_and_round_trips() {
    let nats = NatsServer::start().await;
    assert_ne!(nats.port(), 4222);
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
    nats_round_trip(&nats.url(), "smoke.nats", "hello nats").await;
    // JetStream is on and stores inside the fixture's dir.
    assert!(nats.dir().join("jetstream").is_dir());
}

#[tokio::test]
async fn redis_starts_on_private_port_and_round_trips() {
    let redis = RedisServer::start().await;
    assert_ne!(redis.port(), 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    let mut conn = brokers::redis_conn(&redis.url()).await;
    assert_eq!(brokers::redis_publish(&mut conn, "nobody", b"x").await, 0);
    redis_round_trip(&redis.url(), "smoke.redis", "hello redis").await;
}

#[tokio::test]
async fn nats_kill9_and_restart_on_same_port() {
    let mut nats = NatsServer::start().await;
    let port = nats.port();
    let old_pid = nats.pid().unwrap();
    // A client connected before the crash, to prove restart works while the
    // port has (or had) live connections on it.
    let early = brokers::nats_client(&nats.url()).await;

    nats.kill9();
    assert_eq!(nats.pid(), None);
    assert!(!process_exists(old_pid));
    assert!(port_refuses(port).await);

    nats.restart().await;
    assert_eq!(nats.port(), port);
    assert_ne!(nats.pid().unwrap(), old_pid);
    nats_round_trip(&nats.url(), "smoke.restarted", "back").await;

    // The pre-crash client reconnects by itself to the same URL.
    let mut sub = early.subscribe("smoke.early").await.unwrap();
    early.flush().await.unwrap();
    early.publish("smoke.early", "again".into()).await.unwrap();
    let msg =
        tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("reconnected client receives").unwrap();
    assert_eq!(&msg.payload[..], b"again");

    // restart() on a running server is kill + start.
    let pid = nats.pid().unwrap();
    nats.restart().await;
    assert!(!process_exists(pid));
    assert_eq!(nats.port(), port);
}

#[tokio::test]
async fn redis_kill9_and_restart_on_same_port() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();
    let old_pid = redis.pid().unwrap();
    let _early = brokers::redis_conn(&redis.url()).await;

    redis.kill9();
    assert_eq!(redis.pid(), None);
    assert!(!process_exists(old_pid));
    assert!(port_refuses(port).await);
    redis.kill9(); // idempotent

    redis.restart().await;
    assert_eq!(redis.port(), port);
    redis_round_trip(&redis.url(), "smoke.restarted", "back").await;
}

#[tokio::test]
async fn drop_kills_process_and_removes_dir() {
    let nats = NatsServer::start().await;
    let redis = RedisServer::start().await;
    let (nats_pid, redis_pid) = (nats.pid().unwrap(), redis.pid().unwrap());
    let (nats_dir, redis_dir) = (nats.dir().to_owned(), redis.dir().to_owned());
    let (nats_port, redis_port) = (nats.port(), redis.port());
    assert_ne!(nats_port, redis_port);
    assert!(process_exists(nats_pid) && process_exists(redis_pid));

    drop(nats);
    drop(redis);

    assert!(!process_exists(nats_pid), "nats-server {nats_pid} still alive");
    assert!(!process_exists(redis_pid), "redis-server {redis_pid} still alive");
    assert!(!nats_dir.exists() && !redis_dir.exists());
    assert!(port_refuses(nats_port).await && port_refuses(redis_port).await);
}

#[tokio::test]
async fn many_fixtures_in_parallel_get_distinct_servers() {
    // Exercises the identity check: every fixture must talk to its own child.
    let servers = futures_util::future::join_all((0..6).map(|_| NatsServer::start())).await;
    let mut ports: Vec<_> = servers.iter().map(NatsServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
}
