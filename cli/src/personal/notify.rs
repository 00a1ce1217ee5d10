//! Notifications with a level (`rmb notify -m TEXT --level high`): sent as `pmb.notify`
//! requests to one machine or the whole group; a listener shows each (a D-Bus desktop
//! notification through the `notify-rust` crate when a notification server answers on
//! the session bus, a terminal line always) and acknowledges it with its reply, which
//! says whether the desktop showed it. A `high` or `urgent` notification that no target
//! acknowledged in time is *escalated*: sent again, marked so, to the group's other
//! machines (PMB's "redeliver to the phone").

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::{Bus, twin_of};
use crate::commands::call::{self, CallSpec};

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

    /// The desktop urgency: high and urgent are both critical (they stay on screen).
    fn urgency(self) -> notify_rust::Urgency {
        match self {
            Level::Low => notify_rust::Urgency::Low,
            Level::Normal => notify_rust::Urgency::Normal,
            Level::High | Level::Urgent => notify_rust::Urgency::Critical,
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

/// Longest a notification server may take to answer.
const DESKTOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a notification was shown; a listener's acknowledgement carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shown {
    /// A notification server on the session bus took it (and gave it an id), and a
    /// terminal line was printed.
    Desktop,
    /// Only the terminal line (no desktop, `--no-desktop`, or the server failed).
    Terminal,
}

/// A listener's answer to `pmb.notify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Always true: answering is acknowledging.
    pub acknowledged: bool,
    /// Where it was shown (absent from listeners older than this field: terminal).
    #[serde(default = "terminal")]
    pub shown: Shown,
}

fn terminal() -> Shown {
    Shown::Terminal
}

/// True when a D-Bus session bus may be reachable (as zbus looks for it:
/// `DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus`).
pub fn has_session_bus() -> bool {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty()) {
        return true;
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .is_some_and(|dir| std::path::Path::new(&dir).join("bus").exists())
}

/// Shows a notification: a line on stdout, and a D-Bus desktop notification when
/// `desktop`; where it was shown.
pub async fn show(src: u32, message: &Message, desktop: bool) -> Shown {
    println!("{}", message.line(src));
    if !desktop {
        return Shown::Terminal;
    }
    let summary = message
        .title
        .clone()
        .unwrap_or_else(|| format!("twin {src} ({})", message.host));
    let mut notification = notify_rust::Notification::new();
    notification
        .appname("rmb")
        .summary(&summary)
        .body(&message.text)
        .urgency(message.level.urgency());
    match tokio::time::timeout(DESKTOP_TIMEOUT, notification.show_async()).await {
        Ok(Ok(handle)) => {
            tracing::debug!("desktop notification {} shown", handle.id());
            Shown::Desktop
        }
        Ok(Err(e)) => {
            tracing::warn!("no desktop notification: {e}");
            Shown::Terminal
        }
        Err(_) => {
            tracing::warn!(
                "no desktop notification: the notification server did not answer in {} s",
                DESKTOP_TIMEOUT.as_secs()
            );
            Shown::Terminal
        }
    }
}

/// How a notification went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Twins whose listener acknowledged it.
    pub acknowledged: Vec<u32>,
    /// Those of them whose desktop showed it (the others printed it only).
    pub on_desktop: Vec<u32>,
    /// Twins whose listener refused it, with its reason.
    pub refused: Vec<(u32, String)>,
    /// Twins that gave no answer in time (no listener running, or it is offline).
    pub unanswered: Vec<u32>,
    /// Twins it was escalated to, with those of them that acknowledged.
    pub escalated_to: Vec<u32>,
}

async fn deliver(
    bus: &Bus,
    targets: &[u32],
    message: &Message,
    wait: Duration,
) -> anyhow::Result<Answers> {
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
    let mut on_desktop = Vec::new();
    let mut refused = Vec::new();
    for reply in &outcome.replies {
        match (twin_of(&reply.src), &reply.error) {
            (Some(t), None) => {
                acked.push(t);
                let ack = serde_json::from_slice::<Ack>(&reply.body);
                if ack.is_ok_and(|a| a.shown == Shown::Desktop) {
                    on_desktop.push(t);
                }
            }
            (Some(t), Some(e)) => refused.push((t, e.message.clone())),
            (None, _) => {}
        }
    }
    let missed = targets
        .iter()
        .copied()
        .filter(|t| !acked.contains(t) && !refused.iter().any(|(r, _)| r == t))
        .collect();
    Ok(Answers {
        acked,
        on_desktop,
        refused,
        missed,
    })
}

/// What one round of delivery got back.
struct Answers {
    acked: Vec<u32>,
    on_desktop: Vec<u32>,
    refused: Vec<(u32, String)>,
    missed: Vec<u32>,
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
    let first = deliver(bus, targets, message, wait).await?;
    let mut delivery = Delivery {
        acknowledged: first.acked,
        on_desktop: first.on_desktop,
        refused: first.refused,
        unanswered: first.missed,
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
        let again = deliver(bus, &rest, &escalated, wait).await?;
        delivery.escalated_to = rest;
        delivery.acknowledged.extend(again.acked);
        delivery.on_desktop.extend(again.on_desktop);
        delivery.refused.extend(again.refused);
        delivery.unanswered.extend(again.missed);
    }
    Ok(delivery)
}

/// Sends `message` (see [`send`]) and says on stderr who acknowledged, who refused and
/// who did not answer; exit code 0 when someone acknowledged, else 3.
pub async fn send_and_report(
    bus: &Bus,
    targets: &[u32],
    others: &[u32],
    message: &Message,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let delivery = send(bus, targets, others, message, wait).await?;
    for t in &delivery.acknowledged {
        let how = if delivery.on_desktop.contains(t) {
            "shown on its desktop"
        } else {
            "printed in its terminal"
        };
        eprintln!("rmb: twin {t} acknowledged ({how})");
    }
    if !delivery.escalated_to.is_empty() {
        eprintln!(
            "rmb: not acknowledged within {} s: escalated to twins {:?}",
            wait.as_secs(),
            delivery.escalated_to
        );
    }
    for (t, why) in &delivery.refused {
        eprintln!("rmb: twin {t} refused the notification: {why}");
    }
    for t in &delivery.unanswered {
        eprintln!(
            "rmb: twin {t} did not answer within {} s (is `rmb listen` running there?)",
            wait.as_secs()
        );
    }
    Ok(if delivery.acknowledged.is_empty() {
        ExitCode::from(crate::commands::call::EXIT_TIMEOUT)
    } else {
        ExitCode::SUCCESS
    })
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
    fn acks_say_where_it_was_shown_and_old_ones_mean_the_terminal() {
        let old: Ack = serde_json::from_str(r#"{"acknowledged":true}"#).unwrap();
        assert_eq!(old.shown, Shown::Terminal);
        let ack = Ack {
            acknowledged: true,
            shown: Shown::Desktop,
        };
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            serde_json::json!({"acknowledged": true, "shown": "desktop"})
        );
        assert_eq!(
            Level::High.urgency(),
            notify_rust::Urgency::Critical,
            "high stays on screen"
        );
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
