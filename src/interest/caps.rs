//! The bound on upstream subscriptions: a global cap across the on-demand sources and the share
//! one client address may take of it. A subscription counts against the address whose stream
//! caused it to be opened, until it is released (a linger after its last stream left).

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

/// Why a stream's new upstream subscriptions were refused; the handler turns it into a refusal
/// an `EventSource` survives (`retry:`), since time (other streams leaving) can fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapRefusal {
    /// `interest.max_subscriptions` upstream subscriptions are held.
    #[error("the bridge holds all the upstream subscriptions it may ({0})")]
    Capacity(usize),
    /// The address's streams opened `interest.max_subscriptions_per_ip` that are still held.
    #[error("this address holds its share of upstream subscriptions (limit {0})")]
    IpShare(usize),
}

/// Subscriptions counted globally and per address.
#[derive(Debug)]
pub struct Caps {
    max: usize,
    per_ip_max: usize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    held: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Caps {
    /// `max` across all sources, `per_ip_max` per address (0: no per-address share).
    pub fn new(max: usize, per_ip_max: usize) -> Self {
        Caps { max, per_ip_max, state: Mutex::new(Counts::default()) }
    }

    /// Takes `n` subscriptions for `ip`, all or none.
    pub fn take(&self, ip: IpAddr, n: usize) -> Result<(), CapRefusal> {
        if n == 0 {
            return Ok(());
        }
        let mut c = self.state.lock();
        if c.held + n > self.max {
            return Err(CapRefusal::Capacity(self.max));
        }
        let mine = c.per_ip.get(&ip).copied().unwrap_or(0);
        if self.per_ip_max > 0 && mine + n > self.per_ip_max {
            return Err(CapRefusal::IpShare(self.per_ip_max));
        }
        c.held += n;
        *c.per_ip.entry(ip).or_insert(0) += n;
        Ok(())
    }

    /// Gives back one subscription `ip` took; forgets the address at zero.
    pub fn give_back(&self, ip: IpAddr) {
        let mut c = self.state.lock();
        c.held = c.held.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }

    /// Subscriptions counted now, across all sources.
    pub fn held(&self) -> usize {
        self.state.lock().held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_then_per_address() {
        let c = Caps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        c.take(a, 2).unwrap();
        assert_eq!(c.take(a, 1), Err(CapRefusal::IpShare(2)));
        c.take(b, 1).unwrap();
        assert_eq!(c.take(b, 1), Err(CapRefusal::Capacity(3)));
        c.give_back(a);
        c.take(b, 1).unwrap();
        assert_eq!(c.held(), 3);
    }
}
