//! The embedded twin registry, as hosted by a relay.
//!
//! Networks without tfchain still need to know who twin N is. One relay of such a
//! network hosts this registry; every other relay and peer points at it with
//! `--registry http://host:port` and talks to it through
//! `rmb_identity::registry::http::HttpRegistry`.
//!
//! - [`store`]: where twins are kept (an embedded redb file, or Redis), with the
//!   create-or-update step done atomically;
//! - [`changes`]: the change log behind the long-polling `/changes` feed;
//! - [`recent`]: the twins read in the last second, so routing does not read the store
//!   for every envelope;
//! - [`hosted`]: [`HostedRegistry`], the rules (signed, fresh requests; ids 1, 2, 3, …),
//!   usable in-process as an `rmb_identity::registry::Registry`;
//! - [`http`]: the axum routes of the API described in `rmb_identity::registry::api`;
//! - [`register_limit`]: how fast one client address may register new twins.
//!
//! Unlike tfchain, relay entries may carry a port (`127.0.0.1:8081`) so that test
//! networks fit on one machine.

pub mod changes;
pub mod hosted;
pub mod http;
pub mod recent;
pub mod register_limit;
pub mod store;

pub use hosted::{HostedRegistry, PublishError};
pub use store::{RedbStore, RedisStore, StoreError, TwinStore};
