//! Identical work done once: a map of the futures in flight by key, which a second request with
//! the same key joins instead of starting its own. Used for broker reads (`reader.rs`) and for
//! the frames built from them (`share.rs`).
//!
//! The map holds weak references only: a future whose waiters all left is dropped (its work
//! stops), and the entry goes with it. A finished future takes its own entry out, so a request
//! that comes after it starts afresh (what it would read may have changed).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};
use parking_lot::Mutex;

/// A future in flight, as every request joining it awaits it.
pub(super) type Joined<T> = Shared<Work<T>>;

/// The work behind a key.
type Work<T> = BoxFuture<'static, Arc<T>>;

/// The entries, shared with each future so it can take its own out when done.
type Entries<K, T> = Arc<Mutex<HashMap<K, WeakShared<Work<T>>>>>;

/// The futures in flight, by key.
pub(super) struct Coalesce<K, T> {
    map: Entries<K, T>,
}

impl<K, T> Default for Coalesce<K, T> {
    fn default() -> Self {
        Coalesce { map: Arc::default() }
    }
}

impl<K, T> std::fmt::Debug for Coalesce<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesce").field("inflight", &self.map.lock().len()).finish()
    }
}

impl<K, T> Coalesce<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    /// The future in flight for `key`, or a new one made by `start`; true when it joined one.
    pub(super) fn join_or_start<F>(&self, key: K, start: impl FnOnce() -> F) -> (Joined<T>, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut map = self.map.lock();
        if let Some(running) = map.get(&key).and_then(WeakShared::upgrade) {
            return (running, true);
        }
        let work = start();
        let (entries, k) = (self.map.clone(), key.clone());
        let fut = async move {
            let out = work.await;
            entries.lock().remove(&k);
            Arc::new(out)
        }
        .boxed()
        .shared();
        map.retain(|_, w| w.upgrade().is_some());
        if let Some(w) = fut.downgrade() {
            map.insert(key, w);
        }
        (fut, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_same_key_joins_until_the_work_is_done() {
        let c: Coalesce<u8, u32> = Coalesce::default();
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let (a, joined_a) = c.join_or_start(1, || async move {
            let _ = gate_rx.await;
            7
        });
        let (b, joined_b) = c.join_or_start(1, || async { unreachable!("joined") });
        let (other, joined_other) = c.join_or_start(2, || async { 9 });
        assert_eq!((joined_a, joined_b, joined_other), (false, true, false));
        gate_tx.send(()).unwrap();
        assert_eq!((*a.await, *b.await, *other.await), (7, 7, 9));
        // Done: the next request starts afresh.
        let (again, joined) = c.join_or_start(1, || async { 8 });
        assert!(!joined);
        assert_eq!(*again.await, 8);
    }

    #[tokio::test]
    async fn work_whose_waiters_all_left_is_dropped() {
        let c: Coalesce<u8, u32> = Coalesce::default();
        let (a, _) = c.join_or_start(1, std::future::pending::<u32>);
        drop(a);
        let (b, joined) = c.join_or_start(1, || async { 3 });
        assert!(!joined);
        assert_eq!(*b.await, 3);
    }
}
