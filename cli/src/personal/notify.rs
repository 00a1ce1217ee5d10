//! Notifications with a level (`rmb notify -m TEXT --level high`): sent as `pmb.notify`
//! requests to one machine or the whole group; a listener shows each (desktop
//! notification through `notify-send` when a display exists, a terminal line always)
//! and acknowledges it with its reply. A `high` or `urgent` notification that no target
//! acknowledged in time is *escalated*: sent again, marked so, to the group's other
//! machines (PMB's "redeliver to the phone").

use std::fmt;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bus::{Bus, twin_of};
use crate::commands::call::{self, CallSpec};
use crate::commands::notify::{NOTIFY_CMD, Notification, NotifyArgs, run_teed, shell_words};
use crate::commands::serve::exit_status_code;

use super::cmds;

/// Longest notification text and title accepted (bytes).
pub const MAX_TEXT: usize = 16 * 1024;
/// Longest title accepted (bytes).
pub const MAX_TITLE: usize = 256;

/// How much a notification matters.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Shown quietly.
    Low,
    /// The default.
    Normal,
    /// Escalated to the other machines when not acknowledged.
    High,
    /// Escalated too; shown as critical.
    Urgent,
}

impl Level {
    /// Whether an unacknowledged notification of this level is escalated.
    pub fn escalates(self) -> bool {
        self >= Level::High
    }

    fn urgency(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Normal => "normal",
            Level::High | Level::Urgent => "critical",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Low => "low",
            Level::Normal => "normal",
            Level::High => "high",
            Level::Urgent => "urgent",
        })
    }
}

/// What `rmb notify -m` sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The text.
    pub text: String,
    /// An optional title.
    #[serde(default)]
    pub title: Option<String>,
    /// Its level.
    pub level: Level,
    /// Machine it was sent from.
    pub host: String,
    /// Set when this is a redelivery because the first targets did not acknowledge.
    #[serde(default)]
    pub escalated: bool,
}

/// Why a notification was refused by a listener.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Not a JSON [`Message`].
    #[error("not a notification: {0}")]
    Malformed(String),
    /// Text or title beyond the bounds.
    #[error("notification text is limited to {MAX_TEXT} bytes and its title to {MAX_TITLE}")]
    TooLong,
}

impl Message {
    /// Parses and bounds a received notification.
    pub fn parse(body: &[u8]) -> Result<Message, MessageError> {
        let m: Message =
            serde_json::from_slice(body).map_err(|e| MessageError::Malformed(e.to_string()))?;
        if m.text.len() > MAX_TEXT
            || m.title.as_ref().is_some_and(|t| t.len() > MAX_TITLE)
            || m.host.len() > MAX_TITLE
        {
            return Err(MessageError::TooLong);
        }
        Ok(m)
    }

    /// The terminal line: `[urgent] twin 9 (box): Title: text`, control characters removed.
    pub fn line(&self, src: u32) -> String {
        let title = self
            .title
            .as_ref()
            .map(|t| format!("{}: ", clean(t)))
            .unwrap_or_default();
        format!(
            "[{}{}] twin {src} ({}): {title}{}",
            self.level,
            if self.escalated { ", escalated" } else { "" },
            clean(&self.host),
            clean(&self.text)
        )
    }
}

/// The text with control characters (escape sequences a hostile sender could use on a
/// terminal) replaced by spaces.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Shows a notification: a line on stdout, and `notify-send` when `desktop`.
pub async fn show(src: u32, message: &Message, desktop: bool) {
    println!("{}", message.line(src));
    if desktop {
        let summary = message
            .title
            .clone()
            .unwrap_or_else(|| format!("twin {src} ({})", message.host));
        let shown = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new("notify-send")
                .args(["--urgency", message.level.urgency(), "--app-name", "rmb"])
                .arg(summary)
                .arg(&message.text)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status(),
        )
        .await;
        if !matches!(shown, Ok(Ok(s)) if s.success()) {
            tracing::warn!("notify-send did not show the notification");
        }
    }
}

/// How a notification went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Twins whose listener acknowledged it.
    pub acknowledged: Vec<u32>,
    /// Twins that did not acknowledge in time (or answered with an error).
    pub unacknowledged: Vec<u32>,
    /// Twins it was escalated to, with those of them that acknowledged.
    pub escalated_to: Vec<u32>,
}

