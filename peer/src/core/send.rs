//! The sending half of the core: build an envelope from an application's request or
//! reply, encrypt it to the destination's published key, stamp, sign, and hand it to a
//! relay link; reliable peers keep what they sent for resending ([`resend`](super::resend)).

use std::sync::Arc;

use rmb_identity::E2eScheme;
use rmb_identity::registry::Twin;
use rmb_proto::time::unix_now;
use rmb_proto::{
    Binding, DEFAULT_MAX_ENVELOPE_SIZE, Envelope, Error, Message, Payload, Request, Response,
};
use tokio_tungstenite::tungstenite::Bytes;

use tokio::time::Instant;

use super::errors::{SendError, codes};
use super::refusals::Reason;
use super::replay::{ReplayKey, ReplayKind};
use super::resend::Due;
use super::status::Counters;
use super::types::{OutgoingRequest, OutgoingResponse, RemoteError, clamp_expiration};
use super::{Inner, Peer};
use crate::links::LinkError;

impl Peer {
    /// Encrypts to the destination's published key (plain when it has none), stamps,
    /// signs and sends through a connected relay (sticky preference, failover).
    ///
    /// When the peer is `reliable`, the request is kept and sent again until an answer
    /// comes or it expires ([`resend`](super::resend)); no relay being reachable then
    /// only delays it.
    ///
    /// Errors: [`SendError::UnknownTwin`] (103), [`SendError::Expired`] (500) when the
    /// request's validity is used up, [`SendError::Link`] when no relay took it in time.
    pub async fn send_request(&self, req: OutgoingRequest) -> Result<(), SendError> {
        self.inner.send_request(req, Sealing::Rpc).await
    }

    /// Encrypts, stamps and signs a request without sending it, so the signature can be
    /// made while the application records the request; send it with
    /// [`send_sealed_request`](Peer::send_sealed_request). Errors as
    /// [`send_request`](Peer::send_request) gives them before anything is sent.
    pub async fn seal_request(&self, req: OutgoingRequest) -> Result<Sealed, SendError> {
        let env = request_envelope(&self.inner, req);
        self.inner.seal(env, Sealing::Rpc).await
    }

    /// Sends a request sealed by [`seal_request`](Peer::seal_request), as
    /// [`send_request`](Peer::send_request) does (kept for resending when reliable).
    pub async fn send_sealed_request(&self, sealed: Sealed) -> Result<(), SendError> {
        self.inner.send_sealed_request(sealed, Sealing::Rpc).await
    }

    /// [`send_request`](Peer::send_request) without a signature when the destination
    /// publishes a key of our e2e scheme: its encryption authenticates it
    /// ([`unsigned`](super::unsigned)). Only for commands in
    /// [`UNSIGNED_COMMANDS`](super::unsigned::UNSIGNED_COMMANDS), which receivers accept
    /// so; signed otherwise, so it always reaches the destination.
    pub async fn send_unsigned_request(&self, req: OutgoingRequest) -> Result<(), SendError> {
        let how = Sealing::for_request(&req.command, false);
        self.inner.send_request(req, how).await
    }

    /// A request that expects no answer (a topic subscriber's cumulative
    /// acknowledgement, a push acknowledged so): encrypted, unsigned when
    /// [`send_unsigned_request`](Peer::send_unsigned_request) would send it unsigned,
    /// and never resent: whoever sends it makes up for a lost one.
    ///
    /// Errors: as [`send_request`](Peer::send_request), [`SendError::Link`] also when
    /// no relay is connected.
    pub async fn send_one_way(&self, req: OutgoingRequest) -> Result<(), SendError> {
        let how = Sealing::for_request(&req.command, true);
        self.inner.send_request(req, how).await
    }

