//! jemalloc's own figures as gauges (`sse_bridge_jemalloc_*_bytes`), read from
//! [`crate::allocator`] on each scrape, so "RSS up, live heap flat" (pages the allocator has
//! not yet given back) can be told apart from a leak (`sse_bridge_heap_allocated_bytes` up).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::allocator;

/// Refreshes jemalloc's statistics on each scrape and encodes one gauge per figure.
#[derive(Debug, Default)]
pub struct AllocatorCollector;

impl Collector for AllocatorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = allocator::stats() else { return Ok(()) };
        // The live heap itself is `heap_allocated_bytes` (registered with the other gauges).
        let figures = [
            ("jemalloc_active", "Bytes in pages holding live allocations (jemalloc stats.active).", s.active),
            ("jemalloc_resident", "Bytes in resident pages mapped by jemalloc: active, dirty, metadata.", s.resident),
            ("jemalloc_dirty", "Freed pages jemalloc has not yet returned to the OS (purged on decay).", s.dirty),
            ("jemalloc_retained", "Virtual memory jemalloc returned to the OS but keeps mapped for reuse.", s.retained),
            ("jemalloc_mapped", "Bytes in extents mapped by jemalloc (jemalloc stats.mapped).", s.mapped),
            ("jemalloc_metadata", "Bytes of jemalloc's own metadata (jemalloc stats.metadata).", s.metadata),
        ];
        for (name, help, value) in figures {
            let g = ConstGauge::new(value as i64);
            g.encode(encoder.encode_descriptor(name, help, Some(&Unit::Bytes), g.metric_type())?)?;
        }
        Ok(())
    }
}