async fn deliver(
    bus: &Bus,
    targets: &[u32],
    message: &Message,
    wait: Duration,
) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    let spec = CallSpec {
        dst: targets.to_vec(),
        cmd: cmds::NOTIFY.to_string(),
        body: serde_json::to_vec(message)?,
        schema: Some("application/json".into()),
        tag: None,
        timeout: wait,
    };
    let outcome = call::call(bus, &spec).await?;
    let mut acked = Vec::new();
    for reply in &outcome.replies {
        match (twin_of(&reply.src), &reply.error) {
            (Some(t), None) => acked.push(t),
            (Some(t), Some(e)) => {
                eprintln!("rmb: twin {t} refused the notification: {}", e.message)
            }
            (None, _) => {}
        }
    }
    let missed = targets
        .iter()
        .copied()
        .filter(|t| !acked.contains(t))
        .collect();
    Ok((acked, missed))
}

/// Sends `message` to `targets`; when none acknowledges within `wait` and the level
/// escalates, sends it, marked escalated, to `fallback` (the group's other machines).
pub async fn send(
    bus: &Bus,
    targets: &[u32],
    fallback: &[u32],
    message: &Message,
    wait: Duration,
) -> anyhow::Result<Delivery> {
    let (acknowledged, unacknowledged) = deliver(bus, targets, message, wait).await?;
    let mut delivery = Delivery {
        acknowledged,
        unacknowledged,
        escalated_to: Vec::new(),
    };
    let rest: Vec<u32> = fallback
        .iter()
        .copied()
        .filter(|t| !targets.contains(t))
        .collect();
    if delivery.acknowledged.is_empty() && message.level.escalates() && !rest.is_empty() {
        let escalated = Message {
            escalated: true,
            ..message.clone()
        };
        let (acked, missed) = deliver(bus, &rest, &escalated, wait).await?;
        delivery.escalated_to = rest;
        delivery.acknowledged.extend(acked);
        delivery.unacknowledged.extend(missed);
    }
    Ok(delivery)
}

/// Runs the personal-bus forms of `rmb notify`: `-m TEXT` (with levels and escalation),
/// a command notified to the group (no `--to`), and `--send-trigger`.
pub async fn run(args: NotifyArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&args.redis.redis).await?;
    let api = super::api::Api::new(&args.http);
    let group = super::group::load(&mut bus.conn()).await?;
    let me = api.twin().await?;
    let others = group.as_ref().map(|g| g.others(me)).unwrap_or_default();
    let targets: Vec<u32> = match args.to {
        Some(t) => vec![t],
        None if args.send_trigger.is_some() && args.message.is_none() => Vec::new(),
        None if group.is_none() => anyhow::bail!(super::group::GroupError::NoGroup),
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
            host: super::hostname(),
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
        let delivery = send(&bus, &targets, &others, &message, wait).await?;
        for t in &delivery.acknowledged {
            eprintln!("rmb: twin {t} acknowledged");
        }
        if !delivery.escalated_to.is_empty() {
            eprintln!(
                "rmb: not acknowledged within {} s: escalated to twins {:?}",
                wait.as_secs(),
                delivery.escalated_to
            );
        }
        for t in &delivery.unacknowledged {
            eprintln!("rmb: twin {t} did not acknowledge (is `rmb listen` running there?)");
        }
        return Ok(if delivery.acknowledged.is_empty() {
            ExitCode::from(crate::commands::call::EXIT_TIMEOUT)
        } else {
            ExitCode::SUCCESS
        });
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
            host: super::hostname(),
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
        match &group {
            None => eprintln!(
                "rmb: cannot fire trigger {name:?}: {}",
                super::group::GroupError::NoGroup
            ),
            Some(group) => match super::trigger::fire(&api, group, name, None).await {
                Ok(id) => eprintln!(
                    "rmb: fired trigger {name:?} (message {id} of {})",
                    group.topic()
                ),
                Err(e) => eprintln!("rmb: firing trigger {name:?} failed: {e}"),
            },
        }
    }
    Ok(ExitCode::from(exit_code.min(255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_drop_control_characters_and_say_the_level() {
        let m = Message {
            text: "disk\x1b[2J full".into(),
            title: Some("Disk".into()),
            level: Level::Urgent,
            host: "box".into(),
            escalated: true,
        };
        assert_eq!(
            m.line(9),
            "[urgent, escalated] twin 9 (box): Disk: disk [2J full"
        );
        assert!(Level::High.escalates() && !Level::Normal.escalates());
    }

    #[test]
    fn oversized_or_malformed_notifications_are_refused() {
        let long =
            serde_json::json!({"text": "x".repeat(MAX_TEXT + 1), "level": "low", "host": "h"});
        assert!(matches!(
            Message::parse(long.to_string().as_bytes()),
            Err(MessageError::TooLong)
        ));
        assert!(matches!(
            Message::parse(b"{\"text\":1}"),
            Err(MessageError::Malformed(_))
        ));
    }
}
