//! `rmb-relay`: the stateless WebSocket hub of the Reliable Message Bus.
//!
//! The relay itself (routing, offline queues, federation) arrives with issue #4. What is
//! here already is the **embedded twin registry** a relay hosts for networks that run
//! without a blockchain ([`registry`]): its store, its HTTP API and its change feed.

pub mod registry;
