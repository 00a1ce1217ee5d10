//! Notifications with a level (`rmb notify -m TEXT --level high`): sent as `pmb.notify`
//! requests to one machine or the whole group; a listener shows each (a D-Bus desktop
//! notification through the `notify-rust` crate when a notification server answers on
//! the session bus, a terminal line always) and acknowledges it with its reply, which
//! says whether the desktop showed it. A `high` or `urgent` notification that no target
//! acknowledged in time is *escalated*: sent again, marked so, to the group's other
//! machines (PMB's "redeliver to the phone"); the sending and escalating is `rmb`'s
//! (it goes through the local peer's Redis API).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// Shows a notification as a D-Bus desktop notification when `desktop`; where it was
/// shown (the terminal line, [`Message::line`], is the caller's to print).
pub async fn show(src: u32, message: &Message, desktop: bool) -> Shown {
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
