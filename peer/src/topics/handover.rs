//! Handing a subscription's messages over to local apps, in id order and once: the
//! per-subscription state ([`Sub`]), taking messages in ([`offer`]), handing over the
//! next run ([`drain`]), writing the records of what was handed over ([`record`]; see
//! [`unrecorded`](super::unrecorded)) and reporting what retention lost ([`gap`]).
//! The subscriber task ([`subscriber`](super::subscriber)) drives these.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rmb_proto::time::unix_now;
use tokio::time::Instant;

use super::counters::Counters;
use super::shared::Shared;
use super::store::StoreError;
use super::wire::{self, GapJson, MessageJson, TopicName};
use crate::core::Reason;

/// Most messages buffered per subscription while a hole is pulled.
pub const MAX_BUFFERED: usize = 1024;

/// Most bytes buffered per subscription.
pub const MAX_BUFFERED_BYTES: usize = 4 << 20;

/// Most messages of a subscription handed over and not yet recorded; the next wait for
/// the record.
pub(super) const MAX_UNRECORDED: u64 = 4096;

/// Wait before pulling again after a pull failed or brought nothing new.
pub(super) const PULL_BACKOFF: Duration = Duration::from_secs(2);

/// How long a subscription is behind before a pull starts (except when it is made):
/// during a burst, pushes are always in flight past the last id handed over (a resend
/// or renewal tells of ids whose pushes are still on their way). Pulling at once raced
/// the pushes: in a burst of 20,000 messages across two relays one subscriber pulled 9,845
/// times, got every message two or three times, and took 30 s instead of under one.
pub(super) const PUSH_GRACE: Duration = Duration::from_millis(250);

/// One subscription's state in the task.
pub(super) struct Sub {
    /// Last id handed to apps.
    pub(super) last: u64,
    /// Last id recorded in Redis (the position there): `last` once the records of what
    /// was handed over since are written ([`record`]).
    pub(super) recorded: u64,
    pub(super) list: bool,
    /// Newest id the owner told of.
    pub(super) known_last: u64,
    pub(super) buffer: BTreeMap<u64, MessageJson>,
    pub(super) buffer_bytes: usize,
    pub(super) pulling: bool,
    pub(super) next_pull: Instant,
    /// Since when it has been behind ([`Sub::pull_due`]).
    pub(super) behind_since: Option<Instant>,
}

impl Sub {
    pub(super) fn new(last: u64, list: bool) -> Self {
        Sub {
            last,
            recorded: last,
            list,
            known_last: last,
            buffer: BTreeMap::new(),
            buffer_bytes: 0,
            pulling: false,
            next_pull: Instant::now(),
            behind_since: None,
        }
    }

    pub(super) fn behind(&self) -> bool {
        self.known_last > self.last || !self.buffer.is_empty()
    }

    /// True when a pull is to start at `now`: behind for [`PUSH_GRACE`] at least (pushes
    /// fill most holes by themselves), no pull under way, and past any backoff.
    pub(super) fn pull_due(&mut self, now: Instant) -> bool {
        if !self.behind() {
            self.behind_since = None;
            return false;
        }
        let since = *self.behind_since.get_or_insert(now);
        !self.pulling && self.next_pull <= now && now.saturating_duration_since(since) >= PUSH_GRACE
    }

    /// True when the next push (up to [`wire::MAX_BATCH`] messages of at most
    /// [`wire::BATCH_BYTES`]) might not fit in the buffer: it is to be drained before
    /// more is taken in.
    pub(super) fn nearly_full(&self) -> bool {
        self.buffer.len() + wire::MAX_BATCH > MAX_BUFFERED
            || self.buffer_bytes + wire::BATCH_BYTES > MAX_BUFFERED_BYTES
    }

    pub(super) fn unrecorded(&self) -> bool {
        self.recorded < self.last
    }

