//! Shared test support, used the same way by every integration test: `mod common;` and then
//! `common::…`. One room per kind of fixture:
//! - [`app`]: the bridge in this process on `127.0.0.1:0` listeners ([`start_app`]), its test
//!   config and the publish credential;
//! - [`balancer`]: a load-balancer stand-in in front of several bridge processes;
//! - [`bridge_process`] and [`daemon`]: the real `sse-bridge` binary as a child process;
//! - [`browser_tooling`]: node, Chromium and the harness package the real-browser tests need;
//! - [`brokers`]: private `nats-server` / `redis-server` instances;
//! - [`certs`]: a private CA made by the test, and the certificates it issues;
//! - [`sse_client`]: an EventSource-exact SSE client and parser;
//! - [`chunked`]: an HTTP/1.1 chunked-body decoder for tests that read raw sockets;
//! - [`events`]: what an event's id and a gap event say;
//! - [`logs`]: the logs of an in-process bridge, captured;
//! - [`metrics`]: reading the admin `/metrics`;
//! - [`wait`]: the one polling helper ([`wait_until`]) and the broker probe.

// Every test binary compiles all of this and uses its own part of it.
#![allow(dead_code)]

pub mod app;
pub mod balancer;
pub mod bridge_process;
pub mod brokers;
pub mod browser_tooling;
pub mod certs;
pub mod chunked;
pub mod daemon;
pub mod events;
pub mod logs;
pub mod metrics;
pub mod sse_client;
pub mod wait;

// The names most tests use, at `common::`; each binary uses some of them.
#[allow(unused_imports)]
pub use app::{
    EVENT_TIMEOUT, SECRET, TOKEN, TestApp, nats_config, publish_at, redis_config, start_app, start_app_on,
    start_app_traced, test_config, urlencode,
};
#[allow(unused_imports)]
pub use metrics::{admin_metrics, rejected_count, rejected_series, sample};
#[allow(unused_imports)]
pub use wait::{sync_on_probe, wait_for, wait_until};