    /// The answer to a topic request that came unsigned ([`InboundRequest::auth`] is
    /// [`RequestAuth::Topic`](super::RequestAuth::Topic)): unsigned too when it can be
    /// (a response with a body, to a twin of our scheme), signed otherwise.
    ///
    /// [`InboundRequest::auth`]: super::InboundRequest::auth
    pub async fn send_unsigned_response(&self, resp: OutgoingResponse) -> Result<(), SendError> {
        let sealed = self.inner.seal_reply(resp, Sealing::Unsigned).await?;
        self.inner.send_sealed_reply(&sealed).await
    }

    /// Sends a reply (a response, or an error envelope) to a request received earlier.
    pub async fn send_response(&self, resp: OutgoingResponse) -> Result<(), SendError> {
        self.inner.send_response(resp).await
    }

    /// Encrypts, stamps and signs a reply without sending it, so an application that
    /// keeps its own durable reply cache can store it first (see
    /// [`send_sealed_reply`](Peer::send_sealed_reply)).
    ///
    /// A reply too large for an envelope is replaced by an error reply saying so (code
    /// 101, counted as `oversize`): the requester learns why instead of timing out.
    pub async fn seal_response(&self, resp: OutgoingResponse) -> Result<Sealed, SendError> {
        self.inner.seal_reply(resp, Sealing::Reply).await
    }

    /// Sends a reply sealed by [`seal_response`](Peer::seal_response): remembered with
    /// its request in the reply cache (a repeat of the request gets it again), then
    /// handed to a relay. A reliable peer keeps a reply no relay took and sends it once
    /// one is back (and so returns `Ok`).
    pub async fn send_sealed_reply(&self, reply: &Sealed) -> Result<(), SendError> {
        self.inner.send_sealed_reply(reply).await
    }

    /// Sends a reply again (an application's durable reply cache answering a repeated
    /// request `uid` from `twin`). Counted as replayed; past a few repeats of one
    /// request per minute it is dropped instead ([`repeats`](super::repeats)).
    pub fn resend_reply(&self, twin: u32, uid: &str, bytes: Bytes) {
        self.inner.replay_reply_limited(twin, uid, bytes);
    }
}

/// A signed envelope ready for a relay, with what resending it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub uid: String,
    /// The destination twin.
    pub twin: u32,
    /// The encoded envelope.
    pub bytes: Bytes,
    /// Unix seconds after which it is refused.
    pub deadline: u64,
    /// The destination is surely an rmb peer, which drops repeated requests, as its key
    /// shows (it publishes an x25519 key; rmb-rs peers cannot), so timed resends are
    /// safe. Twins with other keys may prove it instead ([`rmb_twins`](super::rmb_twins)).
    pub drops_repeats: bool,
    /// The destination publishes a secp256k1 key: an rmb-rs peer, or one of ours (the
    /// default on tfchain). Only such a twin is asked whether it runs rmb; one without
    /// a key is a client, not a peer.
    pub secp256k1: bool,
    /// False when it goes without a signature ([`unsigned`](super::unsigned)).
    pub signed: bool,
    /// Unsigned: the associated data its payload is sealed with.
    pub binding: Option<Binding>,
}

/// How [`Inner::seal`] protects an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sealing {
    /// Encrypted to the destination's published key (when it has one) and signed.
    Signed,
    /// Signed with the payload left plain: an error reply to a twin we cannot encrypt to.
    SignedPlain,
    /// Encrypted and not signed when the destination publishes a key of our scheme and
    /// it is a request or a response ([`unsigned`](super::unsigned)); `Signed` otherwise.
    /// Topic traffic: sealed with [`Binding::Topic`].
    Unsigned,
    /// An application's request: sealed with [`Binding::Rpc`] and not signed when the
    /// destination publishes a key of our scheme and takes unsigned RPCs
    /// ([`RmbTwins::takes_unsigned_rpc`](super::rmb_twins::RmbTwins::takes_unsigned_rpc),
    /// which asks it first); `Signed` otherwise.
    Rpc,
    /// A response: as `Rpc` when the destination is known to take unsigned RPCs (it
    /// sent us one, or said so); `Signed` otherwise. Error envelopes are always signed.
    Reply,
    /// `Unsigned` for a request whose answer is not awaited, nor the request resent.
    UnsignedOneWay,
    /// `Signed` for such a request.
    SignedOneWay,
}

