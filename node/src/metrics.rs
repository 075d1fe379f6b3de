//! Counters and latency histograms for `GET /metrics` (Prometheus text format 0.0.4). Written
//! by hand: a handful of atomics, no registry to configure.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use onecard_engine::fast_map::FastDashMap;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// Adds this histogram's counts into `into` (to sum several routes).
    fn add_to(&self, into: &mut LatencySummary) {
        for (i, b) in self.buckets.iter().enumerate() {
            into.buckets[i] += b.load(Ordering::Relaxed);
        }
        into.count += self.count.load(Ordering::Relaxed);
        into.sum_micros += self.sum_micros.load(Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Latencies summed over some routes, for people (the operator's dashboard).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySummary {
    /// Cumulative counts per bucket of [`BUCKETS`].
    buckets: [u64; BUCKETS.len()],
    pub count: u64,
    sum_micros: u64,
}

impl LatencySummary {
    /// The mean, in seconds (0 without requests).
    pub fn mean_secs(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_micros as f64 / 1e6 / self.count as f64
        }
    }

    /// The smallest bucket bound at or under which at least `q` (0 to 1) of the requests were
    /// answered, in seconds: an upper bound of the quantile. `None` without requests, and
    /// `Some(f64::INFINITY)` when it is above the largest bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let wanted = (q * self.count as f64).ceil().max(1.0) as u64;
        Some(
            BUCKETS
                .iter()
                .zip(self.buckets)
                .find(|(_, n)| *n >= wanted)
                .map_or(f64::INFINITY, |(b, _)| *b),
        )
    }
}

/// The latency of one (route, method).
pub type RouteLatency = ((&'static str, &'static str), LatencySummary);

#[derive(Default)]
pub struct Metrics {
    /// By (route pattern, method, status).
    pub requests: FastDashMap<(&'static str, &'static str, u16), AtomicU64>,
    /// By route pattern and method.
    pub latency: FastDashMap<(&'static str, &'static str), Histogram>,
    pub orders_created: AtomicU64,
    /// Journal events about orders, by the state they moved the order to.
    pub order_events: FastDashMap<&'static str, AtomicU64>,
    pub prints_ok: AtomicU64,
    pub prints_failed: AtomicU64,
    pub webhooks_ok: AtomicU64,
    pub webhooks_failed: AtomicU64,
    pub webhooks_abandoned: AtomicU64,
}

