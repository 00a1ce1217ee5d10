//! One module per `rmb` subcommand; each has its clap `Args` and a `run` function.

pub mod agent;
pub mod call;
pub mod key;
pub mod notify;
pub mod personal;
pub mod pipe;
pub mod serve;
pub mod status;
pub mod sub;
pub mod topic;
pub mod twin;
pub mod watch;
