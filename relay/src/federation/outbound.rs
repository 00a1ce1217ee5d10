//! [`Federator`]: sending envelopes to other relays (`POST /` with the envelope bytes).
//!
//! [`Federator::forward`] tries the destination twin's relays in the order of the
//! [`Ranker`] (fewest recent failures first), skipping the ones [`TargetPolicy`] refuses;
//! `202 Accepted` is success, any other 4xx is final (the remote refused it), anything
//! else counts as that relay's failure and the next is tried, in at most three passes
//! and never past the envelope's own deadline. When no relay of the destination can be
//! reached, [`Federator::deliver`] keeps trying (every 0.5 s doubling to 5 s) until the
//! envelope expires, as for a twin that is offline here: a relay restarting elsewhere
//! delays messages, it does not fail them. Only `fail-fast` envelopes get the error at
//! once, and the envelopes waiting this way are bounded in bytes ([`RETRY_BUDGET_KIB`]).
//!
//! Each relay is sent to through its [lane](super::lane), in batches, unless it does
//! not take them; then, and for envelopes too large for a batch, one `POST /` each.
//!
//! What a remote relay answers is never passed on to the sender (see
//! [`FederationError`]); it is logged, at most once per [`LOG_EVERY`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::FederationError;
use super::lane::{BatchCounters, Lanes};
use super::outcome::{Posted, Then};
use super::target::{GuardedResolver, TargetError, TargetPolicy};
use crate::config::Config;
use crate::ranker::Ranker;
use crate::rmb_rs_metrics::FederationCounters;
use crate::throttle::LogThrottle;

/// Timeout of one federation POST.
const POST_TIMEOUT: Duration = Duration::from_secs(3);
/// Passes over a twin's relay list before giving up.
const PASSES: u32 = 3;
/// Most bytes (in KiB) of envelopes kept waiting for an unreachable relay at once.
pub const RETRY_BUDGET_KIB: u32 = 64 * 1024;
/// Most bytes (in KiB) of envelopes being forwarded by their own tasks at once: posted
/// alone (too large for a batch, a relay that does not batch, a full lane) or tried
/// again after a first try that failed. Past it the sender gets an error at once: a
/// relay that accepts connections and never answers cannot make this one hold, for its
/// twins, more than this (the lanes have their own budget).
pub const FORWARDING_BUDGET_KIB: u32 = 128 * 1024;
/// First pause before trying an unreachable destination again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Most log lines per kind of federation failure: one per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Most bytes of a refusing relay's answer that are logged.
const LOGGED_ANSWER: usize = 200;

/// The federation log lines that remote parties (a twin's registry entry, the relays it
/// points to) can trigger, each throttled on its own.
static NOT_ALLOWED_LOG: LogThrottle = LogThrottle::new(LOG_EVERY);
static REFUSED_LOG: LogThrottle = LogThrottle::new(LOG_EVERY);
static FAILED_LOG: LogThrottle = LogThrottle::new(LOG_EVERY);

/// An envelope no lane took ([`Federator::start_then`] gives it back):
/// [`Federator::deliver`] delivers it.
pub struct Outgoing {
    bytes: Bytes,
    destination: u32,
}

/// How an envelope's first try went (see [`Federator::start_then`]).
pub struct FirstTry {
    relay: String,
    base: String,
    posted: Posted,
}

impl Outgoing {
    /// Bytes of the envelope.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }
}

impl FirstTry {
    /// The relay took it: nothing is left to do.
    pub fn taken(&self) -> bool {
        self.posted == Posted::Accepted
    }
}

/// What one relay's answer means for an envelope.
enum Judged {
    Taken,
    /// Refused for good: no other relay is tried.
    Refused,
    /// Not an allowed target: not counted as tried.
    NotAllowed,
    /// Try the next relay.
    Failed,
}

/// Sends envelopes to other relays.
pub struct Federator {
    client: reqwest::Client,
    /// KiB of envelopes waiting to be tried again.
    retry_budget: Arc<Semaphore>,
    /// KiB of envelopes forwarded by their own tasks ([`FORWARDING_BUDGET_KIB`]).
    forwarding_budget: Arc<Semaphore>,
    ranker: Mutex<Ranker>,
    targets: Arc<TargetPolicy>,
    scheme: &'static str,
    lanes: Lanes,
    /// rmb-rs's `federation_message_{success,error}{relay}`, counted per try.
    per_relay: FederationCounters,
}

