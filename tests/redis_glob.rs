//! The bridge's reading of Redis `PSUBSCRIBE` globs (`sse_bridge::durable::redis_glob`), checked
//! against a real redis-server: for generated patterns and channels, whether a `PUBLISH`
//! reaches a pattern subscriber is exactly what `RedisGlob::matches` says. The durable-only
//! decision of a resume rests on this reading.

mod common;

use common::brokers::{RedisServer, redis_conn, redis_pubsub};
use sse_bridge::durable::redis_glob::RedisGlob;

/// A small deterministic generator (xorshift), so a failure names a reproducible case.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn word(&mut self, alphabet: &[u8], max_len: u64) -> String {
        let len = 1 + self.next() % max_len;
        let bytes: Vec<u8> = (0..len).map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize]).collect();
        String::from_utf8(bytes).unwrap()
    }
}

#[tokio::test]
async fn globs_match_exactly_what_redis_delivers() {
    let redis = RedisServer::start().await;
    let mut conn = redis_conn(&redis.url()).await;
    let mut g = Gen(0x5eed_1234_abcd);
    let channels: Vec<String> = (0..60).map(|_| g.word(b"ab.-]^\\", 5)).collect();
    let mut fixed = vec!["demo.*", "bench.core.*", "h[ae]llo", "a[b", "a[^b]", "[b-a]*", "a\\*", "*.*", "?.[-a]"];
    let generated: Vec<String> = (0..250).map(|_| g.word(b"ab.*?[]^-\\", 6)).collect();
    fixed.extend(generated.iter().map(String::as_str));
    let mut checked = 0;
    for pattern in fixed {
        let mut sub = redis_pubsub(&redis.url()).await;
        sub.psubscribe(pattern).await.expect("PSUBSCRIBE");
        let mut pipe = redis::pipe();
        for c in &channels {
            pipe.cmd("PUBLISH").arg(c).arg("x");
        }
        let received: Vec<i64> = pipe.query_async(&mut conn).await.expect("PUBLISH");
        let glob = RedisGlob::new(pattern);
        for (c, n) in channels.iter().zip(received) {
            assert_eq!(glob.matches(c), n == 1, "pattern {pattern:?}, channel {c:?}: Redis delivered to {n}");
            checked += 1;
        }
    }
    println!("{checked} pattern/channel pairs agree with redis-server");
}
