//! What the public listener's handlers read: the app's shared state, plus what only HTTP
//! needs, worked out once from `server.*` when the listener starts (the CORS policy, whose
//! `X-Forwarded-For` to believe, the frame every stream opens with).

use std::sync::Arc;

use bytes::Bytes;

use super::client_ip::TrustedProxies;
use super::cors::Cors;
use crate::state::AppState;

/// The public listener's view of the bridge, shared by all its connections.
#[derive(Debug)]
pub struct PublicState {
    /// Everything the bridge shares (registry, limits, auth, metrics, …).
    pub app: Arc<AppState>,
    /// Which origins may read streams cross-site (`server.cors_origins`).
    pub cors: Cors,
    /// Whose `X-Forwarded-For` to believe for the per-IP limits.
    pub trusted_proxies: TrustedProxies,
    /// `: ok` comment plus `retry:`; sent first on every stream so headers and the reconnect
    /// delay reach the client at once. Built once, shared by all streams.
    pub opening_frame: Bytes,
}

impl PublicState {
    /// The listener's state for `app`, from its `server.*` settings.
    pub fn new(app: Arc<AppState>) -> Self {
        let cfg = &app.config.server;
        PublicState {
            cors: Cors::new(&cfg.cors_origins),
            trusted_proxies: TrustedProxies::new(&cfg.trusted_proxies),
            opening_frame: Bytes::from(format!(": ok\nretry: {}\n\n", cfg.retry.as_millis())),
            app,
        }
    }
}
