//! The public listener: accept loop, routes, CORS and the SSE stream body.
//!
//! Reading order: `server` (accept loop, hyper) and `h1` (the lean HTTP/1.1 path for
//! `GET /events`), both on the plumbing in `conn`; `handler` (routes, the `GET /events`
//! pipeline) over `request` (the parsed query), `input` (bounds on HTTP input), `guard`
//! (input bounds, authorization), `publish` and `demo` (the page at `GET /`); `body` (the
//! stream body) and `response` (small fixed responses); `public_state`, `cors`, `client_ip`
//! (what the listener works out once from `server.*`); `upstream`, the on-demand interest
//! steps of `GET /events`; `tls` (`[server.tls]`: rustls, ALPN, certificates re-read when they
//! change on disk).

pub mod body;
pub mod client_ip;
pub mod conn;
pub mod cors;
pub mod demo;
pub mod guard;
pub mod h1;
pub mod handler;
pub mod input;
pub mod public_state;
pub mod publish;
pub mod refusal;
pub mod request;
pub mod response;
pub mod server;
pub mod tls;
pub mod upstream;
