//! The receive pipeline's last step: checked envelopes, in arrival order, through the
//! replay check to the application; `rmb.version` answered here, and the answers to our
//! own (probes, [`rmb_twins`](crate::core::rmb_twins)) taken here; refusals counted,
//! logged (rate-limited) and answered only when their sender is proven (see the
//! parent module).

use super::*;
use crate::core::RequestAuth;
use crate::core::unsigned::request_auth;

/// Takes checked batches in arrival order: replay check, then to the application.
#[derive(Clone)]
pub(super) struct Deliverer {
    pub(super) inner: Arc<Inner>,
    pub(super) inbound: mpsc::Sender<Inbound>,
    /// Batches sent to [`Deliverer::run`] and not yet delivered.
    pub(super) queued: Arc<AtomicUsize>,
}

impl Deliverer {
    pub(super) async fn run(self, mut checking: mpsc::Receiver<Checking>) {
        while let Some(task) = checking.recv().await {
            match task {
                Checking::Done(outcomes) => self.deliver_all(outcomes).await,
                Checking::Running(task) => match task.await {
                    Ok(outcomes) => self.deliver_all(outcomes).await,
                    Err(e) => tracing::error!(error = %e, "an envelope check task failed"),
                },
            }
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(super) async fn deliver_all(&self, outcomes: Vec<Outcome>) {
        let now = unix_now();
        for outcome in outcomes {
            match outcome {
                Outcome::Accepted(env, source) => self.admit(env, source, now).await,
                Outcome::RelayError(env) => self.deliver_relay_error(env).await,
                Outcome::ConnFrame(env) => self.deliver_conn_frame(env).await,
                Outcome::Refused(env, refusal, sender) => self.refuse(&env, refusal, sender),
            }
        }
    }

    async fn admit(&self, env: Envelope, source: u32, now: u64) {
        // An unsigned topic request's times are not authenticated (a relay could make an
        // old one look new), so the replay store cannot know all its repeats: its
        // handler drops them itself (topic batches by message id; acknowledgements are
        // cumulative). An unsigned RPC binds its times, so it is checked as a signed one.
        if request_auth(&env) == RequestAuth::Topic {
            Counters::bump(&self.inner.counters.received);
            return self.deliver(env).await;
        }
        let key = ReplayKey {
            source,
            uid: env.uid.clone(),
            kind: match env.kind() {
                MessageKind::Request => ReplayKind::Request,
                _ => ReplayKind::Reply,
            },
        };
        let admission = self.inner.replay.admit(&key, env.deadline(), now).await;
        // Any copy of an answer settles the request's resends (after a restart, the
        // resent request's answer may come as a copy of one delivered before).
        if key.kind == ReplayKind::Reply && self.inner.reliable && admission.is_ok() {
            let now = tokio::time::Instant::now().into_std();
            let settled = self.inner.resends().settle(&env.uid, source, now);
            if let Some(Some(round_trip)) = settled {
                self.inner.rpc_seconds.observe(round_trip.as_secs_f64());
            }
        }
        match admission {
            Ok(Admission::First) => {
                Counters::bump(&self.inner.counters.received);
                self.deliver(env).await
            }
            Ok(Admission::Repeat { reply }) => {
                // Relays deliver at least once and senders resend, so repeats are
                // normal. A request we answered already gets the same answer again
                // (the first one may be lost); otherwise its answer is on its way.
                match reply {
                    Some(bytes) if self.inner.reliable => {
                        tracing::debug!(uid = %env.uid, source, "answering a repeated request from the reply cache");
                        self.inner.replay_reply_limited(source, &env.uid, bytes);
                    }
                    // Its reply may be in the application's record (not cached here).
                    None if key.kind == ReplayKind::Request && self.inner.app_dedupes => {
                        self.deliver(env).await
                    }
                    _ => {
                        Counters::bump(&self.inner.counters.duplicates);
                        tracing::debug!(uid = %env.uid, source, kind = env.kind().as_str(), "dropping a repeated envelope");
                    }
                }
            }
            // Accepted in full before: the sender is proven.
            Err(e) => self.refuse(
                &env,
                Refusal::new(codes::OTHER, Reason::ReplayStore, format!("other: {e}")),
                Sender::Proven,
            ),
        }
    }

    async fn deliver(&self, env: Envelope) {
        if matches!(env.message, Some(Message::Response(_) | Message::Error(_)))
            && self.probe_answer(&env)
        {
            return;
        }
        let source = env.source.clone().unwrap_or_default();
        let auth = request_auth(&env);
        let payload = match env.payload {
            Some(Payload::Plain(bytes)) => bytes,
            _ => Vec::new(),
        };
        let inbound = match env.message {
            Some(Message::Request(request)) if request.command == VERSION_COMMAND => {
                self.answer_version(env.uid, source, &payload);
                return;
            }
            Some(Message::Request(request)) => Inbound::Request(InboundRequest {
                uid: env.uid,
                source,
                command: request.command,
                payload,
                schema: env.schema,
                tags: env.tags,
                timestamp: env.timestamp,
                expiration: env.expiration,
                auth,
            }),
            Some(Message::Response(_)) => Inbound::Response(InboundResponse {
                uid: env.uid,
                source,
                reply: Ok(payload),
                schema: env.schema,
                timestamp: env.timestamp,
            }),
            Some(Message::Error(e)) => Inbound::Response(InboundResponse {
                uid: env.uid,
                source,
                reply: Err(RemoteError::new(e.code, e.message)),
                schema: env.schema,
                timestamp: env.timestamp,
            }),
            // Prechecks let only requests, responses and errors through.
            _ => return,
        };
        let inbound = match self.inner.tap.get() {
            Some(tap) => match tap.take(inbound) {
                Some(back) => back,
                None => return,
            },
            None => inbound,
        };
        if self.inbound.send(inbound).await.is_err() {
            tracing::debug!("application stopped reading; dropping an inbound message");
        }
    }

    async fn deliver_conn_frame(&self, env: Envelope) {
        Counters::bump(&self.inner.counters.received);
        let frame = ConnFrame {
            source: env.source.unwrap_or_default(),
            payload: match env.payload {
                Some(Payload::Plain(bytes)) => bytes,
                _ => Vec::new(),
            },
        };
        if self.inbound.send(Inbound::ConnFrame(frame)).await.is_err() {
            tracing::debug!("application stopped reading; dropping a connection frame");
        }
    }

    async fn deliver_relay_error(&self, env: Envelope) {
        Counters::bump(&self.inner.counters.received);
        let message = match env.message {
            Some(Message::Error(e)) => e.message,
            _ => return,
        };
        tracing::debug!(uid = %env.uid, %message, "relay reported an error");
        // About a probe of ours: not the application's (it is asked again later).
        if env.uid.starts_with(crate::core::rmb_twins::PROBE_PREFIX) {
            return;
        }
        if self.inner.reliable {
            self.inner
                .resends()
                .answered(&env.uid, 0, tokio::time::Instant::now().into_std());
        }
        let inbound = Inbound::Response(InboundResponse {
            uid: env.uid,
            source: Address::twin(0),
            reply: Err(RemoteError::new(codes::HANDLING, message)),
            schema: None,
            timestamp: env.timestamp,
        });
        let _ = self.inbound.send(inbound).await;
    }

    /// Counts and logs a refused envelope; a request from a proven sender gets an error
    /// envelope back, any other request is dropped (and counted as unanswered).
    fn refuse(&self, env: &Envelope, refusal: Refusal, sender: Sender) {
        self.inner.count_refusal(refusal.reason);
        let source = env.source.clone().unwrap_or_default();
        let request = env.kind() == MessageKind::Request && source.twin != 0;
        if request && sender == Sender::Unproven {
            Counters::bump(&self.inner.counters.unanswered);
        }
        // The source of an unproven envelope is whatever its sender wrote: limited per
        // twin, a flood cycling through claimed twins would log a line for each.
        let log_key = match sender {
            Sender::Proven => u64::from(source.twin),
            Sender::Unproven => UNPROVEN_SOURCE,
        };
        let loggable =
            self.inner
                .log_limiter
                .allow(log_key, refusal.reason, std::time::Instant::now());
        if refusal.code == codes::VALIDATION && refusal.reason != Reason::TooFar {
            tracing::debug!(uid = %env.uid, %source, %refusal, "refused an envelope");
        } else if loggable && sender == Sender::Proven {
            tracing::warn!(uid = %env.uid, %source, %refusal, reason = refusal.reason.as_str(), "refused an envelope (logged once per 10 s per twin and reason)");
        } else if loggable {
            tracing::warn!(uid = %env.uid, claimed_source = %source, %refusal, reason = refusal.reason.as_str(), "dropped an envelope that proves nothing about its sender, unanswered (logged once per 10 s per reason)");
        }
        if !request || sender == Sender::Unproven {
            return;
        }
        // A signed request refused for its time or address is the same bytes whoever
        // posts it again (an expired one stays expired): its answers are limited as
        // those of repeated requests are ([`repeats`](super::repeats)).
        if answerable_after_verifying(env, &refusal) && !self.repeat_allowed(source.twin, &env.uid)
        {
            Counters::bump(&self.inner.counters.unanswered);
            return;
        }
        let reply = OutgoingResponse {
            uid: env.uid.clone(),
            destination: source,
            reply: Err(RemoteError::new(refusal.code, refusal.message)),
            schema: None,
            timestamp: 0,
            expiration: DEFAULT_EXPIRATION,
        };
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            if let Err(e) = inner.send_response(reply).await {
                tracing::debug!(error = %e, "could not send an error envelope back");
            }
        });
    }

