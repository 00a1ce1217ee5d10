//! Wire format of the Reliable Message Bus.
//!
//! Everything that crosses a relay is a protobuf [`Envelope`]. This crate holds the
//! generated types (byte-compatible with rmb-rs) and the rules every component applies to
//! them, kept free of I/O and of key material so relay, peer and tools share one definition:
//!
//! - [`challenge`]: the exact bytes a signature covers (the rmb-rs "v1" challenge).
//! - [`time`]: `stamp`/`ttl`/`valid`, pure functions that take "now" as an input.
//! - [`address`]: the `"<twin>"` / `"<twin>:<sid>"` text form of an [`Address`].
//! - [`codec`]: encoding, and decoding with a size limit.
//! - [`envelope`]: small conveniences (kind, payload, tags) on [`Envelope`].
//! - [`throttle`]: at most one log line per interval for what remote parties can cause
//!   (relays and peers both log such events).

pub mod address;
pub mod challenge;
pub mod codec;
pub mod envelope;
pub mod throttle;
pub mod time;

/// Types generated from `proto/types.proto`: the messages that travel between peers and relays.
pub mod types {
    include!(concat!(env!("OUT_DIR"), "/rmb.types.rs"));
}

/// Types generated from `proto/peer.proto`: records a peer keeps locally, never on the wire.
pub mod peer {
    include!(concat!(env!("OUT_DIR"), "/rmb.peer.rs"));
}

pub use address::AddressParseError;
pub use codec::{DEFAULT_MAX_ENVELOPE_SIZE, DecodeError};
pub use envelope::{
    Binding, CONN_DATA_COMMAND, FAIL_FAST_TAG, MessageKind, RELAY_CAPABILITIES_HEADER,
    ROUTES_UNSIGNED_RPC, UNSIGNED_BINDING_TAG, UNSIGNED_RPC_BINDING_TAG, UNSIGNED_SEALED_COMMANDS,
};
pub use time::{DEFAULT_MAX_LIFETIME_SECS, Expired, TimeError};
pub use types::envelope::{Message, Payload};
pub use types::{Address, Envelope, Error, Ping, Pong, Request, Response};
