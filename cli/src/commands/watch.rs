//! `rmb watch`: notify the personal group (or one twin) when a process exits or a file
//! stops changing. The waiting is [`rmb_personal::watch`]; the notification is the
//! one `rmb notify -m` sends, with its levels, acknowledgement and escalation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::bus::Bus;
use rmb_personal::notify::{self, Level, MAX_TEXT, MAX_TITLE, Message};
use rmb_personal::{group, hostname, watch};

use crate::personal::PeerArgs;
use crate::personal::deliver::send_and_report;

/// Notify when a process exits (`--pid`) or a file stops changing (`--file`).
///
/// The process may be anyone's (it is looked at in /proc every 250 ms, not waited for, so
/// its exit status is not known). A file has settled when its size and modification time
/// have not changed for --quiet-for seconds. Exit status as `rmb notify -m`: 0 when a
/// machine acknowledged, 3 when none did; 130 when stopped before.
///
/// Examples: `rmb watch --pid 4242 --to 7`,
/// `rmb watch --file big.iso --quiet-for 30 -m "download done"`
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["pid", "file"])))]
pub struct WatchArgs {
    /// The process to wait for.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// The file to wait for (it must exist).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Seconds without a change after which --file has settled.
    #[arg(long, default_value_t = 10, value_name = "SECS", requires = "file")]
    pub quiet_for: u64,
    /// The notification's text [default: what happened, e.g. "process 4242 (make) exited"].
    #[arg(short = 'm', long = "message", value_name = "TEXT")]
    pub message: Option<String>,
    /// The notification's title [default: "rmb watch"].
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// Level of the notification (high and urgent are escalated, see `rmb notify`).
    #[arg(long, value_enum, default_value_t = Level::Normal)]
    pub level: Level,
    /// Twin to notify [default: the personal group's other machines].
    #[arg(long, env = "RMB_NOTIFY_TO", value_name = "TWIN")]
    pub to: Option<u32>,
    /// Seconds a high or urgent notification waits for an acknowledgement before it is
    /// escalated.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub escalate_after: u64,
    /// Seconds to wait for the listeners' acknowledgement.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    #[command(flatten)]
    pub peer: PeerArgs,
}

/// Runs `rmb watch`.
pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    if args.message.as_ref().is_some_and(|m| m.len() > MAX_TEXT)
        || args.title.as_ref().is_some_and(|t| t.len() > MAX_TITLE)
    {
        anyhow::bail!(notify::MessageError::TooLong);
    }
    // Everything that can fail is checked before the (possibly long) wait.
    let bus = Bus::connect(&args.peer.redis.redis).await?;
    let api = args.peer.api();
    let me = api.twin().await?;
    let group = group::load(&mut bus.conn()).await?;
    let others = group.as_ref().map(|g| g.others(me)).unwrap_or_default();
    let targets = match (args.to, &group) {
        (Some(t), _) => vec![t],
        (None, None) => anyhow::bail!(group::GroupError::NoGroup),
        (None, Some(_)) if others.is_empty() => {
            anyhow::bail!("the group has no other machine yet (`rmb agent invite`)")
        }
        (None, Some(_)) => others.clone(),
    };
    let waiting = async {
        Ok::<String, watch::WatchError>(match (&args.pid, &args.file) {
            (Some(pid), _) => {
                let name = watch::check_pid(*pid)?;
                eprintln!("watching process {pid} ({name})");
                let exited = watch::pid(*pid).await?;
                format!(
                    "process {pid} ({}) exited after {:.1} s of watching",
                    exited.name,
                    exited.watched.as_secs_f64()
                )
            }
            (None, Some(file)) => {
                watch::check_file(file)?;
                eprintln!(
                    "watching {} until it is unchanged for {} s",
                    file.display(),
                    args.quiet_for
                );
                let quiet = Duration::from_secs(args.quiet_for);
                let settled = watch::file(file, quiet).await?;
                format!(
                    "{} stopped changing ({} bytes, unchanged for {} s)",
                    file.display(),
                    settled.bytes,
                    args.quiet_for
                )
            }
            (None, None) => unreachable!("clap requires --pid or --file"),
        })
    };
    let happened = tokio::select! {
        happened = waiting => happened?,
        _ = crate::signals::stop_signal() => return Ok(ExitCode::from(130)),
    };
    eprintln!("rmb: {happened}");
    let message = Message {
        text: args.message.unwrap_or(happened),
        title: Some(args.title.unwrap_or_else(|| "rmb watch".into())),
        level: args.level,
        host: hostname(),
        escalated: false,
    };
    let wait = Duration::from_secs(if message.level.escalates() {
        args.escalate_after
    } else {
        args.timeout
    });
    send_and_report(&bus, &targets, &others, &message, wait).await
}
