//! The personal group: one person's machines (twins). The first machine *owns* it: it
//! hosts the group topic `<owner>/pmb`, whose access lists are the members, keeps the
//! member list in its Redis and hands out one-time invite codes that expire. Every
//! member keeps a copy of the list in its own Redis, updated from the `members` events
//! the owner publishes on the group topic; services accept requests only from twins on
//! it.
//!
//! An invite code is `<owner twin>-XXXXX-XXXXX`: the owner's id (so the new machine knows
//! whom to ask) and 50 random bits stored in the owner's Redis with an expiry and deleted
//! by the first join presenting them. Nothing else secret is ever shown: each machine
//! keeps its own key, and the bus authenticates every request.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::api::{Api, ApiError};

/// Redis key of the local copy of the group.
pub const GROUP_KEY: &str = "rmb.pmb.group";
/// Redis key prefix of pending invite codes (owner only).
const INVITE_PREFIX: &str = "rmb.pmb.invite.";
/// Redis key counting wrong codes presented recently by anyone (owner only).
const FAILURES_KEY: &str = "rmb.pmb.join.failures";
/// Prefix of the Redis keys counting one twin's recent wrong codes (`<prefix><twin>`).
const TWIN_FAILURES_PREFIX: &str = "rmb.pmb.join.failures.";
/// Wrong codes one twin may present in its [`FAILURE_WINDOW`]; then its joins are refused
/// until the window ends. Counted per sending twin (the bus authenticates it), so a
/// stranger guessing codes blocks only itself: with 50-bit codes, guessing one takes far
/// more tries than this allows.
pub const MAX_FAILURES_PER_TWIN: i64 = 20;
/// Wrong codes from all twins together in a [`FAILURE_WINDOW`] past which only twins
/// that presented no wrong code in their own window are still heard (once each): a
/// bound on guessing with many twins, which never refuses a machine that typed its code
/// right, so strangers cannot keep the owner's machines out.
pub const MAX_FAILURES_TOTAL: i64 = 1000;
/// How long wrong codes are counted (from the first of each counter's window).
const FAILURE_WINDOW: Duration = Duration::from_secs(900);
/// Name of the group topic (`<owner>/pmb`).
pub const TOPIC_NAME: &str = "pmb";
/// Messages the group topic keeps (membership changes and triggers).
const TOPIC_RETENTION: u64 = 100;
/// Members a group may have.
pub const MAX_MEMBERS: usize = 64;
/// Random characters in a code; alphabet without look-alikes (no I, O, 0, 1).
const CODE_LEN: usize = 10;
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Longest an invite may live.
pub const MAX_INVITE_TTL: Duration = Duration::from_secs(24 * 3600);

/// A personal group, as each member keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The twin that owns the group topic and hands out invites.
    pub owner: u32,
    /// Every member, the owner included.
    pub members: BTreeSet<u32>,
}

impl Group {
    /// The group topic, `<owner>/pmb`.
    pub fn topic(&self) -> String {
        format!("{}/{TOPIC_NAME}", self.owner)
    }

    /// Whether `twin` may use this machine's services.
    pub fn admits(&self, twin: u32) -> bool {
        self.members.contains(&twin)
    }

    /// The members other than `me`.
    pub fn others(&self, me: u32) -> Vec<u32> {
        self.members.iter().copied().filter(|&t| t != me).collect()
    }

