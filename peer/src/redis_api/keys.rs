//! Names of the local Redis keys of the rmb-rs API (rmb-rs-protocol §6.3), in one place.

/// List where local clients push [`JsonOutgoingRequest`](super::json::JsonOutgoingRequest)s.
pub const LOCAL: &str = "msgbus.system.local";

/// List where local services push [`JsonOutgoingResponse`](super::json::JsonOutgoingResponse)s;
/// also the `ret` of every [`JsonIncomingRequest`](super::json::JsonIncomingRequest).
pub const REPLY: &str = "msgbus.system.reply";

/// String key holding the peer's status JSON, refreshed every second with a 5 s expiry, so
/// `rmb status` can tell a live peer (key present) from a dead one (key gone).
pub const STATUS: &str = "msgbus.system.status";

/// Seconds the status key lives without a refresh.
pub const STATUS_TTL_SECS: u64 = 5;

/// Prefix of the per-command request lists and of backlog keys.
pub const PREFIX: &str = "msgbus.";

/// Prefix of backlog keys (`msgbus.backlog.<uid>`).
pub const BACKLOG_PREFIX: &str = "msgbus.backlog.";

/// Ours: requests taken off [`LOCAL`] and not yet recorded; read again after a crash.
pub const LOCAL_CLAIMED: &str = "msgbus.system.local.claimed";

/// Ours: replies taken off [`REPLY`] and not yet recorded; read again after a crash.
pub const REPLY_CLAIMED: &str = "msgbus.system.reply.claimed";

/// Ours: prefix of the hashes of requests sent and not fully answered
/// (`msgbus.outbox.<uid>`), resent after a restart.
pub const OUTBOX_PREFIX: &str = "msgbus.outbox.";

/// Ours: prefix of the markers of requests received (`msgbus.seen.<twin>.<uid>`), holding
/// the reply once it is sent, so a repeat is answered again and never reaches a service twice.
pub const SEEN_PREFIX: &str = "msgbus.seen.";

/// Ours: sorted set of the command lists (`msgbus.<cmd>`) holding requests from other
/// twins, scored by the unix time their last request expires; bounds how many there are.
pub const COMMANDS: &str = "msgbus.system.commands";

/// Ours: sorted set of the command lists a service was seen consuming, scored by the
/// unix time until which they count as served (exempt from the limit on commands).
pub const SERVED: &str = "msgbus.system.served";

/// Lists the peer writes (`msgbus.<cmd>`, `<ret>`) are trimmed to this many newest entries.
pub const MAX_LIST_LEN: isize = 10_000;

/// Longest TTL the peer gives any key (a year and a day): time-derived values are
/// clamped to it before they reach Redis, which refuses absurd expire times.
pub const MAX_KEY_TTL_SECS: u64 = 366 * 24 * 3600;

/// A TTL in seconds made safe for `EX`: at least 1, at most [`MAX_KEY_TTL_SECS`].
pub fn clamp_ttl(secs: u64) -> u64 {
    secs.clamp(1, MAX_KEY_TTL_SECS)
}

/// The list a service for `cmd` reads its requests from: `msgbus.<cmd>`, command verbatim.
pub fn command_queue(cmd: &str) -> String {
    format!("{PREFIX}{cmd}")
}

/// The backlog key of an outgoing request uid: `msgbus.backlog.<uid>`.
pub fn backlog(uid: &str) -> String {
    format!("{BACKLOG_PREFIX}{uid}")
}

/// The outbox hash of an outgoing request uid.
pub fn outbox(uid: &str) -> String {
    format!("{OUTBOX_PREFIX}{uid}")
}

/// The field of an outbox hash marking `twin` as not having answered yet.
pub fn outbox_waiting(twin: u32) -> String {
    format!("d:{twin}")
}

/// The marker of request `uid` received from `twin`.
pub fn seen(twin: u32, uid: &str) -> String {
    format!("{SEEN_PREFIX}{twin}.{uid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_match_rmb_rs() {
        assert_eq!(
            command_queue("zos.system.version"),
            "msgbus.zos.system.version"
        );
        assert_eq!(backlog("abc"), "msgbus.backlog.abc");
        assert_eq!(LOCAL, "msgbus.system.local");
        assert_eq!(REPLY, "msgbus.system.reply");
    }

    #[test]
    fn ttls_are_clamped() {
        assert_eq!(clamp_ttl(0), 1);
        assert_eq!(clamp_ttl(60), 60);
        assert_eq!(clamp_ttl(u64::MAX), MAX_KEY_TTL_SECS);
    }
}
