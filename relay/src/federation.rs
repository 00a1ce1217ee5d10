//! Federation: envelopes between relays, over `POST /` with the raw envelope bytes.
//!
//! **Outbound** ([`Federator::forward`]): try the destination twin's relays in the order
//! of the [`Ranker`] (fewest recent failures first); `202 Accepted` is success, any other
//! 4xx is final (the remote refused it, the sender is told why), anything else counts as
//! that relay's failure and the next is tried, in at most three passes and never past the
//! envelope's own deadline. When no relay of the destination can be reached,
//! [`Federator::deliver`] keeps trying (every 0.5 s doubling to 5 s) until the envelope
//! expires, as for a twin that is offline here: a relay restarting elsewhere delays
//! messages, it does not fail them. Only `fail-fast` envelopes get the error at once, and
//! the envelopes waiting this way are bounded in bytes ([`RETRY_BUDGET_KIB`]).
//!
//! **Inbound** ([`ingress`]): unlike rmb-rs, which accepts anything, an envelope is only
//! accepted if it is signed by the twin it claims to come from (checked against the
//! registry), is not a relay-made (twin 0) message, is within the size limit and the
//! sender's rate limit, and is for a twin that lives here.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

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
/// Most bytes (in KiB) of envelopes kept waiting for an unreachable relay at once.
pub const RETRY_BUDGET_KIB: u32 = 64 * 1024;
/// First pause before trying an unreachable destination again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why [`Federator::forward`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    reason: String,
    /// A relay refused it (4xx): trying again cannot help.
    refused: bool,
}

/// Sends envelopes to other relays.
pub struct Federator {
    client: reqwest::Client,
    /// KiB of envelopes waiting to be tried again.
    retry_budget: Arc<Semaphore>,
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
            retry_budget: Arc::new(Semaphore::new(RETRY_BUDGET_KIB as usize)),
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

    /// Delivers `bytes` to one of `relays` before `deadline`; returns the relay used, or
    /// why none took it. With `keep_trying`, relays that cannot be reached are tried
    /// again until the deadline (within the retry budget).
    pub async fn deliver(
        &self,
        bytes: Bytes,
        relays: &BTreeSet<String>,
        deadline: u64,
        keep_trying: bool,
    ) -> Result<String, String> {
        let mut pause = RETRY_FIRST;
        let mut held = None;
        loop {
            let failure = match self.forward(bytes.clone(), relays, deadline).await {
                Ok(relay) => return Ok(relay),
                Err(failure) => failure,
            };
            let next_try = rmb_proto::time::unix_now() + pause.as_secs().max(1);
            if failure.refused || !keep_trying || next_try >= deadline {
                return Err(failure.reason);
            }
            if held.is_none() {
                let kib = u32::try_from(bytes.len() / 1024 + 1).unwrap_or(u32::MAX);
                match Arc::clone(&self.retry_budget).try_acquire_many_owned(kib) {
                    Ok(permit) => held = Some(permit),
                    Err(_) => {
                        return Err(format!(
                            "{}; not tried again: too many envelopes wait for relays",
                            failure.reason
                        ));
                    }
                }
            }
            tracing::debug!(error = %failure.reason, retry_in = ?pause, "federation failed; trying again until the envelope expires");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// One attempt: up to [`PASSES`] passes over `relays`, best ranked first.
    async fn forward(
        &self,
        bytes: Bytes,
        relays: &BTreeSet<String>,
        deadline: u64,
    ) -> Result<String, Failure> {
        let mut failures = Vec::new();
        for pass in 0..PASSES {
            for relay in self.ranked(relays, rmb_proto::time::unix_now()) {
                if rmb_proto::time::unix_now() >= deadline {
                    failures.push("envelope expired before delivery".to_string());
                    return Err(Failure {
                        reason: failures.join("; "),
                        refused: true,
                    });
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
                        return Err(Failure {
                            reason: format!("{relay} refused it: {status}: {body}"),
                            refused: true,
                        });
                    }
                    Ok(response) => failures.push(format!("{relay}: {}", response.status())),
                    Err(e) => failures.push(format!("{relay}: {}", error_chain(&e))),
                }
                self.downvote(&relay, rmb_proto::time::unix_now());
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(pass + 1))).await;
        }
        Err(Failure {
            reason: format!(
                "no relay of the destination accepted it ({})",
                failures.join("; ")
            ),
            refused: false,
        })
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
