//! The command line's side of the personal bus ([`rmb_personal`], the library): where the
//! local peer is (`--redis`, `--http`), `rmb listen`'s flags and wiring, and sending
//! notifications with a level through the peer's Redis API.

pub mod deliver;
pub mod listen;

use clap::Args;
use rmb_personal::api::Api;
use rmb_personal::group::GroupError;
use rmb_personal::trigger::AfterCommand;

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

/// Says on stderr what `--send-trigger NAME` did after the command.
pub fn print_after_command(name: &str, after: &AfterCommand) {
    match after {
        AfterCommand::NoGroup => {
            eprintln!("rmb: cannot fire trigger {name:?}: {}", GroupError::NoGroup)
        }
        AfterCommand::Skipped { exit_code } => eprintln!(
            "rmb: the command failed (exit code {exit_code}): trigger {name:?} not fired \
             (--trigger-always fires it, reporting the failure)"
        ),
        AfterCommand::Fired { id, topic, success } => eprintln!(
            "rmb: fired trigger {name:?}{} (message {id} of {topic})",
            if *success {
                ""
            } else {
                ", reporting the failure"
            },
        ),
        AfterCommand::Failed(e) => eprintln!("rmb: firing trigger {name:?} failed: {e}"),
    }
}