    /// Buffers a message not handed over yet (above `last`, not buffered), within
    /// [`MAX_BUFFERED`] and [`MAX_BUFFERED_BYTES`]; how many messages it dropped. When
    /// full it keeps the lowest ids, which are handed over first: a message that fills
    /// the hole before them pushes the highest out, and one above them all is dropped.
    /// Either is pulled again once the hole is filled. The next one (`last + 1`) always
    /// gets in.
    ///
    /// Keeping what came first instead let a burst fill the buffer past a hole; the
    /// pulls that fill it then got in one message each (only `last + 1`), and a
    /// subscriber across two relays took 90 s for 20,000 messages, two per second.
    pub(super) fn keep(&mut self, message: MessageJson) -> u64 {
        let size = message.size();
        let mut dropped = 0;
        if message.id != self.last + 1 {
            while self.buffer.len() >= MAX_BUFFERED || self.buffer_bytes + size > MAX_BUFFERED_BYTES
            {
                match self.buffer.last_entry() {
                    Some(highest) if *highest.key() > message.id => {
                        let evicted = highest.remove();
                        self.buffer_bytes = self.buffer_bytes.saturating_sub(evicted.size());
                        dropped += 1;
                    }
                    _ => return dropped + 1,
                }
            }
        }
        self.buffer_bytes += size;
        self.buffer.insert(message.id, message);
        dropped
    }
}

/// Writes the records of every subscription's handed-over messages; false when Redis
/// refused some (they are written again later).
pub(super) async fn record_all(shared: &Shared, subs: &mut HashMap<TopicName, Sub>) -> bool {
    let mut done = true;
    for (topic, sub) in subs.iter_mut().filter(|(_, sub)| sub.unrecorded()) {
        done &= record(shared, topic, sub).await;
    }
    done
}

/// Takes one message into the buffer (dropped when seen already); [`drain`] then hands
/// over what is next.
pub(super) fn offer(shared: &Shared, sub: &mut Sub, message: MessageJson) {
    if message.id <= sub.last || sub.buffer.contains_key(&message.id) {
        Counters::bump(&shared.counters.duplicates);
        return;
    }
    sub.known_last = sub.known_last.max(message.id);
    let dropped = sub.keep(message);
    if dropped > 0 {
        Counters::add(&shared.counters.evicted, dropped);
    }
}

/// Most messages recorded in Redis by one script call (the script unpacks a run into one
/// `HSET`: Lua takes a few thousand arguments at most).
pub(super) const DELIVER_RUN: usize = 256;

/// Hands over buffered messages while the next one is there. A subscription with a
/// Redis list records each run of consecutive ones first (position moved and list
/// filled, exactly once, by one script call); one without hands them over at once and
/// keeps them in [`unrecorded`](super::unrecorded) until [`record`] writes them.
pub(super) async fn drain(shared: &Shared, topic: &TopicName, sub: &mut Sub) {
    loop {
        while let Some(entry) = sub.buffer.first_entry() {
            if *entry.key() > sub.last {
                break;
            }
            let m = entry.remove();
            sub.buffer_bytes = sub.buffer_bytes.saturating_sub(m.size());
        }
        if sub.list && sub.unrecorded() {
            // A subscription that just gained its list may hold unrecorded messages:
            // the list's script moves the position from `last`.
            if record(shared, topic, sub).await {
                continue;
            }
            return;
        }
        let room = if sub.list {
            DELIVER_RUN
        } else {
            let held = sub.last - sub.recorded;
            (MAX_UNRECORDED.saturating_sub(held) as usize).min(DELIVER_RUN)
        };
        if room == 0 {
            if record(shared, topic, sub).await {
                continue;
            }
            return;
        }
        let mut run: Vec<(u64, String)> = Vec::new();
        for (&id, message) in sub.buffer.range(sub.last + 1..) {
            if id != sub.last + 1 + run.len() as u64 || run.len() >= room {
                break;
            }
            run.push((
                id,
                serde_json::to_string(message).expect("a message serialises"),
            ));
        }
        if run.is_empty() {
            return;
        }
        if !sub.list {
            for (id, json) in run {
                let json: Arc<str> = json.into();
                shared.unrecorded.add(topic, id, Arc::clone(&json));
                Counters::bump(&shared.counters.delivered);
                shared.announce(topic, id, json);
                sub.last = id;
            }
            continue;
        }
        let refs: Vec<(u64, &str)> = run.iter().map(|(id, json)| (*id, json.as_str())).collect();
        let before = sub.last;
        match shared
            .store
            .deliver_many(topic, before, &refs, sub.list)
            .await
        {
            Ok(now) => {
                if now < before + 1 && now != before {
                    tracing::warn!(%topic, expected = before, now, "subscription position moved elsewhere");
                }
                for (id, json) in run {
                    if id > before && id <= now {
                        Counters::bump(&shared.counters.delivered);
                        shared.announce(topic, id, json);
                    }
                }
                let stalled = now == before;
                sub.last = now;
                sub.recorded = now;
                if stalled {
                    return;
                }
            }
            Err(e) => {
                log_record_failure(shared, topic, &e);
                sub.next_pull = Instant::now() + PULL_BACKOFF;
                return;
            }
        }
    }
}