impl Sealing {
    /// How a request with `command` goes when it may go unsigned: unsigned only for an
    /// [`UNSIGNED_COMMANDS`](super::unsigned::UNSIGNED_COMMANDS) command (receivers
    /// refuse anything else unsigned); `one_way` when it expects no answer.
    fn for_request(command: &str, one_way: bool) -> Sealing {
        let unsigned = super::unsigned::UNSIGNED_COMMANDS.contains(&command);
        match (unsigned, one_way) {
            (true, false) => Sealing::Unsigned,
            (true, true) => Sealing::UnsignedOneWay,
            (false, false) => Sealing::Rpc,
            (false, true) => Sealing::SignedOneWay,
        }
    }

    /// The request expects no answer: not resent, no answer awaited.
    fn is_one_way(self) -> bool {
        matches!(self, Sealing::UnsignedOneWay | Sealing::SignedOneWay)
    }
}

impl Sealed {
    /// What the resend table keeps of it.
    fn due(&self) -> Due {
        Due {
            uid: self.uid.clone(),
            twin: self.twin,
            bytes: self.bytes.clone(),
            deadline: self.deadline,
        }
    }
}

/// The envelope of a request, payload still plain.
pub(super) fn request_envelope(inner: &Inner, req: OutgoingRequest) -> Envelope {
    Envelope {
        uid: req.uid,
        tags: req.tags,
        timestamp: req.timestamp,
        expiration: clamp_expiration(req.expiration),
        source: Some(inner.source.clone()),
        destination: Some(req.destination),
        message: Some(Message::Request(Request {
            command: req.command,
        })),
        schema: req.schema,
        payload: Some(Payload::Plain(req.payload)),
        ..Default::default()
    }
}

/// The envelope of a reply.
fn response_envelope(inner: &Inner, resp: OutgoingResponse) -> Envelope {
    let (message, payload) = match resp.reply {
        Ok(body) => (Message::Response(Response {}), Some(Payload::Plain(body))),
        Err(e) => (
            Message::Error(Error {
                code: e.code,
                message: e.message,
            }),
            None,
        ),
    };
    Envelope {
        uid: resp.uid,
        timestamp: resp.timestamp,
        expiration: clamp_expiration(resp.expiration),
        source: Some(inner.source.clone()),
        destination: Some(resp.destination),
        message: Some(message),
        schema: resp.schema,
        payload,
        ..Default::default()
    }
}

impl Inner {
    async fn send_request(&self, req: OutgoingRequest, how: Sealing) -> Result<(), SendError> {
        let env = request_envelope(self, req);
        let sealed = self.seal(env, how).await?;
        self.send_sealed_request(sealed, how).await
    }

    /// Hands a sealed request to a relay link; a reliable peer keeps it for resending
    /// (unless it is one-way).
    async fn send_sealed_request(&self, sealed: Sealed, how: Sealing) -> Result<(), SendError> {
        let uid = sealed.uid.clone();
        let tracked = self.reliable && !how.is_one_way() && {
            let timed = sealed.drops_repeats || (sealed.secp256k1 && self.proved_rmb(sealed.twin));
            self.resends()
                .track(sealed.due(), Instant::now().into_std(), timed)
        };
        match self.links.send(sealed.bytes, sealed.deadline).await {
            Ok(_) => {
                Counters::bump(&self.counters.sent);
                if !sealed.signed {
                    Counters::bump(&self.counters.sent_unsigned);
                }
                if tracked {
                    self.resends()
                        .sent(&uid, sealed.twin, Instant::now().into_std());
                }
                Ok(())
            }
            // Kept for resending: it goes out when a relay is back, or expires.
            Err(LinkError::NoRelay { .. }) if tracked => Ok(()),
            Err(e) => {
                self.resends().forget(&uid, sealed.twin);
                if !sealed.signed && how == Sealing::Unsigned {
                    self.awaited_unsigned.forget(&uid, sealed.twin);
                }
                Err(e.into())
            }
        }
    }