    /// The `members` event the owner publishes on the group topic.
    pub fn event(&self) -> Value {
        json!({ "kind": "members", "owner": self.owner, "members": self.members })
    }
}

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The local Redis failed.
    #[error("the peer's Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// The local HTTP API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// `rmb agent init` on a machine already in a group.
    #[error("this machine is already in the group of twin {0} (`rmb agent list`)")]
    AlreadyInGroup(u32),
    /// A command that needs a group on a machine without one.
    #[error(
        "this machine is in no personal group: run `rmb agent init` (first machine) or `rmb agent join CODE`"
    )]
    NoGroup,
    /// An owner-only operation elsewhere.
    #[error("only the group's owner (twin {0}) may do this")]
    NotOwner(u32),
    /// The stored group is not ours to read.
    #[error("the stored group at {GROUP_KEY} is malformed: {0}")]
    Corrupt(String),
    /// A code that is not `<twin>-XXXXX-XXXXX`.
    #[error("an invite code looks like 7-ABCDE-FGHJK, not {0:?}")]
    BadCode(String),
    /// The owner does not know the code (never issued, used, or expired).
    #[error("wrong or expired invite code")]
    WrongCode,
    /// Too many wrong codes lately from this twin (or from everyone, and this twin among
    /// them).
    #[error("too many wrong invite codes lately; joins are refused for up to {} minutes", FAILURE_WINDOW.as_secs() / 60)]
    TooManyAttempts,
    /// The group is full.
    #[error("the group already has {MAX_MEMBERS} members")]
    Full,
    /// Removing someone who is not a member (or the owner).
    #[error("twin {0} is not a member that can be removed")]
    NotRemovable(u32),
}

/// The local copy of the group, if this machine is in one.
pub async fn load(conn: &mut MultiplexedConnection) -> Result<Option<Group>, GroupError> {
    let text: Option<String> = conn.get(GROUP_KEY).await?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| GroupError::Corrupt(e.to_string())))
        .transpose()
}

/// The local group, or [`GroupError::NoGroup`].
pub async fn require(conn: &mut MultiplexedConnection) -> Result<Group, GroupError> {
    load(conn).await?.ok_or(GroupError::NoGroup)
}

/// Stores the local copy of the group.
pub async fn save(conn: &mut MultiplexedConnection, group: &Group) -> Result<(), GroupError> {
    let text = serde_json::to_string(group).expect("a group serializes");
    let _: () = conn.set(GROUP_KEY, text).await?;
    Ok(())
}

/// Owner: makes the group topic's access lists the members and tells the members.
pub async fn publish_membership(api: &Api, group: &Group) -> Result<(), GroupError> {
    let members: Vec<u32> = group.members.iter().copied().collect();
    let config = json!({
        "publish": members,
        "subscribe": members,
        "retention_count": TOPIC_RETENTION,
        "retention_secs": 30 * 24 * 3600,
    });
    api.configure(&group.topic(), &config).await?;
    api.publish(&group.topic(), &group.event()).await?;
    Ok(())
}

/// `rmb agent init`: this machine creates a group and owns it.
pub async fn init(api: &Api, conn: &mut MultiplexedConnection) -> Result<Group, GroupError> {
    if let Some(group) = load(conn).await? {
        return Err(GroupError::AlreadyInGroup(group.owner));
    }
    let me = api.twin().await?;
    let group = Group {
        owner: me,
        members: BTreeSet::from([me]),
    };
    publish_membership(api, &group).await?;
    save(conn, &group).await?;
    Ok(group)
}

/// `rmb agent invite`: a one-time code valid for `ttl`, stored in the owner's Redis.
pub async fn invite(
    api: &Api,
    conn: &mut MultiplexedConnection,
    ttl: Duration,
) -> Result<String, GroupError> {
    let group = require(conn).await?;
    let me = api.twin().await?;
    if group.owner != me {
        return Err(GroupError::NotOwner(group.owner));
    }
    let secret: String = {
        let mut rng = rand::thread_rng();
        (0..CODE_LEN)
            .map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char)
            .collect()
    };
    let ttl = ttl.clamp(Duration::from_secs(1), MAX_INVITE_TTL);
    let _: () = conn
        .set_ex(format!("{INVITE_PREFIX}{secret}"), 1, ttl.as_secs())
        .await?;
    Ok(format!("{me}-{}-{}", &secret[..5], &secret[5..]))
}

