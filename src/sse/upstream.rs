//! The `GET /events` steps of on-demand interest (`crate::interest`): a filter no source may
//! subscribe to is refused with `403` and a one-line reason (`topic_not_allowed`) before
//! admission; after admission the stream holds its filters upstream, or is refused for a
//! reason time can fix (`upstream_capacity`, `ip_upstream_limit`) with the answer an
//! `EventSource` survives ([`super::refusal`]). With every source `"all"` both steps pass.

use std::net::SocketAddr;

use http::{Request, StatusCode};

use super::public_state::PublicState;
use super::refusal::refuse;
use super::response::{Refused, text};
use crate::interest::{CapRefusal, Holds, NotAdmitted};
use crate::retry_hint::RetryReason;
use crate::state::AppState;
use crate::topic::TopicFilter;

/// Refuses (`403`) a stream with a filter outside every source's configuration, when a
/// source is on-demand (its configuration is then an allowlist).
pub fn check(app: &AppState, filters: &[TopicFilter]) -> Result<(), Refused> {
    match app.interest.outside(filters, &app.catalog) {
        None => Ok(()),
        Some(f) => Err(outside(app, &NotAdmitted::Outside(f.as_str().to_owned()))),
    }
}

/// Holds the stream's filters in the on-demand sources (released when the stream ends).
pub fn hold<B>(
    state: &PublicState,
    req: &Request<B>,
    peer: SocketAddr,
    filters: &[TopicFilter],
) -> Result<Option<Holds>, Refused> {
    let app = &state.app;
    let client_ip = state.trusted_proxies.client_ip(peer.ip(), req.headers());
    app.interest.hold(filters, client_ip, &app.catalog).map_err(|e| match e {
        NotAdmitted::Outside(_) => outside(app, &e),
        NotAdmitted::Cap(cap) => {
            let reason = match cap {
                CapRefusal::Capacity(_) => RetryReason::UpstreamCapacity,
                CapRefusal::IpShare(_) => RetryReason::UpstreamIpShare,
            };
            let refusal = app.limits.refusal(reason, client_ip, &cap.to_string());
            refuse(app.config.server.refusal, &app.metrics, &refusal)
        }
    })
}

fn outside(app: &AppState, e: &NotAdmitted) -> Refused {
    app.metrics.count_rejected("topic_not_allowed");
    Box::new(text(StatusCode::FORBIDDEN, &e.to_string()))
}
