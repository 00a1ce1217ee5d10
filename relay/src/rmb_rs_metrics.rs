//! The metric names rmb-rs's relay exports, kept beside this relay's own in `/metrics`
//! so ThreeFold's dashboards and alerts keep working against this relay.
//!
//! Each is counted where its event happens here (never derived from another of our
//! counters at scrape time, except the twin cache, whose counts live in the cache):
//!
//! | rmb-rs name | counted here when |
//! |---|---|
//! | `relay_message_rx`, `_bytes` | an envelope is accepted for a session of this relay: handed to its connection, its offline queue, or (with replicas) its replica's connection; pongs and error envelopes included, as rmb-rs counts every `XADD` into a session stream |
//! | `relay_message_tx`, `_bytes` | envelopes are written to a client connection |
//! | `relay_worker_connections{worker="0"}` | sessions connected (this relay has no worker pool: one worker holds them all) |
//! | `relay_session_evictions_total{reason}` | a session ends: `cancelled` (client closed, read failed or went silent, replaced, shutdown), `closed` (writing failed), `back_pressure_timeout` (slow reader, write timeout) |
//! | `relay_message_rx_twin{twin}` | as `relay_message_rx`, by destination twin; only with `--metrics-twin-labels N` |
//! | `federation_message_success{relay}`, `federation_message_error{relay}` | a federation try to that relay is accepted, or fails or is refused |
//! | `rmb_cache_{hits,misses,flushes}_total`, `rmb_cache_entries` | the twin cache in front of the registry |
//!
//! The names are exactly rmb-rs's (the `prometheus` crate adds no `_total` itself).
//! Label values that others choose (twin ids, relay names from the registry) are capped
//! ([`LabelCap`]): past the cap they count under `other`, so a registry full of made-up
//! relay names cannot grow `/metrics` without bound.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rmb_identity::registry::Registry as TwinRegistry;

/// Most distinct `relay` label values of `federation_message_*`; others count as `other`.
pub const RELAY_LABELS: usize = 1000;
/// The label value of everything past a [`LabelCap`].
pub const OTHER: &str = "other";

/// How one session ended, in rmb-rs's words (`relay_session_evictions_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The connection ended from its reading side or was replaced or shut down.
    Cancelled,
    /// Writing to the client failed.
    Closed,
    /// The client did not read fast enough (outbox full too long, a write timed out).
    BackPressureTimeout,
}

impl Eviction {
    fn label(self) -> &'static str {
        match self {
            Eviction::Cancelled => "cancelled",
            Eviction::Closed => "closed",
            Eviction::BackPressureTimeout => "back_pressure_timeout",
        }
    }
}

/// Label values admitted first come, first served, up to a maximum; later ones are
/// [`OTHER`]. Why: label values chosen by others must not grow `/metrics` without bound.
pub struct LabelCap {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelCap {
    /// A cap of `max` distinct values.
    pub fn new(max: usize) -> Self {
        LabelCap {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// `value` if it is (or can still become) one of the admitted values, else [`OTHER`].
    pub fn label<'a>(&self, value: &'a str) -> &'a str {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value;
        }
        if seen.len() < self.max && value != OTHER {
            seen.insert(value.to_string());
            return value;
        }
        OTHER
    }
}

/// rmb-rs's relay metrics, registered in the relay's own registry.
pub struct RmbRsMetrics {
    message_rx: IntCounter,
    message_rx_bytes: IntCounter,
    message_tx: IntCounter,
    message_tx_bytes: IntCounter,
    worker_connections: IntGauge,
    evictions: IntCounterVec,
    /// `relay_message_rx_twin`, with its cap; `None` unless `--metrics-twin-labels`.
    rx_twin: Option<(IntCounterVec, LabelCap)>,
    federation: FederationCounters,
}

/// `federation_message_success{relay}` and `federation_message_error{relay}`: handed to
/// the federator, which counts each try where it is judged.
#[derive(Clone)]
pub struct FederationCounters {
    success: IntCounterVec,
    error: IntCounterVec,
    relays: Arc<LabelCap>,
}