    /// True when requests to `twin` may go unsigned ([`Sealing::Rpc`]): we offer it
    /// (`--no-unsigned-rpc` not given) and the twin takes them; an unknown twin is asked
    /// (the probe goes on the probe task) and gets this request signed.
    fn takes_unsigned_rpc(&self, twin: u32) -> bool {
        if !self.unsigned_rpc {
            return false;
        }
        let mut twins = self.rmb_twins();
        let takes = twins.takes_unsigned_rpc(twin, Instant::now().into_std());
        if twins.has_probes() {
            self.probes_queued.notify_one();
        }
        takes
    }

    /// True when answers to `twin` may go unsigned ([`Sealing::Reply`]): as
    /// [`takes_unsigned_rpc`](Inner::takes_unsigned_rpc), but never asking.
    fn knows_unsigned_rpc(&self, twin: u32) -> bool {
        self.unsigned_rpc
            && self
                .rmb_twins()
                .knows_unsigned_rpc(twin, Instant::now().into_std())
    }

    /// True when `twin` proved lately that it runs rmb ([`rmb_twins`](super::rmb_twins));
    /// otherwise a probe is queued for the resend task (unless one is pending), and this
    /// request goes at once without timed resends until the answer comes.
    fn proved_rmb(&self, twin: u32) -> bool {
        let mut twins = self.rmb_twins();
        let rmb = twins.is_rmb(twin, Instant::now().into_std());
        if twins.has_probes() {
            self.probes_queued.notify_one();
        }
        rmb
    }

    /// Asks `twin` whether it runs rmb: `rmb.version` with the probe payload, signed,
    /// never resent; its answer is taken by the receive pipeline.
    pub(super) async fn send_probe(&self, twin: u32, uid: String) -> Result<(), SendError> {
        let probe = OutgoingRequest {
            uid,
            destination: rmb_proto::Address::twin(twin),
            command: super::VERSION_COMMAND.into(),
            payload: super::rmb_twins::PROBE_PAYLOAD.to_vec(),
            schema: Some("application/json".into()),
            tags: None,
            timestamp: 0,
            expiration: super::rmb_twins::PROBE_EXPIRATION,
        };
        tracing::debug!(twin, uid = %probe.uid, "asking a twin whether it runs rmb");
        self.send_request(probe, Sealing::SignedOneWay).await
    }

    pub(super) async fn send_response(&self, resp: OutgoingResponse) -> Result<(), SendError> {
        let sealed = self.seal_reply(resp, Sealing::Reply).await?;
        self.send_sealed_reply(&sealed).await
    }

    /// Seals a reply. One that cannot go as it is becomes an error reply saying why, so
    /// the requester learns it at once instead of waiting for its timeout (as rmb-rs
    /// does): too large (101), or not encryptable to the requester's key (106; that
    /// error carries no payload, so it needs no encryption).
    async fn seal_reply(&self, resp: OutgoingResponse, how: Sealing) -> Result<Sealed, SendError> {
        let (uid, destination) = (resp.uid.clone(), resp.destination.clone());
        let (timestamp, expiration) = (resp.timestamp, resp.expiration);
        let error = |code, message: String| OutgoingResponse {
            uid: uid.clone(),
            destination: destination.clone(),
            reply: Err(RemoteError::new(code, message)),
            schema: None,
            timestamp,
            expiration,
        };
        let log = u64::from(destination.twin);
        match self.seal(response_envelope(self, resp), how).await {
            Err(SendError::TooLarge { size, limit }) => {
                self.count_refusal(Reason::Oversize);
                tracing::warn!(%uid, %destination, size, limit, "reply too large for an envelope; sending an error reply instead");
                let message =
                    format!("the reply is too large: {size} bytes encoded, the limit is {limit}");
                let reply = error(codes::INVALID_PAYLOAD, message);
                self.seal(response_envelope(self, reply), Sealing::Signed)
                    .await
            }
            Err(e @ (SendError::SchemeMismatch(_) | SendError::Seal(_))) => {
                self.count_refusal(Reason::ReplyNotEncrypted);
                if self
                    .log_limiter
                    .allow(log, Reason::ReplyNotEncrypted, std::time::Instant::now())
                {
                    tracing::warn!(%uid, %destination, error = %e, "the reply cannot be encrypted to its requester; sending an error reply instead (logged once per 10 s per twin)");
                }
                let message = match e {
                    SendError::Seal(inner) => format!("cannot encrypt the reply: {inner}"),
                    other => other.to_string(),
                };
                let reply = error(codes::CRYPTO, message);
                self.seal(response_envelope(self, reply), Sealing::SignedPlain)
                    .await
            }
            other => other,
        }
    }

