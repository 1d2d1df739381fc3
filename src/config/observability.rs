//! What the bridge tells its operators: `[log]` and `[telemetry]` (OpenTelemetry traces).

use serde::{Deserialize, Serialize};

use super::check::{Checked, Invalid, check_url};

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter (`info`, `sse_bridge=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event, for a terminal or `journalctl`.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// OpenTelemetry trace export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export traces over OTLP (HTTP/protobuf). Off by default; off costs nothing per event.
    pub traces: bool,
    /// OTLP traces endpoint, e.g. `http://collector:4318/v1/traces`. Unset: the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, else
    /// `http://localhost:4318/v1/traces`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Share of traces sampled when the publisher sent no sampling decision (0.0 to 1.0);
    /// a publisher's sampled flag is always followed.
    pub sampling_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { traces: false, otlp_endpoint: None, sampling_ratio: 1.0, service_name: "sse-bridge".into() }
    }
}

impl TelemetryConfig {
    /// A ratio that is a share, and an endpoint the OTLP/HTTP exporter can reach.
    pub fn check(&self) -> Checked {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(Invalid::new("telemetry.sampling_ratio", "must be between 0.0 and 1.0"));
        }
        if let Some(e) = &self.otlp_endpoint {
            check_url(e, &["http", "https"])
                .map_err(|r| Invalid::new("telemetry.otlp_endpoint", format!("{e:?}: {r}")))?;
        }
        Ok(())
    }
}
