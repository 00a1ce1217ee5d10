//! `rmb notify -- <command…>` and `rmb listen notifications`: PMB's best-loved feature on
//! a signed, end-to-end encrypted bus. `notify` runs a command, shows its output as usual,
//! and when it ends sends a [`Notification`] request to a twin; the twin's `rmb listen
//! notifications` prints it (and shows a desktop notification when `notify-send` exists)
//! and acknowledges it, so the sender knows it arrived. Without `--to` (or with `-m` or
//! `--send-trigger`) it is the personal bus's notification, sent to the group.
//!
//! This module is the command line only: the notifications themselves are
//! [`rmb_personal::finished`] and [`rmb_personal::notify`].

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use crate::args::RedisArgs;
use crate::bus::Bus;
use crate::commands::call::{self, CallSpec};
use crate::commands::serve::{self, Handler, exit_status_code};
use crate::commands::topic::HttpArgs;
use rmb_personal::finished::{NOTIFY_CMD, Notification, SCHEMA, run_teed, shell_words, summary};
use rmb_personal::notify::{Level, MAX_TEXT, MAX_TITLE, Message, MessageError};
use rmb_personal::{group, hostname, trigger, which};

use crate::personal::deliver::send_and_report;

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

/// Runs `rmb notify`.
pub async fn run_notify(args: NotifyArgs) -> anyhow::Result<ExitCode> {
    if args.message.is_some() || args.to.is_none() || args.send_trigger.is_some() {
        return run_personal(args).await;
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

/// Runs the personal-bus forms of `rmb notify`: `-m TEXT` (with levels and escalation),
/// a command notified to the group (no `--to`), and `--send-trigger`.
async fn run_personal(args: NotifyArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&args.redis.redis).await?;
    let api = crate::personal::api(&args.http);
    let group = group::load(&mut bus.conn()).await?;
    let me = api.twin().await?;
    let others = group.as_ref().map(|g| g.others(me)).unwrap_or_default();
    let targets: Vec<u32> = match args.to {
        Some(t) => vec![t],
        None if args.send_trigger.is_some() && args.message.is_none() => Vec::new(),
        None if group.is_none() => anyhow::bail!(group::GroupError::NoGroup),
        None => others.clone(),
    };
    if let Some(text) = args.message {
        if targets.is_empty() {
            anyhow::bail!("the group has no other machine yet (`rmb agent invite`)");
        }
        let message = Message {
            text,
            title: args.title,
            level: args.level,
            host: hostname(),
            escalated: false,
        };
        if message.text.len() > MAX_TEXT
            || message.title.as_ref().is_some_and(|t| t.len() > MAX_TITLE)
        {
            anyhow::bail!(MessageError::TooLong);
        }
        let wait = Duration::from_secs(if message.level.escalates() {
            args.escalate_after
        } else {
            args.timeout
        });
        return send_and_report(&bus, &targets, &others, &message, wait).await;
    }
    let started = Instant::now();
    let (status, output) = run_teed(&args.command, args.lines).await?;
    let exit_code = exit_status_code(&status);
    if !targets.is_empty() {
        let notification = Notification {
            command: shell_words(&args.command),
            exit_code,
            success: status.success(),
            duration_ms: started.elapsed().as_millis() as u64,
            host: hostname(),
            output,
        };
        let spec = CallSpec {
            dst: targets.clone(),
            cmd: if args.cmd.is_empty() {
                NOTIFY_CMD.into()
            } else {
                args.cmd.clone()
            },
            body: serde_json::to_vec(&notification)?,
            schema: Some("application/json".into()),
            tag: None,
            timeout: Duration::from_secs(args.timeout),
        };
        match call::call(&bus, &spec).await {
            Ok(outcome) => {
                for reply in &outcome.replies {
                    match &reply.error {
                        None => eprintln!("rmb: notified twin {}", reply.src),
                        Some(e) => eprintln!("rmb: twin {} refused: {}", reply.src, e.message),
                    }
                }
                for t in &outcome.unanswered {
                    eprintln!(
                        "rmb: twin {t} did not acknowledge within {} s",
                        args.timeout
                    );
                }
            }
            Err(e) => eprintln!("rmb: notifying failed: {e:#}"),
        }
    }
    if let Some(name) = &args.send_trigger {
        let outcome = trigger::Outcome {
            success: status.success(),
            exit_code: Some(exit_code),
        };
        let after =
            trigger::fire_after(&api, group.as_ref(), name, outcome, args.trigger_always).await;
        crate::personal::print_after_command(name, &after);
    }
    Ok(ExitCode::from(exit_code.min(255) as u8))
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
