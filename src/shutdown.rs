//! SIGTERM and SIGINT as one future, so `main` can hand "stop" to the app as a plain value.

use std::future::Future;

/// Installs the SIGTERM and SIGINT handlers *now* and returns a future that completes on the
/// first of them. Call it (inside the runtime) before binding the listeners: until the handlers
/// exist a signal has its default action, so a SIGTERM that arrives just after the port opens
/// would kill the process instead of draining it and exiting 0.
pub fn signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "Signal received."),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "Signal received."),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
