//! `rmb listen` with no argument: its flags, and the wiring of every receiving service of
//! the personal bus ([`rmb_personal::services`]) to the local peer's Redis API — one
//! process serving notifications (both kinds), clipboard, links and pages, and, on the
//! owner, joins, plus the follower of the group topic that keeps the local member list
//! current.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use rmb_personal::clipboard::Clipboard;
use rmb_personal::services::{self, Event, Report, Services, follow_membership};
use rmb_personal::{group, has_display, install, notify, open, which};

use super::PeerArgs;
use crate::bus::{Bus, twin_of};
use crate::commands::serve::{self, Handler};

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

/// Prints what the listener did: requests' contents on stdout, the group's changes on
/// stderr.
fn print_event() -> Report {
    Arc::new(|event| match event {
        Event::Joined(twin) => eprintln!("twin {twin} joined the group"),
        Event::Notification(line) => println!("{line}"),
        Event::Finished { summary, output } => {
            println!("{summary}");
            for line in output {
                println!("    {line}");
            }
        }
        Event::Copied { twin, bytes, into } => {
            println!("[clipboard] twin {twin}: {bytes} bytes into {into}")
        }
        Event::Link { twin, url } => println!("[link] twin {twin}: {url}"),
        Event::Page { twin, bytes, path } => {
            println!("[page] twin {twin}: {bytes} bytes in {path}")
        }
        Event::Members(members) => eprintln!(
            "group members now: {}",
            members
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::Refused(why) => eprintln!("rmb: the group topic refused this machine: {why}"),
    })
}

/// Runs `rmb listen` (all services).
pub async fn run(args: ListenAllArgs) -> anyhow::Result<ExitCode> {
    if args.install {
        let path = install::install(&args.unit_args())?;
        println!("wrote {}", path.display());
        println!(
            "enable it with: systemctl --user daemon-reload && systemctl --user enable --now {}",
            install::UNIT_NAME
        );
        return Ok(ExitCode::SUCCESS);
    }
    let bus = Bus::connect(&args.peer.redis.redis).await?;
    let api = args.peer.api();
    let me = api.twin().await.context("asking the peer for its twin")?;
    let mut conn = bus.conn();
    let group = group::require(&mut conn).await?;
    let display = has_display() && !args.no_desktop;
    let clipboard = Clipboard::open(
        args.clipboard_file.unwrap_or_else(Clipboard::default_file),
        !args.no_desktop,
    );
    let services = Arc::new(Services {
        me,
        api: api.clone(),
        conn: conn.clone(),
        desktop: !args.no_desktop && notify::has_session_bus(),
        opener: match args.opener {
            _ if args.no_desktop => None,
            Some(opener) => Some(opener),
            None if display && which("xdg-open") => Some("xdg-open".into()),
            None => None,
        },
        page_dir: args.page_dir.unwrap_or_else(open::default_page_dir),
        clipboard,
        report: print_event(),
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
    let served = services::served(group.owner == me);
    let handler: Handler = {
        let services = services.clone();
        Arc::new(move |request, body| {
            let services = services.clone();
            Box::pin(async move { services.handle(twin_of(&request.src), &request, body).await })
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
            () = follow_membership(api, conn, print_event()) => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}