/// Splits a code into the owner's twin and the secret part (upper-cased, no dashes).
pub fn parse_code(code: &str) -> Result<(u32, String), GroupError> {
    let bad = || GroupError::BadCode(code.chars().take(40).collect());
    let (owner, rest) = code.trim().split_once('-').ok_or_else(bad)?;
    let owner: u32 = owner.parse().map_err(|_| bad())?;
    let secret: String = rest
        .chars()
        .filter(|&c| c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if owner == 0 || secret.len() != CODE_LEN || !secret.bytes().all(|b| CODE_ALPHABET.contains(&b))
    {
        return Err(bad());
    }
    Ok((owner, secret))
}

/// Owner side of a join: `twin` presents `secret`. The code is deleted by the first
/// join presenting it. Wrong codes are counted per twin and in all: a twin past
/// [`MAX_FAILURES_PER_TWIN`] is refused, and past [`MAX_FAILURES_TOTAL`] so is every twin
/// that presented a wrong code itself; a twin with none is always heard.
pub async fn admit(
    api: &Api,
    conn: &mut MultiplexedConnection,
    me: u32,
    twin: u32,
    secret: &str,
) -> Result<Group, GroupError> {
    let mut group = require(conn).await?;
    if group.owner != me {
        return Err(GroupError::NotOwner(group.owner));
    }
    match check_code(conn, twin, secret).await? {
        CodeCheck::Right => {}
        CodeCheck::Wrong => return Err(GroupError::WrongCode),
        CodeCheck::Refused => return Err(GroupError::TooManyAttempts),
    }
    if !group.members.contains(&twin) {
        group = change(conn, Change::Add, twin).await?;
        publish_membership(api, &group).await?;
    }
    Ok(group)
}

/// What the owner's Redis said of a presented code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeCheck {
    /// It was a pending invite; now used up.
    Right,
    /// Not a pending invite; counted.
    Wrong,
    /// Not looked at: this twin presented too many wrong codes, or one while all twins
    /// together are past the ceiling (the code, if right, stays valid).
    Refused,
}

/// Checks `secret` for `twin` in one Redis script, so concurrent joins cannot slip past
/// the counters between reading and counting.
async fn check_code(
    conn: &mut MultiplexedConnection,
    twin: u32,
    secret: &str,
) -> Result<CodeCheck, GroupError> {
    // KEYS: all failures, this twin's failures, the invite (may be absent).
    // ARGV: per-twin bound, total bound, window seconds, 1 if the code is well formed.
    static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"
local mine = tonumber(redis.call('GET', KEYS[2]) or '0')
local all = tonumber(redis.call('GET', KEYS[1]) or '0')
if mine >= tonumber(ARGV[1]) then return 'refused' end
if mine > 0 and all >= tonumber(ARGV[2]) then return 'refused' end
if ARGV[4] == '1' and redis.call('GETDEL', KEYS[3]) then return 'right' end
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[3]) end
end
return 'wrong'
",
        )
    });
    let valid = CODE_LEN == secret.len() && secret.bytes().all(|b| CODE_ALPHABET.contains(&b));
    // A malformed secret never names a key it could not have been given.
    let invite = if valid {
        format!("{INVITE_PREFIX}{secret}")
    } else {
        format!("{INVITE_PREFIX}-")
    };
    let answer: String = SCRIPT
        .key(FAILURES_KEY)
        .key(format!("{TWIN_FAILURES_PREFIX}{twin}"))
        .key(invite)
        .arg(MAX_FAILURES_PER_TWIN)
        .arg(MAX_FAILURES_TOTAL)
        .arg(FAILURE_WINDOW.as_secs())
        .arg(u8::from(valid))
        .invoke_async(conn)
        .await?;
    Ok(match answer.as_str() {
        "right" => CodeCheck::Right,
        "refused" => CodeCheck::Refused,
        _ => CodeCheck::Wrong,
    })
}

/// A change of the member list.
#[derive(Clone, Copy)]
enum Change {
    Add,
    Remove,
}

