//! rmb-personal: the personal bus, PMB's services for one person's machines, built on rmb
//! twins, end-to-end encryption and topics. A *group* of twins (one per machine) shares
//! a topic owned by the first machine; the services (notifications, triggers,
//! clipboard, links, log streams, plugins) only accept what members send.
//!
//! Requests between machines go through the local peer's Redis API (as `rmb notify`
//! does); the group topic goes through the peer's HTTP API (as `rmb pub/sub` do).
//!
//! This crate is the library: group state, what the listener does with each request
//! ([`services`]), triggers, clipboard, links and pages, log streams, sinks, plugins,
//! watching. The `rmb` command line parses arguments, sends and serves requests through
//! its Redis API client, and prints.

pub mod api;
pub mod clipboard;
pub mod finished;
pub mod follow;
pub mod group;
pub mod install;
pub mod notify;
pub mod open;
pub mod plugin;
pub mod services;
pub mod sink;
pub mod stream;
pub mod trigger;
pub mod watch;

/// Commands the listener serves (`msgbus.<cmd>` queues of the peer's Redis API).
pub mod cmds {
    /// A notification with a level ([`super::notify::Message`]).
    pub const NOTIFY: &str = "pmb.notify";
    /// Put text into the clipboard.
    pub const COPY: &str = "pmb.copy";
    /// Read the clipboard.
    pub const PASTE: &str = "pmb.paste";
    /// Open a link.
    pub const OPEN: &str = "pmb.open";
    /// Open an HTML page (its content; `rmb open --html`).
    pub const OPEN_HTML: &str = "pmb.open.html";
    /// Join the group with an invite code (served by the owner only).
    pub const JOIN: &str = "pmb.join";
}

/// The machine's host name, for messages people read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

/// True when a graphical session is reachable (X11 or Wayland).
pub fn has_display() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// True if `program` is an executable on PATH.
pub fn which(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}