    /// True while the request `uid` from `twin` may be answered again this window.
    fn repeat_allowed(&self, twin: u32, uid: &str) -> bool {
        self.inner
            .repeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(twin, uid, std::time::Instant::now())
    }

    /// True when `env` (verified, from its source twin) answers our pending probe of
    /// that twin ([`rmb_twins`](crate::core::rmb_twins)): the core's, not the
    /// application's. A twin that proves it runs rmb gets timed resends of the requests
    /// that wait for it.
    fn probe_answer(&self, env: &Envelope) -> bool {
        // Most responses are not: they cost no lock.
        if !env.uid.starts_with(crate::core::rmb_twins::PROBE_PREFIX) {
            return false;
        }
        let twin = env.source_twin();
        let reply = match env.message {
            Some(Message::Response(_)) => Ok(env.payload_bytes()),
            _ => Err(()),
        };
        let now = tokio::time::Instant::now().into_std();
        let Some(rmb) = self.inner.rmb_twins().answered(&env.uid, twin, reply, now) else {
            return false;
        };
        tracing::debug!(twin, rmb, "a twin answered whether it runs rmb");
        if rmb {
            self.inner.resends().make_timed(twin);
        }
        true
    }

    /// Our version as a JSON string (rmb-rs's answer); to a probe of
    /// [`rmb_twins`](crate::core::rmb_twins), a JSON object that also lists what this
    /// peer does: [`DROPS_REPEATS`](crate::core::rmb_twins::DROPS_REPEATS) unless it
    /// runs `--at-most-once` (no reply cache, nothing kept across a restart: no timed
    /// resends for it), [`UNSIGNED_RPC`](crate::core::rmb_twins::UNSIGNED_RPC) when it
    /// offers them and every relay it is connected to routes them. With neither it
    /// answers as rmb-rs would.
    fn answer_version(&self, uid: String, source: Address, payload: &[u8]) {
        let probe = payload == crate::core::rmb_twins::PROBE_PAYLOAD;
        let mut capabilities = Vec::new();
        if self.inner.reliable {
            capabilities.push(crate::core::rmb_twins::DROPS_REPEATS);
        }
        if self.inner.unsigned_rpc && self.inner.links.all_route_unsigned_rpc() {
            capabilities.push(crate::core::rmb_twins::UNSIGNED_RPC);
        }
        let version = if probe && !capabilities.is_empty() {
            crate::core::rmb_twins::probe_answer(crate::VERSION, &capabilities)
        } else {
            serde_json::to_vec(crate::VERSION).unwrap_or_default()
        };
        let reply = OutgoingResponse {
            uid,
            destination: source,
            reply: Ok(version),
            schema: Some("application/json".into()),
            timestamp: 0,
            expiration: DEFAULT_EXPIRATION,
        };
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            if let Err(e) = inner.send_response(reply).await {
                tracing::debug!(error = %e, "could not answer rmb.version");
            }
        });
    }
}
