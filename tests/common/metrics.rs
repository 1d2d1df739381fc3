//! Reading the admin listener's `/metrics` (OpenMetrics text) the way an operator's scraper
//! would, for a bridge in process ([`admin_metrics`]) or a bridge process ([`metrics_at`]).

use super::app::TestApp;
use super::sse_client;

/// Scrapes the admin listener's `/metrics`.
pub async fn admin_metrics(app: &TestApp) -> String {
    metrics_at(&app.admin_url("/metrics")).await
}

/// Scrapes a `/metrics` URL (e.g. a bridge process's admin listener).
pub async fn metrics_at(url: &str) -> String {
    let r = sse_client::test_client().get(url).send().await.expect("GET /metrics");
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the sample named exactly `series` (name plus labels) in a metrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Scrapes `url` every 50 ms until `done` is set; returns the highest value seen of each of
/// `series` (0 for one never seen): the peaks of gauges such as the live heap.
pub fn spawn_peak_sampler(
    url: String,
    series: &'static [&'static str],
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut peaks = vec![0.0f64; series.len()];
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let m = metrics_at(&url).await;
            for (peak, name) in peaks.iter_mut().zip(series) {
                *peak = peak.max(sample(&m, name).unwrap_or(0.0));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await; // sampling interval
        }
        peaks
    })
}

/// The series counting requests refused for `reason`.
pub fn rejected_series(reason: &str) -> String {
    format!("sse_bridge_requests_rejected_total{{reason=\"{reason}\"}}")
}

/// How many requests `app` refused for `reason` so far (0 before the first).
pub async fn rejected_count(app: &TestApp, reason: &str) -> f64 {
    sample(&admin_metrics(app).await, &rejected_series(reason)).unwrap_or(0.0)
}
