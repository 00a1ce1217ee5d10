//! The accepting side of opens: an open request is checked (signature, opener, cipher,
//! protocol, access list, limits) and handed to its protocol's [`Listener`] as an
//! [`Incoming`], or refused with a code and reason the opener sees; and the replies an
//! open gets (the accept or the refusal). Split from `mod.rs`, which opens and routes.
//!
//! [`Listener`]: super::Listener

use std::sync::atomic::Ordering;

use rmb_proto::Address;
use rmb_proto::time::unix_now;
use tokio::sync::mpsc;

use super::errors::codes;
use super::listener::Incoming;
use super::wire::{self, ConnId, Open};
use super::{Connections, Entry, crypto, lock};
use crate::core::{InboundRequest, OutgoingResponse, RemoteError, SendError};

impl Connections {
    /// Checks an open request and hands it to its protocol's listener, or refuses it
    /// with the reason the opener sees; a repeat of an open being handled is ignored.
    pub(super) async fn on_open(&self, request: InboundRequest) {
        let shared = &self.shared;
        let source = request.source.clone();
        let refuse = |code: u32, message: String| {
            let (uid, to, deadline) = (request.uid.clone(), source.clone(), request.deadline());
            async move {
                let error = RemoteError::new(code, message);
                if let Err(e) = self.reply(uid, to, deadline, Err(error)).await {
                    tracing::debug!(error = %e, "could not refuse a connection");
                }
            }
        };
        let bad_open = |message: String| {
            shared
                .counters
                .refused_bad_open
                .fetch_add(1, Ordering::Relaxed);
            refuse(codes::BAD_OPEN, message)
        };
        let open = match Open::decode(&request.payload) {
            Ok(open) => open,
            Err(e) => {
                return bad_open(format!("bad open request: {e}")).await;
            }
        };
        let key = (source.twin, open.id);
        if lock(&shared.conns).contains_key(&key) {
            // A repeat of an open we handle already (the core answers it from its cache).
            return;
        }
        let opener = match shared.peer.lookup_twin(source.twin).await {
            Ok(Some(twin)) => twin,
            _ => {
                return bad_open("opener twin not found".into()).await;
            }
        };
        if let Err(e) = crypto::verify_open(&open, &opener, shared.peer.twin_id()) {
            return bad_open(e.to_string()).await;
        }
        let allowed = &shared.config.ciphers;
        let choice = if allowed.is_empty() && !open.offer.is_empty() {
            // Configured to behave as a peer from before the cipher choice: refuse as
            // it did, in its words.
            Err(format!(
                "bad open request: {}",
                wire::WireError::Version(wire::VERSION_CIPHERS)
            ))
        } else if allowed.is_empty() {
            Ok(())
        } else {
            crypto::pick(&open, allowed)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        if let Err(message) = choice {
            return bad_open(message).await;
        }
        let slot = {
            let listeners = lock(&shared.listeners);
            listeners.get(&open.protocol).map(|l| {
                (
                    l.tx.clone(),
                    l.allow.as_ref().map(|a| a.contains(&source.twin)),
                )
            })
        };
        let tx = match slot {
            None => {
                shared
                    .counters
                    .refused_unknown_protocol
                    .fetch_add(1, Ordering::Relaxed);
                let message = format!("no handler for protocol '{}'", open.protocol);
                return refuse(codes::UNKNOWN_PROTOCOL, message).await;
            }
            Some((_, Some(false))) => {
                shared
                    .counters
                    .refused_not_allowed
                    .fetch_add(1, Ordering::Relaxed);
                let message = format!("twin {} may not open '{}'", source.twin, open.protocol);
                return refuse(codes::NOT_ALLOWED, message).await;
            }
            Some((tx, _)) => tx,
        };
        // Reserve the slot now: a repeat of this open (resent while the listener
        // decides) then finds it and is ignored.
        let reserved = {
            let mut conns = lock(&shared.conns);
            let limited = self.check_limits(&conns, source.twin);
            if limited.is_ok() {
                conns.insert(key, Entry::Opening(Vec::new()));
            }
            limited
        };
        if let Err(n) = reserved {
            shared.counters.refused_busy.fetch_add(1, Ordering::Relaxed);
            return refuse(codes::BUSY, format!("too many connections ({n})")).await;
        }
        let incoming = Incoming {
            connections: self.clone(),
            request: Some((request.uid.clone(), request.deadline())),
            source: source.clone(),
            open,
        };
        match tx.try_send(incoming) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(mut incoming)) => {
                incoming.request = None;
                self.unreserve(key);
                shared.counters.refused_busy.fetch_add(1, Ordering::Relaxed);
                refuse(
                    codes::BUSY,
                    "too many connections waiting to be accepted".into(),
                )
                .await
            }
            Err(mpsc::error::TrySendError::Closed(mut incoming)) => {
                incoming.request = None;
                self.unreserve(key);
                shared
                    .counters
                    .refused_unknown_protocol
                    .fetch_add(1, Ordering::Relaxed);
                refuse(
                    codes::UNKNOWN_PROTOCOL,
                    "the protocol's listener is gone".into(),
                )
                .await
            }
        }
    }

    /// Frees a slot reserved for an open that was not accepted.
    pub(super) fn unreserve(&self, key: (u32, ConnId)) {
        let mut conns = lock(&self.shared.conns);
        if matches!(conns.get(&key), Some(Entry::Opening(_))) {
            conns.remove(&key);
        }
    }

    /// Answers an open request (the accept, or a refusal) while its deadline lasts.
    pub(super) async fn reply(
        &self,
        uid: String,
        to: Address,
        deadline: u64,
        reply: Result<Vec<u8>, RemoteError>,
    ) -> Result<(), SendError> {
        let remaining = deadline.saturating_sub(unix_now());
        if remaining == 0 {
            return Err(SendError::Expired);
        }
        let response = OutgoingResponse {
            uid,
            destination: to,
            reply,
            schema: None,
            timestamp: 0,
            expiration: remaining,
        };
        self.shared.peer.send_response(response).await
    }
}
