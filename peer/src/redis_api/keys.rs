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

/// Lists the peer writes (`msgbus.<cmd>`, `<ret>`) are trimmed to this many newest entries.
pub const MAX_LIST_LEN: isize = 10_000;

/// The list a service for `cmd` reads its requests from: `msgbus.<cmd>`, command verbatim.
pub fn command_queue(cmd: &str) -> String {
    format!("{PREFIX}{cmd}")
}

/// The backlog key of an outgoing request uid: `msgbus.backlog.<uid>`.
pub fn backlog(uid: &str) -> String {
    format!("{BACKLOG_PREFIX}{uid}")
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
}
