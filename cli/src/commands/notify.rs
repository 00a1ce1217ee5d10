//! `rmb notify -- <command…>` and `rmb listen notifications`: PMB's best-loved feature on
//! a signed, end-to-end encrypted bus. `notify` runs a command, shows its output as usual,
//! and when it ends sends a [`Notification`] request to a twin; the twin's `rmb listen
//! notifications` prints it (and shows a desktop notification when `notify-send` exists)
//! and acknowledges it, so the sender knows it arrived.

use std::collections::VecDeque;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::args::RedisArgs;
use crate::bus::Bus;
use crate::commands::call::{self, CallSpec};
use crate::commands::serve::{self, Handler, exit_status_code};
use crate::commands::topic::HttpArgs;
use crate::personal::notify::Level;

/// The command notifications are sent with (and `rmb listen notifications` serves).
pub const NOTIFY_CMD: &str = "notify";
/// Schema of the notification body.
pub const SCHEMA: &str = "application/json";

/// Run a command and notify when it ends (exit code, duration, last lines of output), or
/// send a notification (`-m TEXT`); optionally fire a trigger when the command ends.
///
/// With a command, exits with the command's own exit status, so it can wrap anything in
/// scripts; a notification that cannot be delivered is reported on stderr. Without
/// `--to`, it goes to the other machines of the personal group (`rmb agent`).
///
/// Examples: `rmb notify --to 7 -- make release`,
/// `rmb notify -m "backup failed" --level urgent --to 9`,
/// `rmb notify --send-trigger build-done -- make`
#[derive(Args, Debug)]
pub struct NotifyArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    /// The local peer's HTTP API (for the group topic, with --send-trigger).
    #[command(flatten)]
    pub http: HttpArgs,

    /// Twin to notify (set RMB_NOTIFY_TO once in your shell profile) [default: the
    /// personal group's other machines].
    #[arg(long, env = "RMB_NOTIFY_TO", value_name = "TWIN")]
    pub to: Option<u32>,

    /// Send this text as a notification instead of running a command.
    #[arg(
        short = 'm',
        long = "message",
        value_name = "TEXT",
        conflicts_with = "command"
    )]
    pub message: Option<String>,

    /// A title for the -m notification.
    #[arg(long, value_name = "TEXT", requires = "message")]
    pub title: Option<String>,

    /// Level of the -m notification; high and urgent are escalated to the group's other
    /// machines when --to does not acknowledge within --escalate-after.
    #[arg(long, value_enum, default_value_t = Level::Normal, requires = "message")]
    pub level: Level,

    /// Seconds a high or urgent notification waits for an acknowledgement before it is
    /// escalated.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub escalate_after: u64,

    /// When the command succeeds, fire this trigger on the personal group (see
    /// `rmb run --wait-trigger`); the trigger says whether it succeeded.
    #[arg(long, value_name = "NAME", conflicts_with = "message")]
    pub send_trigger: Option<String>,

    /// Fire --send-trigger when the command fails too (reporting the failure, which
    /// `rmb run --wait-trigger` does not run on unless --run-on-failure).
    #[arg(long, requires = "send_trigger")]
    pub trigger_always: bool,

    /// Lines of output (stdout and stderr, interleaved) included in the notification.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub lines: usize,

    /// Seconds to wait for the listener's acknowledgement.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,

    /// The remote command to send (what the listener serves).
    #[arg(long, default_value = NOTIFY_CMD, value_name = "CMD")]
    pub cmd: String,

    /// The command to run and its arguments, after `--`.
    #[arg(
        last = true,
        required_unless_present = "message",
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// `rmb listen …`: receive things other twins send. Without a subcommand, every service
/// of the personal bus (notifications, clipboard, links, joins on the group's owner).
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ListenArgs {
    #[command(subcommand)]
    pub what: Option<ListenWhat>,
    #[command(flatten)]
    pub all: crate::personal::listen::ListenAllArgs,
}

