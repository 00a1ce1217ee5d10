//! What `rmb listen` does with each request: every receiving service of the personal bus
//! for this machine (notifications of both kinds, clipboard, links and pages, and, on the
//! owner, joins), and the follower of the group topic that keeps the local member list
//! current. Every request from a twin outside the group is refused (403) before its body
//! is looked at, except a join, which is what an outsider with an invite code sends.
//! Popping requests and sending replies is the caller's (`rmb`'s Redis API client).

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use rmb_peer::redis_api::json::{JsonError, JsonIncomingRequest};
use serde::Deserialize;

use crate::api::{Api, ApiError};
use crate::clipboard::Clipboard;
use crate::cmds;
use crate::finished::{NOTIFY_CMD, Notification, summary};
use crate::group::{self, GroupError};
use crate::notify::{Ack, Message, clean};

/// Seconds of clock difference tolerated when checking a request's expiry.
const EXPIRY_GRACE: u64 = 5;

/// What the listener did, for its caller to tell the person at the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A twin joined the group (owner only).
    Joined(u32),
    /// A notification with a level: its terminal line ([`Message::line`]).
    Notification(String),
    /// A finished command's notification: its summary line and its last lines of output,
    /// control characters removed.
    Finished {
        /// The summary line ([`summary`]).
        summary: String,
        /// The command's last lines (at most 100).
        output: Vec<String>,
    },
    /// Text went into the clipboard.
    Copied {
        /// The sender.
        twin: u32,
        /// How much.
        bytes: usize,
        /// Where ([`Clipboard::describe`]).
        into: String,
    },
    /// A link came (and was opened when there is an opener).
    Link {
        /// The sender.
        twin: u32,
        /// The URL (checked: a web link without spaces or control characters).
        url: String,
    },
    /// A page came, and was kept (and opened when there is an opener).
    Page {
        /// The sender.
        twin: u32,
        /// Its size.
        bytes: usize,
        /// Its file.
        path: String,
    },
    /// The member list changed (a member machine learned it from the group topic).
    Members(Vec<u32>),
    /// The group topic refused this machine (it was removed, or never joined).
    Refused(String),
}

/// Where the listener's [`Event`]s go.
pub type Report = std::sync::Arc<dyn Fn(Event) + Send + Sync>;

/// What the services need, shared by every request.
pub struct Services {
    /// This machine's twin.
    pub me: u32,
    /// The local peer's HTTP API (the group topic).
    pub api: Api,
    /// The local peer's Redis (the group's member list).
    pub conn: MultiplexedConnection,
    /// Whether notifications also go to the desktop (D-Bus).
    pub desktop: bool,
    /// The program that opens links and pages, if any (else they are printed).
    pub opener: Option<String>,
    /// Where pages are written.
    pub page_dir: PathBuf,
    /// The clipboard (desktop or file).
    pub clipboard: Clipboard,
    /// Told what happened.
    pub report: Report,
}

/// A service's answer: a body and its schema, or the error the sender gets.
pub type Reply = Result<(Vec<u8>, Option<String>), JsonError>;

/// The commands the listener serves: every service, and joins on the group's owner.
pub fn served(owner: bool) -> Vec<String> {
    let mut served = vec![
        cmds::NOTIFY.to_string(),
        NOTIFY_CMD.to_string(),
        cmds::COPY.to_string(),
        cmds::PASTE.to_string(),
        cmds::OPEN.to_string(),
        cmds::OPEN_HTML.to_string(),
    ];
    if owner {
        served.push(cmds::JOIN.to_string());
    }
    served
}

/// Unix time in seconds (what a request's `now` carries).
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error(code: u32, message: impl ToString) -> JsonError {
    JsonError {
        code,
        message: message.to_string(),
    }
}

fn group_error(e: GroupError) -> JsonError {
    let code = match e {
        GroupError::WrongCode | GroupError::NotOwner(_) => 403,
        GroupError::TooManyAttempts => 429,
        GroupError::BadCode(_) => 400,
        GroupError::Full => 409,
        _ => 500,
    };
    error(code, e)
}

fn json_reply(value: &impl serde::Serialize) -> Reply {
    Ok((
        serde_json::to_vec(value).expect("replies serialize"),
        Some("application/json".into()),
    ))
}

/// What a join request carries.
#[derive(Deserialize)]
struct JoinRequest {
    code: String,
}

