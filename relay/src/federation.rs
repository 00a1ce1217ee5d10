//! Federation: envelopes between relays, over `POST /` with the raw envelope bytes.
//!
//! **Outbound** ([`Federator::forward`]): try the destination twin's relays in the order
//! of the [`Ranker`] (fewest recent failures first); `202 Accepted` is success, any other
//! 4xx is final (the remote refused it, the sender is told why), anything else counts as
//! that relay's failure and the next is tried, in at most three passes and never past the
//! envelope's own deadline.
//!
//! **Inbound** ([`ingress`]): unlike rmb-rs, which accepts anything, an envelope is only
//! accepted if it is signed by the twin it claims to come from (checked against the
//! registry), is not a relay-made (twin 0) message, is within the size limit and the
//! sender's rate limit, and is for a twin that lives here.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rmb_identity::registry::RelayResolver;
use rmb_identity::registry::http::error_chain;
use rmb_identity::verify_envelope;
use rmb_proto::Envelope;

use crate::config::Config;
use crate::errors::RouteError;
use crate::ranker::Ranker;
use crate::routing::{Origin, route};
use crate::state::RelayState;

/// Timeout of one federation POST.
const POST_TIMEOUT: Duration = Duration::from_secs(3);
/// Passes over a twin's relay list before giving up.
const PASSES: u32 = 3;

/// Sends envelopes to other relays.
pub struct Federator {
    client: reqwest::Client,
    ranker: Mutex<Ranker>,
    resolver: RelayResolver,
    scheme: &'static str,
}

impl Federator {
    /// A federator for `config` (scheme, ranker period, `--resolve` overrides).
    pub fn new(config: &Config) -> Self {
        Federator {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(POST_TIMEOUT)
                .build()
                .expect("HTTP client with static settings"),
            ranker: Mutex::new(Ranker::new(config.ranker_period)),
            resolver: config.resolver.clone(),
            scheme: if config.federation_http {
                "http"
            } else {
                "https"
            },
        }
    }

    fn ranked(&self, relays: &BTreeSet<String>, now: u64) -> Vec<String> {
        let mut order: Vec<String> = relays.iter().cloned().collect();
        let mut ranker = self.ranker.lock().unwrap_or_else(|p| p.into_inner());
        ranker.order(&mut order, now, &mut rand::thread_rng());
        order
    }

    fn downvote(&self, relay: &str, now: u64) {
        let mut ranker = self.ranker.lock().unwrap_or_else(|p| p.into_inner());
        ranker.downvote(relay, now);
    }

    /// Delivers `bytes` to one of `relays` before `deadline`; returns the relay used,
    /// or why none took it.
    pub async fn forward(
        &self,
        bytes: Bytes,
        relays: &BTreeSet<String>,
        deadline: u64,
    ) -> Result<String, String> {
        let mut failures = Vec::new();
        for pass in 0..PASSES {
            for relay in self.ranked(relays, rmb_proto::time::unix_now()) {
                if rmb_proto::time::unix_now() >= deadline {
                    failures.push("envelope expired before delivery".to_string());
                    return Err(failures.join("; "));
                }
                let url = format!("{}://{}/", self.scheme, self.resolver.resolve(&relay));
                let result = self
                    .client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(bytes.clone())
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status() == StatusCode::ACCEPTED => return Ok(relay),
                    Ok(response) if response.status().is_client_error() => {
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        return Err(format!("{relay} refused it: {status}: {body}"));
                    }
                    Ok(response) => failures.push(format!("{relay}: {}", response.status())),
                    Err(e) => failures.push(format!("{relay}: {}", error_chain(&e))),
                }
                self.downvote(&relay, rmb_proto::time::unix_now());
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(pass + 1))).await;
        }
        Err(format!(
            "no relay of the destination accepted it ({})",
            failures.join("; ")
        ))
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

/// `POST /`: an envelope from another relay.
pub async fn ingress(State(state): State<Arc<RelayState>>, body: Bytes) -> Response {
    let now = rmb_proto::time::unix_now();
    state.metrics.messages_in.inc();
    state.metrics.bytes_in.inc_by(body.len() as u64);
    let env = match Envelope::decode_limited(&body, state.config.max_envelope_size) {
        Ok(env) => env,
        Err(rmb_proto::DecodeError::TooLarge { size, limit }) => {
            state.metrics.error("oversize");
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("envelope of {size} bytes exceeds the limit of {limit} bytes"),
            );
        }
        Err(e) => {
            state.metrics.error("malformed");
            return refuse(StatusCode::BAD_REQUEST, format!("bad request: {e}"));
        }
    };
    let source = env.source_twin();
    if source == 0 {
        state.metrics.error("unsigned_federation");
        return refuse(
            StatusCode::BAD_REQUEST,
            "federated envelopes must come from a twin (source twin 0 is refused)",
        );
    }
    if let Err(reason) = state.rate_limit(source, body.len(), now) {
        state.metrics.rate_limited.inc();
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!("exceeded rate limits: {reason}"),
        );
    }
    let account = match state.registry.get_twin(source).await {
        Ok(Some(twin)) => twin.account,
        Ok(None) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                format!("unknown source twin {source}"),
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("failed to get twin: {e}"),
            );
        }
    };
    if let Err(e) = verify_envelope(&env, &account) {
        state.metrics.error("bad_signature");
        return refuse(StatusCode::UNAUTHORIZED, e.to_string());
    }
    match route(&state, &Origin::Federation, body, env, now).await {
        Ok(()) => {
            state.metrics.federated_in.inc();
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => {
            let status = match e {
                RouteError::DestinationOffline | RouteError::UnknownTwin => StatusCode::NOT_FOUND,
                RouteError::Federation(_) => StatusCode::MISDIRECTED_REQUEST,
                RouteError::QueueFull(_) | RouteError::RateLimited(_) => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                RouteError::Registry(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            refuse(status, e.to_string())
        }
    }
}
