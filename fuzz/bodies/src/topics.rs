//! Topic messages: the JSON bodies of `rmb.topic.*` requests and their answers, which
//! owners and subscribers read from other twins (rmb_peer::topics::wire).

use rmb_peer::topics::config::TopicConfig;
use rmb_peer::topics::wire::{
    AckRequest, Batch, Draft, GapJson, MAX_PAYLOAD, MessageJson, PublishRequest, Published,
    PullRequest, Pulled, PushAnswer, SubscribeRequest, Subscribed, TopicName, check_name,
};

use crate::{alloc, json_round_trip, select};

/// By the first byte, the rest as one of the topic documents (publish, subscribe, ack,
/// push answer, subscribed, pull, pulled, batch, published, message, gap, draft,
/// configuration) or a topic name. No panic, bounded allocations; every document that
/// reads writes back to an equal one; a name that parses prints back to itself; drafts
/// and messages that pass their checks hold at most the payload limit.
pub fn topic_wire(data: &[u8]) {
    let Some((which, rest)) = select(data, 14) else {
        return;
    };
    alloc::bounded("topic document", alloc::limit(rest.len()), || {
        document(which, rest)
    });
}

fn document(which: u8, rest: &[u8]) {
    match which {
        0 => {
            if let Some(req) = json_round_trip::<PublishRequest>(rest) {
                draft(&req.draft);
                let _ = check_name(&req.topic);
            }
        }
        1 => {
            json_round_trip::<SubscribeRequest>(rest);
        }
        2 => {
            json_round_trip::<AckRequest>(rest);
        }
        3 => {
            json_round_trip::<PushAnswer>(rest);
        }
        4 => {
            json_round_trip::<Subscribed>(rest);
        }
        5 => {
            json_round_trip::<PullRequest>(rest);
        }
        6 => {
            if let Some(pulled) = json_round_trip::<Pulled>(rest) {
                pulled.messages.iter().for_each(message);
            }
        }
        7 => {
            if let Some(batch) = json_round_trip::<Batch>(rest) {
                batch.messages.iter().for_each(message);
            }
        }
        8 => {
            json_round_trip::<Published>(rest);
        }
        9 => {
            if let Some(m) = json_round_trip::<MessageJson>(rest) {
                message(&m);
            }
        }
        10 => {
            json_round_trip::<GapJson>(rest);
        }
        11 => {
            if let Some(d) = json_round_trip::<Draft>(rest) {
                draft(&d);
            }
        }
        12 => {
            if let Some(config) = json_round_trip::<TopicConfig>(rest) {
                let _ = config.check();
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(name) = text.parse::<TopicName>() {
                assert!(name.owner != 0);
                assert_eq!(name.to_string().parse::<TopicName>(), Ok(name));
            }
        }
    }
}

/// A draft that passes its checks carries at most the payload limit.
fn draft(d: &Draft) {
    if let Ok(size) = d.check() {
        assert!(size <= MAX_PAYLOAD);
    }
}

/// A message's payload decodes or is refused; a decoded one is within the size estimate.
fn message(m: &MessageJson) {
    if let Ok(payload) = m.payload() {
        assert!(payload.len() <= m.size());
    }
    let _ = m.topic.parse::<TopicName>();
}