impl FederationCounters {
    /// A try to `relay` was accepted.
    pub fn success(&self, relay: &str) {
        let label = self.relays.label(relay);
        self.success.with_label_values(&[label]).inc();
    }

    /// A try to `relay` failed or was refused.
    pub fn error(&self, relay: &str) {
        let label = self.relays.label(relay);
        self.error.with_label_values(&[label]).inc();
    }
}

fn registered<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl RmbRsMetrics {
    /// Creates rmb-rs's metrics in `registry`; `twin_labels` > 0 turns on
    /// `relay_message_rx_twin` for that many distinct twins.
    pub fn new(registry: &Registry, twin_labels: usize) -> Self {
        let counter = |name: &str, help: &str| {
            registered(registry, IntCounter::new(name, help).expect("valid metric"))
        };
        let vec = |name: &str, help: &str, label: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registered(registry, v)
        };
        let workers = registered(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "relay_worker_connections",
                    "Sessions connected (rmb-rs name; one worker, \"0\", holds them all here)",
                ),
                &["worker"],
            )
            .expect("valid metric"),
        );
        let evictions = vec(
            "relay_session_evictions_total",
            "Sessions ended, by rmb-rs reason (cancelled, closed, back_pressure_timeout)",
            "reason",
        );
        for reason in [
            Eviction::Cancelled,
            Eviction::Closed,
            Eviction::BackPressureTimeout,
        ] {
            evictions.with_label_values(&[reason.label()]);
        }
        let rx_twin = (twin_labels > 0).then(|| {
            let v = vec(
                "relay_message_rx_twin",
                "Envelopes accepted for sessions here, by destination twin (rmb-rs tracker; capped by --metrics-twin-labels, the rest under twin=\"other\")",
                "twin",
            );
            (v, LabelCap::new(twin_labels))
        });
        RmbRsMetrics {
            message_rx: counter(
                "relay_message_rx",
                "Envelopes accepted for sessions of this relay (connection, offline queue or replica), errors and pongs included (rmb-rs name)",
            ),
            message_rx_bytes: counter(
                "relay_message_rx_bytes",
                "Bytes of the envelopes counted in relay_message_rx (rmb-rs name)",
            ),
            message_tx: counter(
                "relay_message_tx",
                "Envelopes written to client connections (rmb-rs name)",
            ),
            message_tx_bytes: counter(
                "relay_message_tx_bytes",
                "Bytes of the envelopes counted in relay_message_tx (rmb-rs name)",
            ),
            worker_connections: workers.with_label_values(&["0"]),
            evictions,
            rx_twin,
            federation: FederationCounters {
                success: vec(
                    "federation_message_success",
                    "Federation tries accepted, by destination relay (rmb-rs name)",
                    "relay",
                ),
                error: vec(
                    "federation_message_error",
                    "Federation tries that failed or were refused, by destination relay (rmb-rs name)",
                    "relay",
                ),
                relays: Arc::new(LabelCap::new(RELAY_LABELS)),
            },
        }
    }

    /// An envelope of `bytes` was accepted for a session of twin `twin`.
    pub fn accepted(&self, twin: u32, bytes: usize) {
        self.message_rx.inc();
        self.message_rx_bytes.inc_by(bytes as u64);
        if let Some((counter, cap)) = &self.rx_twin {
            let twin = twin.to_string();
            counter.with_label_values(&[cap.label(&twin)]).inc();
        }
    }

    /// `count` envelopes of `bytes` in all were written to a client.
    pub fn written(&self, count: usize, bytes: usize) {
        self.message_tx.inc_by(count as u64);
        self.message_tx_bytes.inc_by(bytes as u64);
    }

    /// The number of sessions connected changed to `sessions`.
    pub fn sessions(&self, sessions: usize) {
        self.worker_connections.set(sessions as i64);
    }

    /// A session ended so.
    pub fn evicted(&self, how: Eviction) {
        self.evictions.with_label_values(&[how.label()]).inc();
    }

    /// The per-relay federation counters, for the federator.
    pub fn federation(&self) -> FederationCounters {
        self.federation.clone()
    }

    /// Exports `rmb_cache_*` from `twins`' cache (read when scraped) in `registry`.
    pub fn watch_cache(registry: &Registry, twins: Arc<dyn TwinRegistry>) {
        let cache = TwinCache::new(twins);
        registry.register(Box::new(cache)).expect("unique metric");
    }
}