    async fn send_sealed_reply(&self, reply: &Sealed) -> Result<(), SendError> {
        // An unsigned topic reply answers an unsigned topic request, which skips the
        // replay store (its handler drops repeats itself): nothing to answer a repeat
        // from. Unsigned RPCs go through the replay store as signed ones do.
        if self.reliable && reply.binding != Some(Binding::Topic) {
            let key = ReplayKey {
                source: reply.twin,
                uid: reply.uid.clone(),
                kind: ReplayKind::Request,
            };
            if let Err(e) = self
                .replay
                .remember_reply(&key, reply.bytes.clone(), unix_now())
                .await
            {
                tracing::warn!(uid = %reply.uid, error = %e, "reply not cached");
            }
        }
        match self.links.send(reply.bytes.clone(), reply.deadline).await {
            Ok(_) => {
                Counters::bump(&self.counters.sent);
                if !reply.signed {
                    Counters::bump(&self.counters.sent_unsigned);
                }
                Ok(())
            }
            // Kept (within the budget) and sent once a relay is back.
            Err(e @ LinkError::NoRelay { .. }) if self.reliable => {
                let kept = self
                    .resends()
                    .track_once(reply.due(), Instant::now().into_std());
                if kept { Ok(()) } else { Err(e.into()) }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// [`replay_reply`](Inner::replay_reply) for a repeat of request `uid` from `twin`,
    /// unless that request was repeated too often ([`repeats`](super::repeats)).
    pub(super) fn replay_reply_limited(&self, twin: u32, uid: &str, bytes: Bytes) {
        let allowed = self
            .repeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(twin, uid, std::time::Instant::now());
        if allowed {
            return self.replay_reply(bytes);
        }
        self.count_refusal(Reason::ReplayLimited);
        Counters::bump(&self.counters.duplicates);
        if self.log_limiter.allow(
            u64::from(twin),
            Reason::ReplayLimited,
            std::time::Instant::now(),
        ) {
            tracing::warn!(%uid, twin, "a request repeated too often: its reply is not sent again (logged once per 10 s per twin)");
        }
    }

    /// Hands a cached reply to a relay again, without waiting.
    pub(super) fn replay_reply(&self, bytes: Bytes) {
        Counters::bump(&self.counters.replayed);
        let deadline = Envelope::decode_routing(&bytes, usize::MAX)
            .map(|env| env.deadline())
            .unwrap_or(0);
        if deadline <= unix_now() {
            return;
        }
        if self.links.try_send(bytes, deadline).is_err() {
            // The requester will ask again.
            tracing::debug!("no relay took a replayed reply");
        }
    }

    /// The destination's twin, from the last second's lookups or the registry.
    async fn destination(&self, id: u32) -> Result<Arc<Twin>, SendError> {
        let now = std::time::Instant::now();
        if let Some(twin) = self.lock_destinations().fresh(id, now) {
            return Ok(twin);
        }
        let twin = self
            .registry
            .get_twin(id)
            .await
            .map_err(SendError::Registry)?
            .ok_or(SendError::UnknownTwin(id))?;
        let twin = Arc::new(twin);
        self.lock_destinations().remember(Arc::clone(&twin), now);
        Ok(twin)
    }

    fn lock_destinations(&self) -> std::sync::MutexGuard<'_, super::senders::Senders> {
        // Only whole inserts happen under the lock: a panic cannot leave it half done.
        self.destinations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks up the destination, then encrypt (unless [`Sealing::SignedPlain`]: an error
    /// reply to a twin we cannot encrypt to) → stamp → sign (unless it may go unsigned,
    /// [`Sealing::Unsigned`]) → encode.
    pub(super) async fn seal(&self, mut env: Envelope, how: Sealing) -> Result<Sealed, SendError> {
        if self.shutdown.is_cancelled() {
            return Err(SendError::Closed);
        }
        let destination = env.destination_twin();
        if destination == 0 {
            return Err(SendError::UnknownTwin(0));
        }
        let twin = self.destination(destination).await?;
        let now = unix_now();
        env.stamp_at(now);
        if env.expiration == 0 {
            return Err(SendError::Expired);
        }
        // rmb-rs's secp256k1 scheme: the receiver derives the key from the *sender's
        // published* key, so only a twin publishing secp256k1 itself can write to one.
        let recipient_key = twin.pk.as_deref().filter(|_| how != Sealing::SignedPlain);
        if let Some(pk) = recipient_key
            && E2eScheme::of_public_key(pk) == Ok(E2eScheme::Secp256k1)
            && self.e2e != E2eScheme::Secp256k1
        {
            return Err(SendError::SchemeMismatch(twin.id));
        }
        let is_request = matches!(env.message, Some(Message::Request(_)));
        let is_response = matches!(env.message, Some(Message::Response(_)));
        let unsigned_key = recipient_key.filter(|pk| {
            E2eScheme::of_public_key(pk) == Ok(self.e2e)
                && match how {
                    // A topic request's answer is accepted unsigned only while it is
                    // awaited.
                    Sealing::Unsigned | Sealing::UnsignedOneWay => {
                        is_response
                            || (is_request
                                && (how == Sealing::UnsignedOneWay
                                    || self.awaited_unsigned.insert(
                                        &env.uid,
                                        destination,
                                        env.deadline(),
                                        now,
                                    )))
                    }
                    Sealing::Rpc => is_request && self.takes_unsigned_rpc(destination),
                    Sealing::Reply => is_response && self.knows_unsigned_rpc(destination),
                    Sealing::Signed | Sealing::SignedPlain | Sealing::SignedOneWay => false,
                }
        });
        let binding = match how {
            Sealing::Rpc | Sealing::Reply => Binding::Rpc,
            _ => Binding::Topic,
        };
        let sealed = match unsigned_key {
            Some(pk) => self.identity.encrypt_envelope(&mut env, pk, binding, now),
            None => self.identity.seal_envelope(&mut env, recipient_key, now),
        };
        let signed = unsigned_key.is_none();
        let forget = |env: &Envelope| {
            if !signed && is_request && how == Sealing::Unsigned {
                self.awaited_unsigned.forget(&env.uid, destination);
            }
        };
        if let Err(e) = sealed {
            forget(&env);
            return Err(SendError::Seal(e));
        }
        let bytes = env.to_bytes();
        if bytes.len() > DEFAULT_MAX_ENVELOPE_SIZE {
            forget(&env);
            return Err(SendError::TooLarge {
                size: bytes.len(),
                limit: DEFAULT_MAX_ENVELOPE_SIZE,
            });
        }
        let scheme = twin.pk.as_deref().map(E2eScheme::of_public_key);
        Ok(Sealed {
            drops_repeats: scheme == Some(Ok(E2eScheme::X25519)),
            secp256k1: scheme == Some(Ok(E2eScheme::Secp256k1)),
            signed,
            binding: (!signed).then_some(binding),
            uid: env.uid.clone(),
            twin: destination,
            deadline: env.deadline(),
            bytes: Bytes::from(bytes),
        })
    }
}
