//! Upstream interest: with `nats.interest` / `redis.interest` = `"on-demand"`, a source
//! subscribes its broker only to the filters local streams hold, so each replica receives the
//! messages of its own clients instead of the whole firehose.
//!
//! [`Interest`] is what the handler sees: it checks a stream's filters against the allowlists
//! ([`Scope`]; a filter no source can deliver is refused with `403`), takes a hold on them in
//! each on-demand source's [`InterestTable`] within the [`Caps`], and returns [`Holds`], which
//! the stream body keeps: it starts the stream (`: ok`) only once every new upstream
//! subscription is confirmed by its broker, and releases the filters when the stream ends. The
//! sources take their work from the same tables (`crate::sources`); a resume asks
//! [`Interest::held`] whether a filter was held without a break since the client's cursor.
//!
//! With both sources `"all"` (the default) this module holds nothing and admits everything.

mod caps;
mod scope;
mod table;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use caps::{CapRefusal, Caps};
pub use scope::{Scope, glob_match, redis_glob};
pub use table::{Batch, Held, InterestTable, SeqClock};

use crate::config::Config;
use crate::durable::Catalog;
use crate::metrics::Metrics;
use crate::topic::TopicFilter;

/// The on-demand tables of one bridge and the scopes of its live sources.
#[derive(Debug)]
pub struct Interest {
    /// On-demand sources: their allowlist and table.
    on_demand: Vec<(Scope, Arc<InterestTable>)>,
    /// `"all"` sources: what they deliver.
    all: Vec<Scope>,
    confirm_timeout: Duration,
}

/// Why a stream's filters were not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    /// The filter lies outside every source's configuration (`403`).
    #[error("topic {0:?} is outside the subjects and channels this bridge may subscribe to")]
    Outside(String),
    /// The caps on upstream subscriptions (a refusal with `retry:`).
    #[error(transparent)]
    Cap(#[from] CapRefusal),
}

impl Interest {
    /// The tables of the sources `config` sets to on-demand; `clock` reads the sequencer's
    /// last sequence.
    pub fn new(config: &Config, clock: SeqClock, metrics: &Arc<Metrics>) -> Interest {
        let ic = &config.interest;
        let caps = Arc::new(Caps::new(ic.max_subscriptions, ic.max_subscriptions_per_ip));
        let mut on_demand = Vec::new();
        let mut all = Vec::new();
        let table =
            |source| Arc::new(InterestTable::new(source, caps.clone(), ic.linger, clock.clone(), metrics.clone()));
        if let Some(n) = &config.nats {
            let scope = Scope::nats(&n.subjects);
            match n.interest.is_on_demand() {
                true => on_demand.push((scope, table("nats"))),
                false => all.push(scope),
            }
        }
        if let Some(r) = &config.redis {
            let scope = Scope::Redis { channels: r.channels.clone(), patterns: r.patterns.clone() };
            match r.interest.is_on_demand() {
                true => on_demand.push((scope, table("redis"))),
                false => all.push(scope),
            }
        }
        Interest { on_demand, all, confirm_timeout: ic.confirm_timeout }
    }

    /// The table of on-demand source `source` (`"nats"`, `"redis"`), if it is on-demand.
    pub fn table(&self, source: &str) -> Option<Arc<InterestTable>> {
        self.on_demand.iter().find(|(_, t)| t.source() == source).map(|(_, t)| t.clone())
    }

    /// Whether any source is on-demand.
    pub fn is_on(&self) -> bool {
        !self.on_demand.is_empty()
    }

    /// With an on-demand source, the first filter that no source can deliver: outside every
    /// on-demand allowlist, reaching no `"all"` source and no durable stream. Without one,
    /// every filter passes (as before on-demand existed).
    pub fn outside<'a>(&self, filters: &'a [TopicFilter], catalog: &Catalog) -> Option<&'a TopicFilter> {
        if !self.is_on() {
            return None;
        }
        filters.iter().find(|f| {
            !self.on_demand.iter().any(|(s, _)| s.admits(f))
                && !self.all.iter().any(|s| s.reaches(f))
                && !catalog.iter().any(|(_, d)| d.may_serve(f))
        })
    }

    /// Checks `filters` and holds them in every on-demand source that allows them, for one
    /// stream from `ip`. `None` when no filter is on-demand.
    pub fn hold(&self, filters: &[TopicFilter], ip: IpAddr, catalog: &Catalog) -> Result<Option<Holds>, NotAdmitted> {
        if !self.is_on() {
            return Ok(None);
        }
        if let Some(f) = self.outside(filters, catalog) {
            return Err(NotAdmitted::Outside(f.as_str().to_owned()));
        }
        let mut parts = Vec::new();
        let mut waits = Vec::new();
        for (scope, table) in &self.on_demand {
            let mine: Vec<&TopicFilter> = filters.iter().filter(|f| scope.admits(f)).collect();
            if mine.is_empty() {
                continue;
            }
            // A broker that is down confirms nothing: the stream starts without waiting.
            let up = table.is_up();
            match table.take(&mine, ip) {
                Ok((keys, w)) => {
                    parts.push((table.clone(), keys));
                    if up {
                        waits.extend(w);
                    }
                }
                Err(e) => {
                    drop(Holds { parts, ready: None });
                    return Err(e.into());
                }
            }
        }
        if parts.is_empty() {
            return Ok(None);
        }
        let timeout = self.confirm_timeout;
        let ready = (!waits.is_empty()).then(|| {
            Box::pin(async move {
                let all = async {
                    for mut w in waits {
                        // An error means the entry is gone (the stream left): nothing to wait for.
                        let _ = w.wait_for(|confirmed| *confirmed).await;
                    }
                };
                let _ = tokio::time::timeout(timeout, all).await;
            }) as ReadyFuture
        });
        Ok(Some(Holds { parts, ready }))
    }

    /// Whether `f` was held upstream without a break since sequence `seq` by every on-demand
    /// source that allows it: `Some(false)` when one did not, `None` when no on-demand source
    /// allows `f` (the ring holds all of it, as before).
    pub fn held_since(&self, f: &TopicFilter, seq: u64) -> Option<bool> {
        let mut any = false;
        for (scope, table) in &self.on_demand {
            if !scope.admits(f) {
                continue;
            }
            any = true;
            match table.held(f.as_str()) {
                Held::Since(Some(s)) if s <= seq => {}
                _ => return Some(false),
            }
        }
        any.then_some(true)
    }
}

type ReadyFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One stream's holds on the on-demand tables: released when dropped (the stream ended).
pub struct Holds {
    parts: Vec<(Arc<InterestTable>, Vec<Arc<str>>)>,
    ready: Option<ReadyFuture>,
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holds").field("ready", &self.ready.is_none()).finish_non_exhaustive()
    }
}

impl Holds {
    /// Ready once every new upstream subscription is confirmed (or `interest.confirm_timeout`
    /// passed): until then the stream writes nothing, not even `: ok`.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(r) = &mut self.ready {
            std::task::ready!(r.as_mut().poll(cx));
            self.ready = None;
        }
        Poll::Ready(())
    }
}

impl Drop for Holds {
    fn drop(&mut self) {
        for (table, keys) in &self.parts {
            table.release(keys);
        }
    }
}
