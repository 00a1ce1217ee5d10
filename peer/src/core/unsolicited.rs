//! Envelopes the core sends without keeping them for resending, and twin look-ups for
//! layers above the core.
//!
//! Connections ([`conn`](crate::conn)) carry their data and acknowledgements as requests
//! nobody answers: each frame has its own sequence numbers, acks and retransmission, so
//! the core's resend table (which waits for an answer) must not track them. Their data
//! frames also go unsigned ([`Peer::send_conn_frame`]): the connection's AEAD
//! authenticates them, and the receiving core lets exactly this command through
//! unsigned ([`checks::precheck`](super::checks::precheck)).

use rmb_proto::time::unix_now;
use rmb_proto::{Address, DEFAULT_MAX_ENVELOPE_SIZE, Envelope, Message, Request};
use tokio_tungstenite::tungstenite::Bytes;

use super::errors::SendError;
use super::send::{Sealing, request_envelope};
use super::status::Counters;
use super::types::{OutgoingRequest, clamp_expiration};
use super::{CONN_DATA_COMMAND, Peer};
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

    /// Sends a connection data frame to `destination` as an *unsigned* `rmb.conn.data`
    /// request, valid `expiration` seconds, never tracked for resending. `fill` appends
    /// the payload (`id ‖ packet number ‖ ciphertext`, exactly `payload_len` bytes)
    /// straight into the encoded envelope, so it is written (and encrypted) once, in
    /// place. No registry lookup, no MD5 challenge, no signature: the connection's keys
    /// authenticate the frame, and relays (ours and rmb-rs's) route it as any request.
    /// `Ok(false)`: no relay took it in time (the connection retransmits).
    pub async fn send_conn_frame(
        &self,
        destination: Address,
        expiration: u64,
        payload_len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<bool, SendError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(SendError::Closed);
        }
        let mut env = Envelope {
            uid: uuid::Uuid::new_v4().to_string(),
            expiration: clamp_expiration(expiration),
            source: Some(self.inner.source.clone()),
            destination: Some(destination),
            message: Some(Message::Request(Request {
                command: CONN_DATA_COMMAND.to_string(),
            })),
            ..Default::default()
        };
        env.stamp_at(unix_now());
        let bytes = encode_with_plain_payload(&env, payload_len, fill);
        if bytes.len() > DEFAULT_MAX_ENVELOPE_SIZE {
            return Err(SendError::TooLarge {
                size: bytes.len(),
                limit: DEFAULT_MAX_ENVELOPE_SIZE,
            });
        }
        match self
            .inner
            .links
            .send(Bytes::from(bytes), env.deadline())
            .await
        {
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

/// Protobuf field number of `Envelope.plain` (the plain payload).
const PLAIN_FIELD: u32 = 13;

/// Encodes `env` (which has no payload) followed by a plain payload of `len` bytes that
/// `fill` appends. `plain` is the highest field an unsigned frame has, so this is the
/// same byte string prost would make with the payload set.
fn encode_with_plain_payload(
    env: &Envelope,
    len: usize,
    fill: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    use prost::Message as _;
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let head = env.encoded_len();
    let mut out = Vec::with_capacity(head + 1 + encoded_len_varint(len as u64) + len);
    env.encode_raw(&mut out);
    encode_key(PLAIN_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(len as u64, &mut out);
    let start = out.len();
    fill(&mut out);
    assert_eq!(
        out.len() - start,
        len,
        "the payload has the announced length"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmb_proto::Payload;

    #[test]
    fn a_payload_written_in_place_encodes_as_prost_would() {
        let mut env = Envelope {
            uid: "u".into(),
            timestamp: 5,
            expiration: 60,
            source: Some(Address::session(1, "s")),
            destination: Some(Address::twin(2)),
            message: Some(Message::Request(Request {
                command: CONN_DATA_COMMAND.into(),
            })),
            ..Default::default()
        };
        for len in [0, 1, 127, 128, 300_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = encode_with_plain_payload(&env, len, |out| out.extend_from_slice(&payload));
            env.payload = Some(Payload::Plain(payload));
            assert_eq!(bytes, env.to_bytes(), "{len}");
            env.payload = None;
        }
    }
}