/// `rmb_cache_*`: the counts the twin cache keeps itself, read at each scrape.
struct TwinCache {
    twins: Arc<dyn TwinRegistry>,
    descs: Vec<Desc>,
}

const CACHE_METRICS: [(&str, &str, MetricType); 4] = [
    (
        "rmb_cache_hits_total",
        "Twin lookups answered from the relay's twin cache",
        MetricType::COUNTER,
    ),
    (
        "rmb_cache_misses_total",
        "Twin lookups the twin cache could not answer (the registry was asked)",
        MetricType::COUNTER,
    ),
    (
        "rmb_cache_flushes_total",
        "Times the whole twin cache was emptied (registry change feed (re)started)",
        MetricType::COUNTER,
    ),
    (
        "rmb_cache_entries",
        "Twins in the twin cache now",
        MetricType::GAUGE,
    ),
];

impl TwinCache {
    fn new(twins: Arc<dyn TwinRegistry>) -> Self {
        let descs = CACHE_METRICS
            .iter()
            .map(|(name, help, _)| {
                Desc::new(name.to_string(), help.to_string(), vec![], HashMap::new())
                    .expect("valid metric")
            })
            .collect();
        TwinCache { twins, descs }
    }
}

impl Collector for TwinCache {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // A registry without a cache reads zeros: the names stay, dashboards do not break.
        let stats = self.twins.cache_stats().unwrap_or_default();
        let values = [stats.hits, stats.misses, stats.flushes, stats.entries];
        CACHE_METRICS
            .iter()
            .zip(values)
            .map(|((name, help, kind), value)| family(name, help, *kind, value as f64))
            .collect()
    }
}

fn family(name: &str, help: &str, kind: MetricType, value: f64) -> MetricFamily {
    let mut metric = Metric::from_label(Vec::<LabelPair>::new());
    if kind == MetricType::COUNTER {
        let mut counter = Counter::default();
        counter.set_value(value);
        metric.set_counter(counter);
    } else {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        metric.set_gauge(gauge);
    }
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(vec![metric]);
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_cap_admits_the_first_values_and_names_the_rest_other() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("b"), "b");
        assert_eq!(cap.label("c"), OTHER);
        assert_eq!(cap.label("a"), "a");
    }

    #[test]
    fn the_names_are_rmb_rs_names_exactly_and_of_their_types() {
        let registry = Registry::new();
        let m = RmbRsMetrics::new(&registry, 1);
        m.accepted(7, 10);
        m.accepted(8, 5);
        m.written(2, 15);
        m.sessions(3);
        m.evicted(Eviction::BackPressureTimeout);
        m.federation().success("relay.example");
        m.federation().error("relay.example");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for line in [
            "# TYPE relay_message_rx counter",
            "relay_message_rx 2",
            "relay_message_rx_bytes 15",
            "relay_message_tx 2",
            "relay_message_tx_bytes 15",
            "relay_worker_connections{worker=\"0\"} 3",
            "relay_session_evictions_total{reason=\"back_pressure_timeout\"} 1",
            "relay_session_evictions_total{reason=\"closed\"} 0",
            "relay_message_rx_twin{twin=\"7\"} 1",
            "relay_message_rx_twin{twin=\"other\"} 1",
            "federation_message_success{relay=\"relay.example\"} 1",
            "federation_message_error{relay=\"relay.example\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
