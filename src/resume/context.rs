//! What a resume reads from the bridge's shared state, borrowed for one registration.

use std::sync::Arc;

use super::reader::BrokerReader;
use crate::durable::{Catalog, Positions};
use crate::ingest::LastSeq;
use crate::metrics::Metrics;
use crate::replay::ReplayStore;

/// The parts of the shared state a resume needs; the handler lends them from its state for the
/// length of one `Registry::subscribe_from`.
#[derive(Debug, Clone, Copy)]
pub struct ResumeContext<'a> {
    /// The durable streams (empty: ids are `<run>-<seq>` and only the ring serves resumes).
    pub catalog: &'a Arc<Catalog>,
    /// Where the sequencer stands in every durable stream.
    pub positions: &'a Positions,
    /// The last sequence the sequencer published.
    pub last_seq: &'a LastSeq,
    pub replay: &'a Arc<ReplayStore>,
    pub reader: &'a Arc<BrokerReader>,
    pub metrics: &'a Arc<Metrics>,
    /// This process's run id: ids of this run can be resumed from the ring.
    pub run_id: u64,
    /// The in-place resume of a stream that never left (`crate::client`, `spill-reread`): a
    /// broker range longer than `resume.max_events` is read in pages, each written before the
    /// next is read, instead of its newest events behind a `replay-limit` gap.
    pub in_place: bool,
}
