//! Prometheus metrics of the relay, served at `GET /metrics`.
//!
//! Each relay owns its own registry (not the process-global one), so tests can run
//! several relays in one process without their counters mixing.

use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::federation::BatchCounters;
use crate::rmb_rs_metrics::RmbRsMetrics;

/// Every counter the relay keeps.
pub struct Metrics {
    registry: Registry,
    pub sessions: IntGauge,
    pub messages_in: IntCounter,
    pub bytes_in: IntCounter,
    pub messages_out: IntCounter,
    pub bytes_out: IntCounter,
    pub queued: IntCounter,
    pub queue_depth: IntGauge,
    pub federated_out: IntCounter,
    pub federated_in: IntCounter,
    /// Batches sent to other relays, the envelopes in them, relays found not to batch.
    batches_out: IntCounter,
    batched_envelopes_out: IntCounter,
    unbatched_relays: IntCounter,
    /// Batches received from other relays (`POST /federation/batch`) that were batches.
    pub batches_in: IntCounter,
    /// Unsigned connection data frames received from other relays, counted before
    /// their rate limit (charged to claimed twin and posting address, never to the
    /// twin alone).
    pub unsigned_frames_in: IntCounter,
    /// Bytes waiting in the offline queues (as counted against their limits).
    pub queue_bytes: IntGauge,
    /// `relay_errors_total{kind="rate_limited"}` itself (one counter, not a second one
    /// that could disagree).
    pub rate_limited: IntCounter,
    /// Every refusal, by reason: `relay_errors_total{kind}`.
    pub errors: IntCounterVec,
    pub route_seconds: Histogram,
    /// What the replica links do (`--redis` only).
    pub replicas: ReplicaCounters,
    /// The names rmb-rs's relay exports, so its dashboards and alerts keep working.
    pub rmb_rs: RmbRsMetrics,
}

/// The counters of the replica links ([`crate::replicas`]).
#[derive(Clone)]
pub struct ReplicaCounters {
    /// Envelopes another replica acknowledged as delivered to its session.
    pub forwarded: IntCounter,
    /// Envelopes other replicas handed to sessions connected here.
    pub received: IntCounter,
    /// Envelopes a link gave back to the offline queue, by reason.
    pub returned: IntCounterVec,
    /// Links from other replicas refused or ended in error, by reason.
    pub refused: IntCounterVec,
    /// Outbound links up.
    pub links: IntGauge,
    /// Presence lookups in Redis (cache misses).
    pub lookups: IntCounter,
    /// Connections here ended because their session connected to another replica.
    pub evicted: IntCounter,
}

impl Metrics {
    /// Creates and registers all metrics (`relay_message_rx_twin` off).
    pub fn new() -> Self {
        Self::with_twin_labels(0)
    }

    /// Creates and registers all metrics; `twin_labels` > 0 turns on rmb-rs's
    /// per-twin `relay_message_rx_twin` for that many twins (`--metrics-twin-labels`).
    pub fn with_twin_labels(twin_labels: usize) -> Self {
        let registry = Registry::new();
        let rmb_rs = RmbRsMetrics::new(&registry, twin_labels);
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let errors = IntCounterVec::new(
            Opts::new("relay_errors_total", "Envelopes refused, by reason"),
            &["kind"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(errors.clone()))
            .expect("unique metric");
        let route_seconds = Histogram::with_opts(
            HistogramOpts::new("relay_route_seconds", "Time to route one envelope").buckets(vec![
                1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(route_seconds.clone()))
            .expect("unique metric");
        let vec = |name: &str, help: &str, label: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("unique metric");
            v
        };
        let replicas = ReplicaCounters {
            forwarded: counter(
                "relay_replica_forwarded_total",
                "Envelopes delivered through another replica of this relay (replica links)",
            ),
            received: counter(
                "relay_replica_received_total",
                "Envelopes other replicas handed to sessions connected here",
            ),
            returned: vec(
                "relay_replica_returned_total",
                "Envelopes a replica link gave back to the offline queue, by reason",
                "reason",
            ),
            refused: vec(
                "relay_replica_links_refused_total",
                "Links from other replicas refused or ended in error, by reason",
                "reason",
            ),
            links: gauge("relay_replica_links", "Replica links up from this replica"),
            lookups: counter(
                "relay_replica_presence_lookups_total",
                "Session presence looked up in Redis (presence cache misses)",
            ),
            evicted: counter(
                "relay_replica_evicted_total",
                "Connections ended here because their session connected to another replica",
            ),
        };
        Metrics {
            rmb_rs,
            replicas,
            sessions: gauge("relay_sessions", "Connected sessions"),
            messages_in: counter(
                "relay_messages_in_total",
                "Envelopes received from clients and relays",
            ),
            bytes_in: counter("relay_bytes_in_total", "Bytes of envelopes received"),
            messages_out: counter(
                "relay_messages_out_total",
                "Envelopes handed to client connections",
            ),
            bytes_out: counter(
                "relay_bytes_out_total",
                "Bytes of envelopes handed to client connections",
            ),
            queued: counter(
                "relay_queued_total",
                "Envelopes queued for offline sessions",
            ),
            queue_depth: gauge(
                "relay_queue_depth",
                "Envelopes waiting for offline sessions",
            ),
            federated_out: counter(
                "relay_federated_out_total",
                "Envelopes forwarded to other relays",
            ),
            federated_in: counter(
                "relay_federated_in_total",
                "Envelopes accepted from other relays",
            ),
            batches_out: counter(
                "relay_federation_batches_out_total",
                "Batches of envelopes sent to other relays (POST /federation/batch)",
            ),
            batched_envelopes_out: counter(
                "relay_federation_batched_envelopes_out_total",
                "Envelopes sent to other relays in batches",
            ),
            unbatched_relays: counter(
                "relay_federation_unbatched_relays_total",
                "Times a relay was found not to take batches (then posted to one envelope at a time)",
            ),
            batches_in: counter(
                "relay_federation_batches_in_total",
                "Batches of envelopes received from other relays",
            ),
            unsigned_frames_in: counter(
                "relay_unsigned_frames_in_total",
                "Unsigned envelopes (connection data frames, topic pushes and answers) received from other relays (before their rate limit)",
            ),
            queue_bytes: gauge(
                "relay_queue_bytes",
                "Bytes waiting in the offline queues of this process",
            ),
            rate_limited: errors.with_label_values(&["rate_limited"]),
            errors,
            route_seconds,
            registry,
        }
    }

    /// The counters federation's lanes keep.
    pub fn batch_counters(&self) -> BatchCounters {
        BatchCounters {
            batches_out: self.batches_out.clone(),
            envelopes_out: self.batched_envelopes_out.clone(),
            relays_unbatched: self.unbatched_relays.clone(),
        }
    }

    /// Exports the twin cache of `twins` (rmb-rs's `rmb_cache_*`), read at each scrape.
    pub fn watch_twin_cache(&self, twins: Arc<dyn rmb_identity::registry::Registry>) {
        RmbRsMetrics::watch_cache(&self.registry, twins);
    }

    /// Counts a refused envelope (or frame, or login) under `kind` (a short, fixed label).
    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
