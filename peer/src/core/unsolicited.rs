//! Envelopes the core sends without keeping them for resending, and twin look-ups for
//! layers above the core.
//!
//! Connections ([`conn`](crate::conn)) carry their data and acknowledgements as requests
//! nobody answers: each frame has its own sequence numbers, acks and retransmission, so
//! the core's resend table (which waits for an answer) must not track them.

use super::Peer;
use super::errors::SendError;
use super::send::{Sealing, request_envelope};
use super::status::Counters;
use super::types::OutgoingRequest;
use rmb_identity::registry::Twin;

impl Peer {
    /// Seals and sends a request like [`send_request`](Peer::send_request), but never
    /// tracks it for resending, and leaves the payload as it is (the caller encrypted
    /// it). `Ok(false)`: no relay took it in time; the caller's own retransmission sends
    /// it again later.
    pub async fn send_unsolicited(&self, req: OutgoingRequest) -> Result<bool, SendError> {
        let env = request_envelope(&self.inner, req);
        // Not encrypted again to the twin's published key: the payload is ciphertext
        // under the connection's own keys already.
        let sealed = self.inner.seal(env, Sealing::SignedPlain).await?;
        match self.inner.links.send(sealed.bytes, sealed.deadline).await {
            Ok(_) => {
                Counters::bump(&self.inner.counters.sent);
                Ok(true)
            }
            Err(crate::links::LinkError::Closed) => Err(SendError::Closed),
            Err(_) => Ok(false),
        }
    }

    /// The registry entry of twin `id` (cached by the registry the peer was given).
    pub async fn lookup_twin(&self, id: u32) -> Result<Option<Twin>, SendError> {
        self.inner
            .registry
            .get_twin(id)
            .await
            .map_err(SendError::Registry)
    }

    /// True once [`shutdown`](Peer::shutdown) or [`close`](Peer::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// A token cancelled when the peer stops (layers above stop their tasks with it).
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.inner.shutdown.clone()
    }
}
