//! What the subscriber task is handed ([`Input`]): pushes from owners, and
//! subscriptions made or ended. Its own module, below the router, the subscription
//! requests and the shared state that all send it, and the task that takes it.

use super::wire::TopicName;
use crate::core::InboundRequest;

/// What the subscriber task handles.
#[derive(Debug)]
pub(crate) enum Input {
    /// An `rmb.topic.message` request from an owner.
    Message(InboundRequest),
    /// A new subscription (made by [`subscribe`](super::subscription::subscribe)).
    Added {
        topic: TopicName,
        last: u64,
        list: bool,
        owner_last: u64,
        /// Seconds the owner's lease lasts, if it said.
        lease: Option<u64>,
    },
    /// A subscription ended.
    Removed(TopicName),
}
