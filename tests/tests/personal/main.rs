//! The personal bus (issue #16) with real processes: two federated `rmb-relay`s, four
//! `rmb-peer`s (each with its own Redis and `--http`) and the `rmb` command line as a
//! person runs it.
//!
//! - a group: `rmb agent init`, an invite, joins with a wrong, a used and an expired code
//!   refused, joins with fresh codes, members learning of each other, `agent remove`;
//! - notifications with a level shown by the listener and acknowledged; an urgent one
//!   escalated to the group's other machine when its target's listener is down;
//! - triggers fired across the two relays, by `rmb trigger` and by
//!   `rmb notify --send-trigger`, starting `rmb run --wait-trigger`;
//! - clipboard through the file fallback (no display here), `rmb paste --from`;
//! - links printed by the listener, a non-web URL refused;
//! - a twin outside the group refused by every service and by the group topic;
//! - the desktop for real (when Xvfb, xclip and dbus-daemon are there or can be
//!   installed; skipped with the reason otherwise): text copied into the X clipboard and
//!   read by xclip, text put there by xclip pasted, notifications shown through a D-Bus
//!   notification server with their title, text and urgency;
//! - the lockout of a twin after 20 wrong invite codes, a right code refused during it
//!   and accepted once it ends; a stranger's wrong codes never keeping the owner's
//!   machine out, and the ceiling for all twins together (`invites`).
//!
//! - triggers reporting success or failure (`--trigger-always`, `--run-on-failure`,
//!   `rmb run --send-trigger`);
//! - a listener stopped with SIGTERM taking no new notification (escalated instead), and
//!   a refusal reported without the "is `rmb listen` running" hint;
//! - `rmb watch` (a process, a file), `rmb sink` (a named pipe across readers, a file),
//!   `rmb open --html` (a private page file, kept or given to the opener).
//!
//! One test binary in eight files: `node` (the shared processes and helpers), `group`,
//! `invites`, `streams`, `desktop`, `triggers`, `shutdown` and `commands`.

mod commands;
mod desktop;
mod group;
mod invites;
mod node;
mod shutdown;
mod streams;
mod triggers;