impl Federator {
    /// A federator for `config` (scheme, ranker period, `--resolve` overrides,
    /// `--federation-allow`, batching), whose lanes run under `tasks` until `shutdown`;
    /// each try is counted per relay in `per_relay`.
    pub fn new(
        config: &Config,
        counters: BatchCounters,
        per_relay: FederationCounters,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let targets = Arc::new(TargetPolicy::new(
            &config.federation_allow,
            config.resolver.clone(),
        ));
        let client = reqwest::Client::builder()
            // https:// relays are checked against the roots of `rmb_identity::trust`
            // (system store, SSL_CERT_FILE / SSL_CERT_DIR, --relay-ca).
            .use_preconfigured_tls(rmb_identity::trust::client_config().as_ref().clone())
            .connect_timeout(Duration::from_secs(2))
            .timeout(POST_TIMEOUT)
            // A redirect could point anywhere (e.g. 127.0.0.1): relays answer, they
            // do not redirect. Proxies would connect past the address check.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&targets))))
            .build()
            .expect("HTTP client with static settings");
        Federator {
            lanes: Lanes::new(
                client.clone(),
                config.federation_batch,
                counters,
                tasks,
                shutdown,
            ),
            client,
            per_relay,
            retry_budget: Arc::new(Semaphore::new(RETRY_BUDGET_KIB as usize)),
            forwarding_budget: Arc::new(Semaphore::new(FORWARDING_BUDGET_KIB as usize)),
            ranker: Mutex::new(Ranker::new(config.ranker_period)),
            targets,
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

    /// Starts federating `bytes`, an envelope for twin `destination`: queues it at once
    /// in the lane to the best ranked of `relays` if that relay takes batches, so that
    /// envelopes for one twin leave in the order they were routed. Nothing waits while
    /// it is there: `then` is called in the lane (it must not block) with the first
    /// try's outcome; [`FirstTry::taken`] says whether that was the end of it, else
    /// [`finish`](Self::finish) goes on from it. Gives the envelope back as an
    /// [`Outgoing`] (for [`deliver`](Self::deliver)) when no lane takes it.
    pub fn start_then(
        &self,
        bytes: Bytes,
        destination: u32,
        relays: &BTreeSet<String>,
        then: impl FnOnce(FirstTry) + Send + 'static,
    ) -> Result<(), Outgoing> {
        let not_queued = |bytes| Outgoing { bytes, destination };
        let Some((relay, base)) = self.first_choice(relays) else {
            return Err(not_queued(bytes));
        };
        let lane_base = base.clone();
        let per_relay = self.per_relay.clone();
        let callback: Then = Box::new(move |posted| {
            // Taken at the first try, the envelope never reaches `judge`: count it here.
            if posted == Posted::Accepted {
                per_relay.success(&relay);
            }
            then(FirstTry {
                relay,
                base,
                posted,
            })
        });
        match self
            .lanes
            .queue_then(&lane_base, destination, &bytes, callback)
        {
            Ok(()) => Ok(()),
            Err(_uncalled) => Err(not_queued(bytes)),
        }
    }

    /// A share of [`FORWARDING_BUDGET_KIB`] for an envelope of `bytes` forwarded by its
    /// own task, held until the task ends; `None` when the budget is spent.
    pub fn forwarding_permit(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes / 1024 + 1).unwrap_or(u32::MAX);
        Arc::clone(&self.forwarding_budget)
            .try_acquire_many_owned(kib)
            .ok()
    }

    /// The best ranked allowed relay of `relays` (as `forward` would try first), and
    /// its base URL.
    fn first_choice(&self, relays: &BTreeSet<String>) -> Option<(String, String)> {
        self.ranked(relays, rmb_proto::time::unix_now())
            .into_iter()
            .find_map(|relay| Some((self.base_url(&relay).ok()?, relay)))
            .map(|(base, relay)| (relay, base))
    }

    /// Delivers `outgoing` to one of `relays` before `deadline`; returns the relay used,
    /// or why none took it. With `keep_trying`, relays that cannot be reached are tried
    /// again until the deadline (within the retry budget).
    pub async fn deliver(
        &self,
        outgoing: Outgoing,
        relays: &BTreeSet<String>,
        deadline: u64,
        keep_trying: bool,
    ) -> Result<String, FederationError> {
        let Outgoing { bytes, destination } = outgoing;
        self.finish(bytes, destination, None, relays, deadline, keep_trying)
            .await
    }

    /// Goes on from the first try (if one was made) as [`deliver`](Self::deliver) does.
    pub async fn finish(
        &self,
        bytes: Bytes,
        destination: u32,
        first: Option<FirstTry>,
        relays: &BTreeSet<String>,
        deadline: u64,
        keep_trying: bool,
    ) -> Result<String, FederationError> {
        if let Some(FirstTry {
            relay,
            base,
            posted,
        }) = first
        {
            let posted = match posted {
                Posted::Alone => self.post_alone(&base, &bytes).await,
                posted => posted,
            };
            match self.judge(&relay, posted) {
                Judged::Taken => return Ok(relay),
                Judged::Refused => return Err(FederationError::Refused),
                Judged::Failed | Judged::NotAllowed => {}
            }
        }
        let mut pause = RETRY_FIRST;
        let mut held = None;
        loop {
            let failure = match self.forward(&bytes, destination, relays, deadline).await {
                Ok(relay) => return Ok(relay),
                Err(failure) => failure,
            };
            let next_try = rmb_proto::time::unix_now().saturating_add(pause.as_secs().max(1));
            if failure != FederationError::Unreachable || !keep_trying || next_try >= deadline {
                return Err(failure);
            }
            if held.is_none() {
                let kib = u32::try_from(bytes.len() / 1024 + 1).unwrap_or(u32::MAX);
                match Arc::clone(&self.retry_budget).try_acquire_many_owned(kib) {
                    Ok(permit) => held = Some(permit),
                    Err(_) => return Err(FederationError::Busy),
                }
            }
            tracing::debug!(retry_in = ?pause, "federation failed; trying again until the envelope expires");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// One attempt: up to [`PASSES`] passes over `relays`, best ranked first.
    async fn forward(
        &self,
        bytes: &Bytes,
        destination: u32,
        relays: &BTreeSet<String>,
        deadline: u64,
    ) -> Result<String, FederationError> {
        for pass in 0..PASSES {
            let mut tried = 0usize;
            for relay in self.ranked(relays, rmb_proto::time::unix_now()) {
                if rmb_proto::time::unix_now() >= deadline {
                    return Err(FederationError::Expired);
                }
                let base = match self.base_url(&relay) {
                    Ok(base) => base,
                    Err(e) => {
                        log_not_allowed(&e);
                        continue;
                    }
                };
                tried += 1;
                let posted = self.post(&base, destination, bytes).await;
                match self.judge(&relay, posted) {
                    Judged::Taken => return Ok(relay),
                    Judged::Refused => return Err(FederationError::Refused),
                    Judged::NotAllowed => tried -= 1,
                    Judged::Failed => {}
                }
            }
            if tried == 0 {
                return Err(FederationError::NotAllowed);
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(pass + 1))).await;
        }
        Err(FederationError::Unreachable)
    }

    /// What `posted` by `relay` means for the envelope; logs it (throttled) and ranks a
    /// failing relay lower.
    fn judge(&self, relay: &str, posted: Posted) -> Judged {
        match posted {
            Posted::Accepted => {
                self.per_relay.success(relay);
                Judged::Taken
            }
            Posted::Refused { status, answer } => {
                self.per_relay.error(relay);
                if let Some(held_back) = REFUSED_LOG.allow() {
                    tracing::info!(%relay, %status, ?answer, held_back, "destination relay refused a federated envelope");
                }
                Judged::Refused
            }
            Posted::NotAllowed(reason) => {
                log_not_allowed(&reason);
                Judged::NotAllowed
            }
            Posted::Failed(reason) => {
                self.per_relay.error(relay);
                log_failed(relay, &reason);
                self.downvote(relay, rmb_proto::time::unix_now());
                Judged::Failed
            }
            Posted::Alone => {
                self.per_relay.error(relay);
                log_failed(relay, "not sent");
                self.downvote(relay, rmb_proto::time::unix_now());
                Judged::Failed
            }
        }
    }

    /// Where federation connects for `relay` (`scheme://host[:port]`), if it may.
    fn base_url(&self, relay: &str) -> Result<String, TargetError> {
        let target = self.targets.target(relay)?;
        Ok(format!("{}://{target}", self.scheme))
    }

    /// Sends `bytes` (for twin `destination`) to the relay at `base`: in its lane, else
    /// alone.
    async fn post(&self, base: &str, destination: u32, bytes: &Bytes) -> Posted {
        match self.lanes.post(base, destination, bytes).await {
            Posted::Alone => self.post_alone(base, bytes).await,
            posted => posted,
        }
    }

    /// `POST /` of one envelope to the relay at `base`, as rmb-rs federates.
    async fn post_alone(&self, base: &str, bytes: &Bytes) -> Posted {
        let result = self
            .client
            .post(format!("{base}/"))
            .header("content-type", "application/x-protobuf")
            .body(bytes.clone())
            .send()
            .await;
        match result {
            Ok(response) if response.status() == StatusCode::ACCEPTED => Posted::Accepted,
            Ok(mut response) if response.status().is_client_error() => {
                // Only the start of the answer (for the log): it may be anything, of any size.
                let answer = match response.chunk().await {
                    Ok(Some(chunk)) => {
                        String::from_utf8_lossy(&chunk[..chunk.len().min(LOGGED_ANSWER)])
                            .into_owned()
                    }
                    _ => String::new(),
                };
                Posted::Refused {
                    status: response.status(),
                    answer,
                }
            }
            Ok(response) => Posted::Failed(response.status().to_string()),
            Err(e) => Posted::unsent(&e),
        }
    }
}

fn log_not_allowed(reason: &dyn std::fmt::Display) {
    if let Some(held_back) = NOT_ALLOWED_LOG.allow() {
        tracing::info!(%reason, held_back, "federation target not allowed");
    }
}

fn log_failed(relay: &str, reason: &str) {
    if let Some(held_back) = FAILED_LOG.allow() {
        tracing::info!(%relay, %reason, held_back, "federation attempt failed");
    }
}
