//! Local pipes: a bus connection carried over an upgraded HTTP connection to the local
//! rmb-peer, so command-line tools (`rmb pipe`, `rmb forward`) and any other local
//! program can open and accept connections as the peer's twin without holding its keys.
//!
//! [`wire`] is the framing both sides speak (data, half-closes, and how the connection
//! ended, so an exit code can tell the truth); [`serve`] is the peer's side, two routes
//! of the local HTTP API; [`client`] is the app's side. docs/connections.md describes
//! the routes.

pub mod client;
pub mod serve;
pub mod wire;
