//! `rmb serve`: answer requests for one or more commands, like a PMB plugin: each request
//! runs a program (body on stdin, reply on stdout, non-zero exit → error reply), or the
//! built-in echo. [`serve`] is the loop; `rmb listen` and `rmb demo` reuse it with their
//! own [`Handler`].

use std::future::Future;
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use rmb_peer::redis_api::json::{JsonError, JsonIncomingRequest, decode_dat};
use rmb_peer::redis_api::keys;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};

use crate::args::RedisArgs;
use crate::bus::{self, Bus};

/// How long one blocking pop waits before checking for shutdown.
const POLL: Duration = Duration::from_secs(1);

/// Answer requests for a command by running a program for each (or echoing them).
///
/// The program gets the request body on stdin and these environment variables:
/// RMB_SOURCE (sender twin, e.g. `7`), RMB_COMMAND, RMB_SCHEMA, RMB_REF. What it writes to
/// stdout is the reply. If it exits non-zero, the caller gets an error whose code is the
/// exit status and whose message is the last line of its stderr.
///
/// Example: `rmb serve --cmd shout -- tr a-z A-Z`
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Command(s) to answer (repeatable); requests arrive on the list msgbus.<CMD>.
    #[arg(short, long = "cmd", required = true, value_name = "CMD")]
    pub cmds: Vec<String>,

    /// Answer every request with its own body (no program needed).
    #[arg(long, conflicts_with = "program")]
    pub echo: bool,

    /// Most requests handled at once.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,

    /// Longest a program may run for one request before it is killed (error reply).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub handler_timeout: u64,

    /// Schema of the program's replies (e.g. application/json). --echo keeps the request's.
    #[arg(long, value_name = "SCHEMA")]
    pub reply_schema: Option<String>,

    /// Print one JSON line per handled request instead of text.
    #[arg(long)]
    pub json: bool,

    /// The program and its arguments, after `--`.
    #[arg(last = true, value_name = "PROGRAM")]
    pub program: Vec<String>,
}

/// A reply and its schema, or an error for the caller.
pub type HandlerResult = Result<(Vec<u8>, Option<String>), JsonError>;

/// The future a [`Handler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// What answers one request (given with its decoded body).
pub type Handler = Arc<dyn Fn(JsonIncomingRequest, Vec<u8>) -> HandlerFuture + Send + Sync>;

/// The built-in echo: the body back, with the request's schema.
pub fn echo_handler() -> Handler {
    Arc::new(|request, body| Box::pin(async move { Ok((body, request.shm)) }))
}

/// Runs `program args…` per request; see [`ServeArgs`] for the contract.
pub fn program_handler(program: Vec<String>, timeout: Duration, schema: Option<String>) -> Handler {
    let program = Arc::new(program);
    Arc::new(move |request, body| {
        let program = program.clone();
        let schema = schema.clone();
        Box::pin(async move {
            run_program(&program, &request, body, timeout)
                .await
                .map(|out| (out, schema))
        })
    })
}

async fn run_program(
    program: &[String],
    request: &JsonIncomingRequest,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, JsonError> {
    let fail = |message: String| JsonError { code: 1, message };
    let mut command = tokio::process::Command::new(&program[0]);
    command
        .args(&program[1..])
        .env("RMB_SOURCE", &request.src)
        .env("RMB_COMMAND", &request.cmd)
        .env("RMB_SCHEMA", request.shm.as_deref().unwrap_or(""))
        .env("RMB_REF", request.reference.as_deref().unwrap_or(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        tracing::error!("cannot start {}: {e}", program[0]);
        fail(format!("the service's handler could not start: {e}"))
    })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let feed = tokio::spawn(async move {
        // A handler that ignores its input closes stdin early; that is not an error.
        let _ = stdin.write_all(&body).await;
    });
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(fail(format!("the service's handler failed: {e}"))),
        Err(_) => {
            return Err(fail(format!(
                "the service's handler did not finish within {} s",
                timeout.as_secs()
            )));
        }
    };
    let _ = feed.await;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let code = exit_status_code(&output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    Err(JsonError {
        code,
        message: match last {
            Some(line) => line.trim().to_string(),
            None => format!("handler exited with status {code}"),
        },
    })
}

/// The exit code of a finished process; 128 + N when killed by signal N (as shells do).
pub fn exit_status_code(status: &std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u32,
        (None, Some(signal)) => 128 + signal as u32,
        (None, None) => 1,
    }
}