/// Adds or removes `twin` inside Redis, in one script: a join answered by the listener
/// and an `rmb agent remove` run at the same moment cannot undo each other.
async fn change(
    conn: &mut MultiplexedConnection,
    change: Change,
    twin: u32,
) -> Result<Group, GroupError> {
    static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"
local raw = redis.call('GET', KEYS[1])
if not raw then return 'none' end
local g = cjson.decode(raw)
local twin = tonumber(ARGV[2])
local kept = {}
local found = false
for _, t in ipairs(g.members) do
  if t == twin then found = true end
  if not (ARGV[1] == 'remove' and t == twin) then table.insert(kept, t) end
end
if ARGV[1] == 'add' and not found then
  if #kept >= tonumber(ARGV[3]) then return 'full' end
  table.insert(kept, twin)
end
if ARGV[1] == 'remove' and (not found or twin == g.owner) then return 'absent' end
local text = cjson.encode({owner = g.owner, members = kept})
redis.call('SET', KEYS[1], text)
return text
",
        )
    });
    let op = match change {
        Change::Add => "add",
        Change::Remove => "remove",
    };
    let answer: String = SCRIPT
        .key(GROUP_KEY)
        .arg(op)
        .arg(twin)
        .arg(MAX_MEMBERS)
        .invoke_async(conn)
        .await?;
    match answer.as_str() {
        "none" => Err(GroupError::NoGroup),
        "full" => Err(GroupError::Full),
        "absent" => Err(GroupError::NotRemovable(twin)),
        text => serde_json::from_str(text).map_err(|e| GroupError::Corrupt(e.to_string())),
    }
}

/// `rmb agent remove TWIN` (owner only): the twin leaves the access lists and members.
pub async fn remove(
    api: &Api,
    conn: &mut MultiplexedConnection,
    twin: u32,
) -> Result<Group, GroupError> {
    let group = require(conn).await?;
    let me = api.twin().await?;
    if group.owner != me {
        return Err(GroupError::NotOwner(group.owner));
    }
    if twin == group.owner || !group.members.contains(&twin) {
        return Err(GroupError::NotRemovable(twin));
    }
    let group = change(conn, Change::Remove, twin).await?;
    publish_membership(api, &group).await?;
    Ok(group)
}

/// Member side: applies a `members` event from the group topic if the owner published
/// it; `Some(group)` when the local copy changed.
pub async fn apply_event(
    conn: &mut MultiplexedConnection,
    current: &Group,
    publisher: u32,
    event: &Value,
) -> Result<Option<Group>, GroupError> {
    if event["kind"] != "members" || publisher != current.owner {
        return Ok(None);
    }
    let members: Option<BTreeSet<u32>> = event["members"].as_array().map(|a| {
        a.iter()
            .filter_map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .take(MAX_MEMBERS)
            .collect()
    });
    let Some(mut members) = members else {
        return Ok(None);
    };
    members.insert(current.owner);
    let group = Group {
        owner: current.owner,
        members,
    };
    if group == *current {
        return Ok(None);
    }
    save(conn, &group).await?;
    Ok(Some(group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_and_garbage_is_refused() {
        assert_eq!(
            parse_code(" 7-abcde-fghjk ").unwrap(),
            (7, "ABCDEFGHJK".to_string())
        );
        assert_eq!(parse_code("12-ABCDEFGHJK").unwrap().0, 12);
        for bad in [
            "",
            "7",
            "x-ABCDE-FGHJK",
            "7-ABCDE",
            "7-ABCDE-FGHI1",
            "0-ABCDE-FGHJK",
        ] {
            assert!(
                matches!(parse_code(bad), Err(GroupError::BadCode(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn members_are_admitted_and_others_listed() {
        let g = Group {
            owner: 7,
            members: BTreeSet::from([7, 9, 12]),
        };
        assert!(g.admits(9));
        assert!(!g.admits(8));
        assert_eq!(g.others(9), vec![7, 12]);
        assert_eq!(g.topic(), "7/pmb");
    }
}
