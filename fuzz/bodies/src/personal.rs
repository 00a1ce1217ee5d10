//! The personal bus (rmb_personal): what a machine's listener reads from the twins of
//! its group (notifications, finished-command summaries) and the join codes people
//! paste.

use rmb_personal::finished::{Notification, summary};
use rmb_personal::group::parse_code;
use rmb_personal::notify::{MAX_TEXT, MAX_TITLE, Message, clean};

use crate::{alloc, json_round_trip, select};

/// By the first byte, the rest as a notification (`rmb notify -m`), a finished
/// command's summary (`rmb notify`) or a join code. No panic, bounded allocations; an
/// accepted notification is within its bounds and the terminal line shown for it
/// carries no control character (no escape sequence from a hostile sender); a code
/// that parses reads back the same from its canonical form.
pub fn personal_bodies(data: &[u8]) {
    let Some((which, rest)) = select(data, 3) else {
        return;
    };
    match which {
        0 => {
            let parsed = alloc::bounded("Message::parse", alloc::limit(rest.len()), || {
                Message::parse(rest)
            });
            let Ok(message) = parsed else {
                return;
            };
            assert!(message.text.len() <= MAX_TEXT && message.host.len() <= MAX_TITLE);
            assert!(message.title.as_ref().is_none_or(|t| t.len() <= MAX_TITLE));
            let line = message.line(7);
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
        1 => {
            let n = alloc::bounded("Notification", alloc::limit(rest.len()), || {
                json_round_trip::<Notification>(rest)
            });
            if let Some(n) = n {
                let line = clean(&summary("7", &n));
                assert!(!line.chars().any(char::is_control));
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok((owner, secret)) = parse_code(text) {
                assert!(owner != 0);
                let canonical = format!("{owner}-{secret}");
                assert_eq!(parse_code(&canonical).ok(), Some((owner, secret)));
            }
        }
    }
}