impl Metrics {
    /// One answered request. `route` is the route table's pattern and `method` one of a closed
    /// set, both static: a client cannot grow the metrics, and counting allocates nothing.
    pub fn request(&self, route: &'static str, method: &'static str, status: u16, secs: f64) {
        let key = (route, method, status);
        match self.requests.get(&key) {
            Some(n) => {
                n.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.requests
                    .entry(key)
                    .or_default()
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let key = (key.0, key.1);
        match self.latency.get(&key) {
            Some(h) => h.observe(secs),
            None => self.latency.entry(key).or_default().observe(secs),
        }
    }

    /// The latency of the routes `take` accepts, summed, and per (route, method), in route
    /// order.
    pub fn latency_summary(
        &self,
        take: impl Fn(&str) -> bool,
    ) -> (LatencySummary, Vec<RouteLatency>) {
        let mut all = LatencySummary::default();
        let mut per_route = Vec::new();
        for e in self.latency.iter().filter(|e| take(e.key().0)) {
            let mut one = LatencySummary::default();
            e.value().add_to(&mut one);
            e.value().add_to(&mut all);
            per_route.push((*e.key(), one));
        }
        per_route.sort_by(|a, b| a.0.cmp(&b.0));
        (all, per_route)
    }

    /// How many orders reached each state, from the journal, in state order.
    pub fn order_event_counts(&self) -> Vec<(&'static str, u64)> {
        let mut states: Vec<_> = self
            .order_events
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        states.sort();
        states
    }

    pub fn order_event(&self, state: &'static str) {
        self.order_events
            .entry(state)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition; `gauges` are point-in-time values the caller reads (queue depths, the
    /// journal's counters).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP onecard_http_requests_total HTTP requests answered, by route, method and status.\n# TYPE onecard_http_requests_total counter\n");
        let mut rows: Vec<_> = self
            .requests
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((route, method, status), n) in rows {
            let _ = writeln!(
                out,
                "onecard_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP onecard_http_request_duration_seconds Time to answer a request, by route and method.\n# TYPE onecard_http_request_duration_seconds histogram\n");
        let mut keys: Vec<_> = self.latency.iter().map(|e| *e.key()).collect();
        keys.sort();
        for k in keys {
            if let Some(h) = self.latency.get(&k) {
                h.render(
                    &mut out,
                    "onecard_http_request_duration_seconds",
                    &format!("route=\"{}\",method=\"{}\"", k.0, k.1),
                );
            }
        }
        let _ = writeln!(out, "# HELP onecard_orders_created_total Orders created by merchants (checkout sessions).\n# TYPE onecard_orders_created_total counter\nonecard_orders_created_total {}", self.orders_created.load(Ordering::Relaxed));
        out.push_str("# HELP onecard_order_events_total Orders reaching a state, from the journal.\n# TYPE onecard_order_events_total counter\n");
        let mut states: Vec<_> = self
            .order_events
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        states.sort();
        for (s, n) in states {
            let _ = writeln!(out, "onecard_order_events_total{{state=\"{s}\"}} {n}");
        }
        out.push_str("# HELP onecard_prints_total Print attempts, by result.\n# TYPE onecard_prints_total counter\n");
        let _ = writeln!(
            out,
            "onecard_prints_total{{result=\"ok\"}} {}\nonecard_prints_total{{result=\"failed\"}} {}",
            self.prints_ok.load(Ordering::Relaxed),
            self.prints_failed.load(Ordering::Relaxed)
        );
        out.push_str("# HELP onecard_webhook_attempts_total Webhook delivery attempts, by result.\n# TYPE onecard_webhook_attempts_total counter\n");
        let _ = writeln!(
            out,
            "onecard_webhook_attempts_total{{result=\"ok\"}} {}\nonecard_webhook_attempts_total{{result=\"failed\"}} {}",
            self.webhooks_ok.load(Ordering::Relaxed),
            self.webhooks_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP onecard_webhooks_abandoned_total Webhook events given up after webhook_give_up_after_secs.\n# TYPE onecard_webhooks_abandoned_total counter\nonecard_webhooks_abandoned_total {}",
            self.webhooks_abandoned.load(Ordering::Relaxed)
        );
        for (name, help, value) in gauges {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request("/v1/orders", "POST", 201, 0.002);
        m.request("/v1/orders", "POST", 201, 0.2);
        let text = m.render(&[("onecard_x", "x", 1.0)]);
        assert!(text.contains("onecard_http_request_duration_seconds_bucket{route=\"/v1/orders\",method=\"POST\",le=\"0.0025\"} 1"), "{text}");
        assert!(text.contains("le=\"0.25\"} 2"), "{text}");
        assert!(text.contains(
            "onecard_http_requests_total{route=\"/v1/orders\",method=\"POST\",status=\"201\"} 2"
        ));
        assert!(text.contains("# TYPE onecard_x gauge\nonecard_x 1"));
    }

    #[test]
    fn the_summary_sums_routes_and_bounds_quantiles_by_buckets() {
        let m = Metrics::default();
        assert_eq!(m.latency_summary(|_| true).0.quantile_bound(0.5), None);
        for _ in 0..9 {
            m.request("/v1/orders", "POST", 201, 0.002);
        }
        m.request("/v1/orders/{order}", "GET", 200, 0.3);
        m.request("(none)", "GET", 200, 9.0);
        let (all, routes) = m.latency_summary(|r| r != "(none)");
        assert_eq!(all.count, 10);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].0, ("/v1/orders", "POST"));
        assert_eq!(all.quantile_bound(0.5), Some(0.0025));
        assert_eq!(all.quantile_bound(0.9), Some(0.0025));
        assert_eq!(all.quantile_bound(0.99), Some(0.5));
        assert!(
            (all.mean_secs() - 0.0318).abs() < 1e-9,
            "{}",
            all.mean_secs()
        );
        let (everything, _) = m.latency_summary(|_| true);
        assert_eq!(everything.count, 11);
        assert_eq!(everything.quantile_bound(1.0), Some(f64::INFINITY));
    }
}
