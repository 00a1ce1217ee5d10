//! `rmb listen` with no argument: every receiving service of the personal bus for this
//! machine — notifications (both kinds), clipboard, links, and, on the owner, joins — in
//! one process, plus the follower of the group topic that keeps the local member list
//! current. Every request from a twin outside the group is refused (403) before its body
//! is looked at, except a join, which is what an outsider with an invite code sends.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use redis::aio::MultiplexedConnection;
use rmb_peer::redis_api::json::{JsonError, JsonIncomingRequest};
use serde::Deserialize;

use super::api::{Api, ApiError};
use super::clipboard::Clipboard;
use super::finished::{NOTIFY_CMD, Notification, summary};
use super::group::{self, GroupError};
use super::notify::{Ack, Message};
use super::which;
use super::{PeerArgs, cmds};
use crate::bus::{Bus, twin_of, unix_now};
use crate::commands::serve::{self, Handler, HandlerResult};

/// Flags of `rmb listen` without a subcommand.
#[derive(Args, Debug, Clone)]
pub struct ListenAllArgs {
    #[command(flatten)]
    pub peer: PeerArgs,

    /// Do not use the desktop even when one is reachable: notifications only printed (no
    /// D-Bus), copied text kept in the clipboard file, links printed (no xdg-open).
    #[arg(long)]
    pub no_desktop: bool,

    /// Where copied text is kept when there is no desktop clipboard (no display, or
    /// --no-desktop)
    /// [default: $XDG_STATE_HOME/rmb/clipboard, else ~/.local/state/rmb/clipboard].
    #[arg(long, value_name = "PATH")]
    pub clipboard_file: Option<PathBuf>,

    /// The program that opens links and pages (`rmb open`), given the URL or the page's
    /// file; used even without a display [default: xdg-open, when a display exists].
    #[arg(long, value_name = "PROGRAM")]
    pub opener: Option<String>,

    /// Where pages sent with `rmb open --html` are written (a private directory, mode
    /// 0700; the newest 20 pages are kept)
    /// [default: $XDG_RUNTIME_DIR/rmb-pages, else rmb-pages-UID in the temporary directory].
    #[arg(long, value_name = "DIR")]
    pub page_dir: Option<PathBuf>,

    /// Requests handled at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub concurrency: usize,

    /// Write a systemd user unit running `rmb listen` with these flags at login
    /// ($XDG_CONFIG_HOME/systemd/user/rmb-listen.service), print how to enable it, exit.
    #[arg(long)]
    pub install: bool,
}

impl ListenAllArgs {
    /// The flags `rmb listen` runs with in the installed unit.
    fn unit_args(&self) -> Vec<String> {
        let mut args = vec![
            "listen".to_string(),
            "--redis".into(),
            self.peer.redis.redis.clone(),
            "--http".into(),
            self.peer.http.url.clone(),
            "--concurrency".into(),
            self.concurrency.to_string(),
        ];
        if self.no_desktop {
            args.push("--no-desktop".into());
        }
        if let Some(file) = &self.clipboard_file {
            args.push("--clipboard-file".into());
            args.push(file.display().to_string());
        }
        if let Some(opener) = &self.opener {
            args.push("--opener".into());
            args.push(opener.clone());
        }
        if let Some(dir) = &self.page_dir {
            args.push("--page-dir".into());
            args.push(dir.display().to_string());
        }
        args
    }
}

/// Seconds of clock difference tolerated when checking a request's expiry.
const EXPIRY_GRACE: u64 = 5;

/// What the services need, shared by every request.
struct Services {
    me: u32,
    api: Api,
    conn: MultiplexedConnection,
    desktop: bool,
    opener: Option<String>,
    page_dir: PathBuf,
    clipboard: Clipboard,
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

fn json_reply(value: &impl serde::Serialize) -> HandlerResult {
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
    async fn handle(&self, request: JsonIncomingRequest, body: Vec<u8>) -> HandlerResult {
        let src = twin_of(&request.src).ok_or_else(|| error(400, "no sender twin"))?;
        // A request that waited past its expiry (this listener was down) is stale: a
        // notification or a link from hours ago must not pop up now.
        let deadline = request
            .now
            .saturating_add(request.exp)
            .saturating_add(EXPIRY_GRACE);
        if deadline < unix_now() {
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
            eprintln!("twin {src} joined the group");
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
                let shown = super::notify::show(src, &message, self.desktop).await;
                json_reply(&Ack {
                    acknowledged: true,
                    shown,
                })
            }
            NOTIFY_CMD => {
                let n: Notification = serde_json::from_slice(&body)
                    .map_err(|e| error(400, format!("not a notification: {e}")))?;
                println!("{}", super::notify::clean(&summary(&src.to_string(), &n)));
                for line in n.output.iter().take(100) {
                    println!("    {}", super::notify::clean(line));
                }
                json_reply(&serde_json::json!({ "received": true }))
            }
            cmds::COPY => {
                let stored = self
                    .clipboard
                    .copy(&body)
                    .await
                    .map_err(|e| error(500, e))?;
                println!(
                    "[clipboard] twin {src}: {} bytes into {}",
                    body.len(),
                    self.clipboard.describe()
                );
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
                super::open::check(url).map_err(|e| error(400, e))?;
                json_reply(&super::open::open(src, url, self.opener.as_deref()).await)
            }
            cmds::OPEN_HTML => {
                let opened =
                    super::open::open_page(src, &self.page_dir, &body, self.opener.as_deref())
                        .await
                        .map_err(|e| match e {
                            super::open::PageError::TooLarge => error(413, e),
                            e => error(500, e),
                        })?;
                json_reply(&opened)
            }
            other => Err(error(404, format!("no service {other:?}"))),
        }
    }
}

