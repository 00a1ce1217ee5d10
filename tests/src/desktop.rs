//! A desktop for tests of `rmb listen`'s desktop services, made of real parts: an
//! `Xvfb` X server (the clipboard, through arboard), a private D-Bus session bus
//! (`dbus-daemon`) and, on it, a notification server in this process that records what
//! it is asked to show (desktop notifications, through notify-rust). Every process is
//! killed when its guard is dropped, a failing test included.
//!
//! The tools come from Debian packages, installed with apt-get when missing (CI runs as
//! root); where that is impossible the caller skips with the reason [`ensure_tools`]
//! gives.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::child::kill;

/// Longest a tool may take to come up.
const START: Duration = Duration::from_secs(15);

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_get(args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure each `(tool, Debian package)` is installed, installing the missing
/// packages with apt-get (updating its lists once if the first try fails); why not, when
/// that is impossible (not root, no apt, no network).
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !installed(tool))
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {} with apt-get", missing.join(" "));
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    let installed_now = apt_get(&install) || (apt_get(&["update", "-qq"]) && apt_get(&install));
    if !installed_now {
        return Err(format!(
            "{} missing and `apt-get install {}` failed (not root, or no package lists)",
            tools
                .iter()
                .filter(|(tool, _)| !installed(tool))
                .map(|(tool, _)| *tool)
                .collect::<Vec<_>>()
                .join(", "),
            missing.join(" ")
        ));
    }
    match tools.iter().find(|(tool, _)| !installed(tool)) {
        Some((tool, package)) => Err(format!("{tool} still missing after installing {package}")),
        None => Ok(()),
    }
}

/// An `Xvfb` X server on a display number nobody uses; killed on drop.
pub struct Xvfb {
    child: Option<Child>,
    display: String,
}

impl Xvfb {
    /// Starts one and waits until its socket exists.
    pub fn start() -> Result<Xvfb, String> {
        for n in 90..200 {
            let socket = format!("/tmp/.X11-unix/X{n}");
            if Path::new(&socket).exists() || Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                continue;
            }
            let child = Command::new("Xvfb")
                .args([
                    &format!(":{n}"),
                    "-nolisten",
                    "tcp",
                    "-screen",
                    "0",
                    "640x480x24",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run Xvfb: {e}"))?;
            let mut xvfb = Xvfb {
                child: Some(child),
                display: format!(":{n}"),
            };
            let deadline = Instant::now() + START;
            while Instant::now() < deadline {
                if Path::new(&socket).exists() {
                    return Ok(xvfb);
                }
                let child = xvfb.child.as_mut().expect("running");
                if child.try_wait().ok().flatten().is_some() {
                    break; // someone took the number meanwhile: try the next one
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            kill(&mut xvfb.child);
        }
        Err("Xvfb did not start on any display :90 to :199".into())
    }

    /// The value for `DISPLAY`.
    pub fn display(&self) -> &str {
        &self.display
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A private D-Bus session bus (`dbus-daemon --session`); killed on drop.
pub struct SessionBus {
    child: Option<Child>,
    address: String,
}

impl SessionBus {
    /// Starts one and reads its address.
    pub fn start() -> Result<SessionBus, String> {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run dbus-daemon: {e}"))?;
        let out = child.stdout.take().expect("piped");
        let mut bus = SessionBus {
            child: Some(child),
            address: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        // Ends at the address line, or when dbus-daemon exits (its stdout closes).
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(START) {
            Ok(line) if !line.trim().is_empty() => {
                bus.address = line.trim().to_string();
                Ok(bus)
            }
            _ => Err("dbus-daemon --session printed no address".into()),
        }
    }

    /// The value for `DBUS_SESSION_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A notification the [`NotificationServer`] was asked to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notified {
    /// `app_name`.
    pub app: String,
    /// The summary (title).
    pub summary: String,
    /// The body.
    pub body: String,
    /// The `urgency` hint: 0 low, 1 normal, 2 critical.
    pub urgency: Option<u8>,
}

/// `org.freedesktop.Notifications` on a session bus, served by this process: records
/// every `Notify` call and answers it with a fresh id, as a desktop's notification
/// server does. Stops serving on drop.
pub struct NotificationServer {
    received: tokio::sync::mpsc::UnboundedReceiver<Notified>,
    task: tokio::task::JoinHandle<()>,
}

/// The arguments of `Notify` (the desktop notifications specification).
type NotifyArgs = (
    String,
    u32,
    String,
    String,
    String,
    Vec<String>,
    HashMap<String, zbus::OwnedVariant>,
    i32,
);

const INTERFACE: &str = "org.freedesktop.Notifications";

impl NotificationServer {
    /// Connects to the bus at `address`, owns the name, serves until dropped.
    pub async fn start(address: &str) -> Result<NotificationServer, zbus::Error> {
        let conn = zbus::connection::Builder::address(address)
            .name(INTERFACE)
            .build()
            .await?;
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = zbus::MessageStream::from(&conn);
            let mut next_id = 1u32;
            while let Some(Ok(msg)) = stream.next().await {
                let header = msg.header();
                if header.message_type() != zbus::message::Type::MethodCall
                    || header.interface().map(|i| i.as_str()) != Some(INTERFACE)
                {
                    continue;
                }
                let member = header.member().map(|m| m.to_string()).unwrap_or_default();
                let replied = match member.as_str() {
                    "Notify" => match msg.body().deserialize::<NotifyArgs>() {
                        Ok((app, _, _, summary, body, _, mut hints, _)) => {
                            let urgency =
                                hints.remove("urgency").and_then(|v| u8::try_from(v).ok());
                            let _ = tx.send(Notified {
                                app,
                                summary,
                                body,
                                urgency,
                            });
                            next_id += 1;
                            conn.reply(&header, &next_id).await
                        }
                        Err(e) => {
                            eprintln!("test notification server: bad Notify: {e}");
                            continue;
                        }
                    },
                    "GetCapabilities" => conn.reply(&header, &vec!["body".to_string()]).await,
                    "GetServerInformation" => {
                        conn.reply(&header, &("rmb-tests", "rmb", "1", "1.2")).await
                    }
                    "CloseNotification" => conn.reply(&header, &()).await,
                    _ => continue,
                };
                if let Err(e) = replied {
                    eprintln!("test notification server: reply failed: {e}");
                }
            }
        });
        Ok(NotificationServer { received, task })
    }

    /// The next notification shown, waiting up to `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Notified> {
        tokio::time::timeout(wait, self.received.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for NotificationServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