/// Writes the records (position and local copy) of what `sub` handed over unrecorded;
/// true when all are written.
pub(super) async fn record(shared: &Shared, topic: &TopicName, sub: &mut Sub) -> bool {
    while sub.unrecorded() {
        let held = shared.unrecorded.after(topic, sub.recorded, DELIVER_RUN);
        let Some(&(first, _)) = held.first() else {
            // Nothing kept to write (cannot happen: the task keeps what it hands over
            // until written); follow what was handed over rather than stall.
            tracing::warn!(%topic, recorded = sub.recorded, last = sub.last, "handed-over messages missing their records");
            sub.recorded = sub.last;
            return true;
        };
        let refs: Vec<(u64, &str)> = held.iter().map(|(id, json)| (*id, &**json)).collect();
        let expected = sub.recorded;
        match shared
            .store
            .deliver_many(topic, expected, &refs, false)
            .await
        {
            Ok(now) if now > expected && first == expected + 1 => {
                shared.unrecorded.recorded(topic, now);
                sub.recorded = now;
            }
            Ok(now) => {
                // Redis holds another position (it lost its data, or another process
                // moved it): follow it, as a recorded delivery does, and pull from there.
                tracing::warn!(%topic, expected, now, "subscription position moved elsewhere");
                shared.unrecorded.forget(topic);
                sub.recorded = now;
                sub.last = now;
                return true;
            }
            Err(e) => {
                log_record_failure(shared, topic, &e);
                return false;
            }
        }
    }
    true
}

pub(super) fn log_record_failure(shared: &Shared, topic: &TopicName, e: &StoreError) {
    if shared
        .peer
        .log_allowed(u64::from(topic.owner), Reason::RedisError)
    {
        tracing::warn!(%topic, error = %e, "cannot record a delivery; retrying (logged once per 10 s)");
    }
}