/// Member side: follows the group topic and applies the owner's `members` events to
/// the local copy, reopening the stream with a growing pause when it breaks.
async fn follow_membership(api: Api, mut conn: MultiplexedConnection) {
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
                    eprintln!(
                        "group members now: {}",
                        group
                            .members
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            let refused = matches!(e.downcast_ref::<ApiError>(), Some(ApiError::Refused { .. }));
            tracing::warn!("following the group topic: {e:#}; retrying in {pause:?}");
            if refused {
                eprintln!("rmb: the group topic refused this machine: {e:#}");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Runs `rmb listen` (all services).
pub async fn run(args: ListenAllArgs) -> anyhow::Result<ExitCode> {
    if args.install {
        let path = super::install::install(&args.unit_args())?;
        println!("wrote {}", path.display());
        println!(
            "enable it with: systemctl --user daemon-reload && systemctl --user enable --now {}",
            super::install::UNIT_NAME
        );
        return Ok(ExitCode::SUCCESS);
    }
    let bus = Bus::connect(&args.peer.redis.redis).await?;
    let api = Api::new(&args.peer.http);
    let me = api.twin().await.context("asking the peer for its twin")?;
    let mut conn = bus.conn();
    let group = group::require(&mut conn).await?;
    let display = super::has_display() && !args.no_desktop;
    let clipboard = Clipboard::open(
        args.clipboard_file.unwrap_or_else(Clipboard::default_file),
        !args.no_desktop,
    );
    let services = Arc::new(Services {
        me,
        api: api.clone(),
        conn: conn.clone(),
        desktop: !args.no_desktop && super::notify::has_session_bus(),
        opener: match args.opener {
            _ if args.no_desktop => None,
            Some(opener) => Some(opener),
            None if display && which("xdg-open") => Some("xdg-open".into()),
            None => None,
        },
        page_dir: args.page_dir.unwrap_or_else(super::open::default_page_dir),
        clipboard,
    });
    eprintln!(
        "twin {me} listening for the personal group of twin {} ({} members): notifications{}, \
         clipboard into {}, links {}{} (Ctrl-C to stop)",
        group.owner,
        group.members.len(),
        if services.desktop {
            " printed and sent to the desktop (D-Bus)"
        } else if args.no_desktop {
            " printed (--no-desktop)"
        } else {
            " printed (no D-Bus session bus)"
        },
        services.clipboard.describe(),
        match &services.opener {
            Some(opener) => format!("and pages opened with {opener}"),
            None => format!("printed, pages kept in {}", services.page_dir.display()),
        },
        if group.owner == me { ", joins" } else { "" },
    );
    let mut served = vec![
        cmds::NOTIFY.to_string(),
        NOTIFY_CMD.to_string(),
        cmds::COPY.to_string(),
        cmds::PASTE.to_string(),
        cmds::OPEN.to_string(),
        cmds::OPEN_HTML.to_string(),
    ];
    if group.owner == me {
        served.push(cmds::JOIN.to_string());
    }
    let handler: Handler = {
        let services = services.clone();
        Arc::new(move |request, body| {
            let services = services.clone();
            Box::pin(async move { services.handle(request, body).await })
        })
    };
    let quiet: Arc<dyn Fn(&serve::Handled) + Send + Sync> = Arc::new(|h| {
        if let Some(e) = &h.error {
            eprintln!("refused {} from {}: {}", h.cmd, h.src, e.message);
        }
    });
    let serving = serve::serve(
        bus,
        &served,
        handler,
        args.concurrency,
        serve::stop_on_signal(),
        quiet,
    );
    if group.owner == me {
        serving.await?;
    } else {
        // The follower lives exactly as long as the services: dropped with this select.
        tokio::select! {
            result = serving => result?,
            () = follow_membership(api, conn) => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}
