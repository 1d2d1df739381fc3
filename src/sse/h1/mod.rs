//! A lean HTTP/1.x path for `GET /events`, the one request that stays open.
//!
//! hyper gives every HTTP/1 connection an 8 KiB read buffer and an 8 KiB header write buffer,
//! and its connection future is large: about 16 KiB per idle stream before the stream's own
//! state. A stream needs none of it: after the request head, the only input is the client
//! going away, and the output is frames that already sit in shared `Bytes`. So the connection
//! task reads the request head itself (a small buffer, freed once parsed) and, when it is a
//! plain `GET /events`, answers it here with the same handler rules
//! ([`crate::sse::handler::events_with_cors`]):
//!
//! - a stream: `Transfer-Encoding: chunked` (close-delimited for HTTP/1.0); every frame ready
//!   at once goes out in one vectored write (chunk-size lines in a fixed array, frames shared,
//!   no allocation per delivery), flushed as soon as the body has nothing more; the last chunk
//!   when the body ends (shutdown, maximum age), nothing when it fails; the socket is read into
//!   a small stack buffer only to notice the client leaving, which drops the stream at once.
//! - a refusal (`4xx`, `503`): `Content-Length`, `Connection: close`, then the connection closes.
//!
//! Anything else (other paths and methods, HTTP/2 prior knowledge, bodies, `Upgrade`, malformed
//! or oversized heads, a client that closes mid-head) goes to hyper unchanged: the bytes read so
//! far are replayed to it through [`crate::sse::conn::Rewind`], so it answers exactly as it would have.
//!
//! The socket is plain TCP, or TLS when the client picked HTTP/1.1 by ALPN (or named no
//! protocol): the same path serves both, generic over the stream; HTTP/2 over TLS is hyper's.
//!
//! Its files: `lean` (the entry: [`serve`]), `head` (reading and parsing the request head),
//! `reply` (the response head), `writer` (the chunked writer).

mod head;
mod lean;
mod reply;
mod writer;

#[cfg(test)]
mod tests;

pub use head::NotLean;
pub use lean::{LeanEvents, Served, serve};
pub use reply::EventsHandler;
