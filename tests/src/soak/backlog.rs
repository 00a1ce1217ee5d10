//! How far the soak's own apps fell behind: the largest length seen of the lists they
//! read. The peer trims the lists it fills at 10,000 entries (its bound against a dead
//! consumer), so an app that falls that far behind loses messages by design; the soak
//! reports the largest backlogs to show its apps kept up and the counts are the bus's.

use crate::chaos::apps::Link;
use crate::chaos::net::Net;
use crate::peer_process::resp::Reply;

/// The lists watched, and the largest length each reached.
pub(crate) struct Backlogs {
    lists: Vec<Watched>,
}

struct Watched {
    name: String,
    link: Link,
    max: u64,
}

impl Backlogs {
    /// Watches the echo bot's queue (B), the client's responses (A) and the topic
    /// subscription's list (A).
    pub(crate) fn new(net: &Net) -> Self {
        let watch = |name: String, url: String| Watched {
            name,
            link: Link::new(&url),
            max: 0,
        };
        let topic = format!("rmb.sub.{}/{}.list", net.twin_b, super::topics::TOPIC);
        Backlogs {
            lists: vec![
                watch(crate::chaos::BOT_QUEUE.to_string(), net.redis_b.url()),
                watch(crate::chaos::RET.to_string(), net.redis_a.url()),
                watch(topic, net.redis_a.url()),
            ],
        }
    }

    /// Reads every list's length once (a Redis that is down is skipped).
    pub(crate) fn sample(&mut self) {
        for list in &mut self.lists {
            if let Ok(Reply::Int(n)) = list.link.cmd(&[b"LLEN", list.name.as_bytes()]) {
                list.max = list.max.max(n.max(0) as u64);
            }
        }
    }

    /// Each list with the largest length seen.
    pub(crate) fn maxima(&self) -> Vec<(String, u64)> {
        self.lists.iter().map(|l| (l.name.clone(), l.max)).collect()
    }
}
