//! The standard process metrics, under the names of the Prometheus process collector
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`, …), so stock dashboards and alerts work on
//! the bridge unchanged.
//!
//! `prometheus-client` has no process collector of its own, so this one reads the figures from
//! [`crate::process`] (through `procfs`) when `/metrics` is scraped and writes them without the
//! `sse_bridge_` prefix. Open file descriptors against their limit are the first wall a busy
//! node meets: every stream is one socket.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::process;

/// Reads `/proc/self` on each scrape and encodes the `process_*` families.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Nothing rather than zeros where /proc cannot be read: a 0 would look like a figure.
        let Some(s) = process::stats() else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        let help = "Total user and system CPU time spent in seconds.";
        cpu.encode(encoder.encode_descriptor("process_cpu", help, Some(&Unit::Seconds), cpu.metric_type())?)?;
        gauge(&mut encoder, "process_open_fds", "Number of open file descriptors.", None, s.open_fds as f64)?;
        if let Some(max) = s.max_fds {
            gauge(&mut encoder, "process_max_fds", "Maximum number of open file descriptors.", None, max as f64)?;
        }
        let bytes = Some(&Unit::Bytes);
        gauge(&mut encoder, "process_virtual_memory", "Virtual memory size in bytes.", bytes, s.virtual_bytes as f64)?;
        gauge(
            &mut encoder,
            "process_resident_memory",
            "Resident memory size in bytes.",
            bytes,
            s.resident_bytes as f64,
        )?;
        let help = "Start time of the process since unix epoch in seconds.";
        gauge(&mut encoder, "process_start_time", help, Some(&Unit::Seconds), s.start_time_seconds)?;
        gauge(&mut encoder, "process_threads", "Number of OS threads in the process.", None, s.threads as f64)
    }
}

/// Encodes one gauge family with a single unlabelled sample.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}