/// Reports ids `last+1..=to` as lost (retention dropped them before we got them).
pub(super) async fn gap(
    shared: &Shared,
    topic: &TopicName,
    sub: &mut Sub,
    to: u64,
) -> Result<(), ()> {
    // The gap moves the recorded position from `last`: what came before is written first.
    if !record(shared, topic, sub).await {
        return Err(());
    }
    let gap = GapJson {
        event: "gap".into(),
        topic: topic.to_string(),
        from: sub.last + 1,
        to,
        time: unix_now(),
    };
    let json = serde_json::to_string(&gap).expect("a gap serialises");
    let list = sub.list.then_some(json.as_str());
    match shared.store.deliver(topic, sub.last, to, None, list).await {
        Ok(now) => {
            if now == to {
                Counters::bump(&shared.counters.gaps);
                tracing::info!(%topic, from = gap.from, to, "messages lost to the owner's retention");
                shared.announce(topic, to, json);
            }
            sub.last = now;
            sub.recorded = now;
            Ok(())
        }
        Err(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64) -> MessageJson {
        MessageJson {
            id,
            event: "message".into(),
            topic: "7/t".into(),
            time: 0,
            publisher: 7,
            message: "x".into(),
            encoding: None,
            title: None,
            priority: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn a_full_buffer_keeps_the_lowest_ids_so_a_hole_can_be_filled_at_once() {
        let mut sub = Sub::new(10, false);
        // A burst past a hole at 11..=100 fills the buffer.
        for id in 101..101 + MAX_BUFFERED as u64 + 50 {
            sub.keep(message(id));
        }
        assert_eq!(sub.buffer.len(), MAX_BUFFERED);
        assert_eq!(sub.buffer.keys().next(), Some(&101));
        // A pull brings the hole: every one of it gets in, the highest make room.
        let dropped: u64 = (11..=100).map(|id| sub.keep(message(id))).sum();
        assert_eq!(dropped, 90, "each pushed the highest out");
        assert_eq!(sub.buffer.len(), MAX_BUFFERED);
        let ids: Vec<u64> = sub.buffer.keys().copied().collect();
        let expected: Vec<u64> = (11..11 + MAX_BUFFERED as u64).collect();
        assert_eq!(
            ids, expected,
            "the lowest ids are kept, in one run from last + 1"
        );
        // One above them all is dropped while full.
        assert_eq!(sub.keep(message(5_000)), 1);
        assert!(!sub.buffer.contains_key(&5_000));
        let bytes: usize = sub.buffer.values().map(MessageJson::size).sum();
        assert_eq!(sub.buffer_bytes, bytes, "bytes follow what is kept");
    }

    #[test]
    fn a_buffer_not_nearly_full_takes_a_whole_push_without_dropping_any() {
        // The subscriber task drains a subscription as soon as it is nearly full, while
        // taking in its queued pushes: up to then, every push fits whole, even when
        // nothing was handed over (64 queued pushes of 64 messages overflowed it).
        let mut sub = Sub::new(0, false);
        let mut next = 1;
        while !sub.nearly_full() {
            let mut dropped = 0;
            for _ in 0..wire::MAX_BATCH {
                dropped += sub.keep(message(next));
                next += 1;
            }
            assert_eq!(dropped, 0, "a whole push fits until nearly full");
            // Messages arrive past `last` (nothing handed over yet): keep `last` at 0.
            assert_eq!(sub.last, 0);
        }
        assert!(sub.buffer.len() <= MAX_BUFFERED);
        // Once nearly full, a further push may not fit: 64 more would drop some.
        let dropped: u64 = (0..wire::MAX_BATCH as u64)
            .map(|i| sub.keep(message(next + i)))
            .sum();
        assert!(dropped > 0);
        // Large messages: the byte bound triggers it too.
        let mut sub = Sub::new(0, false);
        let mut big = message(2);
        big.message = "b".repeat(MAX_BUFFERED_BYTES - wire::BATCH_BYTES / 2);
        assert_eq!(sub.keep(big), 0);
        assert!(sub.nearly_full());
    }

    #[test]
    fn the_byte_bound_holds_and_the_next_message_always_gets_in() {
        let mut sub = Sub::new(0, false);
        let mut big = message(3);
        big.message = "y".repeat(MAX_BUFFERED_BYTES - 200);
        sub.keep(big);
        sub.keep(message(2));
        assert!(sub.buffer_bytes <= MAX_BUFFERED_BYTES);
        assert!(
            sub.buffer.contains_key(&2),
            "a lower id pushed the big one out"
        );
        assert!(!sub.buffer.contains_key(&3));
        let mut next = message(1);
        next.message = "z".repeat(MAX_BUFFERED_BYTES);
        sub.keep(next);
        assert!(sub.buffer.contains_key(&1), "last + 1 always gets in");
    }
}
