//! A stand-in for a load balancer in front of several bridge processes: one loopback port
//! whose every new connection goes to the first backend that accepts it, bytes copied both
//! ways. When a backend stops listening (it drains and exits), the next connection goes to the
//! next one, which is what a browser's `EventSource` meets during a rollout behind a Service.
//!
//! The accept task and every copy task end when the balancer is dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The balancer; dropping it stops accepting and cuts every proxied connection.
pub struct Balancer {
    /// The address clients connect to.
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    stop: CancellationToken,
}

impl Balancer {
    /// Starts a balancer on `127.0.0.1:0` over `backends` (tried in order).
    pub async fn start(backends: &[SocketAddr]) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the balancer");
        let addr = listener.local_addr().expect("balancer address");
        let backends = Arc::new(Mutex::new(backends.to_vec()));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, backends.clone(), stop.clone()));
        Balancer { addr, backends, stop }
    }

    /// Replaces the backends (for example: take a draining replica out of rotation).
    pub fn set_backends(&self, backends: &[SocketAddr]) {
        *self.backends.lock() = backends.to_vec();
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, backends: Arc<Mutex<Vec<SocketAddr>>>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        let candidates = backends.lock().clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            for backend in candidates {
                if let Ok(upstream) = TcpStream::connect(backend).await {
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    proxy(client, upstream, stop).await;
                    return;
                }
            }
            // No backend listens: the client sees the connection close, as behind a real
            // balancer with no healthy endpoint.
        });
    }
}

async fn proxy(mut client: TcpStream, mut upstream: TcpStream, stop: CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
    }
}
