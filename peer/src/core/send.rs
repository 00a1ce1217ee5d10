//! The sending half of the core: build an envelope from an application's request or
//! reply, encrypt it to the destination's published key, stamp, sign, and hand it to a
//! relay link.

use rmb_identity::E2eScheme;
use rmb_proto::time::unix_now;
use rmb_proto::{Envelope, Error, Message, Payload, Request, Response};
use tokio_tungstenite::tungstenite::Bytes;

use super::errors::SendError;
use super::status::Counters;
use super::types::{OutgoingRequest, OutgoingResponse, clamp_expiration};
use super::{Inner, Peer};

impl Peer {
    /// Encrypts to the destination's published key (plain when it has none), stamps,
    /// signs and sends through a connected relay (sticky preference, failover).
    ///
    /// Errors: [`SendError::UnknownTwin`] (103), [`SendError::Expired`] (500) when the
    /// request's validity is used up, [`SendError::Link`] when no relay took it in time.
    pub async fn send_request(&self, req: OutgoingRequest) -> Result<(), SendError> {
        let env = Envelope {
            uid: req.uid,
            tags: req.tags,
            timestamp: req.timestamp,
            expiration: clamp_expiration(req.expiration),
            source: Some(self.inner.source.clone()),
            destination: Some(req.destination),
            message: Some(Message::Request(Request {
                command: req.command,
            })),
            schema: req.schema,
            payload: Some(Payload::Plain(req.payload)),
            ..Default::default()
        };
        self.inner.seal_and_send(env).await
    }

    /// Sends a reply (a response, or an error envelope) to a request received earlier.
    pub async fn send_response(&self, resp: OutgoingResponse) -> Result<(), SendError> {
        self.inner.send_response(resp).await
    }
}

impl Inner {
    pub(super) async fn send_response(&self, resp: OutgoingResponse) -> Result<(), SendError> {
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
        let env = Envelope {
            uid: resp.uid,
            timestamp: resp.timestamp,
            expiration: clamp_expiration(resp.expiration),
            source: Some(self.source.clone()),
            destination: Some(resp.destination),
            message: Some(message),
            schema: resp.schema,
            payload,
            ..Default::default()
        };
        self.seal_and_send(env).await
    }

    /// Looks up the destination, then encrypt → stamp → sign → queue on a link.
    async fn seal_and_send(&self, mut env: Envelope) -> Result<(), SendError> {
        if self.shutdown.is_cancelled() {
            return Err(SendError::Closed);
        }
        let destination = env.destination_twin();
        if destination == 0 {
            return Err(SendError::UnknownTwin(0));
        }
        let twin = self
            .registry
            .get_twin(destination)
            .await
            .map_err(SendError::Registry)?
            .ok_or(SendError::UnknownTwin(destination))?;
        let now = unix_now();
        env.stamp_at(now);
        if env.expiration == 0 {
            return Err(SendError::Expired);
        }
        // rmb-rs's secp256k1 scheme: the receiver derives the key from the *sender's
        // published* key, so only a twin publishing secp256k1 itself can write to one.
        if let Some(pk) = twin.pk.as_deref()
            && E2eScheme::of_public_key(pk) == Ok(E2eScheme::Secp256k1)
            && self.e2e != E2eScheme::Secp256k1
        {
            return Err(SendError::SchemeMismatch(twin.id));
        }
        self.identity
            .seal_envelope(&mut env, twin.pk.as_deref(), now)
            .map_err(SendError::Seal)?;
        let deadline = env.deadline();
        let bytes = Bytes::from(env.to_bytes());
        self.links.send(bytes, deadline).await?;
        Counters::bump(&self.counters.sent);
        Ok(())
    }
}