/// What to listen for.
#[derive(Subcommand, Debug)]
pub enum ListenWhat {
    /// Print notifications sent with `rmb notify` (and show them on the desktop).
    Notifications(ListenNotificationsArgs),
}

/// Print notifications sent by `rmb notify`, as they arrive.
#[derive(Args, Debug)]
pub struct ListenNotificationsArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    /// The command to serve (must match the senders' --cmd).
    #[arg(long, default_value = NOTIFY_CMD, value_name = "CMD")]
    pub cmd: String,

    /// Do not call notify-send, only print.
    #[arg(long)]
    pub no_desktop: bool,

    /// Print one JSON object per notification (with the sender) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `rmb notify` sends: a finished command's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The command line that ran.
    pub command: String,
    /// Its exit status (128 + N when killed by signal N).
    pub exit_code: u32,
    /// Whether it succeeded (exit status 0).
    pub success: bool,
    /// How long it ran.
    pub duration_ms: u64,
    /// Machine it ran on.
    pub host: String,
    /// Its last lines of output.
    pub output: Vec<String>,
}

/// Runs `rmb notify`.
pub async fn run_notify(args: NotifyArgs) -> anyhow::Result<ExitCode> {
    if args.message.is_some() || args.to.is_none() || args.send_trigger.is_some() {
        return crate::personal::notify::run(args).await;
    }
    let to = args.to.expect("checked above");
    // Connect first: better to learn Redis is down before a long command than after it.
    let bus = Bus::connect(&args.redis.redis).await?;
    let started = Instant::now();
    let (status, output) = run_teed(&args.command, args.lines).await?;
    let exit_code = exit_status_code(&status);
    let notification = Notification {
        command: shell_words(&args.command),
        exit_code,
        success: status.success(),
        duration_ms: started.elapsed().as_millis() as u64,
        host: hostname(),
        output,
    };
    let spec = CallSpec {
        dst: vec![to],
        cmd: args.cmd.clone(),
        body: serde_json::to_vec(&notification)?,
        schema: Some(SCHEMA.to_string()),
        tag: None,
        timeout: Duration::from_secs(args.timeout),
    };
    match call::call(&bus, &spec).await {
        Ok(outcome) if outcome.success() => {
            eprintln!("rmb: notified twin {to} (exit code {exit_code})")
        }
        Ok(outcome) => match outcome.replies.first().and_then(|r| r.error.as_ref()) {
            Some(e) => eprintln!("rmb: notifying twin {to} failed: {}", e.message),
            None => eprintln!(
                "rmb: twin {to} did not acknowledge the notification within {} s \
                 (is `rmb listen notifications` running there?)",
                args.timeout
            ),
        },
        Err(e) => eprintln!("rmb: notifying twin {to} failed: {e:#}"),
    }
    Ok(ExitCode::from(exit_code.min(255) as u8))
}

/// Runs `command`, copying its stdout and stderr through while keeping the last `keep`
/// lines of both.
pub async fn run_teed(
    command: &[String],
    keep: usize,
) -> anyhow::Result<(std::process::ExitStatus, Vec<String>)> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", command[0]))?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(keep + 1)));
    let out = tokio::spawn(tee(
        child.stdout.take().expect("piped"),
        tokio::io::stdout(),
        tail.clone(),
        keep,
    ));
    let err = tokio::spawn(tee(
        child.stderr.take().expect("piped"),
        tokio::io::stderr(),
        tail.clone(),
        keep,
    ));
    let status = child.wait().await?;
    let _ = out.await;
    let _ = err.await;
    let lines = tail.lock().expect("tail lock").drain(..).collect();
    Ok((status, lines))
}

async fn tee(
    from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = to.write_all(&line).await;
                let _ = to.flush().await;
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                let mut tail = tail.lock().expect("tail lock");
                tail.push_back(text);
                while tail.len() > keep {
                    tail.pop_front();
                }
            }
        }
    }
}

