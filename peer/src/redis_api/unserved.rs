//! Requests no service takes: a request for a command nobody serves would otherwise sit
//! in `msgbus.<cmd>` until its caller times out, and the caller could not tell that
//! from a slow network or a peer that is down.
//!
//! The sign used is the one Redis can check atomically: the request is still in its
//! list shortly before it expires ([`due`]: a fifth of its validity before, at most
//! 5 s), so no service took it during nearly all of its validity. Services take the
//! oldest request first (`BRPOP`), so only the oldest end of a list is looked at. Such a
//! request is taken out of the list by [`TAKE_UNSERVED`] (no service can start on it
//! afterwards, so the caller never gets both an answer and this error) and answered with
//! an error envelope, as any request the peer refuses: rmb-rs callers get it as an
//! error response (`err` set), as they do for a full queue.
//!
//! Requests valid for less than 5 s are left alone (their caller would not hear the
//! error before giving up); once expired they are dropped from the list unanswered.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::{Script, Value};
use rmb_proto::Address;
use rmb_proto::time::unix_now;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::conn::{QueryError, RedisConn};
use super::json::JsonIncomingRequest;
use super::keys::{COMMANDS, PREFIX};
use crate::core::{Reason, codes};

/// How often the lists due a check are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Most requests taken from one list per check.
const TAKE_PER_CHECK: usize = 100;
/// Most command lists watched at once (beyond it, requests for a new command just
/// time out as with rmb-rs).
const MAX_WATCHED: usize = 10_000;
/// Longest time before its deadline that a request still unread is taken back.
const MAX_MARGIN_SECS: u64 = 5;

/// When a request stamped `timestamp` and valid `expiration` seconds is taken back if no
/// service took it: a fifth of its validity before its deadline, at most
/// [`MAX_MARGIN_SECS`]; `None` for one too short-lived to answer in time.
pub fn due(timestamp: u64, expiration: u64) -> Option<u64> {
    let margin = (expiration / 5).min(MAX_MARGIN_SECS);
    (margin > 0).then(|| timestamp.saturating_add(expiration) - margin)
}

/// `KEYS`: command list, command index. `ARGV`: now (unix s), most requests taken.
///
/// Looks at the oldest requests of the list: each whose [`due`] time has passed is
/// removed and returned; one too short-lived for an answer is removed (unanswered) once
/// expired. Stops at the first one not due (or not readable). Returns the next due time
/// (0: none known) followed by the requests taken. A list left empty leaves the index:
/// nothing of it waits any more.
pub static TAKE_UNSERVED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
local out = {0}
while #out - 1 < most do
  local item = redis.call('LINDEX', KEYS[1], -1)
  if not item then break end
  local ok, req = pcall(cjson.decode, item)
  if not ok or type(req) ~= 'table' or type(req.now) ~= 'number' or type(req.exp) ~= 'number' then break end
  local margin = math.min(math.floor(req.exp / 5), 5)
  local deadline = req.now + req.exp
  if margin == 0 then
    if deadline > now then out[1] = deadline break end
    redis.call('RPOP', KEYS[1])
  else
    local due = deadline - margin
    if due > now then out[1] = due break end
    redis.call('RPOP', KEYS[1])
    out[#out + 1] = item
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], KEYS[1]) end
return out
",
    )
});

/// The command lists that hold requests, with the time the oldest is due a check.
#[derive(Default)]
pub(crate) struct Watched {
    lists: Mutex<HashMap<String, u64>>,
}

impl Watched {
    /// A request due a check at `due` was pushed to `list`.
    pub(crate) fn note(&self, list: &str, due: u64) {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let room = lists.len() < MAX_WATCHED;
        match lists.get_mut(list) {
            Some(at) => *at = (*at).min(due),
            None if room => {
                lists.insert(list.to_string(), due);
            }
            None => {}
        }
    }

    /// The lists due a check at `now` (they stay watched until checked).
    fn due(&self, now: u64) -> Vec<String> {
        let lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        lists
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(list, _)| list.clone())
            .collect()
    }

    /// After a check of `list`: watched again at `next`, or not at all (0).
    fn checked(&self, list: &str, next: u64) {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        if next == 0 {
            lists.remove(list);
        } else {
            lists.insert(list.to_string(), next);
        }
    }
}

/// Checks the watched lists until `stop`, answering what no service took.
pub(super) async fn run(shared: Arc<Shared>, mut conn: RedisConn, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = unix_now();
        for list in shared.unserved.due(now) {
            // Loaded each time: a restarted Redis forgot it.
            let mut pipe = redis::pipe();
            pipe.load_script(&TAKE_UNSERVED).ignore();
            pipe.invoke_script(
                TAKE_UNSERVED
                    .key(&list)
                    .key(COMMANDS)
                    .arg(now)
                    .arg(TAKE_PER_CHECK),
            );
            let (result,): (Vec<Value>,) = match conn.query(&pipe, &stop).await {
                Ok(result) => result,
                Err(QueryError::Shutdown) => return,
                Err(QueryError::Permanent(e)) => {
                    tracing::warn!(%list, error = %e, "cannot check a command list for requests no service took");
                    shared.unserved.checked(&list, 0);
                    continue;
                }
            };
            let mut values = result.into_iter();
            let next = match values.next() {
                Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
                _ => 0,
            };
            // A check that took a full batch looks again at once.
            let taken: Vec<Value> = values.collect();
            let next = if taken.len() >= TAKE_PER_CHECK {
                now
            } else {
                next
            };
            shared.unserved.checked(&list, next);
            for value in taken {
                if let Value::BulkString(bytes) = value {
                    answer(&shared, &list, &bytes);
                }
            }
        }
    }
}

/// Tells the sender of a request taken back that no service took it (counted in the
/// status under `rejected_by.unserved`).
fn answer(shared: &Shared, list: &str, bytes: &[u8]) {
    let Ok(request) = serde_json::from_slice::<JsonIncomingRequest>(bytes) else {
        return;
    };
    let (Some(uid), Ok(source)) = (request.reference, request.src.parse::<Address>()) else {
        return;
    };
    let cmd = list.strip_prefix(PREFIX).unwrap_or(list);
    let waited = unix_now().saturating_sub(request.now);
    let message = format!(
        "other: no service took the request for '{cmd}' from {list} on twin {twin} in {waited} s: \
         nothing serves '{cmd}' there (or its service is too slow)",
        twin = shared.peer.twin_id(),
    );
    shared.refuse_request(uid, source, Reason::Unserved, codes::OTHER, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_a_fifth_of_their_validity_before_it_ends_at_most_5_s() {
        assert_eq!(due(1000, 30), Some(1025));
        assert_eq!(due(1000, 10), Some(1008));
        assert_eq!(due(1000, 5), Some(1004));
        assert_eq!(due(1000, 4), None, "too short to answer in time");
        assert_eq!(due(1000, 300), Some(1295));
    }

    #[test]
    fn a_list_is_watched_from_its_earliest_due_time() {
        let watched = Watched::default();
        watched.note("msgbus.a", 20);
        watched.note("msgbus.a", 10);
        watched.note("msgbus.b", 30);
        assert_eq!(watched.due(15), vec!["msgbus.a".to_string()]);
        watched.checked("msgbus.a", 0);
        assert!(watched.due(25).is_empty());
        watched.checked("msgbus.b", 40);
        assert!(watched.due(35).is_empty());
        assert_eq!(watched.due(40), vec!["msgbus.b".to_string()]);
    }
}
