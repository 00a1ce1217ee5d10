//! `rmb-peer --metrics-listen ADDR`: the peer's counters as Prometheus text at
//! `GET /metrics`, so a peer can be watched and alerted on like a relay (`rmb status`
//! shows the same counters to a person).
//!
//! The values are read from the peer ([`Peer::status`]) at each scrape, so they are the
//! very counters `rmb status` shows, not copies that could disagree; only the round-trip
//! histogram is observed as answers arrive.
//!
//! The port is off by default and meant for loopback (or a private monitoring network).
//! It reveals traffic volumes, so it gets the HTTP API's defences against web pages
//! ([`super::access`], [`super::guard`], [`super::listener`]): a `Host` that is not an IP
//! literal, `localhost` or an `--http-host` name is refused (DNS rebinding), so is any
//! cross-origin request; only `GET /metrics` is served; a request body is refused; the
//! headers must arrive within [`HEADER_TIMEOUT`] and fit hyper's buffer; at most
//! [`MAX_CONNECTIONS`] connections are open at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Registry, TextEncoder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::HttpApiError;
use super::access::{Access, Transport};
use super::guard::{Guard, Refusals};
use super::listener::{ConnOptions, Listener};
use crate::core::Peer;
use crate::core::refusals::Reason;

/// Most connections the metrics port holds open at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Deadline for a request's headers (and for an idle keep-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running metrics endpoint.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `listen` and serves `peer`'s metrics; `hosts` are the host names
    /// accepted besides IP literals and `localhost` (rmb-peer's `--http-host`).
    pub async fn start(
        listen: SocketAddr,
        hosts: Vec<String>,
        peer: Peer,
    ) -> Result<MetricsServer, HttpApiError> {
        let (tcp, addr) = super::bind_tcp(listen).await?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the metrics endpoint listens beyond loopback: anyone who reaches it sees this peer's traffic counts");
        }
        let registry = registry(peer);
        let refusals = Arc::new(Refusals::default());
        let guard = Arc::new(Guard {
            // No cross-origin use and no token: only the Host and Sec-Fetch-Site rules.
            access: Access::new(hosts, Vec::new(), None),
            refusals: Arc::clone(&refusals),
            body_timeout: HEADER_TIMEOUT,
            max_body: 0,
        });
        let app = Router::new()
            .route("/metrics", get(render))
            .with_state(Arc::new(registry))
            .layer(axum::middleware::from_fn_with_state(
                guard,
                super::guard::guard,
            ))
            .layer(axum::Extension(Transport::Tcp));
        let options = ConnOptions {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            stall_timeout: HEADER_TIMEOUT,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(super::listener::serve(
            vec![(Listener::Tcp(tcp), app)],
            options,
            refusals,
            stop.clone(),
        ));
        tracing::info!(%addr, "metrics at GET /metrics");
        Ok(MetricsServer { addr, stop, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the listener to close.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn render(State(registry): State<Arc<Registry>>) -> String {
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

/// The registry of one peer: its status read at each scrape, and the round trips.
fn registry(peer: Peer) -> Registry {
    let registry = Registry::new();
    registry
        .register(Box::new(peer.rpc_seconds()))
        .expect("unique metric");
    registry
        .register(Box::new(PeerCollector::new(peer)))
        .expect("unique metric");
    registry
}

/// Every family [`PeerCollector`] exports: name, help, type, label name (if any).
const FAMILIES: [(&str, &str, MetricType, Option<&str>); 15] = [
    (
        "rmb_peer_relays_connected",
        "Relay links logged in now",
        MetricType::GAUGE,
        None,
    ),
    (
        "rmb_peer_relay_connected",
        "1 while the link to this relay is logged in, else 0",
        MetricType::GAUGE,
        Some("relay"),
    ),
    (
        "rmb_peer_relay_reconnects_total",
        "Connections to this relay lost (each followed by a reconnect attempt)",
        MetricType::COUNTER,
        Some("relay"),
    ),
    (
        "rmb_peer_relay_sent_total",
        "Envelopes written to this relay",
        MetricType::COUNTER,
        Some("relay"),
    ),
    (
        "rmb_peer_relay_received_total",
        "Envelopes received from this relay",
        MetricType::COUNTER,
        Some("relay"),
    ),
    (
        "rmb_peer_sent_total",
        "Envelopes handed to a relay",
        MetricType::COUNTER,
        None,
    ),
    (
        "rmb_peer_received_total",
        "Envelopes accepted (verified, decrypted, new)",
        MetricType::COUNTER,
        None,
    ),
    (
        "rmb_peer_rejected_total",
        "Envelopes refused, by reason (rmb status: rejected_by)",
        MetricType::COUNTER,
        Some("reason"),
    ),
    (
        "rmb_peer_unanswered_total",
        "Refused requests left without an error envelope",
        MetricType::COUNTER,
        None,
    ),
    (
        "rmb_peer_resent_total",
        "Envelopes sent again because no answer came (or a link reconnected)",
        MetricType::COUNTER,
        None,
    ),
    (
        "rmb_peer_duplicates_total",
        "Copies of envelopes already accepted, dropped",
        MetricType::COUNTER,
        None,
    ),
    (
        "rmb_peer_replayed_total",
        "Repeated requests answered from the reply cache",
        MetricType::COUNTER,
        None,
    ),
    (
        "rmb_peer_awaiting",
        "Requests sent and not answered yet (kept for resending)",
        MetricType::GAUGE,
        None,
    ),
    (
        "rmb_peer_sent_unsigned_total",
        "Requests and answers sent without a signature, authenticated by their encryption",
        MetricType::COUNTER,
        None,
    ),
    (
        "rmb_peer_received_unsigned_total",
        "Unsigned envelopes their encryption authenticated (copies included)",
        MetricType::COUNTER,
        None,
    ),
];

/// Reads [`Peer::status`] at each scrape and exports it as [`FAMILIES`].
struct PeerCollector {
    peer: Peer,
    descs: Vec<Desc>,
}

impl PeerCollector {
    fn new(peer: Peer) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, label)| {
                let labels = label.iter().map(|l| l.to_string()).collect();
                Desc::new(name.to_string(), help.to_string(), labels, HashMap::new())
                    .expect("valid metric")
            })
            .collect();
        PeerCollector { peer, descs }
    }
}

impl Collector for PeerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.peer.status();
        let per_relay = |value: fn(&crate::links::LinkStatus) -> u64| -> Vec<(String, u64)> {
            s.relays.iter().map(|l| (l.url.clone(), value(l))).collect()
        };
        // Every reason, zeros included: a rate over a series that appears late misses
        // its first refusals.
        let rejected: Vec<(String, u64)> = Reason::ALL
            .iter()
            .map(|r| {
                let label = r.as_str();
                (
                    label.to_string(),
                    s.rejected_by.get(label).copied().unwrap_or(0),
                )
            })
            .collect();
        let connected = s.relays.iter().filter(|l| l.connected).count() as u64;
        let one = |v: u64| vec![(String::new(), v)];
        let values: [Vec<(String, u64)>; 15] = [
            one(connected),
            per_relay(|l| u64::from(l.connected)),
            per_relay(|l| l.reconnects),
            per_relay(|l| l.sent),
            per_relay(|l| l.received),
            one(s.sent),
            one(s.received),
            rejected,
            one(s.unanswered),
            one(s.resent),
            one(s.duplicates),
            one(s.replayed),
            one(s.awaiting),
            one(s.sent_unsigned),
            one(s.received_unsigned),
        ];
        FAMILIES
            .iter()
            .zip(values)
            .map(|((name, help, kind, label), values)| {
                let metrics = values
                    .into_iter()
                    .map(|(value_label, v)| metric(*kind, *label, value_label, v as f64))
                    .collect();
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(*kind);
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

fn metric(kind: MetricType, label: Option<&str>, value_label: String, value: f64) -> Metric {
    let labels = label
        .map(|name| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value_label);
            pair
        })
        .into_iter()
        .collect();
    let mut metric = Metric::from_label(labels);
    if kind == MetricType::COUNTER {
        let mut counter = Counter::default();
        counter.set_value(value);
        metric.set_counter(counter);
    } else {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        metric.set_gauge(gauge);
    }
    metric
}
