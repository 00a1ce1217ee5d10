//! The top-level command line: subcommands and dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{
    agent, call, key, notify, personal, pipe, serve, status, sub, topic, twin, watch,
};
use crate::demo;

/// rmb: talk to twins on the Reliable Message Bus.
///
/// Start with `rmb demo` (a whole network on this machine), then `rmb call` into it.
#[derive(Parser, Debug)]
#[command(name = "rmb", version, propagate_version = true)]
pub struct Cli {
    /// More logging on stderr: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// Every `rmb` subcommand.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make a mnemonic, or show the accounts and keys of one.
    Key(key::KeyArgs),
    /// Register or look up twins on a registry.
    Twin(twin::TwinArgs),
    /// Send a request to twins through the local rmb-peer and print the responses.
    Call(call::CallArgs),
    /// Answer requests by running a program for each (or echoing them).
    Serve(serve::ServeArgs),
    /// Run a command, then notify a twin or the group how it went; or send a notification.
    Notify(notify::NotifyArgs),
    /// Receive what other twins send: without argument, every personal-bus service.
    Listen(notify::ListenArgs),
    /// Manage the personal group of this person's machines.
    Agent(agent::AgentArgs),
    /// Put text into the clipboard of the group's other machines.
    Copy(personal::CopyArgs),
    /// Print the clipboard of a machine of the group.
    Paste(personal::PasteArgs),
    /// Notify when a process exits or a file stops changing.
    Watch(watch::WatchArgs),
    /// Open a web link or an HTML page in the browser of the group's other machines.
    Open(personal::OpenArgs),
    /// Fire a trigger on the personal group.
    Trigger(personal::TriggerArgs),
    /// Run a command after a trigger, and/or fire one when it ends.
    Run(personal::RunArgs),
    /// Follow a file (like tail -F) and publish each line to a topic.
    Stream(personal::StreamArgs),
    /// Write a topic's messages into a named pipe or a file.
    Sink(personal::SinkArgs),
    /// Run a long-lived program whose output lines are published and whose input is a topic.
    Plugin(personal::PluginArgs),
    /// Show the local rmb-peer's twin, relays, counters and queues.
    Status(status::StatusArgs),
    /// Pipe stdin/stdout through a connection to another twin (listen or connect).
    Pipe(pipe::PipeArgs),
    /// Forward a local TCP port to a twin: one connection per accepted TCP connection.
    Forward(pipe::ForwardArgs),
    /// Start a complete network on this machine and make calls across it.
    Demo(demo::DemoArgs),
    /// Create, list and show topics (through the local rmb-peer's HTTP API).
    Topic(topic::TopicArgs),
    /// Publish a message to a topic (the message, or stdin); prints its id.
    Pub(topic::PubArgs),
    /// Print a topic's messages as they come, until Ctrl-C (reconnecting when the
    /// local rmb-peer restarts, without a gap or a repeat).
    Sub(sub::SubArgs),
    /// Print a topic's stored messages after an id, then exit.
    Pull(topic::ReadArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Key(args) => key::run(args).await,
            Command::Twin(args) => twin::run(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Notify(args) => notify::run_notify(args).await,
            Command::Listen(args) => notify::run_listen(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Copy(args) => personal::run_copy(args).await,
            Command::Paste(args) => personal::run_paste(args).await,
            Command::Open(args) => personal::run_open(args).await,
            Command::Trigger(args) => personal::run_trigger(args).await,
            Command::Run(args) => personal::run_run(args).await,
            Command::Stream(args) => personal::run_stream(args).await,
            Command::Sink(args) => personal::run_sink(args).await,
            Command::Plugin(args) => personal::run_plugin(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Pipe(args) => pipe::run(args).await,
            Command::Forward(args) => pipe::forward(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Topic(args) => topic::run(args).await,
            Command::Pub(args) => topic::run_pub(args).await,
            Command::Sub(args) => sub::run_sub(args).await,
            Command::Pull(args) => topic::run_pull(args).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn call_reads_destinations_and_serve_its_program() {
        let cli = Cli::parse_from(["rmb", "call", "--dst", "7,9", "--dst", "3", "--cmd", "echo"]);
        let Command::Call(args) = cli.command else {
            panic!("not a call")
        };
        assert_eq!(args.dst, vec![7, 9, 3]);
        assert_eq!(args.timeout, 30);
        let cli = Cli::parse_from(["rmb", "serve", "--cmd", "a", "--", "tr", "a-z", "A-Z"]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.program, ["tr", "a-z", "A-Z"]);
        assert!(Cli::try_parse_from(["rmb", "serve", "--cmd", "a", "--echo", "--", "x"]).is_err());
    }
}