/// What happened to one request, for printing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Handled {
    /// Sender address.
    pub src: String,
    /// Command.
    pub cmd: String,
    /// Request body size.
    pub bytes_in: usize,
    /// Reply body size (0 on error).
    pub bytes_out: usize,
    /// The error sent back, if any.
    pub error: Option<JsonError>,
}

/// Pops requests for `cmds` from the peer's Redis and answers each with `handler`, at most
/// `concurrency` at once, until `stop` becomes true. `on_handled` sees every outcome.
pub async fn serve(
    bus: Bus,
    cmds: &[String],
    handler: Handler,
    concurrency: usize,
    mut stop: watch::Receiver<bool>,
    on_handled: Arc<dyn Fn(&Handled) + Send + Sync>,
) -> anyhow::Result<()> {
    let lists: Vec<String> = cmds.iter().map(|c| keys::command_queue(c)).collect();
    let mut conn = bus.blocking().await?;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    while !*stop.borrow_and_update() {
        // Wait for a free slot first, so nothing is popped that cannot be handled now.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = stop.changed() => break,
        };
        // A stop ends the wait for a request at once: a stopping server takes no new work,
        // so what arrives now stays queued (or expires, and its sender learns nobody
        // answered) instead of being answered by a process on its way out. The blocking
        // connection is dropped with the pop, so Redis hands it nothing more.
        let popped = tokio::select! {
            popped = bus::pop::<JsonIncomingRequest>(&mut conn, &lists, POLL) => popped?,
            _ = stop.changed() => break,
        };
        let Some(popped) = popped else {
            continue;
        };
        let request = match popped.value {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(list = %popped.list, "dropping a request that is not valid JSON: {e}");
                continue;
            }
        };
        let bus = bus.clone();
        let handler = handler.clone();
        let on_handled = on_handled.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (result, bytes_in) = match decode_dat(&request.dat) {
                Ok(body) => {
                    let n = body.len();
                    (handler(request.clone(), body).await, n)
                }
                Err(e) => (
                    Err(JsonError {
                        code: 101,
                        message: format!("request body is not valid base64: {e}"),
                    }),
                    0,
                ),
            };
            let handled = Handled {
                src: request.src.clone(),
                cmd: request.cmd.clone(),
                bytes_in,
                bytes_out: result.as_ref().map(|(b, _)| b.len()).unwrap_or(0),
                error: result.as_ref().err().cloned(),
            };
            let reply = match result {
                Ok((body, schema)) => bus::reply_to(&request, Ok(body), schema),
                Err(e) => bus::reply_to(&request, Err(e), None),
            };
            if let Err(e) = bus.send_reply(&reply).await {
                tracing::error!("could not hand the reply to the peer: {e:#}");
            }
            on_handled(&handled);
        });
    }
    drop(conn);
    // Let requests in flight finish and reply.
    let _ = permits.acquire_many(concurrency.max(1) as u32).await;
    Ok(())
}

/// A watch channel that turns true on Ctrl-C or SIGTERM.
pub fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::signals::stop_signal().await;
        let _ = tx.send(true);
    });
    rx
}

/// Runs `rmb serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let handler = if args.echo {
        echo_handler()
    } else if !args.program.is_empty() {
        program_handler(
            args.program.clone(),
            Duration::from_secs(args.handler_timeout),
            args.reply_schema.clone(),
        )
    } else {
        bail!("give a program after `--` (e.g. `rmb serve --cmd shout -- tr a-z A-Z`) or --echo");
    };
    let bus = Bus::connect(&args.redis.redis).await?;
    let json = args.json;
    if !json {
        eprintln!(
            "serving {} through the peer's Redis at {} (Ctrl-C to stop)",
            args.cmds.join(", "),
            bus.url()
        );
    }
    let printer: Arc<dyn Fn(&Handled) + Send + Sync> = Arc::new(move |h: &Handled| {
        if json {
            println!("{}", serde_json::to_string(h).unwrap_or_default());
        } else {
            match &h.error {
                None => println!(
                    "{} from twin {}: {} bytes in, {} bytes out",
                    h.cmd, h.src, h.bytes_in, h.bytes_out
                ),
                Some(e) => println!(
                    "{} from twin {}: error {}: {}",
                    h.cmd, h.src, e.code, e.message
                ),
            }
        }
    });
    serve(
        bus,
        &args.cmds,
        handler,
        args.concurrency,
        stop_on_signal(),
        printer,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
