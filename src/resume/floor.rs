//! The id floor of a resumed stream: no id a client gets goes back on any durable stream.
//!
//! A client's id is its whole resume cursor, so it must only grow, for every durable stream:
//! an id whose position for stream S went back would make the next resume read S again from
//! there, and the client would get those events twice. Two things can send it back, both on a
//! process whose own positions differ from the client's (docs/delivery.md, "Ids only grow"):
//!
//! - the client comes from a replica that had read further in S than this process: this
//!   process's live frames carry its own, older position for S until it catches up;
//! - broker frames (stamped up to the snapshot) go out ahead of ring events of this run with
//!   lower sequence numbers, whose frames carry the positions of their time.
//!
//! The frames are built once per event and shared, so they cannot be changed; instead the
//! stream's queue passes each frame with an id through a [`Floor`] holding the component-wise
//! max of every vector the client has had (its cursor's first). A frame below it anywhere gets
//! a copy with the raised id (for this client only); a live frame at or above it everywhere
//! retires the floor, as every later live frame is too. So only resumed clients of a process
//! that is behind them copy frames, and only until it has caught up.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::client::{IdFloor, Stamped};
use crate::durable::{Catalog, Pos};

/// The positions a resumed client already has, raised with every frame it gets.
#[derive(Debug)]
pub struct Floor {
    catalog: Arc<Catalog>,
    vector: Vec<Option<Pos>>,
    /// Reused for the raised id.
    id: String,
}

impl Floor {
    /// A floor at `vector` (the client's cursor).
    pub fn new(catalog: Arc<Catalog>, vector: Vec<Option<Pos>>) -> Self {
        Floor { catalog, vector, id: String::new() }
    }
}

impl IdFloor for Floor {
    fn stamp(&mut self, frame: &Bytes, live: bool) -> Stamped {
        let keep = Stamped { frame: None, retire: false };
        let Some(end) = frame.iter().position(|&b| b == b'\n') else { return keep };
        let Some(id) = frame.get(4..end).and_then(|b| std::str::from_utf8(b).ok()) else { return keep };
        let (base, Some(got)) = self.catalog.parse_cursor(id) else { return keep };
        let mut below = false;
        for (have, got) in self.vector.iter_mut().zip(got) {
            match (*have, got) {
                (Some(h), Some(g)) if g < h => below = true,
                (Some(_), None) => below = true,
                (_, g @ Some(_)) => *have = g,
                (None, None) => {}
            }
        }
        if !below {
            return Stamped { frame: None, retire: live };
        }
        self.id.clear();
        self.id.push_str(base);
        self.catalog.write_vector(&self.vector, &mut self.id);
        let rest = &frame[end..];
        let mut out = BytesMut::with_capacity(4 + self.id.len() + rest.len());
        out.put_slice(b"id: ");
        out.put_slice(self.id.as_bytes());
        out.put_slice(rest);
        Stamped { frame: Some(out.freeze()), retire: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, JetStreamConfig, RedisStreamsConfig};

    fn catalog() -> Arc<Catalog> {
        let c = Config {
            jetstream: Some(JetStreamConfig { streams: vec!["ORDERS".into()], ..Default::default() }),
            redis_streams: Some(RedisStreamsConfig { keys: vec!["audit".into()], ..Default::default() }),
            ..Default::default()
        };
        Arc::new(Catalog::from_config(&c))
    }

    fn frame(cat: &Catalog, base: &str, v: &[Option<Pos>]) -> Bytes {
        let mut id = base.to_owned();
        cat.write_vector(v, &mut id);
        Bytes::from(format!("id: {id}\ndata: x\n\n"))
    }

    const fn js(a: u64) -> Option<Pos> {
        Some(Pos { a, b: 0 })
    }

    const fn rs(a: u64) -> Option<Pos> {
        Some(Pos { a, b: 1 })
    }

    #[test]
    fn raises_ids_below_the_floor_and_retires_on_a_live_frame_above_it() {
        let cat = catalog();
        let mut f = Floor::new(cat.clone(), vec![js(10), rs(5)]);
        // Behind on the JetStream stream: raised, for this client only.
        let behind = frame(&cat, "00000000000b-7", &[js(8), rs(6)]);
        let out = f.stamp(&behind, true);
        assert!(!out.retire);
        assert_eq!(out.frame.unwrap(), frame(&cat, "00000000000b-7", &[js(10), rs(6)]));
        // The Redis position it raised stays: a later frame below it is raised too.
        let older = frame(&cat, "00000000000b-8", &[js(11), rs(5)]);
        assert_eq!(f.stamp(&older, false).frame.unwrap(), frame(&cat, "00000000000b-8", &[js(11), rs(6)]));
        // A replayed frame at the floor is sent as it is, and keeps the floor.
        let even = frame(&cat, "00000000000b-9", &[js(11), rs(6)]);
        let out = f.stamp(&even, false);
        assert!(out.frame.is_none() && !out.retire);
        // A live one at or above it everywhere retires it.
        let out = f.stamp(&even, true);
        assert!(out.frame.is_none() && out.retire);
        // A position the frame lacks is added.
        let mut f = Floor::new(cat.clone(), vec![js(3), None]);
        let lacking = frame(&cat, "00000000000b-1", &[None, rs(1)]);
        assert_eq!(f.stamp(&lacking, true).frame.unwrap(), frame(&cat, "00000000000b-1", &[js(3), rs(1)]));
    }
}
