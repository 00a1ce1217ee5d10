//! `rmb`: the command line for people. See `rmb --help` and [`rmb_cli`].

/// mimalloc: glibc malloc cost a busy peer or relay about a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;
use rmb_cli::cli::Cli;

/// Exit status of a command whose output reader went away, as a shell reports a
/// process ended by SIGPIPE.
const BROKEN_PIPE_EXIT: i32 = 141;

/// Makes a closed stdout (`rmb status | head -1`) end the command quietly, as it ends
/// other Unix tools, instead of a panic from `println!`. (Leaving SIGPIPE ignored, as Rust
/// does, keeps writes to sockets and child processes errors to handle, not a death.)
fn exit_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info)
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_closed_stdout();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rmb: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run());
    // A read of stdin (`rmb pipe`) that waits for input cannot be cancelled; it must not
    // keep the process from exiting with its code.
    runtime.shutdown_background();
    code
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rmb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
