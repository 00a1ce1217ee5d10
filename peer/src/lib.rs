//! `rmb-peer`: one twin's gateway to the Reliable Message Bus.
//!
//! Layers, bottom up:
//! - [`links`]: one WebSocket connection per relay, with login, keepalive, reconnects
//!   with backoff, and failover between relays for outgoing envelopes;
//! - [`core`]: the [`Peer`] itself: sealing, signing, verifying, opening, replay
//!   protection, error envelopes, `rmb.version`;
//! - app-facing APIs, each a thin layer over the core: [`redis_api`] (the rmb-rs compatible
//!   JSON queues, used by the `rmb-peer` binary) and [`client`] (a Rust library for
//!   programs that talk to relays directly, like rmb-sdk-go's direct client);
//! - [`topics`]: end-to-end encrypted publish/subscribe with sequence ids, hosted by the
//!   owner twin's peer, and [`http_api`], the local HTTP + WebSocket + SSE API over it;
//! - [`conn`]: connections (encrypted streams between twins), and [`pipes`], which carries
//!   them over the local HTTP API for `rmb pipe` and `rmb forward`.

/// This build's version: the crate version and the git commit it was built from, in the
/// shape of rmb-rs's `git describe` answer (`v0.1.0-g4960286`), which tools parse. The
/// answer to `rmb.version` and to `--version`.
pub const VERSION: &str = env!("RMB_VERSION");

pub mod client;
pub mod conn;
pub mod core;
pub mod http_api;
pub mod links;
pub mod pipes;
pub mod redis_api;
pub mod runtime;
pub mod topics;

pub use crate::client::{CallError, Client, ClientError, ClientOptions, RegistrySource, Response};
pub use crate::core::{
    Inbound, InboundRequest, InboundResponse, OutgoingRequest, OutgoingResponse, Peer, PeerConfig,
    PeerError, PeerStatus, RemoteError, SendError,
};
