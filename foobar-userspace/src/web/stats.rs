//! The web tier's counters, kept with relaxed atomics on the request path and read as a
//! [`WebSummary`] by `foobar status` and the metrics: requests by status class (in all, and by
//! site and route), a latency histogram, TLS handshakes by version, open connections, upstream
//! errors.

use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// Requests by status class (1xx..5xx at indexes 0..4) for one site and route.
pub type ClassCounters = [AtomicU64; 5];

/// The status classes, by index.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// The per (site, route) counters, kept across reloads: a reloaded site finds its counters
/// again by name, so the series never reset.
#[derive(Default)]
pub struct RouteCounters {
    by_route: Mutex<BTreeMap<(String, String), Arc<ClassCounters>>>,
}

impl RouteCounters {
    /// The counters of `route` on `site` (created on first use).
    pub fn get(&self, site: &str, route: &str) -> Arc<ClassCounters> {
        let mut map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((site.to_owned(), route.to_owned())).or_default().clone()
    }

    fn snapshot(&self) -> Vec<RouteRequests> {
        let map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .flat_map(|((site, route), counters)| {
                CLASSES.iter().zip(counters.iter()).map(|(class, n)| RouteRequests {
                    site: site.clone(),
                    route: route.clone(),
                    class: (*class).to_owned(),
                    requests: n.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}

/// Requests of one status class on one site's route.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RouteRequests {
    /// The site's first name.
    pub site: String,
    /// `static`, a proxy prefix, `redirect` (HTTP→HTTPS), `refused` (smuggling shapes and the
    /// like) or `rate_limited` (a client over `client_request_rate`).
    pub route: String,
    /// `1xx` .. `5xx`.
    pub class: String,
    /// Requests answered.
    pub requests: u64,
}

/// Upper bounds of the latency histogram's buckets, seconds (Prometheus-style, cumulative when
/// read); a last bucket takes the rest.
pub const LATENCY_BOUNDS_S: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Why a proxied request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No server could be tried (503).
    NoServer,
    /// Connecting or the exchange failed (502).
    Failed,
    /// No response headers in time (504).
    Timeout,
}

/// Live counters.
#[derive(Default)]
pub struct WebStats {
    /// Latency histogram: one count per bound, plus one for the rest.
    latency: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    /// Sum of latencies, microseconds.
    latency_sum_us: AtomicU64,
    tls12: AtomicU64,
    tls13: AtomicU64,
    tls_failed: AtomicU64,
    upstream: [AtomicU64; 3],
    /// Requests by site, route and status class (their sums are the totals by class).
    pub routes: RouteCounters,
}

/// A snapshot of the counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebSummary {
    /// Requests answered, by status class ("2xx", ...).
    pub requests: Vec<(String, u64)>,
    /// Cumulative latency histogram: (upper bound in seconds, count); the +Inf bucket is
    /// `latency_count`.
    pub latency_buckets: Vec<(f64, u64)>,
    /// Requests timed (every answered request).
    pub latency_count: u64,
    /// Sum of request latencies, seconds.
    pub latency_sum_s: f64,
    /// Completed TLS 1.2 handshakes.
    pub tls12_handshakes: u64,
    /// Completed TLS 1.3 handshakes.
    pub tls13_handshakes: u64,
    /// Handshakes that failed or timed out.
    pub tls_failed_handshakes: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Proxied requests that failed: no server, failed, timed out.
    pub upstream_errors: Vec<(String, u64)>,
    /// Requests by site, route and status class.
    #[serde(default)]
    pub by_route: Vec<RouteRequests>,
    /// Each upstream pool's servers.
    #[serde(default)]
    pub upstreams: Vec<super::proxy::UpstreamStatus>,
}

impl WebStats {
    /// Counts one answered request of a site's route (counters from [`RouteCounters::get`]).
    pub fn request(&self, route: &ClassCounters, status: u16, took: Duration) {
        route[class_index(status)].fetch_add(1, Ordering::Relaxed);
        let s = took.as_secs_f64();
        let bucket = LATENCY_BOUNDS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BOUNDS_S.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a handshake: its version, or None when it failed.
    pub fn handshake(&self, version: Option<&str>) {
        let counter = match version {
            Some("TLSv1.3") => &self.tls13,
            Some(_) => &self.tls12,
            None => &self.tls_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed proxied request.
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot, with the open connection count from the admission counter.
    pub fn summary(&self, open_connections: u64) -> WebSummary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut cumulative = 0;
        let latency_buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_S
            .iter()
            .zip(&self.latency)
            .map(|(bound, n)| {
                cumulative += get(n);
                (*bound, cumulative)
            })
            .collect();
        let latency_count = cumulative + get(&self.latency[LATENCY_BOUNDS_S.len()]);
        let by_route = self.routes.snapshot();
        WebSummary {
            requests: CLASSES
                .iter()
                .map(|class| {
                    let n = by_route.iter().filter(|r| r.class == *class).map(|r| r.requests).sum();
                    (class.to_string(), n)
                })
                .collect(),
            latency_buckets,
            latency_count,
            latency_sum_s: get(&self.latency_sum_us) as f64 / 1e6,
            tls12_handshakes: get(&self.tls12),
            tls13_handshakes: get(&self.tls13),
            tls_failed_handshakes: get(&self.tls_failed),
            open_connections,
            upstream_errors: ["no_server", "failed", "timeout"]
                .iter()
                .zip(&self.upstream)
                .map(|(k, n)| (k.to_string(), get(n)))
                .collect(),
            by_route,
            // The pools are the web tier's to fill in (`WebTier::summary_source`).
            upstreams: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_classes_count() {
        let s = WebStats::default();
        let route = s.routes.get("www.foobar.com", "static");
        s.request(&route, 200, Duration::from_micros(300));
        s.request(&route, 404, Duration::from_millis(3));
        s.request(&route, 503, Duration::from_secs(10));
        let sum = s.summary(2);
        assert_eq!(sum.requests[1], ("2xx".into(), 1));
        assert_eq!(sum.requests[3], ("4xx".into(), 1));
        assert_eq!(sum.latency_buckets[0], (0.0005, 1));
        assert_eq!(sum.latency_buckets[3], (0.005, 2));
        assert_eq!(sum.latency_buckets.last().map(|b| b.1), Some(2));
        assert_eq!(sum.latency_count, 3);
        assert_eq!(sum.open_connections, 2);
    }
}
