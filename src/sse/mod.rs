//! The public listener: accept loop, routes, CORS and the SSE stream body.

pub mod body;
pub mod client_ip;
pub mod cors;
pub mod guard;
pub mod h1;
pub mod handler;
pub mod input;
pub mod server;