impl Services {
    /// Answers one request from twin `src` (`None` when its address names no twin),
    /// given with its decoded body.
    pub async fn handle(
        &self,
        src: Option<u32>,
        request: &JsonIncomingRequest,
        body: Vec<u8>,
    ) -> Reply {
        let src = src.ok_or_else(|| error(400, "no sender twin"))?;
        // A request that waited past its expiry (this listener was down) is stale: a
        // notification or a link from hours ago must not pop up now.
        let deadline = request
            .now
            .saturating_add(request.exp)
            .saturating_add(EXPIRY_GRACE);
        if deadline < now_secs() {
            return Err(error(408, "expired before this machine's listener read it"));
        }
        let mut conn = self.conn.clone();
        if request.cmd == cmds::JOIN {
            let join: JoinRequest = serde_json::from_slice(&body)
                .map_err(|e| error(400, format!("not a join request: {e}")))?;
            let (owner, secret) = group::parse_code(&join.code).map_err(group_error)?;
            if owner != self.me {
                return Err(error(400, format!("this code is for twin {owner}")));
            }
            let group = group::admit(&self.api, &mut conn, self.me, src, &secret)
                .await
                .map_err(group_error)?;
            (self.report)(Event::Joined(src));
            return json_reply(&group);
        }
        let group = group::require(&mut conn).await.map_err(group_error)?;
        if !group.admits(src) {
            return Err(error(
                403,
                format!("twin {src} is not in this machine's personal group"),
            ));
        }
        match request.cmd.as_str() {
            cmds::NOTIFY => {
                let message = Message::parse(&body).map_err(|e| error(400, e))?;
                (self.report)(Event::Notification(message.line(src)));
                let shown = crate::notify::show(src, &message, self.desktop).await;
                json_reply(&Ack {
                    acknowledged: true,
                    shown,
                })
            }
            NOTIFY_CMD => {
                let n: Notification = serde_json::from_slice(&body)
                    .map_err(|e| error(400, format!("not a notification: {e}")))?;
                (self.report)(Event::Finished {
                    summary: clean(&summary(&src.to_string(), &n)),
                    output: n.output.iter().take(100).map(|l| clean(l)).collect(),
                });
                json_reply(&serde_json::json!({ "received": true }))
            }
            cmds::COPY => {
                let stored = self
                    .clipboard
                    .copy(&body)
                    .await
                    .map_err(|e| error(500, e))?;
                (self.report)(Event::Copied {
                    twin: src,
                    bytes: body.len(),
                    into: self.clipboard.describe(),
                });
                json_reply(&stored)
            }
            cmds::PASTE => {
                let text = self.clipboard.paste().await.map_err(|e| error(500, e))?;
                Ok((text, Some("text/plain".into())))
            }
            cmds::OPEN => {
                let url = std::str::from_utf8(&body)
                    .map_err(|_| error(400, "a URL is text"))?
                    .trim();
                crate::open::check(url).map_err(|e| error(400, e))?;
                (self.report)(Event::Link {
                    twin: src,
                    url: url.to_string(),
                });
                json_reply(&crate::open::open(url, self.opener.as_deref()).await)
            }
            cmds::OPEN_HTML => {
                let path = crate::open::keep_page(&self.page_dir, &body).map_err(|e| match e {
                    crate::open::PageError::TooLarge => error(413, e),
                    e => error(500, e),
                })?;
                (self.report)(Event::Page {
                    twin: src,
                    bytes: body.len(),
                    path: path.display().to_string(),
                });
                json_reply(&crate::open::open_file(&path, self.opener.as_deref()).await)
            }
            other => Err(error(404, format!("no service {other:?}"))),
        }
    }
}

/// Member side: follows the group topic and applies the owner's `members` events to
/// the local copy, reopening the stream with a growing pause when it breaks.
pub async fn follow_membership(api: Api, mut conn: MultiplexedConnection, report: Report) {
    let mut last = 0;
    let mut pause = Duration::from_millis(500);
    loop {
        let outcome: Result<(), anyhow::Error> = async {
            let current = group::require(&mut conn).await?;
            let mut stream = api.follow(&current.topic(), last).await?;
            loop {
                let m = stream.next().await?;
                pause = Duration::from_millis(500);
                last = last.max(m["id"].as_u64().unwrap_or(0));
                let Some(text) = m["message"].as_str() else {
                    continue;
                };
                let Ok(event) = serde_json::from_str(text) else {
                    continue;
                };
                let publisher = m["publisher"].as_u64().unwrap_or(0) as u32;
                let current = group::require(&mut conn).await?;
                if let Some(group) =
                    group::apply_event(&mut conn, &current, publisher, &event).await?
                {
                    report(Event::Members(group.members.into_iter().collect()));
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            let refused = matches!(e.downcast_ref::<ApiError>(), Some(ApiError::Refused { .. }));
            tracing::warn!("following the group topic: {e:#}; retrying in {pause:?}");
            if refused {
                report(Event::Refused(format!("{e:#}")));
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}
