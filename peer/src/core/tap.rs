//! A tap on the receive pipeline: a layer that handles some requests itself takes them
//! as they are delivered, before the inbound channel.
//!
//! Without it, a request the topics layer handles crossed two tasks after the
//! pipeline (the inbound channel to the topics router, then the router to the
//! subscriber task). At 100 subscribers in one process that extra hop is what put the
//! app's copy of a message at the back of the runtime's queue, behind every other
//! subscriber's first step. A tap must not wait: it takes a message or hands it back,
//! and what it hands back goes on through the inbound channel as before.

use super::types::Inbound;

/// Takes some inbound messages straight from the receive pipeline.
pub trait InboundTap: Send + Sync {
    /// `None`: taken. `Some`: not this tap's (or no room now); the pipeline sends it on
    /// through the inbound channel.
    fn take(&self, inbound: Inbound) -> Option<Inbound>;
}