/// The command line as a person would type it (arguments with spaces quoted).
pub fn shell_words(command: &[String]) -> String {
    command
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

use crate::personal::hostname;

/// One line for people: `twin 7 (host): 'make' failed with exit code 2 after 3.2 s`.
pub fn summary(src: &str, n: &Notification) -> String {
    let how = if n.success {
        "finished".to_string()
    } else {
        format!("failed with exit code {}", n.exit_code)
    };
    format!(
        "twin {src} ({}): `{}` {how} after {:.1} s",
        n.host,
        n.command,
        n.duration_ms as f64 / 1000.0
    )
}

/// Runs `rmb listen notifications`, or every personal service without a subcommand.
pub async fn run_listen(args: ListenArgs) -> anyhow::Result<ExitCode> {
    let Some(ListenWhat::Notifications(args)) = args.what else {
        return crate::personal::listen::run(args.all).await;
    };
    let bus = Bus::connect(&args.redis.redis).await?;
    let desktop = !args.no_desktop && which("notify-send");
    if !args.json {
        eprintln!(
            "listening for notifications (`{}`) through the peer's Redis at {}{} (Ctrl-C to stop)",
            args.cmd,
            bus.url(),
            if desktop {
                ", with desktop notifications"
            } else {
                ""
            }
        );
    }
    let json = args.json;
    let handler: Handler = Arc::new(move |request, body| {
        Box::pin(async move {
            let notification: Notification = serde_json::from_slice(&body).map_err(|e| {
                rmb_peer::redis_api::json::JsonError {
                    code: 400,
                    message: format!("not a notification: {e}"),
                }
            })?;
            show(&request.src, &notification, json, desktop).await;
            Ok((br#"{"received":true}"#.to_vec(), Some(SCHEMA.to_string())))
        })
    });
    let quiet: Arc<dyn Fn(&serve::Handled) + Send + Sync> = Arc::new(|_| {});
    serve::serve(bus, &[args.cmd], handler, 4, serve::stop_on_signal(), quiet).await?;
    Ok(ExitCode::SUCCESS)
}

async fn show(src: &str, n: &Notification, json: bool, desktop: bool) {
    if json {
        let line = serde_json::json!({ "src": src, "notification": n });
        println!("{line}");
    } else {
        println!("{}", summary(src, n));
        for line in &n.output {
            println!("    {line}");
        }
    }
    if desktop {
        let urgency = if n.success { "normal" } else { "critical" };
        let body = n.output.join("\n");
        let shown = tokio::process::Command::new("notify-send")
            .args(["--urgency", urgency, "--app-name", "rmb"])
            .arg(summary(src, n))
            .arg(body)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if let Err(e) = shown {
            tracing::warn!("notify-send failed: {e}");
        }
    }
}

/// True if `program` is an executable on PATH.
pub fn which(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted_like_a_shell() {
        let words = ["make", "a b", "it's", ""].map(String::from);
        assert_eq!(shell_words(&words), r"make 'a b' 'it'\''s' ''");
    }

    #[test]
    fn summaries_say_what_failed() {
        let n = Notification {
            command: "false".into(),
            exit_code: 1,
            success: false,
            duration_ms: 1500,
            host: "box".into(),
            output: vec![],
        };
        assert_eq!(
            summary("7", &n),
            "twin 7 (box): `false` failed with exit code 1 after 1.5 s"
        );
    }

    #[tokio::test]
    async fn output_tail_keeps_the_last_lines_and_exit_codes_survive() {
        let cmd = ["sh", "-c", "for i in 1 2 3 4 5; do echo $i; done; exit 4"].map(String::from);
        let (status, lines) = run_teed(&cmd, 3).await.unwrap();
        assert_eq!(exit_status_code(&status), 4);
        assert_eq!(lines, ["3", "4", "5"]);
        // stderr is kept too (its order against stdout is whatever the pipes give).
        let cmd = ["sh", "-c", "echo oops >&2"].map(String::from);
        let (status, lines) = run_teed(&cmd, 3).await.unwrap();
        assert!(status.success());
        assert_eq!(lines, ["oops"]);
    }
}
