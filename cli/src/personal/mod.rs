//! The command line's side of the personal bus ([`rmb_personal`], the library): where the
//! local peer is (`--redis`, `--http`), `rmb listen`'s flags and wiring, and sending
//! notifications with a level through the peer's Redis API.

pub mod deliver;
pub mod listen;

use clap::Args;
use rmb_personal::api::Api;

use crate::args::RedisArgs;
use crate::commands::topic::HttpArgs;

/// Where the local peer is: its Redis (requests, group state) and its HTTP API (topics).
#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

impl PeerArgs {
    /// A client of the peer's HTTP API.
    pub fn api(&self) -> Api {
        api(&self.http)
    }
}

/// A client of the peer's HTTP API at `--http` (its token file or socket included).
pub fn api(http: &HttpArgs) -> Api {
    Api::new(http.base(), http.http_client())
}
