//! `rmb-relay`: the stateless WebSocket hub of the Reliable Message Bus.
//!
//! Not built yet: this crate is reserved so the workspace has its final shape. The relay
//! (routing, offline queues, federation, the embedded registry's server) arrives with
//! issue #4; it will build on `rmb-proto` for the wire format and `rmb-identity` for JWT
//! login checks.
