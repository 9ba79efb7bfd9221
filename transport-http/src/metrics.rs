//! Prometheus metrics of one router: requests by route and status, latency
//! histograms, rows served, live pulls waiting, and the work queues' depths.
//!
//! Every router owns its own [`prometheus::Registry`] (no process-wide
//! state), so two routers in one process, or many tests, never share counts.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use sync_core::Error;

/// Latency buckets in seconds: from half a millisecond (a "no changes" pull)
/// to a minute (a live pull held for its whole wait).
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];

/// The metrics of one router.
#[derive(Clone)]
pub(crate) struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    rows_served: IntCounterVec,
    mutations: IntCounterVec,
    live_pulls: IntGauge,
    queue_depth: IntGaugeVec,
}

fn metric_error(e: prometheus::Error) -> Error {
    Error::internal(format!("metrics: {e}"))
}

impl HttpMetrics {
    /// A fresh registry with every metric registered.
    pub(crate) fn new() -> Result<Self, Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered, by route template, method and status"),
            &["route", "method", "status"],
        )
        .map_err(metric_error)?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from receiving a request to its response head, by route template and method",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .map_err(metric_error)?;
        let rows_served = IntCounterVec::new(
            Opts::new("sync_rows_served_total", "Membership ops sent to devices by pulls (puts and removes)"),
            &["op"],
        )
        .map_err(metric_error)?;
        let mutations = IntCounterVec::new(
            Opts::new("sync_mutations_total", "Uploaded mutations by outcome"),
            &["outcome"],
        )
        .map_err(metric_error)?;
        let live_pulls = IntGauge::new("sync_live_pulls_waiting", "Pulls currently held open in live mode")
            .map_err(metric_error)?;
        let queue_depth = IntGaugeVec::new(
            Opts::new("sync_queue_depth", "Messages of the work queues by state, read at scrape time"),
            &["queue", "state"],
        )
        .map_err(metric_error)?;
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(rows_served.clone()),
            Box::new(mutations.clone()),
            Box::new(live_pulls.clone()),
            Box::new(queue_depth.clone()),
        ] {
            registry.register(collector).map_err(metric_error)?;
        }
        Ok(HttpMetrics { registry, requests, latency, rows_served, mutations, live_pulls, queue_depth })
    }

    /// Counts one answered request.
    pub(crate) fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let mut code = itoa_status(status);
        let code = code.as_str();
        self.requests.with_label_values(&[route, method, code]).inc();
        self.latency.with_label_values(&[route, method]).observe(seconds);
    }

    /// Counts the ops of one pull response.
    pub(crate) fn rows_served(&self, puts: u64, removes: u64) {
        if puts > 0 {
            self.rows_served.with_label_values(&["put"]).inc_by(puts);
        }
        if removes > 0 {
            self.rows_served.with_label_values(&["remove"]).inc_by(removes);
        }
    }

    /// Counts one mutation's outcome (`applied`, `conflict`, `rejected`).
    pub(crate) fn mutation(&self, outcome: &str) {
        self.mutations.with_label_values(&[outcome]).inc();
    }

    /// The gauge of live pulls waiting.
    pub(crate) fn live_pulls(&self) -> &IntGauge {
        &self.live_pulls
    }

    /// Sets a queue's depth gauges.
    pub(crate) fn set_queue_depth(&self, queue: &str, depth: &sync_core::queue::QueueDepth) {
        for (state, n) in [
            ("ready", depth.ready),
            ("delayed", depth.delayed),
            ("leased", depth.leased),
            ("dead", depth.dead),
        ] {
            self.queue_depth.with_label_values(&[queue, state]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(8 * 1024);
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out).map_err(metric_error)?;
        Ok(out)
    }
}

/// A status code as text without allocating.
struct StatusText([u8; 3]);

impl StatusText {
    fn as_str(&mut self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("000")
    }
}

fn itoa_status(status: u16) -> StatusText {
    let s = status.min(999);
    // Each digit is below ten, so the casts cannot truncate.
    let digit = |n: u16| b'0' + (n % 10) as u8;
    StatusText([digit(s / 100), digit(s / 10), digit(s)])
}

/// The content type of the text exposition format.
pub(crate) const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_and_queues() {
        let m = HttpMetrics::new().unwrap();
        m.observe("/v1/orgs/{org}/sync/pull", "POST", 200, 0.002);
        m.observe("/v1/orgs/{org}/sync/pull", "POST", 200, 0.004);
        m.observe("unmatched", "GET", 404, 0.0001);
        m.rows_served(3, 1);
        m.set_queue_depth(
            "datasync",
            &sync_core::queue::QueueDepth { ready: 2, delayed: 1, leased: 0, dead: 4 },
        );
        let text = String::from_utf8(m.render().unwrap()).unwrap();
        assert!(
            text.contains(
                r#"http_requests_total{method="POST",route="/v1/orgs/{org}/sync/pull",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#));
        assert!(text.contains(r#"http_request_duration_seconds_bucket{method="POST",route="/v1/orgs/{org}/sync/pull",le="0.005"} 2"#), "{text}");
        assert!(text.contains(r#"sync_rows_served_total{op="put"} 3"#));
        assert!(text.contains(r#"sync_queue_depth{queue="datasync",state="dead"} 4"#));
    }

    #[test]
    fn status_text() {
        assert_eq!(itoa_status(200).as_str(), "200");
        assert_eq!(itoa_status(307).as_str(), "307");
        assert_eq!(itoa_status(5).as_str(), "005");
    }
}
