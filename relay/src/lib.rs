//! `rmb-relay`: the stateless WebSocket hub of the Reliable Message Bus.
//!
//! Peers hold WebSocket connections to a relay and send it signed envelopes; the relay
//! routes each by destination twin: to a connected session, into a bounded queue for a
//! twin that lives here but is offline, or to the twin's own relay (federation). It never
//! sees plaintext. A relay started without `--substrate`/`--registry` also hosts the
//! embedded twin registry.
//!
//! Map of the crate:
//!
//! - [`server`]: the listener and its routes; [`config`]: settings; [`state`]: what all
//!   handlers share;
//! - [`auth`]: login by JWT, [`logins`]: tokens already used; [`session`]: one connection as one actor (read, write, keep-alive);
//! - [`switch`]: connected sessions; [`queue`]: envelopes for offline sessions;
//!   [`replicas`]: envelopes handed straight to the replica holding the session (`--redis`);
//! - [`routing`]: where an envelope goes; [`errors`]: error envelopes for the sender;
//! - [`federation`]: envelopes between relays; [`ranker`]: which relay to try first;
//! - [`limiter`]: `--limit`; [`metrics`]: `/metrics`, with rmb-rs's names beside ours in
//!   [`rmb_rs_metrics`]; [`tls`]: `wss://` without a proxy;
//!   [`open_files`]: the open-file limit the connection cap must stay under;
//!   [`health_check`]: `--health-check URL`, the probe of container health checks;
//! - [`throttle`]: at most one log line per interval for what remote parties can cause;
//! - [`registry`]: the embedded twin registry this relay can host.

pub mod auth;
pub mod config;
pub mod errors;
pub mod federation;
pub mod health_check;
pub mod limiter;
pub mod logins;
pub mod metrics;
pub mod open_files;
pub mod queue;
pub mod ranker;
pub mod redis_conn;
pub mod registry;
pub mod replicas;
pub mod rmb_rs_metrics;
pub mod routing;
pub mod server;
pub mod session;
pub mod state;
pub mod switch;
pub use rmb_proto::throttle;
pub mod tls;

pub use config::Config;
pub use server::RelayServer;
pub use state::RelayState;
