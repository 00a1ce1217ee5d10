//! Messages handed to local apps but not yet recorded in Redis.
//!
//! A subscription without a Redis list records what it hands over (its position and
//! its local copy of the messages) a moment later, many messages per script call,
//! instead of one call before each hand-over: that call was about half of all the CPU
//! a delivery cost (topic-bench, 100 subscribers). Live apps do not need it first: they
//! get each message once from the broadcast, and a feed that starts again passes the
//! last id it saw. Until its record is written a message is kept here, so that reading
//! the local copy ([`Topics::pull`](super::Topics::pull), the replay of a live feed)
//! misses nothing in between. A crash loses at most these records: the subscription
//! then resumes from the recorded position and pulls those messages from the owner
//! again.
//!
//! Subscriptions with a Redis list record each run before handing it over, as before:
//! the list is an app's queue, and the record is what keeps it exactly-once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::wire::TopicName;

/// The unrecorded messages of every subscription, by id (their JSON, as handed over).
#[derive(Debug, Default)]
pub(crate) struct Unrecorded {
    topics: Mutex<HashMap<TopicName, BTreeMap<u64, Arc<str>>>>,
}

impl Unrecorded {
    fn lock(&self) -> MutexGuard<'_, HashMap<TopicName, BTreeMap<u64, Arc<str>>>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `json` (message `id` of `topic`) until [`recorded`](Unrecorded::recorded).
    pub(crate) fn add(&self, topic: &TopicName, id: u64, json: Arc<str>) {
        let mut topics = self.lock();
        // Looked up before `entry`, which would clone the name for every message.
        match topics.get_mut(topic) {
            Some(kept) => {
                kept.insert(id, json);
            }
            None => {
                topics.insert(topic.clone(), BTreeMap::from([(id, json)]));
            }
        }
    }

    /// Up to `limit` kept messages of `topic` after `since`, in id order.
    pub(crate) fn after(
        &self,
        topic: &TopicName,
        since: u64,
        limit: usize,
    ) -> Vec<(u64, Arc<str>)> {
        let topics = self.lock();
        let Some(kept) = topics.get(topic) else {
            return Vec::new();
        };
        kept.range(since.saturating_add(1)..)
            .take(limit)
            .map(|(id, json)| (*id, Arc::clone(json)))
            .collect()
    }

    /// The newest kept id of `topic`: the last one handed over, when its record is not
    /// written yet.
    pub(crate) fn last(&self, topic: &TopicName) -> Option<u64> {
        self.lock()
            .get(topic)
            .and_then(|kept| kept.keys().next_back().copied())
    }

    /// Forgets the messages of `topic` up to `last`: their records are written.
    pub(crate) fn recorded(&self, topic: &TopicName, last: u64) {
        let mut topics = self.lock();
        if let Some(kept) = topics.get_mut(topic) {
            *kept = kept.split_off(&last.saturating_add(1));
            if kept.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Forgets every message of `topic` (its subscription ended).
    pub(crate) fn forget(&self, topic: &TopicName) {
        self.lock().remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_until_recorded_in_id_order() {
        let unrecorded = Unrecorded::default();
        let topic: TopicName = "7/t".parse().unwrap();
        let other: TopicName = "7/u".parse().unwrap();
        for id in [3, 1, 2] {
            unrecorded.add(&topic, id, format!("m{id}").into());
        }
        unrecorded.add(&other, 9, "o".into());
        let ids = |v: Vec<(u64, Arc<str>)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(unrecorded.after(&topic, 0, 10)), [1, 2, 3]);
        assert_eq!(ids(unrecorded.after(&topic, 1, 1)), [2]);
        assert_eq!(unrecorded.last(&topic), Some(3));
        unrecorded.recorded(&topic, 2);
        assert_eq!(ids(unrecorded.after(&topic, 0, 10)), [3]);
        unrecorded.recorded(&topic, 3);
        assert!(unrecorded.after(&topic, 0, 10).is_empty());
        assert_eq!(unrecorded.last(&topic), None);
        assert_eq!(ids(unrecorded.after(&other, 0, 10)), [9]);
        unrecorded.forget(&other);
        assert!(unrecorded.after(&other, 0, 10).is_empty());
        assert!(unrecorded.lock().is_empty());
    }
}
